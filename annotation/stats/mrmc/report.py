"""The one MRMC report both ``reader_stats --mrmc`` and the round reports print (the OR analysis with power and
cases needed), and its text table. No Django here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from annotation.stats.mrmc.analysis import MRMCData, Rating, mrmc_analysis
from annotation.stats.mrmc.power import DEFAULT_TARGET, cases_needed, power
from annotation.stats.reads import ALPHA, DEFAULT_MARGIN


def mrmc_report(
    ratings: Iterable[Rating], *, covariance: str = "jackknife", margin: float = DEFAULT_MARGIN, alpha: float = ALPHA,
    effect: float | None = None, readers: int | None = None, cases: int | None = None,
    target_power: float = DEFAULT_TARGET,
) -> dict[str, Any]:
    """The OR analysis of these ratings, plus power and cases needed when ``effect`` is given (readers and cases
    default to the pilot's). Raises MRMCError when the ratings are not a fully crossed design."""
    data = MRMCData.from_ratings(ratings)
    report = mrmc_analysis(data, covariance=covariance, alpha=alpha, margin=margin)
    if effect is not None:
        j = readers or len(data.readers)
        k = cases or len(data.cases)
        comp = report["var_components"]
        pw = power(comp, pilot_cases=len(data.cases), readers=j, cases=k, effect=effect, alpha=alpha)
        need = cases_needed(comp, pilot_cases=len(data.cases), readers=j, effect=effect, target=target_power, alpha=alpha)
        report["power"] = {a: pw[a] for a in ("rrrc", "frrc", "rrfc")}
        report["cases_needed"] = {a: need[a] for a in ("rrrc", "frrc", "rrfc")}
        report["planning"] = {"effect": effect, "readers": j, "cases": k, "target_power": target_power,
                              "power_at_cases_needed": need["power"]}
        report["skipped"].update({f"power.{a}": why for a, why in pw["skipped"].items()})
        report["skipped"].update({f"cases_needed.{a}": why for a, why in need["skipped"].items()})
    return report


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def format_mrmc(report: dict[str, Any]) -> str:
    """The report as plain text: per treatment, the three analyses' tests and differences, planning, skipped."""
    n = report["n"]
    lines = [
        f"MRMC analysis (Obuchowski-Rockette, {report['covariance']} covariance): {n['treatments']} treatment(s), "
        f"{n['readers']} reader(s), {n['cases']} cases ({n['positive']} with truth 1, {n['negative']} with truth 0). "
        "AUC: empirical (ties 1/2); 95% CIs; p two-sided.",
        "",
        f"{'treatment':<14} {'AUC':>7} {'SE':>7} {'df':>6}  {'95% CI (readers and cases)':<22} {'p vs 0.5':>9}",
    ]
    for name, t in report["treatments"].items():
        ci = "n/a" if t["ci_low"] is None else f"[{t['ci_low']:.4f}, {t['ci_high']:.4f}]"
        lines.append(f"{name:<14} {t['auc']:>7.4f} {_num(t['se']):>7} {_num(t['df'], '.2f'):>6}  {ci:<22} "
                     f"{_num(t['p_vs_chance'], '.3g'):>9}")
    vc = report["var_components"]
    if vc:
        lines += ["", "OR components: " + ", ".join(f"{k} {_num(v, '.3g')}" for k, v in vc.items())]
    for key, label, stat in (("rrrc", "Random readers, random cases", "F"), ("frrc", "Fixed readers, random cases", "X2"),
                             ("rrfc", "Random readers, fixed cases", "F")):
        a = report[key]
        if a is None:
            continue
        value = a["f"] if stat == "F" else a["chi2"]
        df = f"{a['df1']}, {a['ddf']:.2f}" if key == "rrrc" else str(a["df"]) if key == "frrc" else f"{a['df1']}, {a['df']}"
        lines += ["", f"{label}: {stat}({df}) = {value:.4f}, p = {a['p']:.4g}"]
        lines += [f"  {pair}: {d['estimate']:+.4f} (SE {d['se']:.4f}) [{d['ci_low']:.4f}, {d['ci_high']:.4f}]"
                  for pair, d in a["differences"].items()]
    if "power" in report:
        p = report["planning"]
        lines += ["", f"Planning (effect {p['effect']}, {p['readers']} readers, {p['cases']} cases, "
                      f"target power {p['target_power']}):"]
        lines += [f"  {a}: power {_num(report['power'][a], '.3f')}, cases needed {report['cases_needed'][a] or 'n/a'}"
                  for a in ("rrrc", "frrc", "rrfc")]
    if report["skipped"]:
        lines += ["", "Not computed:", *(f"  {k}: {v}" for k, v in report["skipped"].items())]
    return "\n".join(lines)
