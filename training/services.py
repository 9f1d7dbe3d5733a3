"""Writes for training runs: create (and enqueue), requeue, and execute one to the end on the worker (the kinds'
bodies are in `training.runs`). Inputs are frozen snapshots in storage; artifacts (reward models, LoRA adapters,
checkpoints) go back to storage so any worker can resume a run."""

from __future__ import annotations

import logging

from django.db import transaction

from training.models import RunKind, RunStatus, TrainingRun
from training.signals import run_finished
from training.tasks import training_run_execute_task

log = logging.getLogger("cxr.training")


def training_run_create(*, kind: str, owner: str = "", config: dict, snapshot_key: str = "",
                        snapshot_sha256: str = "", base_version=None, reward_run: TrainingRun | None = None,
                        enqueue: bool = True) -> TrainingRun:
    if kind not in RunKind.values:
        raise ValueError(f"Unknown run kind {kind!r}.")
    run = TrainingRun.objects.create(kind=kind, owner=owner, config=config, snapshot_key=snapshot_key,
                                     snapshot_sha256=snapshot_sha256, base_version=base_version,
                                     reward_run=reward_run)
    if enqueue:
        transaction.on_commit(lambda: training_run_execute_task.delay(run_pk=run.pk))
    return run


def training_run_requeue(*, run: TrainingRun) -> None:
    """Send the run's message again (a lost message, a dead worker, an admin's retry); it resumes from its last
    checkpoint in storage. The heartbeat is stamped so a reconciler does not send it again before its timeout."""
    run.job_requeued()
    transaction.on_commit(lambda: training_run_execute_task.delay(run_pk=run.pk))


def training_run_execute(*, run: TrainingRun) -> TrainingRun:
    """Run a training job to the end (resuming from its last checkpoint); record failures on the row."""
    if run.status == RunStatus.DONE:
        return run
    run.job_start()
    try:
        from training.runs import finetune, reward  # torch: the web imports this module

        (reward.reward_run_execute if run.kind == RunKind.REWARD else finetune.finetune_run_execute)(run)
    except Exception as exc:
        log.exception("training run %s failed", run.pk)
        return _finish(run, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
    return _finish(run, RunStatus.DONE)


def _finish(run: TrainingRun, status: str, error: str = "") -> TrainingRun:
    run.job_finish(status, error)
    run_finished.send(sender=TrainingRun, run=run)
    return run


def reward_scorer(run: TrainingRun, device, *, judge: bool = False):
    """A finished reward run's scorer (`training.runs.reward.RewardScorer`: `scores`, `uncertainty`) on `device`;
    `judge`: its cross-fitted fold models, the promotion judge. Worker side: loads torch when called."""
    from training.runs.reward import reward_scorer as load  # torch: the web imports this module

    return load(run, device, judge=judge)
