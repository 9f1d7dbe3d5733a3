"""Writes for model versions and generation batches; what the worker runs for a batch."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from inference.ml.devices import pick_device
from inference.ml.errors import WeightsError
from inference.ml.generation import GenerationConfig, generate, plan_requests
from inference.ml.loading import PIPELINES, PipelineSpec
from inference.ml.prompts import encoded_prompt
from inference.models import GeneratedImage, GenerationBatch, JobStatus, ModelVersion
from inference.signals import batch_finished
from inference.storage import local_copy, png_bytes

log = logging.getLogger("cxr.inference")


# --- local caches ---------------------------------------------------------------------------------------------------


def tiny_models_dir() -> Path:
    return Path(settings.CXR_MODELS_DIR) / "tiny"


def tiny_models_ensure() -> dict[str, Path]:
    """Build the tiny models once per machine (a file lock keeps web and worker from building them twice)."""
    from inference.ml.tiny import build_tiny_models

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


def pipeline_spec(version: ModelVersion, *, scheduler: str | None = None) -> PipelineSpec:
    return PipelineSpec(base=version.base_path, kind="text2img",
                        lora=str(local_copy(version.lora_key)) if version.lora_key else None,
                        single_file_config=settings.CXR_SINGLE_FILE_CONFIG or None, scheduler=scheduler)


def version_pipeline(version: ModelVersion, *, scheduler: str | None, device):
    """The version's text-to-image pipeline on `device`, from the worker's cache (keyed by the version's weights
    and the scheduler, so two versions or two schedulers never share one)."""
    return PIPELINES.get(("model-version", version.pk, version.base_path, version.lora_key, scheduler),
                         pipeline_spec(version, scheduler=scheduler), device)


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
    from inference.tasks import generation_batch_run_task

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
    from inference.tasks import generation_batch_run_task

    GenerationBatch.objects.filter(pk=batch.pk).exclude(status=JobStatus.DONE).update(heartbeat_at=timezone.now())
    transaction.on_commit(lambda: generation_batch_run_task.delay(batch_pk=batch.pk))


def _heartbeat(batch: GenerationBatch, **progress) -> None:
    GenerationBatch.objects.filter(pk=batch.pk).update(heartbeat_at=timezone.now(),
                                                       progress={**batch.progress, **progress})
    batch.progress = {**batch.progress, **progress}


def generation_batch_run(*, batch: GenerationBatch) -> GenerationBatch:
    """Sample every image of the batch not yet stored (so a rerun after a crash resumes and never duplicates),
    clean it, and mark the batch done. Weight errors are recorded on the batch and the model version."""
    if batch.status == JobStatus.DONE:
        return batch
    GenerationBatch.objects.filter(pk=batch.pk).update(status=JobStatus.RUNNING, error_message="",
                                                       heartbeat_at=timezone.now())
    version = batch.model_version
    config = GenerationConfig.from_dict(batch.config)
    done_indexes = set(batch.images.values_list("index", flat=True))
    requests = [r for r in plan_requests(prompts=batch.prompts, count=batch.count,
                                         images_per_prompt=config.images_per_prompt, seed=batch.seed)
                if r.index not in done_indexes]
    try:
        device = pick_device(settings.CXR_DEVICE)
        pipe = version_pipeline(version, scheduler=config.scheduler, device=device)
        cleaner = Cleaner.for_settings(device) if batch.clean else None
        _heartbeat(batch, generated=len(done_indexes), total=batch.count)
        for request, image in generate(pipe, requests, config, device=device):
            encoded = encoded_prompt(pipe.tokenizer, request.prompt, config.prompt_policy)
            _store_generated(batch, request, image, cleaner, encoded)
            _heartbeat(batch, generated=batch.progress.get("generated", 0) + 1)
    except WeightsError as exc:
        ModelVersion.objects.filter(pk=version.pk).update(load_error=str(exc))
        return _finish(batch, JobStatus.FAILED, str(exc))
    except Exception as exc:
        log.exception("generation batch %s failed", batch.pk)
        _finish(batch, JobStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    return _finish(batch, JobStatus.DONE)


def _store_generated(batch: GenerationBatch, request, image: np.ndarray, cleaner, encoded) -> GeneratedImage:
    name = f"generated/{batch.pk}/{request.index:06d}-{request.seed}"
    keys = {"raw_key": default_storage.save(f"{name}-raw.png", ContentFile(png_bytes(image)))}
    fraction = None
    if cleaner is not None:
        result = cleaner.clean(image)
        keys["mask_key"] = default_storage.save(f"{name}-mask.png",
                                                ContentFile(png_bytes(result.mask.astype(np.uint8) * 255)))
        keys["cleaned_key"] = default_storage.save(f"{name}.png", ContentFile(png_bytes(result.cleaned)))
        fraction = float(result.mask.mean())
    item, created = GeneratedImage.objects.get_or_create(
        batch=batch, index=request.index,
        defaults={"seed": request.seed, "prompt": request.prompt, "mask_fraction": fraction,
                  "prompt_encoded": encoded.text, "prompt_shortened": encoded.shortened, **keys},
    )
    if not created:  # a concurrent run stored it first: drop our copies
        for key in keys.values():
            default_storage.delete(key)
    return item


def _finish(batch: GenerationBatch, status: str, error: str = "") -> GenerationBatch:
    GenerationBatch.objects.filter(pk=batch.pk).update(status=status, error_message=error,
                                                       finished_at=timezone.now(), heartbeat_at=timezone.now())
    batch.refresh_from_db()
    batch_finished.send(sender=GenerationBatch, batch=batch)
    return batch


# --- cleaning -------------------------------------------------------------------------------------------------------


class Cleaner:
    """The configured cleaning pipeline (classical detector → SAM → inpainting), loaded once per worker."""

    _instances: dict[str, Cleaner] = {}

    def __init__(self, device, predictor=None, inpaint_pipe=None) -> None:
        from inference.ml.cleaning import CleaningConfig

        self.device, self.predictor, self.inpaint_pipe = device, predictor, inpaint_pipe
        self.config = CleaningConfig()

    @classmethod
    def for_settings(cls, device) -> Cleaner:
        key = f"{device}|{settings.CXR_SAM_KIND}|{settings.CXR_SAM_CHECKPOINT}|{settings.CXR_INPAINT_MODEL}"
        if key not in cls._instances:
            predictor = inpaint = None
            if settings.CXR_SAM_CHECKPOINT:
                from segment_anything import SamPredictor

                from inference.ml.sam import build_sam

                predictor = SamPredictor(build_sam(settings.CXR_SAM_KIND, settings.CXR_SAM_CHECKPOINT,
                                                   device=device))
            if settings.CXR_INPAINT_MODEL:
                path = (tiny_models_ensure()["sd_inpaint"] if settings.CXR_INPAINT_MODEL == "tiny"
                        else settings.CXR_INPAINT_MODEL)
                inpaint = PIPELINES.get(("inpaint", str(path)), PipelineSpec(base=str(path), kind="inpaint"), device)
            cls._instances[key] = cls(device, predictor, inpaint)
        return cls._instances[key]

    def clean(self, image: np.ndarray):
        from inference.ml.text_removal import clean_image

        return clean_image(image, self.config, predictor=self.predictor, sd_inpaint_pipe=self.inpaint_pipe)
