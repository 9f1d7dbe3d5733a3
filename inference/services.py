"""Web-side writes for model versions and generation batches, and the one rule for tiny presets. Imports no torch:
what the worker runs for a batch (sampling, cleaning, the pipeline cache) is in `inference.jobs`."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import shutil
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from inference.ml.generation_config import GenerationConfig
from inference.models import GenerationBatch, ModelVersion
from inference.tasks import generation_batch_run_task

# --- local caches ---------------------------------------------------------------------------------------------------


def tiny_models_dir() -> Path:
    return Path(settings.CXR_MODELS_DIR) / "tiny"


def tiny_models_ensure() -> dict[str, Path]:
    """Build the tiny models once per machine (a file lock keeps web and worker from building them twice)."""
    from inference.ml.tiny import build_tiny_models  # torch: the web imports this module; one-off build

    out = tiny_models_dir()
    paths = {"sd": out / "sd", "sd_inpaint": out / "sd-inpaint", "sam": out / "sam-tiny.pth"}
    if (out / "tiny-config.json").exists():
        return paths
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "tiny-config.json").exists():
            staging = out.parent / f".tiny-building-{hashlib.md5(str(out).encode()).hexdigest()[:6]}"
            shutil.rmtree(staging, ignore_errors=True)
            build_tiny_models(staging)
            shutil.rmtree(out, ignore_errors=True)
            staging.rename(out)
    return paths


# --- model versions ------------------------------------------------------------------------------------------------


def model_version_default() -> ModelVersion:
    """The version a new study starts from: the configured base (CXR_BASE_MODEL) or the tiny model."""
    if settings.CXR_BASE_MODEL:
        version, _ = ModelVersion.objects.get_or_create(
            name=f"base:{Path(settings.CXR_BASE_MODEL).name}", defaults={"base_path": settings.CXR_BASE_MODEL})
        return version
    path = tiny_models_ensure()["sd"]
    version, _ = ModelVersion.objects.get_or_create(name="tiny-sd", defaults={"base_path": str(path)})
    return version


def model_version_register(*, name: str, parent: ModelVersion, lora_file: Path, produced_by: str,
                           config: dict | None = None) -> ModelVersion:
    """Store a LoRA adapter and register it as a new version on the parent's base (once: a rerun of the run that
    produced it gets the same version back)."""
    existing = ModelVersion.objects.filter(name=name, produced_by=produced_by).first()
    if existing:
        return existing
    key = default_storage.save(f"models/{name}/pytorch_lora_weights.safetensors",
                               ContentFile(Path(lora_file).read_bytes()))
    return ModelVersion.objects.create(name=name, base_path=parent.base_path, lora_key=key, parent=parent,
                                       produced_by=produced_by, config=config or {})


def tiny_size(version: ModelVersion) -> int | None:
    """The image side of a version on one of the tiny bases kept on this machine (CXR_MODELS_DIR/tiny*): its UNet's
    sample size × 8 (64 px for the built ones, 128 for the demo's shipped base). None for a version on real
    weights. The one rule for "tiny or full preset": tiny versions get the tiny generation, training and reward
    presets at this size."""
    base, models = Path(version.base_path).resolve(), Path(settings.CXR_MODELS_DIR).resolve()
    if not (base.is_relative_to(models) and base.relative_to(models).parts[0].startswith("tiny")):
        return None
    return _unet_side(str(base))


@functools.lru_cache(maxsize=64)
def _unet_side(base: str) -> int:
    config = Path(base) / "unet" / "config.json"
    try:
        return int(json.loads(config.read_text())["sample_size"]) * 8
    except (OSError, ValueError, KeyError, TypeError):
        return 64  # a tiny base without a readable UNet config: the built tiny models' size


def is_tiny_version(version: ModelVersion) -> bool:
    return tiny_size(version) is not None


def generation_config_default(version: ModelVersion) -> GenerationConfig:
    size = tiny_size(version)
    if size is not None:
        return GenerationConfig.tiny(size)
    return GenerationConfig(**settings.CXR_GENERATION)


# --- generation batches --------------------------------------------------------------------------------------------


def generation_batch_create(*, model_version: ModelVersion, count: int, prompts: list[str], seed: int,
                            owner: str = "", config: GenerationConfig | None = None,
                            clean: bool = True, enqueue: bool = True) -> GenerationBatch:
    """Create the job row and enqueue it once the transaction commits (`enqueue=False`: the caller, already on the
    GPU queue, runs it with `generation_batch_run`)."""
    config = config or generation_config_default(model_version)
    if count < 1:
        raise ValueError("A batch needs at least one image.")
    batch = GenerationBatch.objects.create(model_version=model_version, count=count, prompts=list(prompts),
                                           seed=seed, owner=owner, config=config.as_dict(), clean=clean)
    if enqueue:
        transaction.on_commit(lambda: generation_batch_run_task.delay(batch_pk=batch.pk))
    return batch


def generation_batch_requeue(*, batch: GenerationBatch) -> None:
    """Send the batch's message again (a lost message or a dead worker); the run resumes where the stored images
    end. The heartbeat is stamped so a reconciler does not send it again before the stage timeout."""
    batch.job_requeued()
    transaction.on_commit(lambda: generation_batch_run_task.delay(batch_pk=batch.pk))
