"""Decoding one DICOM file: the study's modality/view rules checked on the header, the keyed hashes kept of its SOP
Instance UID and patient ID, de-identification before any pixel work, then the pixels through pydicom's decoders
(GDCM, OpenJPEG, RLE, CharLS) or GDCM directly, palette colour through its LUT, the VOI window, MONOCHROME1 inverted.
Pure Python (numpy, pydicom); no Django."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from annotation.images.decoded import (
    DecodedImage,
    ImageRejected,
    IngestLimits,
    check_pixels,
    decoded_result,
    stretch,
)
from annotation.images.deidentify import deidentify_dataset, keyed_hash

_BURNED_IN_MODALITIES = {"SC", "OT", "US", "XC", "ES", "DOC", "GM"}  # screenshots and scans of paper
ANY = "ANY"


@dataclass(frozen=True)
class AcceptRules:
    """Which DICOM files a study takes: modalities (CR, DX for chest radiographs; "ANY" or empty: all) and
    views (PA, AP; empty: any). PNG and JPEG files carry neither and are not held to them."""

    modalities: tuple[str, ...] = ("CR", "DX")
    views: tuple[str, ...] = ("PA", "AP")

    def modality_refusal(self, modality: str) -> str | None:
        """Why a file of `modality` is refused, or None when the study takes it."""
        mods = {m.upper() for m in self.modalities}
        if mods and ANY not in mods and modality.upper() not in mods:
            what = f"modality {modality}" if modality else "no modality recorded"
            return f"{what}: this study accepts {', '.join(sorted(mods))} only"
        return None

    def check(self, modality: str, view: str) -> None:
        if (refusal := self.modality_refusal(modality)) is not None:
            raise ImageRejected(f"{refusal} (a chest X-ray study; set its modalities to 'any' for other images)")
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


def looks_like_dicom(data: bytes) -> bool:
    """A DICOM file with its 128-byte preamble and "DICM", or a bare dataset (no preamble, no file meta) that
    opens with a group 0002 or 0008 element, little or big endian."""
    file_meta = data[:2] == b"\x02\x00" and data[4:6].isalpha() and data[4:6].isupper()  # explicit VR, always
    return data[128:132] == b"DICM" or file_meta or (data[:2] in (b"\x08\x00", b"\x00\x08") and len(data) > 8)


def decode_dicom(data: bytes, limits: IngestLimits, rules: AcceptRules | None, key: str) -> DecodedImage:
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
    check_pixels(cols, rows, limits)

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
    return decoded_result(pixels, "dicom", meta, deid_removed=removed, burned_in_phi=flagged, uid_key=uid_key,
                   patient_key=patient_key, identifiers=identifiers, match_keys=match_keys)


def _pixel_array(ds: pydicom.Dataset, ts: pydicom.uid.UID) -> np.ndarray:
    """pydicom's decoders (its plugins: GDCM, openjpeg, RLE, CharLS); else GDCM on its own, which reads what
    pydicom will not hand it (JPEG Extended with 12-bit samples, the common lossy CR/DX encoding)."""
    logger = logging.getLogger("pydicom")  # it logs each plugin's failure with a traceback; we say it once, below
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return ds.pixel_array
    except Exception as exc:  # missing decoder plugin, wrong length, corrupt codestream
        first = exc
    finally:
        logger.setLevel(level)
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
    return stretch(values.astype(np.float64), 0.5, 99.5), "percentile"
