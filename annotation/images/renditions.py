"""The single rendition readers see, made the same way for real and synthetic images.

8-bit grayscale, square, letterboxed, PNG with no compression and no ancillary chunks: the byte length of the
file depends on the display size alone, so neither size nor encoding can tell a real image from a synthetic one.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """Any 2-D grayscale array (uint8, uint16 or float) as float32 in [0, 1]."""
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def render_display(pixels: np.ndarray, size: int) -> bytes:
    """Fit the image inside size×size (aspect kept, area-averaged), pad with black, encode as stored PNG."""
    arr = to_unit_float(pixels)
    h, w = arr.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = PILImage.fromarray(arr, mode="F")
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), PILImage.Resampling.BOX if scale < 1 else PILImage.Resampling.BICUBIC)
    fitted = np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = fitted
    return encode_png(canvas)


def encode_png(gray8: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(gray8, mode="L").save(buffer, format="PNG", compress_level=0, optimize=False)
    return buffer.getvalue()


def encode_png16(pixels: np.ndarray) -> bytes:
    """Full-resolution normalised copy (16-bit) kept for training and metrics; never served to readers."""
    arr = np.clip(to_unit_float(pixels) * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    PILImage.fromarray(arr).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
