"""Writes for studies, rounds, images and the audit log. Views, tasks, the admin and commands call these."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotation.answers import validate_rubric_definition
from annotation.blinding import encode_png16, render_display
from annotation.models import (
    AuditEvent,
    Image,
    ReadingCase,
    Role,
    Round,
    RoundStatus,
    Source,
    Study,
    StudyMembership,
    TaskKind,
)

log = logging.getLogger("cxr.annotation")

#: Legal round transitions; every status change goes through `round_transition`.
ROUND_TRANSITIONS: dict[str, set[str]] = {
    RoundStatus.DRAFT: {RoundStatus.GENERATING, RoundStatus.LABELING, RoundStatus.CANCELLED},
    RoundStatus.GENERATING: {RoundStatus.CLEANING, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.CLEANING: {RoundStatus.LABELING, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.LABELING: {RoundStatus.TRAINING_REWARD, RoundStatus.DONE, RoundStatus.CANCELLED},
    RoundStatus.TRAINING_REWARD: {RoundStatus.FINETUNING, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.FINETUNING: {RoundStatus.EVALUATING, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.EVALUATING: {RoundStatus.DONE, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.FAILED: {
        RoundStatus.GENERATING,
        RoundStatus.CLEANING,
        RoundStatus.TRAINING_REWARD,
        RoundStatus.FINETUNING,
        RoundStatus.EVALUATING,
        RoundStatus.CANCELLED,
    },
    RoundStatus.DONE: set(),
    RoundStatus.CANCELLED: set(),
}


class IllegalTransition(ValidationError):
    pass


def audit(*, actor: AbstractUser | None, action: str, study: Study | None = None, obj=None, **data) -> None:
    AuditEvent.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        study=study,
        object_type=type(obj).__name__.lower() if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        data=data,
    )


# --- studies -----------------------------------------------------------------------------------------------------


def study_create(*, name: str, title: str, actor: AbstractUser | None = None, **settings_) -> Study:
    study = Study(name=name, title=title, created_by=actor if actor and actor.is_authenticated else None,
                  **settings_)
    study_validate(study=study)
    with transaction.atomic():
        study.save()
        audit(actor=actor, action="study.create", study=study, obj=study, name=name)
    return study


def study_validate(*, study: Study) -> None:
    validate_rubric_definition(study.rubric)
    if not 0.0 <= study.real_fraction <= 1.0:
        raise ValidationError("real_fraction must be between 0 and 1.")
    if not 0.0 <= study.catch_rate < 0.5 or not 0.0 <= study.repeat_rate < 0.5:
        raise ValidationError("catch_rate and repeat_rate must be in [0, 0.5).")
    unknown = set(study.task_kinds) - set(TaskKind.values)
    if not study.task_kinds or unknown:
        raise ValidationError(f"task_kinds must be a non-empty list drawn from {list(TaskKind.values)}.")
    if study.readers_per_image < 1 or not 64 <= study.display_size <= 2048:
        raise ValidationError("readers_per_image must be ≥ 1 and display_size within 64–2048 px.")


def membership_add(*, study: Study, user: AbstractUser, role: str, simulated: bool = False,
                   actor: AbstractUser | None = None) -> StudyMembership:
    with transaction.atomic():
        member, created = StudyMembership.objects.get_or_create(
            study=study, user=user, role=role,
            defaults={"pseudonym": f"{'R' if role == Role.READER else 'A'}-{uuid.uuid4().hex[:8]}",
                      "is_simulated": simulated},
        )
        if created:
            audit(actor=actor, action="membership.add", study=study, obj=member, user=user.username, role=role)
    return member


def study_reveal(*, study: Study, actor: AbstractUser) -> Study:
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study.pk)
        if study.revealed_at is None:
            study.revealed_at = timezone.now()
            study.save(update_fields=["revealed_at"])
            audit(actor=actor, action="study.reveal", study=study, obj=study)
    return study


# --- rounds ------------------------------------------------------------------------------------------------------


def round_create(*, study: Study, actor: AbstractUser | None = None) -> Round:
    with transaction.atomic():
        last = Round.objects.select_for_update().filter(study=study).order_by("-number").first()
        rnd = Round.objects.create(study=study, number=(last.number + 1) if last else 1)
        audit(actor=actor, action="round.create", study=study, obj=rnd, number=rnd.number)
    return rnd


def round_transition(*, round: Round, to: str, actor: AbstractUser | None = None, error: str = "") -> Round:
    """Move a round to `to`, refusing illegal moves; the row is locked so two workers cannot both move it."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().get(pk=round.pk)
        if to == rnd.status:
            return rnd
        if to not in ROUND_TRANSITIONS[rnd.status]:
            raise IllegalTransition(f"A round cannot go from {rnd.status} to {to}.")
        previous, rnd.status = rnd.status, to
        now = timezone.now()
        if to == RoundStatus.FAILED:
            rnd.stage_error = f"{previous}: {error}" if error else previous
        if to in (RoundStatus.DONE, RoundStatus.CANCELLED):
            rnd.finished_at = now
        if previous == RoundStatus.LABELING:
            rnd.labeling_closed_at = now
        rnd.save()
        audit(actor=actor, action=f"round.{to}", study=rnd.study, obj=rnd, previous=previous)
        from annotation.webhooks import emit

        emit(study=rnd.study_id, event="round.status", payload={"round": rnd.number, "round_id": rnd.pk,
                                                                "status": to, "previous": previous})
    return rnd


def round_open_labeling(*, round: Round, actor: AbstractUser | None = None) -> Round:
    """Build the round's reading cases from its images and open it to readers."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().select_related("study").get(pk=round.pk)
        if rnd.status == RoundStatus.LABELING:
            return rnd
        if RoundStatus.LABELING not in ROUND_TRANSITIONS[rnd.status]:
            raise IllegalTransition(f"A round cannot go from {rnd.status} to labeling.")
        images = list(Image.objects.filter(round=rnd).order_by("pk"))
        if not images:
            raise ValidationError("The round has no images to read.")
        rnd.pools = _build_cases(rnd, images)
        rnd.labeling_opened_at = timezone.now()
        rnd.save(update_fields=["pools", "labeling_opened_at"])
        rnd = round_transition(round=rnd, to=RoundStatus.LABELING, actor=actor)
    _refresh_planner_statistics(ReadingCase._meta.db_table)
    return rnd


def _refresh_planner_statistics(table: str) -> None:
    """After a bulk insert the planner's row estimates are stale and it may scan the round instead of using the
    (round, kind, slot, idx) index; ANALYZE keeps next-task flat from 1k to 100k cases (bench/portal.py)."""
    with connection.cursor() as cursor:
        cursor.execute(f'ANALYZE "{table}"')


def _build_cases(rnd: Round, images: Sequence[Image]) -> dict:
    study = rnd.study
    catch_capacity = 1_000_000  # catch trials are shown to every reader, at most once each
    cases: list[ReadingCase] = []
    pools: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(kind: str, slot: str, image: Image, image_b: Image | None = None, catch: bool = False) -> None:
        key = f"catch:{slot}" if catch else slot
        cases.append(ReadingCase(
            round=rnd, kind=kind, slot=slot, is_catch=catch, idx=pools[kind][key], image=image, image_b=image_b,
            capacity=catch_capacity if catch else study.readers_per_image,
        ))
        pools[kind][key] += 1

    for kind in study.task_kinds:
        if kind == TaskKind.PREFERENCE:
            by_prompt: dict[str, list[Image]] = defaultdict(list)
            for image in images:
                if image.source == Source.SYNTHETIC and not image.is_catch:
                    by_prompt[image.prompt].append(image)
            for group in by_prompt.values():
                for a, b in zip(group[0::2], group[1::2], strict=False):
                    add(kind, "pair", a, b)
        else:
            for image in images:
                add(kind, image.source, image, catch=image.is_catch)
    ReadingCase.objects.bulk_create(cases, batch_size=2000)
    return {kind: dict(slots) for kind, slots in pools.items()}


# --- images ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredImage:
    image: Image
    created: bool


def image_store(
    *,
    study: Study,
    pixels: np.ndarray,
    source: str,
    file_sha256: str | None = None,
    round: Round | None = None,
    original_name: str = "",
    prompt: str = "",
    **fields,
) -> StoredImage:
    """Store one image (normalised full-resolution copy + blinded display rendition) and its row.

    Identical content already in the study is returned instead (created=False). If anything fails, the files
    written here are removed again, so nothing half-written remains.
    """
    full = encode_png16(pixels)
    sha = file_sha256 or hashlib.sha256(full).hexdigest()
    existing = Image.objects.filter(study=study, sha256=sha).first()
    if existing:
        return StoredImage(existing, False)
    display = render_display(pixels, study.display_size)
    name = uuid.uuid4().hex
    written: list[str] = []
    try:
        written.append(default_storage.save(f"images/full/{name}.png", ContentFile(full)))
        written.append(default_storage.save(f"images/display/{name}.png", ContentFile(display)))
        with transaction.atomic():
            image = Image.objects.create(
                study=study, round=round, source=source, storage_key=written[0], display_key=written[1],
                sha256=sha, width=pixels.shape[1], height=pixels.shape[0], original_name=original_name[:255],
                prompt=prompt, **fields,
            )
        return StoredImage(image, True)
    except IntegrityError:
        _remove(written)
        return StoredImage(Image.objects.get(study=study, sha256=sha), False)
    except BaseException:
        _remove(written)
        raise


def _remove(keys: Iterable[str]) -> None:
    for key in keys:
        try:
            default_storage.delete(key)
        except OSError:
            log.exception("could not remove %s after a failed store", key)


# --- cleaning ------------------------------------------------------------------------------------------------------


def round_clean_images(*, round: Round, on_cleaned=None) -> int:
    """Run text/marker removal on every image of the round, real and synthetic alike, so cleaning cannot become
    a tell. Each image is replaced in the round by its cleaned copy (`cleaned_from` links back to the raw one; the
    mask is stored). Safe to run twice: images already cleaned are skipped. Returns how many were cleaned."""
    import io

    from django.conf import settings
    from PIL import Image as PILImage

    from inference.devices import pick_device
    from inference.services import Cleaner

    cleaner = Cleaner.for_settings(pick_device(settings.CXR_DEVICE))
    cleaned = 0
    for image in Image.objects.filter(round=round, cleaned_from__isnull=True, is_catch=False).order_by("pk"):
        if Image.objects.filter(cleaned_from=image).exists():
            continue
        with default_storage.open(image.storage_key, "rb") as handle:
            pixels = np.asarray(PILImage.open(io.BytesIO(handle.read())))
        gray8 = (pixels.astype(np.float32) / 257.0 + 0.5).astype(np.uint8) if pixels.dtype == np.uint16 else pixels
        result = cleaner.clean(gray8)
        buffer = io.BytesIO()
        PILImage.fromarray(result.mask.astype(np.uint8) * 255).save(buffer, format="PNG")
        mask_key = default_storage.save(f"images/masks/{uuid.uuid4().hex}.png", ContentFile(buffer.getvalue()))
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
