"""The stages a round runs itself (the others are a lower layer's job): cleaning, simulated reading, evaluating.

Each is called by its thin Celery task with the round id, runs only while the round is in its stage (so a repeated
message changes nothing), writes the round's heartbeat while it works, and fails the round with the error when it
raises. GPU-side modules are imported inside the functions: web processes never load torch.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from annotation.images.storage import image_store
from annotation.models import Image, Round, RoundStatus, Source, Study
from annotation.reading.simulated import round_simulate_readers
from annotation.rounds.config import round_config, round_seed
from annotation.rounds.driver import round_advance
from annotation.rounds.evaluation import evaluation_compute
from annotation.rounds.messages import heartbeat, progress_merge, round_batches
from annotation.rounds.selection import comparison_selection, select_generated
from annotation.rounds.services import round_fail, round_launch, round_open_labeling
from annotation.rounds.transitions import round_transition
from annotation.rounds.versions import study_version_choose
from inference.models import GeneratedImage
from inference.storage import image_load, png_bytes

log = logging.getLogger("cxr.rounds")


def _in_stage(round_pk: int, status: str) -> Round | None:
    rnd = Round.objects.select_related("study", "generation_batch", "model_version", "produced_version",
                                       "reward_run", "finetune_run").get(pk=round_pk)
    return rnd if rnd.status == status else None


def _stage(status: str):
    """Run a round's own stage: skipped unless the round is in it; an exception fails the round with the error."""
    def wrap(fn):
        def run(round_pk: int) -> str:
            rnd = _in_stage(round_pk, status)
            if rnd is None:
                return "skipped"
            heartbeat(rnd)
            try:
                fn(rnd)
            except Exception as exc:
                log.exception("round %s: %s failed", round_pk, status)
                round_fail(round=rnd, stage=status, error=f"{type(exc).__name__}: {exc}")
                return "failed"
            return "done"
        run.__name__ = run.__qualname__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run
    return wrap


# --- cleaning: choose, import, clean, open ------------------------------------------------------------------------


@_stage(RoundStatus.CLEANING)
def round_clean(rnd: Round) -> None:
    """Choose which generated images readers see, store them in the round with the real images, clean them all
    (real and synthetic alike) and open labeling."""
    cfg = round_config(rnd)
    synthetic, real = cfg.budget(rnd.study)
    if not rnd.selection:
        selection = (comparison_selection(rnd, cfg.compare) if cfg.compare else
                     select_generated(rnd, budget=synthetic, strategy=cfg.selection, seed=round_seed(rnd),
                                      uncertainty_weight=cfg.uncertainty_weight))
        Round.objects.filter(pk=rnd.pk, selection={}).update(selection=selection)
        rnd.refresh_from_db()
    _import_selected(rnd)
    _attach_real(rnd, real)
    total = Image.objects.filter(round=rnd, cleaned_from__isnull=True, is_catch=False).count()
    done = Image.objects.filter(round=rnd, cleaned_from__isnull=False).count()
    progress_merge(rnd, to_clean=total + done, cleaned=done)

    def cleaned_one() -> None:
        nonlocal done
        done += 1
        progress_merge(rnd, cleaned=done)

    round_clean_images(round=rnd, on_cleaned=cleaned_one)
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != RoundStatus.CLEANING:
            return
        round_open_labeling(round=locked)
    round_advance(round=rnd)


def _import_selected(rnd: Round) -> None:
    """Store the chosen generated images in the round (every version's, in a comparison round)."""
    chosen = rnd.selection.get("chosen", [])
    for batch in round_batches(rnd):
        version = batch.model_version
        for item in GeneratedImage.objects.filter(batch=batch, index__in=chosen).order_by("index"):
            if Image.objects.filter(study=rnd.study, meta__generated=item.pk).exists():
                continue
            image_store(
                study=rnd.study, round=rnd, source=Source.SYNTHETIC, pixels=image_load(item.raw_key),
                prompt=item.prompt, seed=item.seed, generator=version.name, model_version=version,
                meta={"generated": item.pk, "batch": item.batch_id, "batch_index": item.index,
                      "prompt_encoded": item.prompt_encoded, "prompt_shortened": item.prompt_shortened,
                      "prompt_policy": batch.config.get("prompt_policy", "truncate")})
            heartbeat(rnd)


def _attach_real(rnd: Round, wanted: int) -> None:
    """Real images from the study's pool (imported, not yet read in any round), up to `wanted` in the round."""
    have = Image.objects.filter(round=rnd, source=Source.REAL, is_catch=False).count()
    if have >= wanted:
        return
    used = Image.objects.filter(study=rnd.study, cleaned_from__isnull=False).values("cleaned_from")
    pool = (Image.objects.filter(study=rnd.study, source=Source.REAL, round__isnull=True, is_catch=False,
                                 cleaned_from__isnull=True).exclude(pk__in=used).order_by("pk"))
    picked = list(pool.values_list("pk", flat=True)[: wanted - have])
    Image.objects.filter(pk__in=picked).update(round=rnd)
    if len(picked) < wanted - have:
        Round.objects.filter(pk=rnd.pk).update(metrics={
            **rnd.metrics, "warnings": [f"only {have + len(picked)} of {wanted} real images were available"]})


def round_clean_images(*, round: Round, on_cleaned=None) -> int:
    """Run text/marker removal on every image of the round, real and synthetic alike, so cleaning cannot become
    a tell. Each image is replaced in the round by its cleaned copy (`cleaned_from` links back to the raw one; the
    mask is stored). Safe to run twice: images already cleaned are skipped. Returns how many were cleaned."""
    from inference.jobs import Cleaner  # torch: round_simulate (default queue) is here too
    from inference.ml.devices import pick_device  # torch: round_simulate (default queue) is here too

    cleaner = Cleaner.for_settings(pick_device(settings.CXR_DEVICE))
    cleaned = 0
    for image in Image.objects.filter(round=round, cleaned_from__isnull=True, is_catch=False).order_by("pk"):
        if Image.objects.filter(cleaned_from=image).exists():
            continue
        result = cleaner.clean(image_load(image.storage_key))
        mask_key = default_storage.save(f"images/masks/{uuid.uuid4().hex}.png",
                                        ContentFile(png_bytes(result.mask.astype("uint8") * 255)))
        with transaction.atomic():
            stored = image_store(
                study=image.study, round=round, source=image.source, pixels=result.cleaned,
                file_sha256=hashlib.sha256(result.cleaned.tobytes() + image.sha256.encode()).hexdigest(),
                original_name=image.original_name, prompt=image.prompt, findings=image.findings, seed=image.seed,
                generator=image.generator, model_version=image.model_version, cleaned_from=image,
                mask_key=mask_key, meta={**image.meta, "mask_fraction": float(result.mask.mean())},
            )
            Image.objects.filter(pk=image.pk).update(round=None)
        cleaned += stored.created
        if on_cleaned is not None:
            on_cleaned()
    return cleaned


# --- simulated reading -----------------------------------------------------------------------------------------------


@_stage(RoundStatus.LABELING)
def round_simulate(rnd: Round) -> None:
    """The study's simulated readers answer their queues; labeling closes if that completes it."""
    last = [time.monotonic()]

    def beat() -> None:
        if time.monotonic() - last[0] > 2.0:
            last[0] = time.monotonic()
            heartbeat(rnd)

    round_simulate_readers(round=rnd, on_answer=beat)
    round_advance(round=rnd)


# --- evaluating ------------------------------------------------------------------------------------------------------


@_stage(RoundStatus.EVALUATING)
def round_evaluate(rnd: Round) -> None:
    """Reader statistics and image metrics for the round, the simulated readers' preference score of what it
    generated, and the promotion check of the new version against its parent; then done (and the next round,
    when configured)."""
    metrics, promote = evaluation_compute(rnd)
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != RoundStatus.EVALUATING:
            return
        locked.metrics = {**locked.metrics, **metrics}
        locked.save(update_fields=["metrics"])
        if promote and rnd.produced_version is not None:
            study_version_choose(study=rnd.study, version=rnd.produced_version, actor=None,
                                 reason=f"promoted by round {rnd.number}")
        round_transition(round=locked, to=RoundStatus.DONE)
    if round_config(rnd).auto_next:
        transaction.on_commit(lambda: round_launch(study=Study.objects.get(pk=rnd.study_id), config=rnd.config))
