"""Storing an image: its normalised full-resolution copy, its blinded display rendition and its row, written
together (nothing half-written remains when one part fails); identical content is stored once per study."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from annotation.images.renditions import encode_png16, render_display
from annotation.models import Image, Round, Study

log = logging.getLogger("cxr.annotation")


@dataclass(frozen=True)
class StoredImage:
    image: Image
    created: bool
    matched_by: str = ""  # when not created: "file bytes", "decoded pixels" or "SOP Instance UID"


def image_store(
    *,
    study: Study,
    pixels: np.ndarray,
    source: str,
    file_sha256: str | None = None,
    round: Round | None = None,
    original_name: str = "",
    prompt: str = "",
    pixel_sha256: str = "",
    sop_uid_hash: str = "",
    **fields,
) -> StoredImage:
    """Store one image (normalised full-resolution copy + blinded display rendition) and its row.

    An image already in the study is returned instead (created=False, `matched_by` says how it was found): the
    same file bytes, the same decoded pixels (one radiograph under two encodings) or the same original SOP
    Instance UID (its keyed hash). If anything fails, the files written here are removed again, so nothing
    half-written remains.
    """
    full = encode_png16(pixels)
    sha = file_sha256 or hashlib.sha256(full).hexdigest()
    images = Image.objects.filter(study=study)
    for how, lookup in (("file bytes", {"sha256": sha}), ("decoded pixels", {"pixel_sha256": pixel_sha256}),
                        ("SOP Instance UID", {"sop_uid_hash": sop_uid_hash})):
        if all(lookup.values()) and (existing := images.filter(**lookup).order_by("pk").first()):
            return StoredImage(existing, False, how)
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
                prompt=prompt, pixel_sha256=pixel_sha256, sop_uid_hash=sop_uid_hash, **fields,
            )
        return StoredImage(image, True)
    except IntegrityError:
        _remove(written)
        return StoredImage(Image.objects.get(study=study, sha256=sha), False, "file bytes")
    except BaseException:
        _remove(written)
        raise


def _remove(keys: Iterable[str]) -> None:
    for key in keys:
        try:
            default_storage.delete(key)
        except OSError:
            log.exception("could not remove %s after a failed store", key)
