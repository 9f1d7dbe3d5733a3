"""Admin-facing pages: studies and their rounds with live progress, plots across rounds, the round report, a
gallery with provenance, and the admin actions (launch, close labeling, retry, cancel, choose or roll back the
model version). Study admins and superusers only; everything else gets a 404."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from inference.models import GeneratedImage, ModelVersion

from annotation import plots, rounds
from annotation.models import Image, ReaderQueue, ReadingCase, Role, Round, RoundStatus, Study, StudyMembership
from annotation.services import IllegalTransition, audit


def _admin_study_ids(user) -> set[int] | None:
    """None: every study (superuser)."""
    if user.is_superuser:
        return None
    return set(StudyMembership.objects.filter(user=user, role=Role.ADMIN).values_list("study_id", flat=True))


def _study_for_admin(request: HttpRequest, pk: int) -> Study:
    study = get_object_or_404(Study.objects.select_related("current_version"), pk=pk)
    allowed = _admin_study_ids(request.user)
    if allowed is not None and study.pk not in allowed:
        raise Http404("No such study.")
    return study


def _round_for_admin(request: HttpRequest, pk: int) -> Round:
    rnd = get_object_or_404(Round.objects.select_related("study", "model_version", "produced_version",
                                                         "generation_batch", "reward_run", "finetune_run"), pk=pk)
    allowed = _admin_study_ids(request.user)
    if allowed is not None and rnd.study_id not in allowed:
        raise Http404("No such round.")
    return rnd


# --- progress ---------------------------------------------------------------------------------------------------


def _run_progress(run) -> dict | None:
    if run is None:
        return None
    curve = run.loss_curve or []
    return {"run": run.pk, "status": run.status, "step": (run.progress or {}).get("step", 0),
            "total": (run.progress or {}).get("total") or run.config.get("steps"),
            "loss": curve[-1][1] if curve else None, "error": run.error_message or None}


def round_progress(rnd: Round, *, names: bool = True) -> dict:
    """Everything the progress bars show, from the rows (no stage keeps state elsewhere)."""
    batch = rnd.generation_batch
    readers = []
    if rnd.labeling_opened_at:
        members = {m.user_id: m for m in StudyMembership.objects.filter(study_id=rnd.study_id, role=Role.READER)}
        for q in ReaderQueue.objects.filter(round=rnd).select_related("reader").order_by("pk"):
            member = members.get(q.reader_id)  # one query for all readers: this endpoint is polled every 2 s
            readers.append({"reader": q.reader.get_username() if names else (member.pseudonym if member else "?"),
                            "answered": q.done_count, "simulated": bool(member and member.is_simulated)})
    progress = rnd.progress or {}
    return {
        "round": rnd.number, "pk": rnd.pk, "status": rnd.status, "failed_stage": rnd.failed_stage or None,
        "error": rnd.stage_error or None,
        "generation": None if batch is None else {"done": (batch.progress or {}).get("generated", 0),
                                                  "total": batch.count, "status": batch.status},
        "cleaning": {"done": progress.get("cleaned", 0), "total": progress.get("to_clean", 0)},
        "labeling": {**rounds.labeling_share(rnd), "readers": readers,
                     "cases": ReadingCase.objects.filter(round=rnd, is_catch=False).count()}
        if rnd.labeling_opened_at else None,
        "reward": _run_progress(rnd.reward_run),
        "finetune": _run_progress(rnd.finetune_run),
        "heartbeat_at": rnd.heartbeat_at.isoformat() if rnd.heartbeat_at else None,
        "promotion": (rnd.metrics or {}).get("promotion"),
    }


@login_required
def round_progress_json(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(round_progress(_round_for_admin(request, pk)))


# --- plots across rounds -----------------------------------------------------------------------------------------


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
        auroc.append((rnd.number, m.get("reward_auroc"), None, None))
        fid.append((rnd.number, m.get("fid"), None, None))
        pref.append((rnd.number, m.get("simulated_preference_score"), None, None))
    charts = [plots.points_with_ci({"reader accuracy": accuracy, "fooling rate": fooling},
                                   title="Readers per round: accuracy and fooling rate, Wilson 95% CI",
                                   reference=0.5)]
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


# --- pages --------------------------------------------------------------------------------------------------------


@login_required
def home(request: HttpRequest) -> HttpResponse:
    allowed = _admin_study_ids(request.user)
    studies = Study.objects.select_related("current_version").annotate(n_rounds=Count("rounds")).order_by("name")
    if allowed is not None:
        studies = studies.filter(pk__in=allowed)
    rows = [(s, Round.objects.filter(study=s).order_by("-number").first()) for s in studies]
    return render(request, "dashboard/home.html", {"rows": rows})


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
def study_page(request: HttpRequest, pk: int, *, error: str = "", status: int = 200) -> HttpResponse:
    study = _study_for_admin(request, pk)
    all_rounds = list(Round.objects.filter(study=study).select_related("model_version", "produced_version")
                      .order_by("-number"))
    active = next((r for r in all_rounds if r.status in rounds.ACTIVE), None)
    return render(request, "dashboard/study.html", {
        "study": study, "rounds": all_rounds, "charts": study_charts(study), "error": error,
        "versions": rounds.study_versions(study) if study.current_version_id else [],
        "active": active, "active_progress": round_progress(_round_for_admin(request, active.pk)) if active else None,
        "config": rounds.RoundConfig.from_dict(study.round_defaults or {}),
    }, status=status)


@login_required
@require_POST
def study_launch(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study_for_admin(request, pk)
    try:
        rnd = rounds.round_launch(study=study, actor=request.user, config=_launch_config(request.POST))
    except ValidationError as exc:
        return study_page(request, pk, error=" ".join(exc.messages), status=400)
    return redirect("dashboard:round", pk=rnd.pk)


@login_required
@require_POST
def study_version(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study_for_admin(request, pk)
    try:
        if request.POST.get("rollback"):
            rounds.study_version_rollback(study=study, actor=request.user)
        else:
            raw = (request.POST.get("version") or "").strip()
            version = ModelVersion.objects.filter(pk=int(raw)).first() if raw.isdigit() and len(raw) < 19 else None
            if version is None:
                raise ValidationError("Choose a model version.")
            rounds.study_version_choose(study=study, version=version, actor=request.user)
    except ValidationError as exc:
        return study_page(request, pk, error=" ".join(exc.messages), status=400)
    return redirect("dashboard:study", pk=study.pk)


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
    return render(request, "dashboard/round.html", {
        "round": rnd, "study": rnd.study, "progress": round_progress(rnd), "charts": charts, "error": error,
        "metrics_json": json.dumps({k: v for k, v in (rnd.metrics or {}).items() if k != "report"}, indent=2,
                                   default=str),
        "selection": rnd.selection, "config_json": json.dumps(rnd.config, indent=2),
        "stages": ["generating", "cleaning", "labeling", "training_reward", "finetuning", "evaluating", "done"],
    }, status=status)


@login_required
@require_POST
def round_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    rnd = _round_for_admin(request, pk)
    act = {"close": rounds.round_close_labeling, "retry": rounds.round_retry, "cancel": rounds.round_cancel,
           "advance": lambda round, actor: rounds.round_advance(round=round)}.get(action)
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
    allowed = _admin_study_ids(request.user)
    if allowed is not None and image.study_id not in allowed:
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
    allowed = _admin_study_ids(request.user)
    if rnd is None or (allowed is not None and rnd.study_id not in allowed):
        raise Http404("No such image.")
    return FileResponse(default_storage.open(item.raw_key, "rb"), content_type="image/png")


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
    from annotation.tasks import round_report_build

    rnd = _round_for_admin(request, pk)
    transaction.on_commit(lambda: round_report_build.delay(round_pk=rnd.pk))
    audit(actor=request.user, action="report.refresh", study=rnd.study, obj=rnd)
    return redirect(reverse("dashboard:round-report", kwargs={"pk": rnd.pk}))
