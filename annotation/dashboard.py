"""Admin-facing pages: the round report (plots, JSON download, printable). Study admins and superusers only."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from . import plots
from .models import Role, Round, StudyMembership
from .services import audit


def _round_for_admin(request: HttpRequest, pk: int) -> Round:
    rnd = get_object_or_404(Round.objects.select_related("study"), pk=pk)
    if not request.user.is_superuser and not StudyMembership.objects.filter(
        study_id=rnd.study_id, user=request.user, role=Role.ADMIN
    ).exists():
        raise Http404("No such round.")
    return rnd


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


@login_required
def round_report(request: HttpRequest, pk: int) -> HttpResponse:
    rnd = _round_for_admin(request, pk)
    report = rnd.metrics.get("report")
    if request.GET.get("format") == "json":
        if report is None:
            return JsonResponse({"error": "No report computed for this round yet."}, status=404)
        audit(actor=request.user, action="report.export", study=rnd.study, obj=rnd, format="json")
        response = JsonResponse(report, json_dumps_params={"indent": 2})
        response["Content-Disposition"] = f'attachment; filename="{rnd.study.name}-round-{rnd.number}-report.json"'
        return response
    return render(request, "dashboard/round_report.html", {
        "round": rnd, "study": rnd.study, "report": report, "charts": report_charts(report) if report else [],
        "report_json": json.dumps(report, indent=2) if report else "",
        "printable": request.GET.get("print") == "1",
    })


@login_required
@require_POST
def round_report_refresh(request: HttpRequest, pk: int) -> HttpResponse:
    from .tasks import round_report_build

    rnd = _round_for_admin(request, pk)
    transaction.on_commit(lambda: round_report_build.delay(round_pk=rnd.pk))
    audit(actor=request.user, action="report.refresh", study=rnd.study, obj=rnd)
    return redirect("dashboard:round-report", pk=rnd.pk)
