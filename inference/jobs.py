"""What the worker runs for a generation batch: the version's pipeline from the worker's cache, sampling every
image not yet stored, cleaning it (classical detector → SAM → inpainting) and storing it, with heartbeats and the
batch's end state. The rows are created web-side by `inference.services`."""

from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from segment_anything import SamPredictor

from inference.ml.cleaning import CleaningConfig
from inference.ml.devices import pick_device
from inference.ml.errors import WeightsError
from inference.ml.generation import generate, plan_requests
from inference.ml.generation_config import GenerationConfig
from inference.ml.loading import PIPELINES, PipelineSpec
from inference.ml.prompts import encoded_prompt
from inference.ml.sam import build_sam
from inference.ml.text_removal import clean_image
from inference.models import GeneratedImage, GenerationBatch, JobStatus, ModelVersion
from inference.services import tiny_models_ensure
from inference.signals import batch_finished
from inference.storage import local_copy, png_bytes

log = logging.getLogger("cxr.inference")


# --- pipelines ------------------------------------------------------------------------------------------------------


def pipeline_spec(version: ModelVersion, *, scheduler: str | None = None) -> PipelineSpec:
    return PipelineSpec(base=version.base_path, kind="text2img",
                        lora=str(local_copy(version.lora_key)) if version.lora_key else None,
                        single_file_config=settings.CXR_SINGLE_FILE_CONFIG or None, scheduler=scheduler)


def version_pipeline(version: ModelVersion, *, scheduler: str | None, device):
    """The version's text-to-image pipeline on `device`, from the worker's cache (keyed by the version's weights
    and the scheduler, so two versions or two schedulers never share one)."""
    return PIPELINES.get(("model-version", version.pk, version.base_path, version.lora_key, scheduler),
                         pipeline_spec(version, scheduler=scheduler), device)


# --- generation batches --------------------------------------------------------------------------------------------


def generation_batch_run(*, batch: GenerationBatch) -> GenerationBatch:
    """Sample every image of the batch not yet stored (so a rerun after a crash resumes and never duplicates),
    clean it, and mark the batch done. Weight errors are recorded on the batch and the model version."""
    if batch.status == JobStatus.DONE:
        return batch
    batch.job_start()
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
        batch.job_beat(generated=len(done_indexes), total=batch.count)
        for request, image in generate(pipe, requests, config, device=device):
            encoded = encoded_prompt(pipe.tokenizer, request.prompt, config.prompt_policy)
            _store_generated(batch, request, image, cleaner, encoded)
            batch.job_beat(generated=batch.progress.get("generated", 0) + 1)
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
    batch.job_finish(status, error)
    batch_finished.send(sender=GenerationBatch, batch=batch)
    return batch


# --- cleaning -------------------------------------------------------------------------------------------------------


class Cleaner:
    """The configured cleaning pipeline (classical detector → SAM → inpainting), loaded once per worker."""

    _instances: dict[str, Cleaner] = {}

    def __init__(self, device, predictor=None, inpaint_pipe=None) -> None:
        self.device, self.predictor, self.inpaint_pipe = device, predictor, inpaint_pipe
        self.config = CleaningConfig()

    @classmethod
    def for_settings(cls, device) -> Cleaner:
        key = f"{device}|{settings.CXR_SAM_KIND}|{settings.CXR_SAM_CHECKPOINT}|{settings.CXR_INPAINT_MODEL}"
        if key not in cls._instances:
            predictor = inpaint = None
            if settings.CXR_SAM_CHECKPOINT:
                predictor = SamPredictor(build_sam(settings.CXR_SAM_KIND, settings.CXR_SAM_CHECKPOINT,
                                                   device=device))
            if settings.CXR_INPAINT_MODEL:
                path = (tiny_models_ensure()["sd_inpaint"] if settings.CXR_INPAINT_MODEL == "tiny"
                        else settings.CXR_INPAINT_MODEL)
                inpaint = PIPELINES.get(("inpaint", str(path)), PipelineSpec(base=str(path), kind="inpaint"), device)
            cls._instances[key] = cls(device, predictor, inpaint)
        return cls._instances[key]

    def clean(self, image: np.ndarray):
        return clean_image(image, self.config, predictor=self.predictor, sd_inpaint_pipe=self.inpaint_pipe)
