"""Reader statistics: every number is compared with the reference libraries (statsmodels, scikit-learn, scipy,
krippendorff) on random studies, and the edge cases give null values with a reason, never NaN or an exception."""

import itertools
import math

import krippendorff
import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from annotation.stats.agreement import krippendorff_alpha_ordinal
from annotation.stats.reader_report import reader_report, wilson_interval
from annotation.stats.reads import CALLS, REAL, SYNTHETIC, Read, RubricRead
from tests.annotation.stats.stats_helpers import (
    APPROX,
    SEEDS,
    assert_binary_metrics,
    assert_proportion,
    other,
    random_reads,
    signed_confidence,
    strict_json,
)

# --- proportions and tests against statsmodels / scipy / scikit-learn ----------------------------------------------


def test_wilson_matches_statsmodels_on_every_count():
    for n in range(1, 41):
        for k in range(n + 1):
            expected = proportion_confint(k, n, alpha=0.05, method="wilson")
            assert wilson_interval(k, n) == pytest.approx(expected, **APPROX)


@pytest.mark.parametrize("seed", SEEDS)
def test_reader_and_pooled_metrics_match_references(seed):
    reads = random_reads(seed)
    report = strict_json(reader_report(reads))
    assert_binary_metrics(report["pooled"], reads)
    assert set(report["readers"]) == {r.reader for r in reads}
    for name, summary in report["readers"].items():
        assert_binary_metrics(summary, [r for r in reads if r.reader == name])
        assert summary["excluded"] is False


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("margin", [0.05, 0.10, 0.2])
def test_tost_is_two_one_sided_exact_binomial_tests(seed, margin):
    reads = random_reads(seed)
    tost = reader_report(reads, margin=margin)["pooled"]["tost"]
    k, n = sum(r.call == r.truth for r in reads), len(reads)
    p_lower = binomtest(k, n, 0.5 - margin, alternative="greater").pvalue
    p_upper = binomtest(k, n, 0.5 + margin, alternative="less").pvalue
    assert tost["margin"] == margin
    assert tost["p_lower"] == pytest.approx(p_lower, **APPROX)
    assert tost["p_upper"] == pytest.approx(p_upper, **APPROX)
    assert tost["p"] == pytest.approx(max(p_lower, p_upper), **APPROX)
    assert tost["indistinguishable"] is bool(max(p_lower, p_upper) < 0.05)


def test_tost_verdicts_at_the_extremes():
    # 400 reads at exactly 50% accuracy are equivalent to chance within ±0.10; 400 at 80% are not.
    chance = [Read(f"c{i}", "a", SYNTHETIC, SYNTHETIC if i % 2 else REAL) for i in range(400)]
    skilled = [Read(f"c{i}", "a", SYNTHETIC, SYNTHETIC if i % 5 else REAL) for i in range(400)]
    assert reader_report(chance)["pooled"]["tost"]["indistinguishable"] is True
    assert reader_report(skilled)["pooled"]["tost"]["indistinguishable"] is False


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_auc_matches_sklearn_on_signed_confidence(seed, missing):
    reads = random_reads(seed, missing_confidence=missing)
    report = reader_report(reads)
    y = [r.truth == SYNTHETIC for r in reads]
    assert report["pooled"]["auc"]["value"] == pytest.approx(
        roc_auc_score(y, signed_confidence(reads)), **APPROX
    )
    for name, summary in report["readers"].items():
        mine = [r for r in reads if r.reader == name]
        expected = roc_auc_score([r.truth == SYNTHETIC for r in mine], signed_confidence(mine))
        assert summary["auc"]["value"] == pytest.approx(expected, **APPROX)
        assert summary["auc"]["n"] == len(mine)


@pytest.mark.parametrize("seed", SEEDS)
def test_fooling_rate_per_model_version(seed):
    reads = random_reads(seed)
    rates = strict_json(reader_report(reads))["fooling_rate"]
    assert set(rates) == {r.model_version for r in reads if r.truth == SYNTHETIC}
    for version, stat in rates.items():
        mine = [r for r in reads if r.model_version == version]
        assert stat["n"] == len(mine)
        assert_proportion(stat, sum(r.call == REAL for r in mine), len(mine))


# --- agreement against scikit-learn / statsmodels / krippendorff ----------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_cohen_kappa_per_pair_matches_sklearn_on_shared_cases(seed):
    reads = random_reads(seed)
    pairs = reader_report(reads)["cohen_kappa"]
    readers = sorted({r.reader for r in reads})
    assert set(pairs) == {f"{a}|{b}" for a, b in itertools.combinations(readers, 2)}
    calls = {name: {r.case_id: r.call for r in reads if r.reader == name} for name in readers}
    for a, b in itertools.combinations(readers, 2):
        common = sorted(calls[a].keys() & calls[b].keys())
        expected = cohen_kappa_score([calls[a][c] for c in common], [calls[b][c] for c in common])
        assert pairs[f"{a}|{b}"] == {"value": pytest.approx(expected, **APPROX), "n": len(common)}


def statsmodels_fleiss(calls_per_case: list[list[str]]) -> float:
    table, _ = aggregate_raters(
        np.array([[CALLS.index(c) for c in case] for case in calls_per_case]), n_cat=2
    )
    return sm_fleiss_kappa(table, method="fleiss")


@pytest.mark.parametrize("seed", SEEDS)
def test_fleiss_with_unequal_reads_uses_cases_read_by_every_reader(seed):
    reads = random_reads(seed, n_readers=5)
    fleiss = reader_report(reads)["fleiss_kappa"]
    by_case = {}
    for r in reads:
        by_case.setdefault(r.case_id, []).append(r.call)
    full = [calls for calls in by_case.values() if len(calls) == 5]
    assert 0 < len(full) < len(by_case)
    assert fleiss["value"] == pytest.approx(statsmodels_fleiss(full), **APPROX)
    assert fleiss["n_cases"] == len(full)
    assert "only the" in fleiss["note"] and "read by all 5 readers" in fleiss["note"]


@pytest.mark.parametrize("seed", SEEDS)
def test_fleiss_with_equal_reads_per_case_uses_all_cases(seed):
    # Every case is read by exactly three of five readers, not always the same three.
    rng = np.random.default_rng(seed)
    reads = []
    for case in range(50):
        truth = str(rng.choice(CALLS))
        for reader in rng.choice(5, size=3, replace=False):
            call = truth if rng.random() < 0.7 else other(truth)
            reads.append(Read(f"c{case}", f"r{reader}", truth, call))
    fleiss = reader_report(reads)["fleiss_kappa"]
    by_case = {}
    for r in reads:
        by_case.setdefault(r.case_id, []).append(r.call)
    assert fleiss["value"] == pytest.approx(statsmodels_fleiss(list(by_case.values())), **APPROX)
    assert fleiss["n_cases"] == 50
    assert fleiss["note"] == "all 50 cases have 3 reads each"


def random_rubric(seed: int, *, n_readers=4, n_cases=40, scale=(1, 9)) -> list[RubricRead]:
    rng = np.random.default_rng(seed)
    quality = rng.integers(scale[0], scale[1] + 1, n_cases)
    reads = []
    for reader in range(n_readers):
        for case in range(n_cases):
            if rng.random() < 0.75:
                anatomy = int(np.clip(quality[case] + rng.integers(-2, 3), *scale))
                # "style" never uses 4 or 5, so index distance and score distance differ.
                style = int(rng.choice([1, 2, 3, 6, 7]))
                reads.append(RubricRead(f"c{case}", f"r{reader}", {"anatomy": anatomy, "style": style}))
    return reads


@pytest.mark.parametrize("seed", SEEDS)
def test_rubric_weighted_kappa_and_krippendorff_match_references(seed):
    rubric = random_rubric(seed)
    report = strict_json(reader_report([], rubric))["rubric"]
    readers = sorted({rr.reader for rr in rubric})
    cases = sorted({rr.case_id for rr in rubric})
    for criterion in ("anatomy", "style"):
        scores = {
            name: {rr.case_id: rr.scores[criterion] for rr in rubric if rr.reader == name} for name in readers
        }
        every = [s for by_case in scores.values() for s in by_case.values()]
        scale = list(range(min(every), max(every) + 1))
        for a, b in itertools.combinations(readers, 2):
            common = sorted(scores[a].keys() & scores[b].keys())
            expected = cohen_kappa_score(
                [scores[a][c] for c in common],
                [scores[b][c] for c in common],
                weights="quadratic",
                labels=scale,
            )
            assert report[criterion]["weighted_kappa"][f"{a}|{b}"] == {
                "value": pytest.approx(expected, **APPROX),
                "n": len(common),
            }
        matrix = [[scores[name].get(c, np.nan) for c in cases] for name in readers]
        expected_alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal")
        assert report[criterion]["krippendorff_alpha"]["value"] == pytest.approx(expected_alpha, **APPROX)


def test_weighted_kappa_equals_sklearn_default_when_every_score_is_used():
    a = [1, 2, 3, 4, 5, 3, 2, 1, 4, 5, 2, 3]
    b = [1, 3, 3, 5, 4, 2, 2, 1, 4, 5, 1, 3]
    rubric = [RubricRead(f"c{i}", "a", {"q": s}) for i, s in enumerate(a)]
    rubric += [RubricRead(f"c{i}", "b", {"q": s}) for i, s in enumerate(b)]
    got = reader_report([], rubric)["rubric"]["q"]["weighted_kappa"]["a|b"]["value"]
    assert got == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"), **APPROX)


def test_krippendorff_matches_the_package_docs_example():
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
        [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
    ]
    units = [[int(v) for v in col if not math.isnan(v)] for col in zip(*data, strict=True)]
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal")
    assert krippendorff_alpha_ordinal(units) == pytest.approx(expected, **APPROX)
    assert round(expected, 3) == 0.815


@pytest.mark.parametrize("seed", SEEDS)
def test_intra_reader_agreement_on_repeated_cases(seed):
    rng = np.random.default_rng(seed)
    reads = random_reads(seed, n_readers=3)
    repeats = []
    for r in reads:
        if rng.random() < 0.4:
            call = r.call if rng.random() < 0.8 else other(r.call)
            repeats.append(
                Read(r.case_id, r.reader, r.truth, call, r.confidence, r.model_version, repeat_of="x")
            )
    report = strict_json(reader_report(reads + repeats))
    # Repeats do not count twice: everything but intra-reader agreement equals the report without them.
    without = strict_json(reader_report(reads))
    for key in ("pooled", "readers", "fleiss_kappa", "cohen_kappa", "fooling_rate"):
        assert report[key] == without[key]
    firsts = {(r.reader, r.case_id): r.call for r in reads}
    for name in ("r0", "r1", "r2", None):
        mine = [p for p in repeats if name is None or p.reader == name]
        intra = report["intra_reader"]["pooled" if name is None else "readers"]
        intra = intra if name is None else intra[name]
        first = [firsts[(p.reader, p.case_id)] for p in mine]
        again = [p.call for p in mine]
        assert intra["n_pairs"] == len(mine)
        assert_proportion(
            intra["agreement"], sum(x == y for x, y in zip(first, again, strict=True)), len(mine)
        )
        assert intra["kappa"]["value"] == pytest.approx(cohen_kappa_score(first, again), **APPROX)


def test_the_read_without_repeat_of_is_the_first_read_whatever_the_order():
    reads = [
        Read("c1", "a", REAL, SYNTHETIC, repeat_of="t1"),
        Read("c1", "a", REAL, REAL),
        Read("c2", "a", SYNTHETIC, SYNTHETIC),
    ]
    report = reader_report(reads)
    assert report["readers"]["a"]["accuracy"]["value"] == 1.0
    assert report["intra_reader"]["readers"]["a"]["n_pairs"] == 1
    assert report["intra_reader"]["readers"]["a"]["agreement"]["value"] == 0.0
