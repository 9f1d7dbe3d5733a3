"""``manage.py reader_stats FILE.csv [--json]``: statistics for reads gathered outside the platform, and every
malformed row reported by line number with nothing printed on stdout and a non-zero exit."""

import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

ROOT = Path(__file__).resolve().parents[3]
APPROX = {"rel": 1e-9, "abs": 1e-12}


def random_rows(seed: int, *, n_readers=3, n_cases=40) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for case in range(n_cases):
        truth = str(rng.choice(["real", "synthetic"]))
        for reader in range(n_readers):
            if rng.random() < 0.85:
                call = truth if rng.random() < 0.65 else ("real" if truth == "synthetic" else "synthetic")
                rows.append(
                    {
                        "case_id": f"case-{case}",
                        "truth": truth,
                        "call": call,
                        "reader": f"reader{reader}",
                        "confidence": str(rng.integers(1, 6)),
                    }
                )
    return rows


def write_csv(
    path: Path, rows: list[dict], columns=("case_id", "truth", "call", "reader", "confidence"), bom=False
):
    lines = [",".join(columns)] + [",".join(row[c] for c in columns) for row in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("reader_stats", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def assert_wilson(stat: dict, k: int, n: int):
    low, high = proportion_confint(k, n, method="wilson")
    assert stat == {
        "value": pytest.approx(k / n, **APPROX),
        "ci_low": pytest.approx(low, **APPROX),
        "ci_high": pytest.approx(high, **APPROX),
    }


def assert_reader_block(block: dict, rows: list[dict]):
    tp = sum(r["truth"] == r["call"] == "synthetic" for r in rows)
    tn = sum(r["truth"] == r["call"] == "real" for r in rows)
    fp = sum(r["truth"] == "real" and r["call"] == "synthetic" for r in rows)
    fn = sum(r["truth"] == "synthetic" and r["call"] == "real" for r in rows)
    assert block["n"] == len(rows)
    assert_wilson(block["accuracy"], tp + tn, len(rows))
    assert_wilson(block["sensitivity"], tp, tp + fn)
    assert_wilson(block["specificity"], tn, tn + fp)
    assert_wilson(block["ppv"], tp, tp + fp)
    assert_wilson(block["npv"], tn, tn + fn)
    assert block["binomial_p"] == pytest.approx(binomtest(tp + tn, len(rows)).pvalue, **APPROX)


@pytest.mark.parametrize("seed", [0, 1])
def test_json_output_matches_the_references(tmp_path, seed):
    rows = random_rows(seed)
    out, err = run(str(write_csv(tmp_path / "reads.csv", rows)), "--json")
    assert err == ""
    report = json.loads(out)
    readers = sorted({r["reader"] for r in rows})
    assert_reader_block(report["pooled"], rows)
    assert sorted(report["readers"]) == readers
    for name in readers:
        assert_reader_block(report["readers"][name], [r for r in rows if r["reader"] == name])
    calls = {name: {r["case_id"]: r["call"] for r in rows if r["reader"] == name} for name in readers}
    for a, b in itertools.combinations(readers, 2):
        common = sorted(calls[a].keys() & calls[b].keys())
        expected = cohen_kappa_score([calls[a][c] for c in common], [calls[b][c] for c in common])
        assert report["cohen_kappa"][f"{a}|{b}"]["value"] == pytest.approx(expected, **APPROX)
    full = [c for c in sorted({r["case_id"] for r in rows}) if all(c in calls[name] for name in readers)]
    table, _ = aggregate_raters(
        np.array([[calls[name][c] == "synthetic" for name in readers] for c in full], int)
    )
    assert report["fleiss_kappa"]["value"] == pytest.approx(fleiss_kappa(table, method="fleiss"), **APPROX)


def test_text_output_is_a_readable_table(tmp_path):
    rows = random_rows(3)
    out, _ = run(str(write_csv(tmp_path / "reads.csv", rows)))
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("reader"))
    for column in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
        assert column in header
    for name in ("reader0", "reader1", "reader2", "pooled"):
        assert any(line.startswith(name) for line in lines)
    assert "Fleiss' kappa:" in out and "reader0|reader1:" in out and "TOST" in out


def test_confidence_is_optional_and_a_bom_is_accepted(tmp_path):
    rows = random_rows(4)
    path = write_csv(tmp_path / "reads.csv", rows, columns=("reader", "case_id", "call", "truth"), bom=True)
    report = json.loads(run(str(path), "--json")[0])
    assert_reader_block(report["pooled"], rows)


def test_one_reader_gives_null_agreement_with_a_reason(tmp_path):
    rows = [r for r in random_rows(5) if r["reader"] == "reader0"]
    report = json.loads(run(str(write_csv(tmp_path / "reads.csv", rows)), "--json")[0])
    assert report["fleiss_kappa"]["value"] is None
    assert report["fleiss_kappa"]["reason"] == "fewer than two readers"
    assert report["cohen_kappa"] == {}
    text = run(str(tmp_path / "reads.csv"))[0]
    assert "Fleiss' kappa: n/a (fewer than two readers)" in text


BAD = """case_id,truth,call,reader,confidence
c1,real,real,alice,3
c2,fake,real,alice,2
c3,synthetic,synthetic,,4
c4,real,synthetic,bob,7
c5,real,synthetic,bob
c6,synthetic,real,bob,
"""


def test_malformed_rows_are_all_reported_with_line_numbers(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="4 problem"):
        call_command("reader_stats", str(path), "--json", stdout=out, stderr=err)
    assert out.getvalue() == ""
    assert err.getvalue().splitlines() == [
        "line 3: truth must be real or synthetic, got 'fake'",
        "line 4: reader is empty",
        "line 5: confidence must be an integer from 1 to 5, got '7'",
        "line 6: expected 5 fields, got 4",
    ]


@pytest.mark.parametrize(
    "header",
    ["case_id,truth,call", "case_id,truth,call,reader,score", "case_id,truth,call,reader,reader", ""],
)
def test_a_wrong_header_is_line_1(tmp_path, header):
    path = tmp_path / "bad.csv"
    path.write_text(header + "\nc1,real,real,alice\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError):
        call_command("reader_stats", str(path), stdout=out, stderr=err)
    assert out.getvalue() == ""
    assert err.getvalue().startswith("line 1: header must be case_id,truth,call,reader")


def test_line_numbers_count_physical_lines(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        'case_id,truth,call,reader\n"c\n1",real,real,alice\n\nc2,real,nope,bob\n', encoding="utf-8"
    )
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("reader_stats", str(path), stdout=io.StringIO(), stderr=err)
    assert err.getvalue() == "line 5: call must be real or synthetic, got 'nope'\n"


@pytest.mark.parametrize(
    "content", [b"case_id,truth,call,reader\n", b"\xff\xfe not utf-8"], ids=["empty", "binary"]
)
def test_empty_or_undecodable_files_fail(tmp_path, content):
    path = tmp_path / "reads.csv"
    path.write_bytes(content)
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("reader_stats", str(path), stdout=out, stderr=io.StringIO())
    assert out.getvalue() == ""


def manage(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "reader_stats", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_exit_codes_through_manage_py(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD, encoding="utf-8")
    failed = manage(str(bad), "--json")
    assert failed.returncode != 0
    assert failed.stdout == ""
    assert "line 3: truth must be real or synthetic" in failed.stderr
    assert "line 6: expected 5 fields" in failed.stderr

    good = manage(str(write_csv(tmp_path / "good.csv", random_rows(6))), "--json")
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)  # exactly one JSON object
    assert {"pooled", "readers", "fleiss_kappa", "cohen_kappa"} <= set(report)


def test_margin_option(tmp_path):
    path = write_csv(tmp_path / "reads.csv", random_rows(7))
    report = json.loads(run(str(path), "--json", "--margin", "0.2")[0])
    assert report["pooled"]["tost"]["margin"] == 0.2
    with pytest.raises(CommandError, match="margin"):
        run(str(path), "--margin", "0.7")
