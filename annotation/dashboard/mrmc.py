"""What the dashboard shows of the MRMC analysis: a round's readers-in-general table (`round_mrmc_view`), the MRMC
AUC across rounds (`study_mrmc_series`) and the planner on the study page (`study_planner`: power and cases needed
from the latest round whose analysis has the variance components, Hillis 2011 via `annotation.stats.mrmc.power`)."""

from __future__ import annotations

import math
from typing import Any

from annotation.models import Round, RoundStatus, Study
from annotation.stats.mrmc.power import DEFAULT_TARGET, cases_needed, power

ANALYSIS_LABELS = (("rrrc", "readers and cases random (generalises to both)"),
                   ("frrc", "readers fixed, cases random (these readers)"),
                   ("rrfc", "readers random, cases fixed (these cases)"))
PLAN_DEFAULTS = {"readers": 5, "cases": 100, "effect": 0.05, "target": DEFAULT_TARGET}
MAX_PLAN_READERS = 1000
MAX_PLAN_CASES = 100_000


def _mrmc(rnd: Round) -> dict:
    return (((rnd.metrics or {}).get("report") or {}).get("mrmc")) or {}


def _order(mrmc: dict, compare: list[str]) -> list[tuple[str, str]]:
    """(treatment, version) in the admin's compare order (the stored JSON keeps no key order), else by name."""
    versions = mrmc.get("versions") or {}
    rank = {name: i for i, name in enumerate(compare)}
    return sorted(versions.items(), key=lambda tv: (rank.get(tv[1], len(rank)), tv[1]))


def round_mrmc_view(rnd: Round) -> dict[str, Any] | None:
    """The round report's MRMC section: None before a report exists; else {"reason"} or {"n", "treatments": rows in
    compare order, "readers": [(reader, [AUC per treatment])], "differences": rows of the RRRC test, "rrrc",
    "skipped"}."""
    mrmc = _mrmc(rnd)
    if not mrmc:
        return None
    value = mrmc.get("value")
    if value is None:
        return {"reason": mrmc.get("reason") or "no analysis"}
    order = _order(mrmc, list((rnd.config or {}).get("compare") or []))
    treatments = [{"treatment": t, "version": v, **(value["treatments"].get(t) or {})} for t, v in order]
    readers = sorted({name for per in value["readers"].values() for name in per})
    differences = []
    rrrc = value.get("rrrc") or {}
    for (a, va), (b, vb) in ((order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))):
        diff = (rrrc.get("differences") or {}).get(f"{a}-{b}")
        flipped = False
        if diff is None and (rrrc.get("differences") or {}).get(f"{b}-{a}"):
            diff, flipped = rrrc["differences"][f"{b}-{a}"], True
        if diff:
            sign = -1 if flipped else 1
            low, high = sorted((sign * diff["ci_low"], sign * diff["ci_high"]))
            differences.append({"label": f"{va} − {vb}", "estimate": sign * diff["estimate"], "ci_low": low,
                                "ci_high": high, "p": diff["p"], "df": diff.get("df")})
    return {
        "reason": None, "n": value["n"], "covariance": value.get("covariance"), "treatments": treatments,
        "readers": [(name, [value["readers"].get(t, {}).get(name) for t, _ in order]) for name in readers],
        "differences": differences, "rrrc": rrrc or None, "skipped": value.get("skipped") or {},
        "few": value["n"]["readers"] < 3 or min(value["n"]["positive"], value["n"]["negative"]) < 10,
    }


def study_mrmc_series(rounds: list[Round]) -> dict[str, list[tuple]]:
    """Per round, each treatment's MRMC AUC with its readers-and-cases 95% CI: the series "sampled version" for an
    ordinary round, one series per version in comparison rounds."""
    series: dict[str, list[tuple]] = {"sampled version": []}
    for rnd in rounds:
        mrmc = _mrmc(rnd)
        value = mrmc.get("value") or {}
        compare = list((rnd.config or {}).get("compare") or [])
        for treatment, version in _order(mrmc, compare):
            stat = (value.get("treatments") or {}).get(treatment) or {}
            key = version if compare else "sampled version"
            series.setdefault(key, []).append((rnd.number, stat.get("auc"), stat.get("ci_low"), stat.get("ci_high")))
    return {name: points for name, points in series.items() if points}


def _pilot(study: Study) -> Round | None:
    """The latest finished round whose analysis has Var, Cov1-3 and VarTR (two treatments, two readers or more)."""
    for rnd in Round.objects.filter(study=study, status=RoundStatus.DONE).order_by("-number"):
        comp = (_mrmc(rnd).get("value") or {}).get("var_components") or {}
        if comp.get("var_tr") is not None:
            return rnd
    return None


def _number(params, name: str, kind, low, high) -> Any:
    raw = (params.get(name) or "").strip()
    if not raw:
        return PLAN_DEFAULTS[name]
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a {'whole number' if kind is int else 'number'}, got {raw!r}.") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must lie between {low} and {high}, got {raw}.")
    return value


def study_planner(study: Study, params) -> dict[str, Any]:
    """The sizing of a two-version comparison from the study's pilot: {"inputs", "error", "pilot": round or None,
    "reason", "power": at the inputs' readers and cases, "needed": cases for the target power, "rows": both per
    analysis for the table}."""
    out: dict[str, Any] = {"inputs": dict(PLAN_DEFAULTS), "error": "", "pilot": None, "reason": None,
                           "power": None, "needed": None}
    try:
        out["inputs"] = {
            "readers": _number(params, "readers", int, 2, MAX_PLAN_READERS),
            "cases": _number(params, "cases", int, 2, MAX_PLAN_CASES),
            "effect": _number(params, "effect", float, -0.5, 0.5),
            "target": _number(params, "target", float, 0.05, 0.999),
        }
    except ValueError as exc:
        out["error"] = str(exc)
        out["inputs"] = {name: params.get(name, default) for name, default in PLAN_DEFAULTS.items()}
        return out
    pilot = _pilot(study)
    if pilot is None:
        out["reason"] = ("No pilot yet: the planner needs a finished comparison round (two versions, two or more "
                         "readers, every reader reading every case) for the variance components.")
        return out
    value = _mrmc(pilot)["value"]
    comp, pilot_cases = value["var_components"], value["n"]["cases"]
    inputs = out["inputs"]
    out.update(pilot=pilot, pilot_n=value["n"],
               power=power(comp, pilot_cases=pilot_cases, readers=inputs["readers"], cases=inputs["cases"],
                           effect=inputs["effect"]),
               needed=cases_needed(comp, pilot_cases=pilot_cases, readers=inputs["readers"], effect=inputs["effect"],
                                   target=inputs["target"]))
    out["rows"] = [{"label": label, "power": out["power"][key], "power_why": out["power"]["skipped"].get(key),
                    "cases": out["needed"][key], "cases_why": out["needed"]["skipped"].get(key)}
                   for key, label in ANALYSIS_LABELS]
    return out
