"""Reader statistics: every number is compared with the reference libraries (statsmodels, scikit-learn, scipy,
krippendorff) on random studies, and the edge cases give null values with a reason, never NaN or an exception."""

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import krippendorff
import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from annotation.stats.agreement import krippendorff_alpha_ordinal
from annotation.stats.readers import reader_report, wilson_interval
from annotation.stats.reads import CALLS, REAL, SYNTHETIC, CatchRule, Read, RubricRead

ROOT = Path(__file__).resolve().parents[2]
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


# --- catch trials --------------------------------------------------------------------------------------------------


def study_with_catch_trials() -> list[Read]:
    reads = random_reads(7, n_readers=3)
    # r0 misses 3 of 4 catch trials, r1 gets all 4 right, r2 saw a single catch trial and missed it.
    for i, call in enumerate([REAL, REAL, REAL, SYNTHETIC]):
        reads.append(Read(f"k{i}", "r0", SYNTHETIC, call, is_catch=True))
        reads.append(Read(f"k{i}", "r1", SYNTHETIC, SYNTHETIC, is_catch=True))
    reads.append(Read("k0", "r2", SYNTHETIC, REAL, is_catch=True))
    return reads


def test_catch_trials_never_enter_study_statistics():
    reads = study_with_catch_trials()
    study = [r for r in reads if not r.is_catch]
    with_catch, without = strict_json(reader_report(reads)), strict_json(reader_report(study))
    for key in ("pooled", "readers", "fleiss_kappa", "cohen_kappa", "fooling_rate"):
        assert with_catch[key] == without[key]
    catch = with_catch["catch"]
    assert catch["rule"] is None and catch["flagged"] == [] and catch["excluded"] == []
    assert catch["readers"]["r0"]["n"] == 4
    assert_proportion(catch["readers"]["r0"]["accuracy"], 1, 4)


def test_catch_rule_flags_without_changing_the_statistics():
    reads = study_with_catch_trials()
    report = strict_json(
        reader_report(reads, catch_rule=CatchRule(min_accuracy=0.8, action="flag", min_trials=2))
    )
    # r2 has fewer catch trials than min_trials, so it is not judged.
    assert report["catch"]["flagged"] == [{"reader": "r0", "n": 4, "accuracy": 0.25}]
    assert report["catch"]["excluded"] == []
    assert report["pooled"] == strict_json(reader_report(reads))["pooled"]


def test_catch_rule_excludes_readers_from_pooled_statistics():
    reads = study_with_catch_trials()
    report = strict_json(reader_report(reads, catch_rule=CatchRule(min_accuracy=0.8, action="exclude")))
    assert [e["reader"] for e in report["catch"]["excluded"]] == ["r0", "r2"]
    kept = [r for r in reads if not r.is_catch and r.reader == "r1"]
    assert_binary_metrics(report["pooled"], kept)
    assert report["pooled"]["n_readers"] == 1
    assert report["pooled"]["excluded_readers"] == ["r0", "r2"]
    assert report["readers"]["r0"]["excluded"] is True and report["readers"]["r1"]["excluded"] is False
    assert_binary_metrics(report["readers"]["r0"], [r for r in reads if not r.is_catch and r.reader == "r0"])
    assert report["cohen_kappa"] == {}
    assert report["fleiss_kappa"]["reason"] == "fewer than two readers"
    assert any("excluded by the catch rule" in note and "r0, r2" in note for note in report["notes"])


@pytest.mark.parametrize(
    "kwargs",
    [{"min_accuracy": 1.5}, {"action": "drop"}, {"min_trials": 0}],
    ids=["accuracy", "action", "trials"],
)
def test_catch_rule_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        CatchRule(**kwargs)


# --- edge cases: defined outputs, null with a reason ----------------------------------------------------------------


def assert_null(stat: dict, reason: str):
    assert stat["value"] is None
    assert stat["reason"] == reason
    if "ci_low" in stat:
        assert stat["ci_low"] is None and stat["ci_high"] is None


def test_reader_with_no_synthetic_cases():
    reads = random_reads(3, n_readers=2)
    reads += [
        Read(f"real{i}", "only-real", REAL, REAL if i % 3 else SYNTHETIC, confidence=2) for i in range(9)
    ]
    summary = strict_json(reader_report(reads))["readers"]["only-real"]
    assert_null(summary["sensitivity"], "no synthetic cases")
    assert_null(summary["auc"], "only real cases")
    assert_proportion(summary["specificity"], 6, 9)
    assert_proportion(summary["ppv"], 0, 3)
    assert_proportion(summary["npv"], 6, 6)
    assert summary["binomial_p"] == pytest.approx(binomtest(6, 9).pvalue)


def test_reader_who_never_calls_synthetic():
    reads = [Read(f"c{i}", "a", REAL if i % 2 else SYNTHETIC, REAL) for i in range(10)]
    summary = strict_json(reader_report(reads))["readers"]["a"]
    assert_null(summary["ppv"], "no synthetic calls")
    assert_proportion(summary["sensitivity"], 0, 5)
    assert summary["auc"]["value"] == 0.5


def test_all_answers_identical():
    reads = [Read(f"c{i}", name, SYNTHETIC, SYNTHETIC, 5) for i in range(6) for name in ("a", "b", "c")]
    rubric = [RubricRead(f"c{i}", name, {"q": 4}) for i in range(6) for name in ("a", "b")]
    report = strict_json(reader_report(reads, rubric))
    assert_null(report["fleiss_kappa"], "all answers identical: agreement expected by chance is total")
    for stat in report["cohen_kappa"].values():
        assert_null(stat, "all answers identical: agreement expected by chance is total")
        assert stat["n"] == 6
    assert_null(report["pooled"]["specificity"], "no real cases")
    assert_null(report["pooled"]["auc"], "only synthetic cases")
    assert_proportion(report["pooled"]["accuracy"], 18, 18)
    assert_null(
        report["rubric"]["q"]["weighted_kappa"]["a|b"],
        "all answers identical: agreement expected by chance is total",
    )
    assert_null(
        report["rubric"]["q"]["krippendorff_alpha"], "scores of cases scored twice or more do not vary"
    )
    # The libraries agree that these are undefined.
    with pytest.warns(Warning):
        assert math.isnan(cohen_kappa_score(["synthetic"] * 6, ["synthetic"] * 6))
    with pytest.raises(ValueError, match="more than one value"):
        krippendorff.alpha(reliability_data=[[4] * 6, [4] * 6], level_of_measurement="ordinal")


def test_one_reader_only():
    reads = random_reads(5, n_readers=1)
    rubric = [RubricRead(f"c{i}", "r0", {"q": i % 5 + 1}) for i in range(8)]
    report = strict_json(reader_report(reads, rubric))
    assert_binary_metrics(report["pooled"], reads)
    reader = dict(report["readers"]["r0"])
    assert reader.pop("excluded") is False
    assert report["pooled"] == {**reader, "n_readers": 1, "excluded_readers": []}
    assert_null(report["fleiss_kappa"], "fewer than two readers")
    assert report["cohen_kappa"] == {}
    assert report["rubric"]["q"]["weighted_kappa"] == {}
    assert_null(report["rubric"]["q"]["krippendorff_alpha"], "fewer than two readers")
    assert any("fewer than two readers" in note for note in report["notes"])


def test_no_reads_at_all():
    report = strict_json(reader_report([]))
    assert report["pooled"]["n"] == 0
    assert_null(report["pooled"]["accuracy"], "no reads")
    assert report["pooled"]["binomial_p"] is None and report["pooled"]["binomial_p_reason"] == "no reads"
    assert report["pooled"]["tost"]["indistinguishable"] is None
    assert report["readers"] == {} and report["fooling_rate"] == {} and report["rubric"] == {}
    assert_null(report["intra_reader"]["pooled"]["kappa"], "no repeated cases")


def test_readers_sharing_no_cases_and_cases_read_once():
    reads = [Read("c1", "a", REAL, REAL), Read("c2", "b", SYNTHETIC, REAL), Read("c3", "b", REAL, REAL)]
    report = strict_json(reader_report(reads))
    assert report["cohen_kappa"]["a|b"] == {"value": None, "n": 0, "reason": "no cases in common"}
    assert_null(report["fleiss_kappa"], "no case was read by every reader")


def test_reader_with_only_catch_trials_has_empty_study_statistics():
    reads = random_reads(2, n_readers=2) + [Read("k1", "late", SYNTHETIC, SYNTHETIC, is_catch=True)]
    summary = strict_json(reader_report(reads))["readers"]["late"]
    assert summary["n"] == 0
    assert_null(summary["accuracy"], "no reads")
    assert_null(summary["auc"], "no reads")


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="truth"):
        Read("c1", "a", "fake", REAL)
    with pytest.raises(ValueError, match="call"):
        Read("c1", "a", REAL, "maybe")
    with pytest.raises(ValueError, match="confidence"):
        Read("c1", "a", REAL, REAL, confidence=0)
    with pytest.raises(ValueError, match="margin"):
        reader_report([], margin=0.5)


def test_excluded_readers_leave_the_pooled_intra_reader_agreement():
    reads = [Read(f"c{i}", name, REAL, REAL) for i in range(4) for name in ("good", "bad")]
    reads += [Read(f"c{i}", "good", REAL, REAL, repeat_of="t") for i in range(4)]
    reads += [Read(f"c{i}", "bad", REAL, SYNTHETIC, repeat_of="t") for i in range(4)]
    reads += [
        Read("k", "bad", SYNTHETIC, REAL, is_catch=True),
        Read("k", "good", SYNTHETIC, SYNTHETIC, is_catch=True),
    ]
    intra = strict_json(reader_report(reads, catch_rule=CatchRule(action="exclude")))["intra_reader"]
    assert intra["readers"]["bad"]["agreement"]["value"] == 0.0
    assert intra["pooled"]["n_pairs"] == 4
    assert intra["pooled"]["agreement"]["value"] == 1.0
    assert_null(intra["pooled"]["kappa"], "all answers identical: agreement expected by chance is total")


def test_the_module_imports_neither_django_nor_the_reference_libraries():
    code = (
        "import sys, annotation.stats.readers, annotation.stats.agreement, annotation.stats.reads; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'sklearn', 'statsmodels', 'krippendorff'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
