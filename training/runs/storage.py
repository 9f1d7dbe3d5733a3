"""A training run's files: its frozen input (checked against its hash), a worker-local work folder, folders copied
to and from storage (so any worker can resume), and progress written to the run's row."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone

from inference.storage import local_copy
from training.ml.snapshot import Snapshot
from training.models import TrainingRun

HEARTBEAT_EVERY_S = 2.0


class SnapshotError(RuntimeError):
    pass


# --- inputs ---------------------------------------------------------------------------------------------------------


def snapshot_load(run: TrainingRun) -> Snapshot:
    """The run's frozen input, checked against its recorded hash."""
    with default_storage.open(run.snapshot_key, "rb") as handle:
        payload = handle.read()
    if run.snapshot_sha256 and hashlib.sha256(payload).hexdigest() != run.snapshot_sha256:
        raise SnapshotError(f"Snapshot {run.snapshot_key} does not match its recorded sha256.")
    try:
        return Snapshot.loads(payload)
    except ValueError as exc:
        raise SnapshotError(f"Snapshot {run.snapshot_key}: {exc}") from None


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


class Heartbeat:
    """Stamps only the run's heartbeat, at most every HEARTBEAT_EVERY_S seconds: for work outside the training loop
    (fold models, fresh samples), so the reconciler does not take a long run for a lost one."""

    def __init__(self, run: TrainingRun) -> None:
        self.run, self._last = run, time.monotonic()

    def __call__(self, *_, **__) -> None:
        now = time.monotonic()
        if now - self._last >= HEARTBEAT_EVERY_S:
            self._last = now
            TrainingRun.objects.filter(pk=self.run.pk).update(heartbeat_at=timezone.now())


def work_dir(run: TrainingRun) -> Path:
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
