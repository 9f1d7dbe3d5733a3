"""Reader statistics at the edges: catch trials and their rule, and inputs where a number is undefined (null with a
reason, never NaN or an exception); the statistics modules load without Django or the reference libraries."""

import math
import subprocess
import sys

import krippendorff
import pytest
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from annotation.stats.reader_report import reader_report
from annotation.stats.reads import REAL, SYNTHETIC, CatchRule, Read, RubricRead
from tests.annotation.stats.stats_helpers import (
    ROOT,
    assert_binary_metrics,
    assert_proportion,
    random_reads,
    strict_json,
)

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
        "import sys, annotation.stats.reader_report, annotation.stats.agreement, annotation.stats.reads; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'sklearn', 'statsmodels', 'krippendorff'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
