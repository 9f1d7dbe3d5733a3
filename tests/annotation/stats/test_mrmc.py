"""The MRMC module against published figures for the Van Dyke et al. (1993) reader study (5 readers, 2 treatments,
114 cases; `tests/data/README.md` says where each figure was published), and its properties.

Published sources: OR-DBM MRMC 2.51's output (RJafroc `inst/Iowa/VanDyke.txt`), which prints 8 decimals; MRMCaov's
JSS article (`docs/jss/MRMCaov.tex`), which prints about 7-10 significant digits for the same jackknife analysis
(fixed-reader section: the components) and for DeLong; RJafroc's sample-size tests (`test-SsSampleSizeRoc.R`).
Every comparison is at a relative 1e-5, except where the source prints fewer digits than that: there it is at the
printed precision (half a unit of the last printed digit), said per line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from annotation.stats.mrmc.analysis import MRMCData, MRMCError, Rating, mrmc_analysis
from annotation.stats.mrmc.power import cases_needed, power

VANDYKE = Path(__file__).resolve().parents[2] / "data" / "vandyke_mrmc.csv"
REL = 1e-5


def vandyke() -> list[Rating]:
    with VANDYKE.open() as fh:
        return [Rating(r["treatment"], r["reader"], r["case"], int(r["truth"]), float(r["rating"]))
                for r in csv.DictReader(fh)]


def close(value, published, *, decimals: int | None = None):
    """Within REL of the published figure, or within half a unit of its last printed decimal if that is looser."""
    tol = max(REL * abs(published), 0.5 * 10.0**-decimals if decimals is not None else 0.0)
    assert value == pytest.approx(published, abs=tol, rel=0), (value, published)


@pytest.fixture(scope="module")
def jack():
    return mrmc_analysis(MRMCData.from_ratings(vandyke()))


@pytest.fixture(scope="module")
def delong():
    return mrmc_analysis(MRMCData.from_ratings(vandyke()), covariance="delong")


def test_reader_aucs_and_means_match_or_dbm(jack):
    published = {"1": [0.91964573, 0.85877617, 0.90386473, 0.97310789, 0.82979066],
                 "2": [0.94782609, 0.90531401, 0.92173913, 0.99935588, 0.92995169]}
    for t, values in published.items():
        for r, value in zip("12345", values, strict=True):
            close(jack["readers"][t][r], value)
    close(jack["treatments"]["1"]["auc"], 0.89703704)
    close(jack["treatments"]["2"]["auc"], 0.94083736)
    close(jack["ms"]["ms_t"], 0.00479617)
    close(jack["ms"]["ms_r"], 0.00383620)
    close(jack["ms"]["ms_tr"], 0.0005510306)  # MRMCaov


def test_jackknife_components_match_mrmcaov_and_or_dbm(jack):
    vc = jack["var_components"]
    # MRMCaov (fixed-reader summary prints the full-precision jackknife components); OR-DBM agrees to 8 decimals
    close(vc["var_r"], 0.0015349993)
    close(vc["var_tr"], 0.0002004025)
    close(vc["var"], 0.0008022883)
    close(vc["cov1"], 0.0003466137)
    close(vc["cov2"], 0.0003440748)
    close(vc["cov3"], 0.0002390284)
    # RJafroc's SsPowerGivenJK example 4A prints them to 11 digits
    close(vc["var_tr"], 0.00020040252)
    close(vc["cov3"], 0.00023902837)


def test_rrrc_jackknife_matches_or_dbm(jack):
    a = jack["rrrc"]
    close(a["error"], 0.00107626)
    close(a["f"], 4.46, decimals=2)  # OR-DBM prints F to 2 decimals
    close(a["ddf"], 15.26, decimals=2)
    close(a["p"], 0.0517, decimals=4)
    d = a["differences"]["1-2"]
    close(d["estimate"], -0.04380032)
    close(d["se"], 0.02075, decimals=5)
    close(d["ci_low"], -0.08796, decimals=5)
    close(d["ci_high"], 0.00036, decimals=5)
    for t, se, df, lo, hi, cov2 in (("1", 0.03317360, 12.74, 0.82522360, 0.96885048, 0.00048396),
                                    ("2", 0.02156637, 12.71, 0.89413783, 0.98753689, 0.00020419)):
        s = jack["treatments"][t]
        close(s["se"], se)
        close(s["df"], df, decimals=2)
        close(s["ci_low"], lo)
        close(s["ci_high"], hi)
        close(s["cov2"], cov2, decimals=8)
    close(jack["treatments"]["1"]["ms_r"], 0.003082629)  # MRMCaov
    close(jack["treatments"]["2"]["ms_r"], 0.001304602)


def test_frrc_matches_mrmcaov(jack):
    a = jack["frrc"]
    close(a["error"], 0.0008758604)
    close(a["chi2"], 5.475953)
    assert a["df"] == 1
    close(a["p"], 0.01927984)
    d = a["differences"]["1-2"]
    close(d["se"], 0.01871748)
    close(d["ci_low"], -0.08048591)
    close(d["ci_high"], -0.00711473)
    for t, var, se, lo, hi in (("1", 0.0010141028, 0.02428971, 0.8494301, 0.9446440),
                               ("2", 0.0005904738, 0.01677632, 0.9079564, 0.9737183)):
        s = jack["treatments"][t]
        close(s["var"], var)
        close(s["fixed_readers"]["se"], se)
        close(s["fixed_readers"]["ci_low"], lo)
        close(s["fixed_readers"]["ci_high"], hi)
    readers = {"1": (-0.02818035, 0.02551213, 0.26933885), "2": (-0.04653784, 0.02630183, 0.07683102),
               "3": (-0.01787440, 0.03120965, 0.56683414), "4": (-0.02624799, 0.01729129, 0.12901715),
               "5": (-0.10016103, 0.04405746, 0.02300099)}
    for r, (est, se, p) in readers.items():
        d = a["readers"][r]["1-2"]
        close(d["estimate"], est)
        close(d["se"], se)
        close(d["p"], p)


def test_rrfc_matches_mrmcaov(jack):
    a = jack["rrfc"]
    close(a["f"], 8.704, decimals=3)  # MRMCaov prints 8.704, OR-DBM 8.70
    assert (a["df1"], a["df"]) == (1, 4)
    close(a["p"], 0.04195875)
    d = a["differences"]["1-2"]
    close(d["se"], 0.01484629)
    close(d["ci_low"], -0.08502022)
    close(d["ci_high"], -0.00258042)
    for t, se, lo, hi in (("1", 0.02482994, 0.8280981, 0.9659760), ("2", 0.01615303, 0.8959894, 0.9856854)):
        s = jack["treatments"][t]["fixed_cases"]
        assert s["df"] == 4
        close(s["se"], se)
        close(s["ci_low"], lo)
        close(s["ci_high"], hi)


def test_delong_matches_mrmcaov(delong):
    vc = delong["var_components"]
    for key, value in (("var_r", 0.0015364254), ("var_tr", 0.0002045840), ("var", 0.0007921325),
                       ("cov1", 0.0003420090), ("cov2", 0.0003395265), ("cov3", 0.0002358497)):
        close(vc[key], value)
    a = delong["rrrc"]
    close(a["error"], 0.001069415)
    close(a["f"], 4.484854)
    close(a["ddf"], 15.06611)
    close(a["p"], 0.05123303)
    d = a["differences"]["1-2"]
    close(d["se"], 0.0206825)
    close(d["ci_low"], -0.0878671960)
    close(d["ci_high"], 0.0002665519)
    for t, cov2, se, df, lo, hi in (("1", 0.0004775239, 0.03307642, 12.59597, 0.8253461, 0.9687280),
                                    ("2", 0.0002015292, 0.02150464, 12.56530, 0.8942155, 0.9874592)):
        s = delong["treatments"][t]
        close(s["cov2"], cov2)
        close(s["se"], se)
        close(s["df"], df)
        close(s["ci_low"], lo)
        close(s["ci_high"], hi)


def test_power_and_cases_needed_match_rjafroc(jack):
    vc = jack["var_components"]
    effect = -0.043800322  # the pilot's observed difference, as RJafroc's tests give it
    close(power(vc, pilot_cases=114, readers=10, cases=165, effect=effect)["rrrc"], 0.80541995)
    close(power(vc, pilot_cases=114, readers=10, cases=131, effect=effect)["frrc"], 0.80091813)
    close(power(vc, pilot_cases=114, readers=10, cases=53, effect=effect)["rrfc"], 0.80496663)
    close(power(vc, pilot_cases=114, readers=6, cases=111, effect=effect)["rrrc"], 0.5526116)
    need = cases_needed(vc, pilot_cases=114, readers=10, effect=effect)
    assert (need["frrc"], need["rrfc"]) == (131, 53)  # RJafroc: the K of its FRRC / RRFC 0.8-power tests
    assert cases_needed(vc, pilot_cases=114, readers=6, effect=effect)["rrrc"] == 251  # SsSampleSizeKGivenJ, J = 6
    for analysis in ("rrrc", "frrc", "rrfc"):
        k = need[analysis]
        assert power(vc, pilot_cases=114, readers=10, cases=k, effect=effect)[analysis] >= 0.8
        assert power(vc, pilot_cases=114, readers=10, cases=k - 1, effect=effect)[analysis] < 0.8


def test_power_grows_with_readers_cases_and_effect(jack):
    vc = jack["var_components"]
    base = power(vc, pilot_cases=114, readers=5, cases=100, effect=0.05)
    for more in (dict(readers=8, cases=100, effect=0.05), dict(readers=5, cases=200, effect=0.05),
                 dict(readers=5, cases=100, effect=0.08)):
        bigger = power(vc, pilot_cases=114, **more)
        assert all(bigger[a] > base[a] for a in ("rrrc", "frrc", "rrfc"))
    assert power(vc, pilot_cases=114, readers=5, cases=100, effect=0.0)["rrrc"] == pytest.approx(0.05)


def test_unreachable_target_is_null_with_reason():
    comp = {"var": 1e-4, "cov1": 5e-5, "cov2": 4e-5, "cov3": 3e-5, "var_tr": 0.01}  # readers disagree a lot
    need = cases_needed(comp, pilot_cases=100, readers=3, effect=0.02)
    assert need["rrrc"] is None and "not reachable with 3 readers" in need["skipped"]["rrrc"]
    assert need["frrc"] is not None  # fixed readers: more cases always help
    assert power(None, pilot_cases=100, readers=3, cases=50, effect=0.1)["skipped"]["rrrc"].startswith("the pilot")


# --- properties -----------------------------------------------------------------------------------------------------


def test_swapping_treatments_flips_every_difference():
    swapped = [Rating({"1": "2", "2": "1"}[r.treatment], r.reader, r.case, r.truth, r.rating) for r in vandyke()]
    swapped.sort(key=lambda r: r.treatment)
    a = mrmc_analysis(MRMCData.from_ratings(vandyke()))
    b = mrmc_analysis(MRMCData.from_ratings(swapped))
    for analysis in ("rrrc", "frrc", "rrfc"):
        da, db = a[analysis]["differences"]["1-2"], b[analysis]["differences"]["1-2"]
        assert db["estimate"] == pytest.approx(-da["estimate"])
        assert db["se"] == pytest.approx(da["se"])
        assert (db["ci_low"], db["ci_high"]) == pytest.approx((-da["ci_high"], -da["ci_low"]))
        assert b[analysis]["p"] == pytest.approx(a[analysis]["p"])


def test_one_reader_gives_random_reader_results_as_null_with_reason():
    a = mrmc_analysis(MRMCData.from_ratings([r for r in vandyke() if r.reader == "1"]))
    assert a["rrrc"] is None and a["rrfc"] is None
    assert "one reader" in a["skipped"]["rrrc"] and "one reader" in a["skipped"]["rrfc"]
    t = a["treatments"]["1"]
    assert t["se"] is None and t["ci_low"] is None and "one reader" in a["skipped"]["treatments.1"]
    assert a["var_components"]["var_r"] is None and a["skipped"]["var_components"]
    close(t["auc"], 0.91964573)
    close(a["frrc"]["differences"]["1-2"]["se"], 0.02551213)  # the reader-1 figure of the 5-reader analysis


def test_single_treatment_has_aucs_and_no_difference():
    a = mrmc_analysis(MRMCData.from_ratings([r for r in vandyke() if r.treatment == "1"]))
    assert a["rrrc"] is None and a["frrc"] is None and "one treatment" in a["skipped"]["differences"]
    close(a["treatments"]["1"]["se"], 0.03317360)  # OR-DBM VanDyke1T.txt: as in the 2-treatment analysis
    assert a["var_components"]["cov1"] is None and a["var_components"]["var_r"] is None
    close(a["var_components"]["cov2"], 0.00048396, decimals=8)


def test_all_ratings_equal_give_auc_half_and_a_reason():
    rows = [Rating(t, r, c, int(c) % 2, 3.0) for t in "AB" for r in "xyz" for c in map(str, range(10))]
    a = mrmc_analysis(MRMCData.from_ratings(rows))
    for t in ("A", "B"):
        assert a["treatments"][t]["auc"] == 0.5
        assert a["treatments"][t]["ci_low"] is None and "no variation" in a["skipped"][f"treatments.{t}"]
    assert a["rrrc"] is None and a["skipped"]["rrrc"]


def test_one_class_missing_is_null_with_reason():
    a = mrmc_analysis(MRMCData.from_ratings([Rating("A", r, str(c), 1, float(c)) for r in "xy" for c in range(5)]))
    assert a["treatments"] == {} and "one class is missing" in a["skipped"]["auc"]


def test_differences_follow_first_appearance_order():
    rng = np.random.default_rng(7)
    rows = [Rating(t, r, str(c), c % 2, float(rng.integers(1, 6) + c % 2)) for t in ("new", "base", "mid")
            for r in "xyz" for c in range(12)]
    a = mrmc_analysis(MRMCData.from_ratings(rows))
    assert list(a["rrrc"]["differences"]) == ["new-base", "new-mid", "base-mid"]
    assert list(a["treatments"]) == ["new", "base", "mid"]


def test_auc_is_the_mann_whitney_statistic_with_ties_half():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 2, 40)
    scores = rng.integers(1, 6, 40).astype(float) + truth
    a = mrmc_analysis(MRMCData.from_ratings([Rating("A", "x", str(i), int(y), s) for i, (y, s) in enumerate(zip(truth, scores, strict=True))]))
    pos, neg = scores[truth == 1], scores[truth == 0]
    expected = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert a["readers"]["A"]["x"] == pytest.approx(expected)


def test_design_problems_are_listed():
    rows = [Rating("A", r, str(c), c % 2, 1.0, line=i + 2) for i, (r, c) in enumerate((r, c) for r in "xy" for c in range(4))]
    rows = rows[:-1] + [Rating("A", "x", "0", 0, 2.0, line=99), Rating("A", "y", "1", 0, 2.0, line=100),
                        Rating("B-2", "x", "0", 0, 2.0, line=101)]
    with pytest.raises(MRMCError) as info:
        MRMCData.from_ratings(rows)
    text = str(info.value)
    assert "line 99: a second rating of case '0' by reader 'x'" in text
    assert "line 100: case '1' has truth 0, but 1 on line" in text
    assert "line 101: treatment name 'B-2' contains '-'" in text
    assert "missing cell: reader 'y' has no rating of case '3' under treatment 'A'" in text
