"""Validate, de-identify and decode uploaded chest X-ray files before they are stored (the DICOM
de-identification profile itself is `annotation.images.deidentify`).

Pure Python (numpy, Pillow, pydicom); no Django. Every check that can refuse a file runs before the
expensive or dangerous step it protects: size before parsing, the header's pixel count before
decoding pixels, the whole ZIP directory before any member is read.
"""

from __future__ import annotations

import re
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from os import PathLike
from pathlib import PurePosixPath
from typing import IO, Any

import numpy as np
import pydicom
from PIL import Image, ImageFile, ImageOps
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from annotation.images.deidentify import deidentify_dataset, keyed_hash

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NOT_AN_IMAGE = "not a PNG, JPEG or DICOM file"


class ImageRejected(Exception):
    """One uploaded file is refused; `reason` is a sentence that can be shown to the user."""

    def __init__(self, reason: str, *, filename: str = "") -> None:
        super().__init__(f"{filename}: {reason}" if filename else reason)
        self.reason = reason
        self.filename = filename


class ArchiveRejected(Exception):
    """A whole ZIP upload is refused before anything is read out of it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


@dataclass(frozen=True)
class ArchiveMember:
    name: str  # the entry's name inside the ZIP, as stored
    size: int  # uncompressed size claimed by the ZIP directory (read_member does not trust it)


# --- decoding -----------------------------------------------------------------------------------
def _mb(n: int) -> str:
    return f"{n / 1024**2:.0f} MB" if n >= 1024**2 else f"{n} bytes"


def _check_pixels(width: int, height: int, limits: IngestLimits) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} pixels, over the {limits.max_pixels}-pixel limit (decompression bomb?)"
        )


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
            raise ImageRejected(f"file is {_mb(len(data))}, over the {_mb(limits.max_file_bytes)} limit")
        if not data:
            raise ImageRejected("file is empty")
        if data.startswith(PNG_MAGIC):
            return _decode_pillow(data, "png", limits)
        if data.startswith(JPEG_MAGIC):
            return _decode_pillow(data, "jpeg", limits)
        if _looks_like_dicom(data):
            return _decode_dicom(data, limits, rules, key)
        raise ImageRejected(NOT_AN_IMAGE)
    except ImageRejected as exc:
        raise ImageRejected(exc.reason, filename=filename) from exc.__cause__


def _decode_pillow(data: bytes, fmt: str, limits: IngestLimits) -> DecodedImage:
    label = fmt.upper()
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a half-grey truncated upload must fail, not pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            formats = ["PNG"] if fmt == "png" else ["JPEG", "MPO"]
            img = Image.open(BytesIO(data), formats=formats)
            _check_pixels(img.width, img.height, limits)  # header only; no pixel decoded yet
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
        pixels = arr / 65535.0 if bits == 16 else _stretch(arr, 0.0, 100.0)
    elif mode == "F":
        pixels, bits = _stretch(np.asarray(img, dtype=np.float64), 0.0, 100.0), 32
    else:  # 1, L, P, LA, RGB, RGBA, CMYK, YCbCr: ITU-R 601 luma; alpha is ignored
        pixels, bits = np.asarray(img.convert("L"), dtype=np.float32) / 255.0, 8
    meta = {"mode": mode, "bits": bits}
    return _result(pixels, fmt, meta)


def _stretch(arr: np.ndarray, lo_pct: float, hi_pct: float) -> np.ndarray:
    lo, hi = np.percentile(arr, [lo_pct, hi_pct]) if arr.size else (0.0, 0.0)
    if hi <= lo:
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return (arr - lo) / (hi - lo)


def _result(pixels: np.ndarray, fmt: str, meta: dict[str, Any], **extra: Any) -> DecodedImage:
    pixels = np.clip(np.nan_to_num(np.asarray(pixels, dtype=np.float32)), 0.0, 1.0)
    if pixels.ndim != 2:
        raise ImageRejected(f"decoded image has unexpected shape {pixels.shape}")
    h, w = pixels.shape
    return DecodedImage(np.ascontiguousarray(pixels), fmt, w, h, metadata=meta, **extra)


_BURNED_IN_MODALITIES = {"SC", "OT", "US", "XC", "ES", "DOC", "GM"}  # screenshots and scans of paper
ANY = "ANY"


@dataclass(frozen=True)
class AcceptRules:
    """Which DICOM files a study takes: modalities (CR, DX for chest radiographs; "ANY" or empty: all) and
    views (PA, AP; empty: any). PNG and JPEG files carry neither and are not held to them."""

    modalities: tuple[str, ...] = ("CR", "DX")
    views: tuple[str, ...] = ("PA", "AP")

    def check(self, modality: str, view: str) -> None:
        mods = {m.upper() for m in self.modalities}
        if mods and ANY not in mods and modality not in mods:
            what = f"modality {modality}" if modality else "no modality recorded"
            raise ImageRejected(f"{what}: this study accepts {', '.join(sorted(mods))} only "
                                f"(a chest X-ray study; set its modalities to 'any' for other images)")
        views = {v.upper() for v in self.views}
        if views and ANY not in views and view not in views:
            what = f"view {view}" if view else "no view position recorded (ViewPosition, view code or description)"
            raise ImageRejected(f"{what}: this study accepts {', '.join(sorted(views))} views only "
                                f"(set its views to empty to accept any)")


_VIEW_CODES = {"postero-anterior": "PA", "antero-posterior": "AP", "left lateral": "LL", "right lateral": "RL",
               "lateral": "LL"}
_VIEW_WORD = re.compile(r"(?<![A-Z0-9])(PA|AP|LL|RL|LAT|LATERAL)(?![A-Z0-9])")


def _view_of(ds: pydicom.Dataset) -> str:
    """ViewPosition; else the view code's meaning; else a PA/AP/LAT word in the series, protocol or study name."""
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view:
        return view
    for item in ds.get("ViewCodeSequence") or []:
        meaning = str(item.get("CodeMeaning", "")).strip().lower()
        for words, code in _VIEW_CODES.items():
            if words in meaning:
                return code
    for keyword in ("SeriesDescription", "ProtocolName", "StudyDescription", "AcquisitionDeviceProcessingDescription"):
        found = _VIEW_WORD.search(str(ds.get(keyword, "") or "").upper())
        if found:
            return {"LAT": "LL", "LATERAL": "LL"}[found[1]] if found[1].startswith("LAT") else found[1]
    return ""


def _identifiers(ds: pydicom.Dataset) -> tuple[str, ...]:
    """Header values that identify the patient or the study, to scrub from a file name or a report (never stored)."""
    found: set[str] = set()
    for keyword in ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate",
                    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID", "StudyDate",
                    "InstitutionName", "ReferringPhysicianName"):
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        values = value if isinstance(value, MultiValue) else [value]
        for v in values:
            text = str(v).strip()
            if len(text) >= 3:
                found.add(text)
                if keyword.endswith("Name"):  # DICOM PN "Family^Given": each part, and "Given Family"
                    parts = [x for x in re.split(r"[\^=]", text) if len(x.strip()) >= 2]
                    found.update(x.strip() for x in parts)
                    if len(parts) >= 2:
                        found.add(f"{parts[1].strip()} {parts[0].strip()}")
                if keyword.endswith("Date") and len(text) == 8 and text.isdigit():  # YYYYMMDD as reports write it
                    y, m, d = text[:4], text[4:6], text[6:]
                    found.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"})
    return tuple(sorted(found, key=len, reverse=True))


def _looks_like_dicom(data: bytes) -> bool:
    """A DICOM file with its 128-byte preamble and "DICM", or a bare dataset (no preamble, no file meta) that
    opens with a group 0002 or 0008 element, little or big endian."""
    file_meta = data[:2] == b"\x02\x00" and data[4:6].isalpha() and data[4:6].isupper()  # explicit VR, always
    return data[128:132] == b"DICM" or file_meta or (data[:2] in (b"\x08\x00", b"\x00\x08") and len(data) > 8)


def _decode_dicom(data: bytes, limits: IngestLimits, rules: AcceptRules | None, key: str) -> DecodedImage:
    try:
        ds = pydicom.dcmread(BytesIO(data), force=data[128:132] != b"DICM")
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        samples = int(ds.get("SamplesPerPixel", 1))
        _ = ds["PixelData"]  # present? (its value stays undecoded until pixel_array)
    except ImageRejected:
        raise
    except (KeyError, AttributeError) as exc:  # pydicom stops quietly at the end of a truncated file
        missing = "Pixel Data" if isinstance(exc, KeyError) else getattr(exc, "name", exc)
        raise ImageRejected(
            f"DICOM file holds no image ({missing} missing): truncated, or not an image"
        ) from exc
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error, ValueError, ...
        raise ImageRejected(f"corrupt or truncated DICOM: {exc}") from exc
    modality = str(ds.get("Modality", "") or "").strip().upper()
    view = _view_of(ds)
    if rules is not None:
        rules.check(modality, view)
    if frames > 1:
        raise ImageRejected(
            f"multi-frame DICOM ({frames} frames) is not supported; upload one image per file"
        )
    _check_pixels(cols, rows, limits)

    burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if ts is None:  # a bare dataset: pydicom read it as the syntax it guessed
        ts = pydicom.uid.ExplicitVRLittleEndian if not ds.is_implicit_VR else pydicom.uid.ImplicitVRLittleEndian
        if not ds.is_little_endian:
            ts = pydicom.uid.ExplicitVRBigEndian
        if file_meta is None:
            ds.file_meta = file_meta = pydicom.dataset.FileMetaDataset()
        file_meta.TransferSyntaxUID = ts  # what the decoders read the pixel layout from
    meta: dict[str, Any] = {
        "modality": modality,
        "view_position": view,
        "photometric": photometric,
        "bits_stored": int(ds.get("BitsStored", 0)),
        "bits_allocated": int(ds.get("BitsAllocated", 0)),
        "transfer_syntax": ts.name if ts else "",
        "pixel_spacing_mm": [float(v) for v in spacing] if spacing else None,
        "burned_in_annotation": burned_in,
    }
    sop_uid = str(ds.get("SOPInstanceUID", "") or (file_meta or {}).get("MediaStorageSOPInstanceUID", "") or "")
    patient = str(ds.get("PatientID", "") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    uid_key = keyed_hash(key, "sop", sop_uid.strip()) if sop_uid.strip() else ""
    patient_key = keyed_hash(key, "patient", f"{issuer}|{patient}")[:16] if patient else ""
    identifiers = _identifiers(ds)
    match_keys = tuple(f"{kind}:{str(ds.get(kw, '') or '').strip()}" for kind, kw in
                       (("accession", "AccessionNumber"), ("study", "StudyInstanceUID")) if str(ds.get(kw, "") or "").strip())
    removed = tuple(deidentify_dataset(ds))  # before any pixel work, so nothing below sees PHI

    stored = _pixel_array(ds, ts)
    if photometric == "PALETTE COLOR" and stored.ndim == 2:
        try:
            rgb = apply_color_lut(stored, ds)
        except Exception as exc:  # a palette file without (or with a broken) lookup table
            raise ImageRejected(f"palette-colour DICOM whose colour lookup table cannot be applied: {exc}") from exc
        top = 65535.0 if rgb.dtype.itemsize > 1 else 255.0
        pixels, meta["window"] = _luma(rgb) / top, "none (palette colour through its LUT)"
    elif samples == 3 and stored.ndim == 3:  # pydicom hands colour over as RGB (YBR converted)
        pixels, meta["window"] = _luma(stored) / max(float(2 ** int(ds.BitsStored) - 1), 1.0), "none (colour)"
    elif stored.ndim == 2:
        pixels, meta["window"] = _window(stored, ds)
        if photometric == "MONOCHROME1":  # stored bright = air; flip so bright = bone
            pixels = 1.0 - pixels
    else:
        raise ImageRejected(f"unsupported DICOM pixel layout {stored.shape} ({photometric})")
    flagged = burned_in == "YES" or (not burned_in and modality in _BURNED_IN_MODALITIES)
    return _result(pixels, "dicom", meta, deid_removed=removed, burned_in_phi=flagged, uid_key=uid_key,
                   patient_key=patient_key, identifiers=identifiers, match_keys=match_keys)


def _pixel_array(ds: pydicom.Dataset, ts: pydicom.uid.UID) -> np.ndarray:
    """pydicom's decoders (its plugins: GDCM, openjpeg, RLE, CharLS); else GDCM on its own, which reads what
    pydicom will not hand it (JPEG Extended with 12-bit samples, the common lossy CR/DX encoding)."""
    try:
        return ds.pixel_array
    except Exception as exc:  # missing decoder plugin, wrong length, corrupt codestream
        first = exc
    if not ts.is_compressed:  # native pixels need no decoder: wrong length or a broken header
        raise ImageRejected(f"cannot decode the DICOM pixel data ({ts.name}): {first}") from first
    arr = _gdcm_pixel_array(ds)
    if arr is not None:
        return arr
    raise ImageRejected(f"no installed decoder can read this DICOM's pixel data, encoded as {ts.name} ({ts}); "
                        f"pydicom's plugins said: {first}; GDCM could not read it either") from first


_GDCM_TYPES = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16, "UINT32": np.uint32,
               "INT32": np.int32}


def _gdcm_pixel_array(ds: pydicom.Dataset) -> np.ndarray | None:
    try:
        import gdcm  # python-gdcm (BSD); optional here, a dependency of the main install
    except ImportError:
        return None
    import tempfile
    from pathlib import Path

    try:
        with tempfile.TemporaryDirectory(prefix="cxr-gdcm-") as tmp:
            path = Path(tmp) / "image.dcm"  # ds is de-identified by now: no PHI reaches the disk
            ds.save_as(path, enforce_file_format=True)
            reader = gdcm.ImageReader()
            reader.SetFileName(str(path))
            if not reader.Read():
                return None
            image = reader.GetImage()
            fmt = image.GetPixelFormat()
            dtype = _GDCM_TYPES.get(fmt.GetScalarTypeAsString())
            if dtype is None:
                return None
            raw = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM hands bytes over as str
        samples = int(fmt.GetSamplesPerPixel())
        shape = (int(ds.Rows), int(ds.Columns)) + ((samples,) if samples > 1 else ())
        arr = np.frombuffer(raw, dtype=dtype)
        return arr[: int(np.prod(shape))].reshape(shape) if arr.size >= np.prod(shape) else None
    except Exception:  # GDCM raises little; anything odd means it could not decode this file either
        return None


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _window(stored: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, str]:
    """Modality LUT/rescale, then the first VOI LUT or window; else a 0.5-99.5 percentile window."""
    values = apply_modality_lut(stored, ds)  # stays integer when there is no rescale, as a VOI LUT needs
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if ds.get("VOILUTSequence") or has_window:
        try:
            out = apply_voi_lut(values, ds).astype(np.float64)
            # Scale by the VOI's own output range, not the image's: the LUT's entries, or what a
            # window maps the most extreme inputs to (pydicom's y_min/y_max). A decreasing LUT stays so.
            if ds.get("VOILUTSequence"):
                count, first = ds.VOILUTSequence[0].LUTDescriptor[:2]
                domain, source = np.arange(first, first + (count or 65536), dtype=np.int64), "voi_lut"
            else:
                domain, source = np.array([-(2.0**40), 2.0**40]), "window"
            ends = apply_voi_lut(domain, ds).astype(np.float64)
            lo, hi = float(ends.min()), float(ends.max())
            if hi > lo:
                return (out - lo) / (hi - lo), source
        except (ValueError, IndexError, TypeError, AttributeError):
            pass  # malformed window: fall back to the data's own range
    return _stretch(values.astype(np.float64), 0.5, 99.5), "percentile"


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
        raise ArchiveRejected(f"archive unpacks to {_mb(total)}, over the {_mb(cap)} limit")
    return members


def read_member(zf: zipfile.ZipFile, member: ArchiveMember, limits: IngestLimits = IngestLimits()) -> bytes:
    """Read one member, stopping as soon as it passes max_file_bytes whatever its header claims."""
    cap = limits.max_file_bytes
    if member.size > cap:
        raise ImageRejected(f"file is {_mb(member.size)}, over the {_mb(cap)} limit", filename=member.name)
    chunks: list[bytes] = []
    read = 0
    try:
        with zf.open(member.name) as fh:
            while chunk := fh.read(min(1024 * 1024, cap + 1 - read)):
                chunks.append(chunk)
                read += len(chunk)
                if read > cap:
                    raise ImageRejected(f"file is over the {_mb(cap)} limit", filename=member.name)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        raise ImageRejected(f"corrupt archive entry: {exc}", filename=member.name) from exc
    return b"".join(chunks)
