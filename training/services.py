"""Writes for training runs, and what the GPU worker runs for each kind. Inputs are frozen snapshots in storage;
artifacts (reward models, LoRA adapters, checkpoints) go back to storage so any worker can resume a run."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from inference.services import local_copy

from training.models import RunKind, RunStatus, TrainingRun
from training.signals import run_finished  # noqa: F401 - re-exported: the round orchestration connects to it

log = logging.getLogger("cxr.training")


HEARTBEAT_EVERY_S = 2.0


class SnapshotError(RuntimeError):
    pass


def training_run_create(*, kind: str, owner: str = "", config: dict, snapshot_key: str = "",
                        snapshot_sha256: str = "", base_version=None, reward_run: TrainingRun | None = None,
                        enqueue: bool = True) -> TrainingRun:
    from training.tasks import training_run_execute

    if kind not in RunKind.values:
        raise ValueError(f"Unknown run kind {kind!r}.")
    run = TrainingRun.objects.create(kind=kind, owner=owner, config=config, snapshot_key=snapshot_key,
                                     snapshot_sha256=snapshot_sha256, base_version=base_version,
                                     reward_run=reward_run)
    if enqueue:
        transaction.on_commit(lambda: training_run_execute.delay(run_pk=run.pk))
    return run


def training_run_requeue(*, run: TrainingRun) -> None:
    """Send the run's message again (a lost message, a dead worker, an admin's retry); it resumes from its last
    checkpoint in storage. The heartbeat is stamped so a reconciler does not send it again before its timeout."""
    from training.tasks import training_run_execute

    TrainingRun.objects.filter(pk=run.pk).exclude(status=RunStatus.DONE).update(heartbeat_at=timezone.now())
    transaction.on_commit(lambda: training_run_execute.delay(run_pk=run.pk))


# --- inputs ---------------------------------------------------------------------------------------------------------


def snapshot_load(run: TrainingRun) -> dict:
    """The run's frozen input, checked against its recorded hash."""
    with default_storage.open(run.snapshot_key, "rb") as handle:
        payload = handle.read()
    if run.snapshot_sha256 and hashlib.sha256(payload).hexdigest() != run.snapshot_sha256:
        raise SnapshotError(f"Snapshot {run.snapshot_key} does not match its recorded sha256.")
    return json.loads(payload)


def image_load(key: str) -> np.ndarray:
    """A stored image as uint8 grayscale (16-bit normalised copies are scaled down)."""
    with default_storage.open(key, "rb") as handle:
        arr = np.asarray(PILImage.open(io.BytesIO(handle.read())))
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    return arr if arr.ndim == 2 else arr[..., 0]


# --- progress -------------------------------------------------------------------------------------------------------


class Progress:
    """Writes step, loss curve and heartbeat to the run's row, at most every HEARTBEAT_EVERY_S seconds."""

    def __init__(self, run: TrainingRun, total: int) -> None:
        self.run, self.total, self._last = run, total, 0.0
        self.curve: list[list[float]] = list(run.loss_curve)

    def __call__(self, step: int, loss: float, *_, **__) -> None:
        while self.curve and self.curve[-1][0] >= step:  # resumed from a checkpoint older than the stored curve
            self.curve.pop()
        self.curve.append([int(step), float(loss)])
        now = time.monotonic()
        if now - self._last >= HEARTBEAT_EVERY_S or step >= self.total:
            self._last = now
            self.flush(step)

    def flush(self, step: int) -> None:
        TrainingRun.objects.filter(pk=self.run.pk).update(
            progress={"step": int(step), "total": self.total}, loss_curve=self.curve, heartbeat_at=timezone.now())


def _work_dir(run: TrainingRun) -> Path:
    path = Path(settings.CXR_CACHE_DIR) / "runs" / str(run.pk)
    path.mkdir(parents=True, exist_ok=True)
    return path


def upload_dir(local: Path, prefix: str) -> str:
    """Copy a folder's files to storage under `prefix` (replacing what was there); returns the prefix."""
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix}/{file.relative_to(local).as_posix()}"
        if default_storage.exists(key):
            default_storage.delete(key)
        with open(file, "rb") as handle:
            default_storage.save(key, handle)
    return prefix


def download_dir(prefix: str, names: list[str], target: Path) -> Path:
    """Worker-local copy of stored files `prefix/name` (through the shared cache)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(local_copy(f"{prefix}/{name}"), target / name)
    return target


# --- runs -----------------------------------------------------------------------------------------------------------


def training_run_execute(*, run: TrainingRun) -> TrainingRun:
    """Run a training job to the end (resuming from its last checkpoint); record failures on the row."""
    if run.status == RunStatus.DONE:
        return run
    TrainingRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, error_message="",
                                                 heartbeat_at=timezone.now())
    try:
        if run.kind == RunKind.REWARD:
            _execute_reward(run)
        else:
            from training.finetune_runs import execute_finetune

            execute_finetune(run)
    except Exception as exc:
        log.exception("training run %s failed", run.pk)
        return _finish(run, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
    return _finish(run, RunStatus.DONE)


def _finish(run: TrainingRun, status: str, error: str = "") -> TrainingRun:
    TrainingRun.objects.filter(pk=run.pk).update(status=status, error_message=error, finished_at=timezone.now(),
                                                 heartbeat_at=timezone.now())
    run.refresh_from_db()
    run_finished.send(sender=TrainingRun, run=run)
    return run


REWARD_FILES = ["model.safetensors", "config.json", "metrics.json"]


def _execute_reward(run: TrainingRun) -> None:
    from inference.devices import pick_device

    from training.reward import FeedbackItem, RewardConfig, save_reward_model, train_reward_model

    cfg = RewardConfig.from_dict(run.config)
    data = snapshot_load(run)
    items = [FeedbackItem.from_record(r, image_load(r["key"])) for r in data["items"]
             if r.get("realism") is not None or r.get("criteria")]
    if len(items) < 4:
        raise SnapshotError(f"Too little feedback to train a reward model ({len(items)} labelled images).")
    progress = Progress(run, cfg.steps)
    model, metrics = train_reward_model(items, cfg, device=pick_device(settings.CXR_DEVICE), on_progress=progress)
    progress.flush(cfg.steps)
    out = save_reward_model(model, cfg, _work_dir(run) / "reward", metrics)
    prefix = upload_dir(out, f"runs/{run.pk}/reward")
    TrainingRun.objects.filter(pk=run.pk).update(artifact_key=prefix, metrics=metrics)


def reward_model_load(run: TrainingRun, device):
    """The reward model a finished reward run produced, loaded on `device` (worker-local copy cached)."""
    from training.reward import load_reward_model

    if run.kind != RunKind.REWARD or run.status != RunStatus.DONE:
        raise ValueError(f"Run {run.pk} is not a finished reward run.")
    local = download_dir(run.artifact_key, REWARD_FILES, _work_dir(run) / "reward-copy")
    return load_reward_model(local, device)
