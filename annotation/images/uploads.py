"""What an uploaded file or archive must pass before it is stored: chest X-ray files (PNG, JPEG, DICOM) checked
and decoded, ZIP archives checked whole (DICOM decoding: `annotation.images.dicom`; its de-identification profile:
`annotation.images.deidentify`; importing what passed: `annotation.images.importing`).

Pure Python (numpy, Pillow, pydicom); no Django. Every check that can refuse a file runs before the
expensive or dangerous step it protects: size before parsing, the header's pixel count before
decoding pixels, the whole ZIP directory before any member is read.
"""

from __future__ import annotations

import stat
import warnings
import zipfile
from dataclasses import dataclass
from io import BytesIO
from os import PathLike
from pathlib import PurePosixPath
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from annotation.images.decoded import (
    DecodedImage,
    ImageRejected,
    IngestLimits,
    check_pixels,
    decoded_result,
    mb,
    stretch,
)
from annotation.images.dicom import AcceptRules, decode_dicom, looks_like_dicom

__all__ = ["NOT_AN_IMAGE", "AcceptRules", "ArchiveMember", "ArchiveRejected", "DecodedImage", "ImageRejected",
           "IngestLimits", "decode_image", "iter_archive", "read_member"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NOT_AN_IMAGE = "not a PNG, JPEG or DICOM file"


class ArchiveRejected(Exception):
    """A whole ZIP upload is refused before anything is read out of it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ArchiveMember:
    name: str  # the entry's name inside the ZIP, as stored
    size: int  # uncompressed size claimed by the ZIP directory (read_member does not trust it)


# --- decoding -----------------------------------------------------------------------------------
def decode_image(data: bytes, *, filename: str, limits: IngestLimits = IngestLimits(),
                 rules: AcceptRules | None = None, key: str = "") -> DecodedImage:
    """Validate one uploaded file and decode it to a windowed grayscale image in [0, 1].

    Raises ImageRejected (with a user-facing `.reason`) for anything that is not a sound, decodable,
    single-frame PNG, JPEG or DICOM image within `limits`, and for a DICOM file outside `rules` (checked on its
    header, before any pixel is decoded). DICOM files are de-identified first; `key` keys the hashes kept of
    their SOP Instance UID and patient ID.
    """
    try:
        if len(data) > limits.max_file_bytes:
            raise ImageRejected(f"file is {mb(len(data))}, over the {mb(limits.max_file_bytes)} limit")
        if not data:
            raise ImageRejected("file is empty")
        if data.startswith(PNG_MAGIC):
            return _decode_pillow(data, "png", limits)
        if data.startswith(JPEG_MAGIC):
            return _decode_pillow(data, "jpeg", limits)
        if looks_like_dicom(data):
            return decode_dicom(data, limits, rules, key)
        raise ImageRejected(NOT_AN_IMAGE)
    except ImageRejected as exc:
        raise ImageRejected(exc.reason, filename=filename) from exc.__cause__
    except Exception as exc:  # whatever else a real-world file trips over: refused with the reason, not a traceback
        raise ImageRejected(f"unreadable file ({type(exc).__name__}: {exc})", filename=filename) from exc


def _decode_pillow(data: bytes, fmt: str, limits: IngestLimits) -> DecodedImage:
    label = fmt.upper()
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a half-grey truncated upload must fail, not pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            formats = ["PNG"] if fmt == "png" else ["JPEG", "MPO"]
            img = Image.open(BytesIO(data), formats=formats)
            check_pixels(img.width, img.height, limits)  # header only; no pixel decoded yet
            img.verify()  # checksums and structure; verify() leaves the image unusable, so reopen
            img = Image.open(BytesIO(data), formats=formats)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            f"image is too large to decode safely, over the {limits.max_pixels}-pixel limit "
            f"(decompression bomb?): {exc}"
        ) from exc
    except ImageRejected:
        raise
    except Image.UnidentifiedImageError as exc:  # its message names an in-memory buffer: say what it means
        raise ImageRejected(f"corrupt or truncated {label}: the decoder cannot read its header") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise ImageRejected(f"corrupt or truncated {label}: {exc}") from exc
    if fmt == "jpeg":
        try:
            img = ImageOps.exif_transpose(img)  # phone photos of films are often rotated by EXIF only
        except Exception:  # a broken EXIF block is no reason to refuse the pixels
            pass
    mode = img.mode
    if mode.startswith("I;16"):
        pixels, bits = np.asarray(img, dtype=np.float32) / 65535.0, 16  # full 16-bit range, not 255
    elif mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        bits = 16 if arr.min() >= 0 and arr.max() <= 65535 else 32
        pixels = arr / 65535.0 if bits == 16 else stretch(arr, 0.0, 100.0)
    elif mode == "F":
        pixels, bits = stretch(np.asarray(img, dtype=np.float64), 0.0, 100.0), 32
    else:  # 1, L, P, LA, RGB, RGBA, CMYK, YCbCr: ITU-R 601 luma; alpha is ignored
        pixels, bits = np.asarray(img.convert("L"), dtype=np.float32) / 255.0, 8
    meta = {"mode": mode, "bits": bits}
    return decoded_result(pixels, fmt, meta)


# --- archives -----------------------------------------------------------------------------------
def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and ("__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store")


def _check_name(name: str) -> None:
    norm = name.replace("\\", "/")  # a Windows extractor would treat backslashes as separators
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise ArchiveRejected(f"archive entry {name!r} has an absolute path")
    if ".." in norm.split("/"):
        raise ArchiveRejected(f"archive entry {name!r} climbs out of the archive with '..'")


def iter_archive(
    path_or_file: str | PathLike[str] | IO[bytes], *, limits: IngestLimits = IngestLimits()
) -> list[ArchiveMember]:
    """Validate a whole ZIP's directory and list the image files to read with `read_member`.

    Nothing is decompressed here. Directories and macOS junk (__MACOSX/, ._*, .DS_Store) are skipped.
    """
    try:
        with zipfile.ZipFile(path_or_file) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ArchiveRejected(f"not a valid ZIP archive: {exc}") from exc
    if len(infos) > (most := limits.max_archive_entries):
        raise ArchiveRejected(f"archive has {len(infos)} entries, over the {most}-entry limit")
    members: list[ArchiveMember] = []
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        _check_name(name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ArchiveRejected(f"archive entry {name!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise ArchiveRejected(f"archive entry {name!r} is encrypted")
        if name in seen:
            raise ArchiveRejected(f"archive holds {name!r} twice")
        seen.add(name)
        total += info.file_size  # junk included: an extractor other than ours would unpack it
        if info.is_dir() or _is_junk(name):
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
            limit = f"{limits.max_ratio:.0f}-fold limit"
            raise ArchiveRejected(
                f"archive entry {name!r} expands {ratio:.0f}-fold, over the {limit} (zip bomb?)"
            )
        members.append(ArchiveMember(name=name, size=info.file_size))
    if total > (cap := limits.max_archive_bytes):
        raise ArchiveRejected(f"archive unpacks to {mb(total)}, over the {mb(cap)} limit")
    return members


def read_member(zf: zipfile.ZipFile, member: ArchiveMember, limits: IngestLimits = IngestLimits()) -> bytes:
    """Read one member, stopping as soon as it passes max_file_bytes whatever its header claims."""
    cap = limits.max_file_bytes
    if member.size > cap:
        raise ImageRejected(f"file is {mb(member.size)}, over the {mb(cap)} limit", filename=member.name)
    chunks: list[bytes] = []
    read = 0
    try:
        with zf.open(member.name) as fh:
            while chunk := fh.read(min(1024 * 1024, cap + 1 - read)):
                chunks.append(chunk)
                read += len(chunk)
                if read > cap:
                    raise ImageRejected(f"file is over the {mb(cap)} limit", filename=member.name)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ImageRejected(f"corrupt archive entry: {exc}", filename=member.name) from exc
    return b"".join(chunks)
