"""Reads for the dashboard: a round's progress as its bars show it, from the rows (no stage keeps state elsewhere)."""

from __future__ import annotations

from annotation.models import (
    Image,
    Invitation,
    PracticeAnswer,
    ReaderQueue,
    ReadingCase,
    ReadingTask,
    Role,
    Round,
    Source,
    StudyMembership,
    TaskStatus,
)
from annotation.rounds.messages import round_batches
from annotation.rounds.panel import panel_versions
from annotation.rounds.services import labeling_share


def _run_progress(run) -> dict | None:
    if run is None:
        return None
    curve = run.loss_curve or []
    return {"run": run.pk, "status": run.status, "step": (run.progress or {}).get("step", 0),
            "total": (run.progress or {}).get("total") or run.config.get("steps"),
            "loss": curve[-1][1] if curve else None, "error": run.error_message or None}


def _generation_progress(rnd: Round) -> dict:
    """Over the round's batches (one per version in a comparison round): done, total, and the first status not done."""
    batches = round_batches(rnd)
    pending = [b.status for b in batches if b.status != "done"]
    return {"done": sum((b.progress or {}).get("generated", 0) for b in batches),
            "total": sum(b.count for b in batches), "status": ("failed" if "failed" in pending else pending[0]) if pending else "done"}


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
        "generation": None if batch is None else _generation_progress(rnd),
        "cleaning": {"done": progress.get("cleaned", 0), "total": progress.get("to_clean", 0)},
        "labeling": {**labeling_share(rnd), "readers": readers,
                     "cases": ReadingCase.objects.filter(round=rnd, is_catch=False).count()}
        if rnd.labeling_opened_at else None,
        "reward": _run_progress(rnd.reward_run),
        "finetune": _run_progress(rnd.finetune_run),
        "evaluation": progress.get("evaluation"),
        "heartbeat_at": rnd.heartbeat_at.isoformat() if rnd.heartbeat_at else None,
        "promotion": (rnd.metrics or {}).get("promotion"),
    }


# --- the study's evaluation panel -----------------------------------------------------------------------------------

PANEL_SCORES = ("preference", "fooling_rate", "realism", "reward")


def _missing(panel: dict, version: dict, key: str) -> str:
    """Why a version has no `key` score on the panel (shown as the tooltip of its "—")."""
    if key in ("preference", "fooling_rate") or version.get("preference") is None:
        return "not computed: no simulated readers scored the panel (a study read only by people)"
    if key == "realism":
        return "not computed: no simulated reader of the study has a realism function"
    if panel.get("reward_run") is None:
        return "not computed: no reward model of the study has scored the panel yet"
    return f"not computed: the reward model of run {panel['reward_run']} has not scored this version"


def study_prompts_summary(study) -> dict:
    """How the study's prompts met the text encoder's 77-token window: generated images whose prompt was shortened
    (truncated) under the study's policy, of those recorded."""

    synthetic = Image.objects.filter(study=study, source=Source.SYNTHETIC, cleaned_from__isnull=True,
                                     meta__has_key="prompt_shortened")
    return {"policy": study.prompt_policy, "recorded": synthetic.count(),
            "shortened": synthetic.filter(meta__prompt_shortened=True).count()}


def study_panel(study) -> dict:
    """`panel_versions` with, per version, its number of scored items (`n`) and why each missing score is missing
    (`missing`): what the study page's panel charts and table show."""
    panel = panel_versions(study)
    for version in panel["versions"]:
        version["n"] = max((version[k]["n"] for k in PANEL_SCORES if version.get(k)), default=0)
        version["missing"] = {k: _missing(panel, version, k) for k in PANEL_SCORES if version.get(k) is None}
    return panel


# --- what a round did, in sentences and tables ---------------------------------------------------------------------


def round_story(rnd: Round) -> dict:
    """The reward model's check, how far the finetune moved the judge's reward on the panel, and whether the new
    version was promoted and why: sentences for the round page (the figures each carry their n and CI)."""
    metrics = rnd.metrics or {}
    check, promotion = metrics.get("reward_valid"), metrics.get("promotion") or {}
    story: dict = {"check": None, "moved": None, "blocked": (metrics.get("finetune") or {}).get("blocked")}
    if check:
        story["check"] = {"passed": bool(check.get("valid")), "reason": check.get("reason"), "folds": check.get("folds"),
                          "used": not story["blocked"]}
    if promotion.get("samples"):
        diff = promotion["reward_child"] - promotion["reward_parent"]
        story["moved"] = (f"The finetune moved the reward on the {promotion.get('panel') or 'evaluation panel'} by "
                          f"{diff:+.3f} "
                          f"({promotion['reward_parent']:.3f} → {promotion['reward_child']:.3f}, n = "
                          f"{promotion['samples']} paired items, new version better on "
                          f"{promotion['child_better_share']:.0%}), judged by "
                          f"{promotion.get('judge') or 'the round reward model'}.")
    return story


def as_rows(value, prefix: str = "") -> list[tuple[str, str]]:
    """A nested JSON value as (dotted key, readable value) rows, lists of numbers shortened."""
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for key, item in value.items():
            rows += as_rows(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            head = ", ".join(f"{v:.4g}" for v in value[:6])
            return [(prefix, f"[{head}{', …' if len(value) > 6 else ''}] ({len(value)} values)")]
        if all(not isinstance(v, (dict, list)) for v in value):
            return [(prefix, ", ".join(str(v) for v in value) or "—")]
        return [row for i, item in enumerate(value) for row in as_rows(item, f"{prefix}[{i}]")]
    if isinstance(value, float):
        return [(prefix, f"{value:.4g}")]
    return [(prefix, "—" if value is None else str(value))]


def study_members(study) -> dict:
    """The study's people for its readers section: each member with their reading progress (answered cases, cases
    they hold open now, last answer; practice done), and the invitations with their state."""
    from django.db.models import Count, Max, Q
    from django.utils import timezone


    members = list(StudyMembership.objects.filter(study=study, is_simulated=False).select_related("user")
                   .order_by("role", "pk"))
    stats = {row["reader_id"]: row for row in ReadingTask.objects.filter(round__study=study).values("reader_id")
             .annotate(done=Count("pk", filter=Q(status=TaskStatus.DONE)),
                       open=Count("pk", filter=Q(status=TaskStatus.CLAIMED)), last=Max("answered_at"))}
    practice = {row["reader"]: row for row in PracticeAnswer.objects.filter(case__study=study).values("reader")
                .annotate(answered=Count("pk"), correct=Count("pk", filter=Q(correct=True)))}
    now = timezone.now()
    invitations = [{"invitation": i, "state": "used" if i.used_at else "expired" if i.expires_at <= now else "open"}
                   for i in Invitation.objects.filter(study=study).select_related("used_by", "created_by")[:50]]
    simulated = StudyMembership.objects.filter(study=study, is_simulated=True).count()
    return {"members": [{"member": m, **stats.get(m.user_id, {"done": 0, "open": 0, "last": None}),
                         "practice": practice.get(m.user_id)} for m in members],
            "invitations": invitations, "simulated": simulated,
            "practice_cases": study.practice_cases.count()}
