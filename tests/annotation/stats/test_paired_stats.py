"""Paired panel comparisons: bootstrap CIs carry their n, the signed-rank p needs enough pairs."""

import numpy as np
import pytest

from annotation.stats.paired import bootstrap_mean, paired_comparison


def test_bootstrap_mean_has_a_ci_around_the_mean_and_its_n():
    x = np.random.default_rng(1).normal(0.3, 0.1, 64)
    stat = bootstrap_mean(x)
    assert stat["n"] == 64 and stat["ci_low"] < stat["mean"] < stat["ci_high"]
    assert stat["mean"] == pytest.approx(x.mean())
    assert 0.02 < stat["ci_high"] - stat["ci_low"] < 0.08  # ≈ 2 × 1.96 × 0.1 / 8
    assert bootstrap_mean(x) == stat  # seeded: a report is reproducible
    assert bootstrap_mean([0.5]) == {"mean": 0.5, "ci_low": None, "ci_high": None, "n": 1}
    assert bootstrap_mean([])["mean"] is None


def test_a_paired_gain_is_found_where_there_is_one_and_not_where_there_is_none():
    rng = np.random.default_rng(2)
    before = rng.uniform(0, 1, 48)
    gained = paired_comparison(before, before + rng.normal(0.05, 0.05, 48))
    assert gained["p_value"] < 1e-4 and gained["gain"]["ci_low"] > 0 and gained["effect_size"] > 0.5
    null = paired_comparison(before, before + rng.normal(0.0, 0.05, 48))
    assert null["p_value"] > 0.01 and null["gain"]["ci_low"] < 0 < null["gain"]["ci_high"]
    few = paired_comparison([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    assert few["p_value"] is None and few["skipped"]["p_value"] == "too few (n=3)"
    with pytest.raises(ValueError, match="same items"):
        paired_comparison([0.1, 0.2], [0.1])
