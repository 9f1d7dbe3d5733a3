"""The driver: moves a round on when its current stage is done, and the reconciler that recovers lost messages.

`round_advance` only reads the rows (the round and its jobs), so any number of calls, from the jobs' signals, the
reconciler, a stage or an admin, are safe. `rounds_reconcile` (beat, every CXR_RECONCILE_EVERY_S) advances rounds
whose job ended while nobody listened and re-sends the message of any stage whose heartbeat is older than
CXR_STAGE_TIMEOUT_S, so a lost message, a dead worker or a broker that lost its data never strands a round.
Modules of the GPU side (training, generation) are imported inside the functions: web processes never load torch.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation.models import Round, RoundStatus
from annotation.reading.simulated import simulated_members
from annotation.rounds.config import OBJECTIVES, finetune_settings, round_config, round_seed
from annotation.rounds.feedback import round_snapshot_freeze
from annotation.rounds.messages import owner_of, round_batches, stage_enqueue
from annotation.rounds.services import labeling_complete, round_close_labeling, round_fail
from annotation.rounds.transitions import ACTIVE, round_transition
from inference.models import GenerationBatch, JobStatus
from inference.services import generation_batch_requeue, is_tiny_version
from training.ml.reward.config import RewardConfig
from training.models import RunKind
from training.runs.storage import snapshot_load
from training.services import training_run_create, training_run_requeue

log = logging.getLogger("cxr.rounds")


def round_advance(*, round: Round) -> Round:
    """Move the round on if its current stage is finished; start the next stage's work. Idempotent: it only looks at
    the rows, so calling it any number of times, from signals, the reconciler or an admin, is safe."""
    rnd = Round.objects.select_related("study", "generation_batch", "reward_run", "finetune_run").get(pk=round.pk)
    status = rnd.status
    if status == RoundStatus.GENERATING:
        batches = round_batches(rnd)
        failed = next((b for b in batches if b.status == JobStatus.FAILED), None)
        if failed is not None:
            rnd = round_fail(round=rnd, stage=status, error=f"generation batch {failed.pk}: {failed.error_message}")
        elif all(b.status == JobStatus.DONE for b in batches):
            rnd = _to(rnd, RoundStatus.GENERATING, RoundStatus.CLEANING, then=stage_enqueue)
    elif status in (RoundStatus.CLEANING, RoundStatus.EVALUATING):
        stage_enqueue(rnd)
    elif status == RoundStatus.LABELING:
        if labeling_complete(rnd):
            rnd = round_close_labeling(round=rnd)
        elif _has_simulated_work(rnd):
            stage_enqueue(rnd)
    elif status == RoundStatus.TRAINING_REWARD:
        rnd = _advance_reward(rnd)
    elif status == RoundStatus.FINETUNING:
        rnd = _advance_finetune(rnd)
    return rnd


def _to(rnd: Round, current: str, to: str, *, then=None, **fields_) -> Round:
    """Transition if the round is still in `current` (a concurrent driver may have moved it already)."""
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != current:
            return locked
        for name, value in fields_.items():
            setattr(locked, name, value)
        if fields_:
            locked.save(update_fields=list(fields_))
        locked = round_transition(round=locked, to=to)
        Round.objects.filter(pk=locked.pk).update(heartbeat_at=timezone.now())
        if then is not None:
            then(locked)
    return locked


def _advance_reward(rnd: Round) -> Round:
    run = rnd.reward_run
    if run is None:
        cfg = round_config(rnd)
        snapshot = round_snapshot_freeze(rnd)  # frozen when labeling closed; here only if that message was lost
        base = RewardConfig.tiny() if _tiny(rnd) else RewardConfig()
        try:
            reward_cfg = RewardConfig.from_dict({**base.as_dict(), **cfg.reward,
                                                 "criteria": [c["key"] for c in rnd.study.rubric]})
        except (TypeError, ValueError) as exc:
            return round_fail(round=rnd, stage=rnd.status, error=f"reward settings: {exc}")
        with transaction.atomic():
            locked = Round.objects.select_for_update().get(pk=rnd.pk)
            if locked.status != RoundStatus.TRAINING_REWARD or locked.reward_run_id:
                return locked
            locked.reward_run = training_run_create(kind=RunKind.REWARD, owner=owner_of(rnd),
                                                    config=reward_cfg.as_dict(), snapshot_key=snapshot["key"],
                                                    snapshot_sha256=snapshot["sha256"])
            locked.save(update_fields=["reward_run"])
        return locked
    if run.status == JobStatus.FAILED:
        return round_fail(round=rnd, stage=rnd.status, error=f"reward run {run.pk}: {run.error_message}")
    if run.status != JobStatus.DONE:
        return rnd
    return _start_finetune(rnd)


def _start_finetune(rnd: Round) -> Round:
    cfg = round_config(rnd)
    kind = OBJECTIVES[cfg.objective]
    reward_run = rnd.reward_run
    if kind == RunKind.DPO and not snapshot_load(reward_run).pairs:
        return round_fail(round=rnd, stage=rnd.status,
                          error="DPO needs preference pairs; this round's labels gave none (add the preference task "
                                "kind, or use objective reward_weighted).")
    try:
        ft = finetune_settings(cfg, rnd.model_version, seed=round_seed(rnd), study=rnd.study)
    except ValidationError as exc:
        return round_fail(round=rnd, stage=rnd.status, error=exc.messages[0])
    reward_metrics = reward_run.metrics or {}
    check = reward_metrics.get("check")
    recorded = {
        "reward": {"run": reward_run.pk, "auroc": (reward_metrics.get("realism") or {}).get("auroc"),
                   "auroc_skipped": (reward_metrics.get("realism") or {}).get("auroc_skipped"),
                   "criteria": reward_metrics.get("criteria"), "mismatch": reward_metrics.get("mismatch")},
        "reward_valid": check}
    blocked = check is not None and not check.get("valid") and cfg.reward_check == "block" and not cfg.control
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != RoundStatus.TRAINING_REWARD:
            return locked
        if blocked:
            # the labels did not buy a reward model that ranks synthetic images as the readers do: no finetune,
            # the round is evaluated with its parent only and ends with no new version, saying why
            locked.metrics = {**locked.metrics, **recorded, "finetune": {"blocked": check.get("reason")}}
            locked.save(update_fields=["metrics"])
            locked = round_transition(round=locked, to=RoundStatus.EVALUATING)
            Round.objects.filter(pk=locked.pk).update(heartbeat_at=timezone.now())
            stage_enqueue(locked)
            return locked
        locked.finetune_run = training_run_create(
            kind=kind, owner=owner_of(rnd), config=ft.as_dict(), snapshot_key=reward_run.snapshot_key,
            snapshot_sha256=reward_run.snapshot_sha256, base_version=rnd.model_version, reward_run=reward_run)
        locked.metrics = {**locked.metrics, **recorded}
        locked.save(update_fields=["finetune_run", "metrics"])
        return round_transition(round=locked, to=RoundStatus.FINETUNING)


def _advance_finetune(rnd: Round) -> Round:
    run = rnd.finetune_run
    if run is None:  # the transition and the run are written together; only a hand-edited row gets here
        return round_fail(round=rnd, stage=rnd.status, error="no finetune run recorded")
    if run.status == JobStatus.FAILED:
        return round_fail(round=rnd, stage=rnd.status, error=f"finetune run {run.pk}: {run.error_message}")
    if run.status != JobStatus.DONE:
        return rnd
    run.refresh_from_db()
    return _to(rnd, RoundStatus.FINETUNING, RoundStatus.EVALUATING, then=stage_enqueue,
               produced_version=run.produced_version,
               metrics={**rnd.metrics, "finetune": {"run": run.pk, **(run.metrics or {}),
                                                    "loss_curve_points": len(run.loss_curve)}})


def _tiny(rnd: Round) -> bool:
    return rnd.model_version is not None and is_tiny_version(rnd.model_version)


def _has_simulated_work(rnd: Round) -> bool:
    return bool(simulated_members(rnd.study))


# --- recovery ------------------------------------------------------------------------------------------------------


def rounds_reconcile(*, timeout_s: float | None = None) -> list[dict]:
    """Advance every running round whose job ended while nobody listened, and re-send the message of every stage
    whose heartbeat is older than `timeout_s` (default CXR_STAGE_TIMEOUT_S). Returns what it did."""

    timeout = settings.CXR_STAGE_TIMEOUT_S if timeout_s is None else timeout_s
    stale_before = timezone.now() - timedelta(seconds=timeout)
    actions: list[dict] = []
    rounds = (Round.objects.filter(status__in=ACTIVE)
              .select_related("study", "generation_batch", "reward_run", "finetune_run"))
    for rnd in rounds:
        jobs = {RoundStatus.GENERATING: round_batches(rnd), RoundStatus.TRAINING_REWARD: [rnd.reward_run],
                RoundStatus.FINETUNING: [rnd.finetune_run]}.get(rnd.status, [])
        jobs = [j for j in jobs if j is not None]
        running = [j for j in jobs if j.status not in (JobStatus.DONE, JobStatus.FAILED)]
        try:
            if jobs and (not running or any(j.status == JobStatus.FAILED for j in jobs)):
                actions.append({"round": rnd.pk, "status": rnd.status, "action": "advance"})
                round_advance(round=rnd)
            elif jobs:
                for job in running:
                    if (job.heartbeat_at or job.created_at) < stale_before:
                        actions.append({"round": rnd.pk, "status": rnd.status, "action": "requeue",
                                        "job": f"{type(job).__name__}:{job.pk}"})
                        with transaction.atomic():
                            (generation_batch_requeue(batch=job) if isinstance(job, GenerationBatch)
                             else training_run_requeue(run=job))
            elif rnd.status == RoundStatus.TRAINING_REWARD:
                actions.append({"round": rnd.pk, "status": rnd.status, "action": "advance"})
                round_advance(round=rnd)  # the reward run was never created
            elif rnd.status == RoundStatus.LABELING:
                if labeling_complete(rnd):
                    actions.append({"round": rnd.pk, "status": rnd.status, "action": "close"})
                    round_close_labeling(round=rnd)
                elif _has_simulated_work(rnd) and (rnd.heartbeat_at or rnd.labeling_opened_at) < stale_before:
                    actions.append({"round": rnd.pk, "status": rnd.status, "action": "requeue"})
                    with transaction.atomic():
                        stage_enqueue(rnd)
            elif (rnd.heartbeat_at or rnd.created_at) < stale_before:
                actions.append({"round": rnd.pk, "status": rnd.status, "action": "requeue"})
                with transaction.atomic():
                    stage_enqueue(rnd)
        except Exception:  # one broken round must not stop the others from being recovered
            log.exception("reconciling round %s failed", rnd.pk)
    return actions
