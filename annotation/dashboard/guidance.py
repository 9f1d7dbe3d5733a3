"""What each state of a round and of a study tells its admin: what is happening, what happens next and what they
can do (sentences with at most one link each, for the round page and the study page)."""

from __future__ import annotations

from django.urls import reverse

from annotation.models import ACTIVE_STATUSES, Role, Round, RoundStatus, StudyMembership
from annotation.rounds.config import round_config


def _step(text: str, label: str | None = None, url: str | None = None) -> dict:
    return {"text": text, "link": {"label": label, "url": url} if label and url else None}


def _readers_left(rnd: Round, progress: dict) -> str:
    """Who still has how many cases of this round to read, and who has not opened their list yet."""
    labeling = progress.get("labeling") or {}
    cases = labeling.get("cases") or 0
    started = {r["reader"]: r["answered"] for r in labeling.get("readers") or []}
    members = (StudyMembership.objects.filter(study_id=rnd.study_id, role=Role.READER, deactivated_at__isnull=True)
               .select_related("user").order_by("pk"))
    names = [m.user.get_username() for m in members]
    left = [(name, cases - started[name]) for name in names if name in started and started[name] < cases]
    unopened = [name for name in names if name not in started]
    parts = []
    if left:
        shown = ", ".join(f"{name} {n} case{'s' if n != 1 else ''}" for name, n in left[:8])
        parts.append(f"cases left per reader: {shown}{f' and {len(left) - 8} more' if len(left) > 8 else ''}")
    if unopened:
        shown = ", ".join(unopened[:8])
        parts.append(f"not yet opened their list: {shown}{f' and {len(unopened) - 8} more' if len(unopened) > 8 else ''}")
    return "; ".join(parts) or "every reader has answered every case of their list"


def round_next_steps(rnd: Round, progress: dict) -> list[dict]:
    """The round page's "What happens next"."""
    study_url = reverse("dashboard:study", args=[rnd.study_id])
    cfg = round_config(rnd)
    status = rnd.status
    if status in (RoundStatus.DRAFT, RoundStatus.GENERATING, RoundStatus.CLEANING):
        return [_step("The worker is generating and cleaning this round's images; readers get their lists when it "
                      "finishes. Nothing to do: this page follows it.")]
    if status == RoundStatus.LABELING:
        labeling = progress.get("labeling") or {}
        after = ("the reward model trains on the labels, the generator is finetuned and the new version evaluated"
                 if cfg.trains else "the round ends and its report is built")
        return [_step(f"Readers are reading: {labeling.get('answered', 0)} of {labeling.get('planned', 0)} planned "
                      f"answers are in; {_readers_left(rnd, progress)}."),
                _step(f"When every case has its readers, labeling closes by itself and {after}. To stop waiting, "
                      "close labeling now (the answers so far are used); a reader who has left can be deactivated "
                      "on the study page, and their open cases return to the others.", "Readers", study_url + "#readers")]
    if status in (RoundStatus.TRAINING_REWARD, RoundStatus.FINETUNING, RoundStatus.EVALUATING):
        what = {RoundStatus.TRAINING_REWARD: "training the reward model on the readers' labels (then its check)",
                RoundStatus.FINETUNING: "finetuning the generator with the reward model",
                RoundStatus.EVALUATING: "sampling the panels and deciding whether the new version is promoted"}[status]
        return [_step(f"The worker is {what}. Nothing to do: the bars above follow it, and the page reloads at the "
                      "next stage.")]
    if status == RoundStatus.FAILED:
        return [_step(f"The round stopped in {rnd.failed_stage or 'a stage'}: the error above says why. Retry it "
                      "(the stages before it are kept), or cancel the round and launch another.")]
    if status == RoundStatus.CANCELLED:
        return [_step("The round was cancelled; its labels are kept. Launch the next round from the study page.",
                      "Study", study_url)]
    # done
    report = reverse("dashboard:round-report", args=[rnd.pk])
    gallery = reverse("dashboard:round-gallery", args=[rnd.pk])
    promotion = (rnd.metrics or {}).get("promotion") or {}
    steps = [_step("Read the round's report: how well readers told real from synthetic, their agreement, the "
                   "rubric, with n and confidence intervals.", "Report", report)]
    if rnd.produced_version is not None and promotion.get("promoted"):
        steps.append(_step(f"The new version {rnd.produced_version.name} was promoted: the next round samples from "
                           "it. Look at what it generates, and launch the next round from the study page (or "
                           "compare it with its parent in a comparison round read by your readers).",
                           "Gallery", gallery))
    elif rnd.produced_version is not None:
        steps.append(_step(f"The new version {rnd.produced_version.name} was kept out: the study still samples from "
                           f"{rnd.model_version.name if rnd.model_version else 'its current version'}. You can "
                           "still choose it by hand on the study page, or launch the next round: its labels add to "
                           "these.", "Study", study_url))
    elif cfg.compare:
        steps.append(_step("This comparison round trained nothing: its report holds the MRMC analysis of the "
                           "versions read. Choose the version the study goes on with on the study page.",
                           "Study", study_url))
    else:
        steps.append(_step("No new version was made"
                           + (f" ({(rnd.metrics.get('finetune') or {}).get('blocked')})"
                              if (rnd.metrics.get("finetune") or {}).get("blocked") else "")
                           + ". Launch the next round: more labels give the reward model more to learn from.",
                           "Study", study_url))
    return steps


def study_next_steps(study, *, rounds: list, images: int, readers: int) -> list[dict]:
    """The study page's "What to do next", from its state."""
    if images == 0:
        return [_step("Import real chest X-rays first: they are what readers compare the synthetic images with "
                      "and what the generator learns from.", "Import", "#import")]
    if readers == 0:
        return [_step("Invite readers: each gets a one-time link, sets a password and lands in their queue.",
                      "Readers", "#readers")]
    latest = rounds[0] if rounds else None
    if latest is None:
        return [_step("Launch the first round: the worker generates images, readers label them blinded, and their "
                      "labels train the reward model that finetunes the generator.")]
    if latest.status in (*ACTIVE_STATUSES, RoundStatus.DRAFT, RoundStatus.FAILED):
        verb = "stopped" if latest.status == RoundStatus.FAILED else "is running"
        return [_step(f"Round {latest.number} {verb} ({latest.status.replace('_', ' ')}): its page says what "
                      "happens next.", f"Round {latest.number}",
                      reverse("dashboard:round", args=[latest.pk]))]
    return [_step(f"Round {latest.number} is {latest.status}: review it, then launch the next round below.",
                  f"Round {latest.number}", reverse("dashboard:round", args=[latest.pk]))]
