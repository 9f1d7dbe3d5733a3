"""What decoding an uploaded file yields (`DecodedImage`) or refuses (`ImageRejected`), the limits it is held to,
and the small steps every decoder shares: the pixel-count check, percentile stretch, the final [0, 1] image.
Pure Python (numpy); no Django."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ImageRejected(Exception):
    """One uploaded file is refused; `reason` is a sentence that can be shown to the user."""

    def __init__(self, reason: str, *, filename: str = "") -> None:
        super().__init__(f"{filename}: {reason}" if filename else reason)
        self.reason = reason
        self.filename = filename


@dataclass(frozen=True)
class IngestLimits:
    max_file_bytes: int = 64 * 1024 * 1024  # one image file, bytes
    max_pixels: int = 40_000_000  # width * height of one image
    max_archive_entries: int = 20_000  # entries in one ZIP, directories and junk included
    max_archive_bytes: int = 8 * 1024**3  # total uncompressed size of the kept ZIP members, bytes
    max_ratio: float = 200.0  # uncompressed/compressed size above which a member is a zip bomb
    # Tiny members compress absurdly well (a 64 KiB run of zeros) yet cannot hurt: only members at
    # least this large (uncompressed bytes) are held to max_ratio.
    ratio_min_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # 2-D float32 in [0, 1], grayscale, windowed, bright = dense (MONOCHROME2)
    fmt: str  # "png" | "jpeg" | "dicom"
    width: int
    height: int
    deid_removed: tuple[str, ...] = ()  # DICOM keywords or "(gggg,eeee)" removed, emptied or replaced
    burned_in_phi: bool = False  # the DICOM says (or its modality suggests) text is burned into pixels
    metadata: dict[str, Any] = field(default_factory=dict)  # small, non-identifying facts only
    uid_key: str = ""  # keyed hash of the original SOP Instance UID (the UID itself is replaced)
    patient_key: str = ""  # keyed pseudonym of the patient ID (groups held-out splits by patient)
    # Identifying header values (names, IDs, UIDs, dates) to scrub from the file name and report; never stored.
    identifiers: tuple[str, ...] = field(default=(), repr=False)
    # "accession:<number>" and "study:<StudyInstanceUID>" to match a report by; never stored.
    match_keys: tuple[str, ...] = field(default=(), repr=False)


def mb(n: int) -> str:
    return f"{n / 1024**2:.0f} MB" if n >= 1024**2 else f"{n} bytes"


def check_pixels(width: int, height: int, limits: IngestLimits) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} pixels, over the {limits.max_pixels}-pixel limit (decompression bomb?)"
        )


def stretch(arr: np.ndarray, lo_pct: float, hi_pct: float) -> np.ndarray:
    lo, hi = np.percentile(arr, [lo_pct, hi_pct]) if arr.size else (0.0, 0.0)
    if hi <= lo:
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return (arr - lo) / (hi - lo)


def decoded_result(pixels: np.ndarray, fmt: str, meta: dict[str, Any], **extra: Any) -> DecodedImage:
    pixels = np.clip(np.nan_to_num(np.asarray(pixels, dtype=np.float32)), 0.0, 1.0)
    if pixels.ndim != 2:
        raise ImageRejected(f"decoded image has unexpected shape {pixels.shape}")
    h, w = pixels.shape
    return DecodedImage(np.ascontiguousarray(pixels), fmt, w, h, metadata=meta, **extra)
