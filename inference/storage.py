"""Stored files at the bottom layer: the one loader of stored PNGs, the one PNG encoder of generated images, and
worker-local copies of stored weights. Every layer above reads stored images through `image_load`."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from inference.ml.errors import WeightsError


def image_load(key: str) -> np.ndarray:
    """A stored image as uint8 grayscale (16-bit normalised copies are scaled down, colour keeps its first
    channel)."""
    with default_storage.open(key, "rb") as handle:
        arr = np.asarray(PILImage.open(io.BytesIO(handle.read())))
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    return arr if arr.ndim == 2 else arr[..., 0]


def png_bytes(gray8: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG (generated images, cleaning masks)."""
    buffer = io.BytesIO()
    PILImage.fromarray(gray8, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def local_copy(key: str) -> Path:
    """A worker-local copy of a stored file (LoRA adapters, checkpoints), fetched once and reused."""
    target = Path(settings.CXR_CACHE_DIR) / "storage" / key
    if not default_storage.exists(key):
        raise WeightsError(f"Stored file {key!r} does not exist.")
    if target.exists() and target.stat().st_size == default_storage.size(key):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    with default_storage.open(key, "rb") as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    partial.replace(target)
    return target
