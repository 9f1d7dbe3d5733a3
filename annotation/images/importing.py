"""Import of real images (folder, ZIP or single file, plus an optional CSV of reports).

A bad file is rejected with its reason and the rest still imports; a bad archive is rejected whole before
anything is stored. Each stored image is written by `services.image_store`, which leaves nothing half-written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from django.conf import settings
from django.core.exceptions import ValidationError

from annotation.images.deidentify import scrub_text
from annotation.images.storage import image_store
from annotation.images.uploads import (
    AcceptRules,
    ArchiveRejected,
    ImageRejected,
    IngestLimits,
    decode_image,
    iter_archive,
    read_member,
)
from annotation.models import Round, Source, Study
from annotation.studies.audit import audit

__all__ = ["ArchiveRejected", "ImportResult", "images_import_path", "image_import_one", "read_reports_csv",
           "limits_from_settings", "study_rules"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}


@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # (file, the file it duplicates, how)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"imported": len(self.imported), "duplicates": len(self.duplicates),
                "rejected": [{"file": n, "reason": r} for n, r in self.rejected],
                "duplicate_files": [{"file": n, "duplicate_of": of, "matched_by": how}
                                    for n, of, how in self.duplicates],
                "imported_files": list(self.imported)}


def limits_from_settings() -> IngestLimits:
    return IngestLimits(
        max_file_bytes=settings.CXR_MAX_FILE_MB * 1024 * 1024,
        max_pixels=settings.CXR_MAX_PIXELS,
        max_archive_entries=settings.CXR_MAX_ARCHIVE_ENTRIES,
        max_archive_bytes=settings.CXR_MAX_ARCHIVE_MB * 1024 * 1024,
    )


def read_reports_csv(data: bytes) -> dict[str, str]:
    """`file_name,report` (also accepted: filename / path, and prompt / text), optionally `accession_number` and
    `study_uid` (for images pulled from a PACS) → {file name, "accession:<n>" or "study:<uid>": report}."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError("The reports CSV must be UTF-8 text.") from None
    reader = csv.DictReader(io.StringIO(text))
    header = {h.strip().lower(): h for h in reader.fieldnames or []}

    def column(*names: str) -> str | None:
        return next((header[h] for h in names if h in header), None)

    name_col = column("file_name", "filename", "path")
    acc_col = column("accession_number", "accessionnumber", "accession")
    uid_col = column("study_uid", "studyinstanceuid", "study_instance_uid")
    text_col = column("report", "prompt", "text")
    if text_col is None or (name_col, acc_col, uid_col) == (None, None, None):
        raise ValidationError("The reports CSV needs a header with a report column and a file_name, accession_number "
                              "or study_uid column.")
    out: dict[str, str] = {}
    for row in reader:
        report = (row.get(text_col) or "").strip()
        for col, prefix in ((name_col, ""), (acc_col, "accession:"), (uid_col, "study:")):
            if col and (row.get(col) or "").strip():
                out[prefix + row[col].strip()] = report
    return out


def _report_for(reports: dict[str, str], name: str, match_keys: tuple[str, ...] = ()) -> str:
    for key in (name, PurePosixPath(name).name, *match_keys):
        if reports.get(key):
            return reports[key]
    return ""


def study_rules(study: Study) -> AcceptRules:
    return AcceptRules(modalities=tuple(study.modalities or ()), views=tuple(study.views or ()))


def pixel_sha256(pixels) -> str:
    """Of the decoded, normalised pixels (16-bit): one radiograph stored under two encodings hashes the same."""
    q = np.round(np.clip(pixels, 0.0, 1.0) * 65535.0).astype("<u2")
    return hashlib.sha256(f"{q.shape}".encode() + q.tobytes()).hexdigest()


def image_import_one(*, study: Study, name: str, payload: bytes, reports: dict[str, str], result: ImportResult,
                     round: Round | None = None, source: str = Source.REAL, limits: IngestLimits | None = None,
                     extra_meta: dict | None = None) -> None:
    """Decode, de-identify, check and store one file, recording in `result` what became of it."""
    limits = limits or limits_from_settings()
    try:
        decoded = decode_image(payload, filename=name, limits=limits, rules=study_rules(study),
                               key=settings.CXR_PSEUDONYM_KEY)
    except ImageRejected as exc:
        result.rejected.append((scrub_text(name, ()), exc.reason))
        return
    shown = scrub_text(name, decoded.identifiers)  # a PACS export names files by UID or patient
    report = scrub_text(_report_for(reports, name, decoded.match_keys), decoded.identifiers)
    stored = image_store(
        study=study, pixels=decoded.pixels, source=source, round=round, original_name=shown,
        file_sha256=hashlib.sha256(payload).hexdigest(), pixel_sha256=pixel_sha256(decoded.pixels),
        sop_uid_hash=decoded.uid_key, patient_pseudonym=decoded.patient_key, prompt=report,
        deid_removed=list(decoded.deid_removed), burned_in_phi=decoded.burned_in_phi,
        meta={"format": decoded.fmt, **decoded.metadata, **(extra_meta or {})},
    )
    if stored.created:
        result.imported.append(shown)
    else:
        result.duplicates.append((shown, stored.image.original_name or f"image {stored.image.pk}", stored.matched_by))


def _iter_files(path: Path, limits: IngestLimits) -> Iterator[tuple[str, bytes | ImageRejected]]:
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
            if file.suffix.lower() not in IMAGE_SUFFIXES or file.name.startswith("."):
                continue
            rel = file.relative_to(path).as_posix()
            if file.stat().st_size > limits.max_file_bytes:
                yield rel, ImageRejected(f"file is over the {limits.max_file_bytes // 2**20} MB limit")
                continue
            yield rel, file.read_bytes()
    elif zipfile.is_zipfile(path):
        members = iter_archive(path, limits=limits)  # raises ArchiveRejected before anything is read out
        with zipfile.ZipFile(path) as zf:
            for member in members:
                try:
                    yield member.name, read_member(zf, member, limits)
                except ImageRejected as exc:
                    yield member.name, exc
    elif path.is_file():
        if path.stat().st_size > limits.max_file_bytes:
            yield path.name, ImageRejected(f"file is over the {limits.max_file_bytes // 2**20} MB limit")
        else:
            yield path.name, path.read_bytes()
    else:
        raise ArchiveRejected(f"{path} is not a file, folder or ZIP archive")


def images_import_path(*, study: Study, path: Path, reports: dict[str, str] | None = None,
                       round: Round | None = None, actor=None, source: str = Source.REAL,
                       progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Import every image under `path`; `progress(done, total)` after each file (total counted up front)."""
    limits = limits_from_settings()
    reports = reports or {}
    result = ImportResult()
    total = _count_files(Path(path), limits)
    for done, (name, payload) in enumerate(_iter_files(Path(path), limits), start=1):
        if isinstance(payload, ImageRejected):
            result.rejected.append((name, payload.reason))
        else:
            image_import_one(study=study, name=name, payload=payload, reports=reports, result=result, round=round,
                             source=source, limits=limits)
        if progress:
            progress(done, total)
    audit(actor=actor, action="images.import", study=study, source=source, **result.as_dict())
    return result


def _count_files(path: Path, limits: IngestLimits) -> int:
    if path.is_dir():
        return sum(1 for f in path.rglob("*") if f.is_file() and not f.is_symlink()
                   and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
    if zipfile.is_zipfile(path):
        return len(iter_archive(path, limits=limits))
    return 1
