"""Admin-facing pages: studies and their rounds with live progress, plots across rounds, the round report, a
gallery with provenance, and the admin actions (launch, close labeling, retry, cancel, choose or roll back the
model version). Study admins and superusers only; everything else gets a 404."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db.models import Count
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotation.dashboard.charts import panel_charts, report_charts, study_charts
from annotation.dashboard.guidance import round_next_steps, study_next_steps
from annotation.dashboard.mrmc import round_mrmc_view, study_planner
from annotation.dashboard.selectors import (
    as_rows,
    round_progress,
    round_story,
    study_members,
    study_panel,
    study_prompts_summary,
)
from annotation.models import Image, Round, Study
from annotation.permissions import administered, can_administer, can_create_studies, uses_dashboard
from annotation.rounds.config import RoundConfig
from annotation.rounds.driver import round_advance
from annotation.rounds.report import round_report_rebuild
from annotation.rounds.services import round_cancel, round_close_labeling, round_launch, round_retry
from annotation.rounds.transitions import ACTIVE, IllegalTransition
from annotation.rounds.versions import study_version_choose, study_version_rollback, study_versions
from annotation.stats import plots
from annotation.studies.audit import audit
from inference.models import GeneratedImage, ModelVersion


def _study_for_admin(request: HttpRequest, pk: int) -> Study:
    study = get_object_or_404(Study.objects.select_related("current_version"), pk=pk)
    if not can_administer(request.user, study.pk):
        raise Http404("No such study.")
    return study


def _round_for_admin(request: HttpRequest, pk: int) -> Round:
    rnd = get_object_or_404(Round.objects.select_related("study", "model_version", "produced_version",
                                                         "generation_batch", "reward_run", "finetune_run"), pk=pk)
    if not can_administer(request.user, rnd.study_id):
        raise Http404("No such round.")
    return rnd


@login_required
def round_progress_json(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(round_progress(_round_for_admin(request, pk)))


# --- pages --------------------------------------------------------------------------------------------------------


@login_required
def home(request: HttpRequest) -> HttpResponse:
    if not uses_dashboard(request.user):  # a reader: the dashboard is for study admins, their lists are here
        return redirect(f"{reverse('portal:home')}?from=dashboard")
    can_create = can_create_studies(request.user)
    studies = administered(Study.objects.select_related("current_version").annotate(n_rounds=Count("rounds")),
                           request.user, "pk").order_by("name")
    rows = [(s, Round.objects.filter(study=s).order_by("-number").first()) for s in studies]
    return render(request, "dashboard/home.html", {"rows": rows, "can_create": can_create})


LAUNCH_FIELDS = ("synthetic", "real", "oversample", "selection", "objective", "promote", "auto_next")


def _launch_config(post) -> dict:
    config: dict = {}
    for name in ("synthetic", "real"):
        if post.get(name, "").strip():
            try:
                config[name] = int(post[name])
            except ValueError:
                raise ValidationError(f"{name} must be a whole number.") from None
    if post.get("oversample", "").strip():
        try:
            config["oversample"] = float(post["oversample"])
        except ValueError:
            raise ValidationError("oversample must be a number.") from None
    for name in ("selection", "objective", "promote"):
        if post.get(name):
            config[name] = post[name]
    config["auto_next"] = post.get("auto_next") == "on"
    compare = [name for name in post.getlist("compare") if name.strip()]
    if compare:  # a comparison round: the chosen versions sample the same prompts and seeds
        config["compare"] = compare
    if post.get("advanced", "").strip():
        try:
            extra = json.loads(post["advanced"])
        except ValueError as exc:
            raise ValidationError(f"Advanced settings are not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise ValidationError("Advanced settings must be a JSON object.")
        config.update(extra)
    return config


@login_required
def study_page(request: HttpRequest, pk: int, *, error: str = "", status: int = 200,
               invitation_link: str = "") -> HttpResponse:
    study = _study_for_admin(request, pk)
    all_rounds = list(Round.objects.filter(study=study).select_related("model_version", "produced_version")
                      .order_by("-number"))
    active = next((r for r in all_rounds if r.status in ACTIVE), None)
    panel = study_panel(study)
    charts, missing = panel_charts(panel)
    planner = study_planner(study, request.GET)
    people = study_members(study)
    if planner["error"]:
        status = 400
    return render(request, "dashboard/study.html", {
        "study": study, "rounds": all_rounds, "charts": study_charts(study), "error": error,
        "panel": panel, "panel_charts": charts, "panel_missing": missing,
        "versions": study_versions(study) if study.current_version_id else [],
        "active": active, "active_progress": round_progress(_round_for_admin(request, active.pk)) if active else None,
        "config": RoundConfig.from_dict(study.round_defaults or {}), "planner": planner,
        "prompts": study_prompts_summary(study),
        "imports": study.import_jobs.order_by("-pk")[:5],
        "pool": Image.objects.filter(study=study, source="real", round__isnull=True, is_catch=False).count(),
        "people": people, "invitation_link": invitation_link,
        "next_steps": study_next_steps(
            study, rounds=all_rounds, images=Image.objects.filter(study=study, source="real").count(),
            readers=sum(1 for m in people["members"] if m["member"].role == "reader" and not m["member"].deactivated_at)
            + people["simulated"]),
    }, status=status)


@login_required
@require_POST
def study_launch(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study_for_admin(request, pk)
    try:
        rnd = round_launch(study=study, actor=request.user, config=_launch_config(request.POST))
    except ValidationError as exc:
        return study_page(request, pk, error=" ".join(exc.messages), status=400)
    return redirect("dashboard:round", pk=rnd.pk)


@login_required
@require_POST
def study_version(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study_for_admin(request, pk)
    try:
        if request.POST.get("rollback"):
            study_version_rollback(study=study, actor=request.user)
        else:
            raw = (request.POST.get("version") or "").strip()
            version = ModelVersion.objects.filter(pk=int(raw)).first() if raw.isdigit() and len(raw) < 19 else None
            if version is None:
                raise ValidationError("Choose a model version.")
            study_version_choose(study=study, version=version, actor=request.user)
    except ValidationError as exc:
        return study_page(request, pk, error=" ".join(exc.messages), status=400)
    return redirect("dashboard:study", pk=study.pk)


def _panel_record(rnd: Round) -> dict:
    """What `_panel_record.html` shows: the round's panel record, its promotion decision, or why there is none."""
    metrics = rnd.metrics or {}
    panel = metrics.get("panel")
    if panel:  # the comparison's keys are absent when it was skipped: the template tests them against None
        panel = {**dict.fromkeys(("p_value", "effect_size", "preference_gain", "fooling_rate_gain",
                                  "fooling_rate_p_value", "promotion_p_value")), "skipped": {}, **panel}
    return {"panel": panel, "promotion": metrics.get("promotion"),
            "panel_skipped": (metrics.get("skipped") or {}).get("panel")}


@login_required
def round_page(request: HttpRequest, pk: int, *, error: str = "", status: int = 200) -> HttpResponse:
    rnd = _round_for_admin(request, pk)
    charts = []
    if rnd.reward_run and rnd.reward_run.loss_curve:
        charts.append(plots.lines({"reward model": [tuple(p) for p in rnd.reward_run.loss_curve]},
                                  title="Reward model training loss"))
    if rnd.finetune_run and rnd.finetune_run.loss_curve:
        charts.append(plots.lines({"finetune": [tuple(p) for p in rnd.finetune_run.loss_curve]},
                                  title="Finetune loss per step"))
    progress = round_progress(rnd)
    return render(request, "dashboard/round.html", {
        "round": rnd, "study": rnd.study, "progress": progress, "charts": charts, "error": error,
        "next_steps": round_next_steps(rnd, progress),
        **_panel_record(rnd),
        "metrics_json": json.dumps({k: v for k, v in (rnd.metrics or {}).items() if k != "report"}, indent=2,
                                   default=str),
        "metrics_rows": as_rows({k: v for k, v in (rnd.metrics or {}).items() if k not in ("report", "panel")}),
        "config_rows": as_rows(rnd.config), "story": round_story(rnd),
        "selection": rnd.selection, "config_json": json.dumps(rnd.config, indent=2),
        "stages": ["generating", "cleaning", "labeling", "training_reward", "finetuning", "evaluating", "done"],
    }, status=status)


@login_required
@require_POST
def round_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    rnd = _round_for_admin(request, pk)
    act = {"close": round_close_labeling, "retry": round_retry, "cancel": round_cancel,
           "advance": lambda round, actor: round_advance(round=round)}.get(action)
    if act is None:
        raise Http404("No such action.")
    try:
        act(round=rnd, actor=request.user)
    except ValidationError as exc:  # IllegalTransition included
        return round_page(request, pk, error=" ".join(exc.messages), status=409 if isinstance(
            exc, IllegalTransition) else 400)
    return redirect("dashboard:round", pk=rnd.pk)


# --- gallery ------------------------------------------------------------------------------------------------------


@login_required
def round_gallery(request: HttpRequest, pk: int) -> HttpResponse:
    rnd = _round_for_admin(request, pk)
    images = list(Image.objects.filter(round=rnd).select_related("cleaned_from", "model_version").order_by(
        "source", "pk"))
    chosen = set((rnd.selection or {}).get("chosen", []))
    left_out = []
    if rnd.generation_batch_id:
        left_out = list(GeneratedImage.objects.filter(batch_id=rnd.generation_batch_id)
                        .exclude(index__in=chosen).order_by("index")[:200])
    audit(actor=request.user, action="gallery.view", study=rnd.study, obj=rnd)
    return render(request, "dashboard/gallery.html", {"round": rnd, "study": rnd.study, "images": images,
                                                      "left_out": left_out})


@login_required
def image_file(request: HttpRequest, pk: int, which: str) -> FileResponse:
    """An image's stored files for admins: the cleaned full image, the raw one before cleaning, the mask."""
    image = get_object_or_404(Image.objects.select_related("cleaned_from"), pk=pk)
    if not can_administer(request.user, image.study_id):
        raise Http404("No such image.")
    key = {"full": image.storage_key, "display": image.display_key, "mask": image.mask_key,
           "raw": image.cleaned_from.storage_key if image.cleaned_from_id else image.storage_key}.get(which)
    if not key:
        raise Http404("No such file.")
    return FileResponse(default_storage.open(key, "rb"), content_type="image/png")


@login_required
def generated_file(request: HttpRequest, pk: int) -> FileResponse:
    item = get_object_or_404(GeneratedImage, pk=pk)
    rnd = Round.objects.filter(generation_batch_id=item.batch_id).first()
    if rnd is None or not can_administer(request.user, rnd.study_id):
        raise Http404("No such image.")
    return FileResponse(default_storage.open(item.raw_key, "rb"), content_type="image/png")


@login_required
def round_report(request: HttpRequest, pk: int) -> HttpResponse:
    rnd = _round_for_admin(request, pk)
    report = (rnd.metrics or {}).get("report")
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
        "printable": request.GET.get("print") == "1", "mrmc": round_mrmc_view(rnd), **_panel_record(rnd),
    })


@login_required
@require_POST
def round_report_refresh(request: HttpRequest, pk: int) -> HttpResponse:
    rnd = _round_for_admin(request, pk)
    round_report_rebuild(round=rnd, actor=request.user)
    return redirect(reverse("dashboard:round-report", kwargs={"pk": rnd.pk}))
