"""The dashboard's charts (inline SVG): a study across rounds, and a round's report."""

from __future__ import annotations

from annotation.dashboard.mrmc import study_mrmc_series
from annotation.models import Round, RoundStatus, Study
from annotation.stats import plots


def _stat(stat) -> tuple:
    stat = stat if isinstance(stat, dict) else {}
    return stat.get("value"), stat.get("ci_low"), stat.get("ci_high")


def study_charts(study: Study) -> list[str]:
    done = list(Round.objects.filter(study=study).exclude(status=RoundStatus.DRAFT)
                .select_related("model_version", "finetune_run").order_by("number"))
    accuracy, fooling, auroc, fid, pref = [], [], [], [], []
    for rnd in done:
        m = rnd.metrics or {}
        report = m.get("report") or {}
        reader = report.get("reader") or {}
        accuracy.append((rnd.number, *_stat((reader.get("pooled") or {}).get("accuracy"))))
        rates = reader.get("fooling_rate") or {}
        version = rnd.model_version.name if rnd.model_version else None
        rate = rates.get(version) or (next(iter(rates.values())) if rates else None)
        fooling.append((rnd.number, *_stat(rate)))
        skipped = m.get("skipped") or {}  # why a figure is missing, said at its round on the chart as in the table
        auroc.append((rnd.number, m.get("reward_auroc"), None, None, skipped.get("reward_auroc")))
        fid.append((rnd.number, m.get("fid"), None, None))
        pref.append((rnd.number, m.get("simulated_preference_score"), None, None,
                     skipped.get("simulated_preference_score")))
    charts = [plots.points_with_ci({"reader accuracy": accuracy, "fooling rate": fooling},
                                   title="Readers per round: accuracy and fooling rate, Wilson 95% CI",
                                   reference=0.5)]
    mrmc = study_mrmc_series(done)
    if mrmc:
        charts.append(plots.points_with_ci(mrmc, reference=0.5, title="Readers in general: MRMC AUC per round "
                                           "(synthetic vs real), 95% CI with readers and cases random"))
    charts.append(plots.points_with_ci({"reward AUROC": auroc, "simulated preference": pref},
                                       title="Reward model AUROC (held out) and simulated preference per round"))
    fids = [v for _, v, _, _ in fid if v is not None]
    if fids:
        charts.append(plots.points_with_ci({"FID": fid}, title="FID per round (InceptionV3)",
                                           y_max=max(fids) * 1.1))
    scores: dict[str, dict[int, int]] = {}
    for rnd in done:
        counts = ((rnd.metrics or {}).get("report") or {}).get("rubric_scores") or {}
        merged: dict[int, int] = {}
        for per_value in counts.values():
            for value, n in per_value.items():
                merged[int(value)] = merged.get(int(value), 0) + n
        if merged:
            scores[f"round {rnd.number}"] = merged
    if scores:
        values = sorted({v for c in scores.values() for v in c})
        charts.append(plots.grouped_histogram(scores, title="Rubric scores per round (all criteria)",
                                              values=values))
    curves = {f"round {r.number}": [tuple(p) for p in r.finetune_run.loss_curve]
              for r in done if r.finetune_run and r.finetune_run.loss_curve}
    if curves:
        charts.append(plots.lines(curves, title="Finetune loss per step"))
    return charts


# --- the round report (issue 4) -----------------------------------------------------------------------------------


def _stat_row(label: str, stat: dict | None) -> tuple:
    stat = stat or {}
    return (label, stat.get("value"), stat.get("ci_low"), stat.get("ci_high"))


def report_charts(report: dict) -> list[str]:
    reader = report.get("reader") or {}
    pooled = reader.get("pooled") or {}
    charts = [plots.bars_with_ci(
        [_stat_row(name, pooled.get(name)) for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv")],
        title="Pooled reads, Wilson 95% CI (0.5 = chance)")]
    readers = reader.get("readers") or {}
    if readers:
        charts.append(plots.bars_with_ci([_stat_row(name, r.get("accuracy")) for name, r in readers.items()],
                                         title="Accuracy per reader"))
    fooling = reader.get("fooling_rate") or {}
    if fooling:
        charts.append(plots.bars_with_ci([_stat_row(name, s) for name, s in fooling.items()],
                                         title="Fooling rate per model version (synthetic called real)",
                                         reference=None))
    scores = report.get("rubric_scores") or {}
    if scores:
        values = sorted({int(v) for counts in scores.values() for v in counts})
        charts.append(plots.grouped_histogram(
            {name: {int(k): n for k, n in counts.items()} for name, counts in scores.items()},
            title="Rubric score distribution", values=values))
    return charts


# --- the study's evaluation panel ---------------------------------------------------------------------------------

PANEL_CHARTS = (("preference", "Simulated preference", (0.0, 1.0), None),
                ("fooling_rate", "Fooling rate (simulated readers)", (0.0, 1.0), 0.5),
                ("realism", "Realism function", (0.0, 1.0), None),
                ("reward", "Reward", None, None))


def panel_charts(panel: dict) -> tuple[list[str], dict[str, str]]:
    """One chart per panel score (a point per version in creation order, bootstrap 95% CI, the current version
    ringed), and for each score no version has, why (`study_panel` output in, (charts, {title: reason}) out)."""
    versions = panel.get("versions") or []
    marked = next((i for i, v in enumerate(versions) if v["current"]), None)
    charts, missing = [], {}
    for key, title, y_range, reference in PANEL_CHARTS:
        if key == "reward":
            title = f"Reward (latest reward model, run {panel['reward_run']})" if panel.get("reward_run") else title
        if not versions or all(v.get(key) is None for v in versions):
            missing[title] = versions[0]["missing"][key] if versions else "no version was scored on the panel yet"
            continue
        points = [(_short(v["version"]), *((v[key]["mean"], v[key]["ci_low"], v[key]["ci_high"], v[key]["n"])
                                   if v.get(key) else (None, None, None, 0))) for v in versions]
        charts.append(plots.line_with_ci(points, title=f"{title}, 95% CI", marked=marked, y_range=y_range,
                                         reference=reference))
    return charts, missing


def _short(name: str) -> str:
    """A lineage name's last step ("base+domain1+finetune7" → "finetune7"), for an axis label."""
    return name.rsplit("+", 1)[-1][:18]
