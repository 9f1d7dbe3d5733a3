"""Random reader studies and checks shared by the reader-statistics tests."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix
from statsmodels.stats.proportion import proportion_confint

from annotation.stats.reads import CALLS, REAL, SYNTHETIC, Read

ROOT = Path(__file__).resolve().parents[3]
SEEDS = [0, 1, 2, 3]
APPROX = {"rel": 1e-9, "abs": 1e-12}


def strict_json(report: dict) -> dict:
    """Round-trips through JSON that refuses NaN and infinity."""
    return json.loads(json.dumps(report, allow_nan=False))


def other(call: str) -> str:
    return REAL if call == SYNTHETIC else SYNTHETIC


def random_reads(seed: int, *, n_readers=4, n_cases=70, p_read=0.8, missing_confidence=0.0) -> list[Read]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(CALLS, n_cases)
    reads = []
    for reader in range(n_readers):
        skill = rng.uniform(0.35, 0.9)
        for case in range(n_cases):
            if rng.random() >= p_read:
                continue
            call = truth[case] if rng.random() < skill else other(truth[case])
            confidence = None if rng.random() < missing_confidence else int(rng.integers(1, 6))
            version = str(rng.choice(["v1", "v2", "v3"])) if truth[case] == SYNTHETIC else None
            reads.append(Read(f"c{case}", f"r{reader}", str(truth[case]), str(call), confidence, version))
    return reads


def assert_proportion(stat: dict, k: int, n: int):
    assert stat["value"] == pytest.approx(k / n, **APPROX)
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert stat["ci_low"] == pytest.approx(low, **APPROX)
    assert stat["ci_high"] == pytest.approx(high, **APPROX)


def assert_binary_metrics(summary: dict, reads: list[Read]):
    truth = [r.truth for r in reads]
    call = [r.call for r in reads]
    (tn, fp), (fn, tp) = confusion_matrix(truth, call, labels=[REAL, SYNTHETIC])
    n = len(reads)
    assert summary["n"] == n
    assert_proportion(summary["accuracy"], tp + tn, n)
    assert_proportion(summary["sensitivity"], tp, tp + fn)
    assert_proportion(summary["specificity"], tn, tn + fp)
    assert_proportion(summary["ppv"], tp, tp + fp)
    assert_proportion(summary["npv"], tn, tn + fn)
    assert summary["binomial_p"] == pytest.approx(binomtest(tp + tn, n, 0.5).pvalue, **APPROX)


def signed_confidence(reads: list[Read]) -> list[int]:
    return [(1 if r.call == SYNTHETIC else -1) * (r.confidence or 1) for r in reads]
