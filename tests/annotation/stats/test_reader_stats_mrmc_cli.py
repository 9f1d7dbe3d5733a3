"""``manage.py reader_stats FILE.csv --mrmc``: the OR analysis of a fully crossed CSV as one JSON object with the
documented keys, planning with --effect, and bad input refused by line with nothing on stdout."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

VANDYKE = Path(__file__).resolve().parents[2] / "data" / "vandyke_mrmc.csv"


def run(path: Path, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("reader_stats", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def refused(path: Path, *args: str) -> tuple[str, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("reader_stats", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue(), str(info.value)


def test_json_has_the_documented_keys_and_values():
    report = json.loads(run(VANDYKE, "--mrmc", "--json")[0])
    assert report["method"] == "OR" and report["covariance"] == "jackknife"
    for t in ("1", "2"):
        assert {"auc", "se", "df", "ci_low", "ci_high", "p_vs_chance", "equivalence"} <= set(report["treatments"][t])
        assert set(report["readers"][t]) == {"1", "2", "3", "4", "5"}
    assert set(report["var_components"]) == {"var", "cov1", "cov2", "cov3", "var_r", "var_tr"}
    assert {"f", "ddf", "p", "differences"} <= set(report["rrrc"])
    assert set(report["rrrc"]["differences"]) == {"1-2"}
    assert {"estimate", "se", "ci_low", "ci_high"} <= set(report["rrrc"]["differences"]["1-2"])
    assert {"chi2", "df", "p"} <= set(report["frrc"]) and {"f", "df", "p"} <= set(report["rrfc"])
    assert report["rrrc"]["f"] == pytest.approx(4.4563, abs=1e-4)  # OR-DBM: 4.46
    assert "power" not in report
    delong = json.loads(run(VANDYKE, "--mrmc", "--json", "--covariance", "delong")[0])
    assert delong["covariance"] == "delong" and delong["rrrc"]["p"] == pytest.approx(0.05123303, rel=1e-5)


def test_planning_adds_power_and_cases_needed():
    report = json.loads(run(VANDYKE, "--mrmc", "--json", "--effect", "-0.043800322", "--readers", "10",
                            "--cases", "131")[0])
    assert report["power"]["frrc"] == pytest.approx(0.80091813, rel=1e-5)  # RJafroc
    assert report["cases_needed"]["frrc"] == 131 and report["cases_needed"]["rrfc"] == 53
    default = json.loads(run(VANDYKE, "--mrmc", "--json", "--effect", "0.05")[0])
    assert default["planning"]["readers"] == 5 and default["planning"]["cases"] == 114
    assert default["planning"]["target_power"] == 0.8


def test_text_output_names_the_analyses():
    text = run(VANDYKE, "--mrmc")[0]
    assert "Random readers, random cases: F(1, 15.26) = 4.4563" in text
    assert "Fixed readers, random cases: X2(1) = 5.4760" in text


def test_truth_words_are_accepted(tmp_path):
    lines = VANDYKE.read_text().splitlines()
    words = [lines[0]] + [",".join([*p[:3], {"0": "real", "1": "synthetic"}[p[3]], p[4]])
                          for p in (line.split(",") for line in lines[1:])]
    path = tmp_path / "words.csv"
    path.write_text("\n".join(words) + "\n")
    assert json.loads(run(path, "--mrmc", "--json")[0]) == json.loads(run(VANDYKE, "--mrmc", "--json")[0])


@pytest.mark.parametrize(
    "body, expected",
    [
        ("treatment,reader,case,truth\nA,x,1,0\n", "line 1: header must be treatment,reader,case,truth,rating"),
        ("treatment,reader,case,truth,rating\nA,x,1,maybe,3\nA,x,2,1,high\n",
         ["line 2: truth must be 0, 1, real or synthetic, got 'maybe'", "line 3: rating must be a finite number"]),
        ("treatment,reader,case,truth,rating\nA,x,1,0,1\nA,x,2,1,2\nA,y,1,0,1\n",
         "missing cell: reader 'y' has no rating of case '2' under treatment 'A'"),
        ("treatment,reader,case,truth,rating\nA-1,x,1,0,1\nA-1,x,2,1,2\n", "line 2: treatment name 'A-1' contains '-'"),
        ("treatment,reader,case,truth,rating\nA,x,1,0,1\nA,x,1,0,2\n", "line 3: a second rating of case '1'"),
        ("treatment,reader,case,truth,rating\nA,x,1,0,1,9\n", "line 2: expected 5 fields, got 6"),
    ],
)
def test_bad_files_are_refused_by_line_with_nothing_printed(tmp_path, body, expected):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    out, err, message = refused(path, "--mrmc", "--json")
    assert out == "" and "no statistics computed" in message
    for line in [expected] if isinstance(expected, str) else expected:
        assert line in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--effect", "0.05"], "need --mrmc"),
        (["--mrmc", "--readers", "6"], "give the effect with --effect"),
        (["--mrmc", "--effect", "0.05", "--readers", "1"], "--readers must be at least 2"),
        (["--mrmc", "--effect", "0.05", "--target-power", "1.5"], "--target-power must lie between 0 and 1"),
    ],
)
def test_bad_options_are_refused(args, expected):
    out, _, message = refused(VANDYKE, *args)
    assert out == "" and expected in message
