"""Import of real images (folder, ZIP or single file, plus an optional CSV of reports).

A bad file is rejected with its reason and the rest still imports; a bad archive is rejected whole before
anything is stored. Each stored image is written by `services.image_store`, which leaves nothing half-written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError

from annotation.images.ingest import (
    ArchiveRejected,
    ImageRejected,
    IngestLimits,
    decode_image,
    iter_archive,
    read_member,
)
from annotation.images.storage import image_store
from annotation.models import Round, Source, Study
from annotation.studies.audit import audit

__all__ = ["ArchiveRejected", "ImportResult", "images_import_path", "read_reports_csv", "limits_from_settings"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""}


@dataclass
class ImportResult:
    imported: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"imported": len(self.imported), "duplicates": len(self.duplicates),
                "rejected": [{"file": n, "reason": r} for n, r in self.rejected]}


def limits_from_settings() -> IngestLimits:
    return IngestLimits(
        max_file_bytes=settings.CXR_MAX_FILE_MB * 1024 * 1024,
        max_pixels=settings.CXR_MAX_PIXELS,
        max_archive_entries=settings.CXR_MAX_ARCHIVE_ENTRIES,
        max_archive_bytes=settings.CXR_MAX_ARCHIVE_MB * 1024 * 1024,
    )


def read_reports_csv(data: bytes) -> dict[str, str]:
    """`file_name,report` (also accepted: filename / path, and prompt / text) → {file name: report}."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationError("The reports CSV must be UTF-8 text.") from None
    reader = csv.DictReader(io.StringIO(text))
    header = {h.strip().lower(): h for h in reader.fieldnames or []}
    name_col = next((header[h] for h in ("file_name", "filename", "path") if h in header), None)
    text_col = next((header[h] for h in ("report", "prompt", "text") if h in header), None)
    if name_col is None or text_col is None:
        raise ValidationError("The reports CSV needs a header with file_name and report columns.")
    return {row[name_col].strip(): (row[text_col] or "").strip() for row in reader if row.get(name_col)}


def _report_for(reports: dict[str, str], name: str) -> str:
    return reports.get(name) or reports.get(PurePosixPath(name).name, "")


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
                       round: Round | None = None, actor=None, source: str = Source.REAL) -> ImportResult:
    limits = limits_from_settings()
    reports = reports or {}
    result = ImportResult()
    for name, payload in _iter_files(Path(path), limits):
        if isinstance(payload, ImageRejected):
            result.rejected.append((name, payload.reason))
            continue
        try:
            decoded = decode_image(payload, filename=name, limits=limits)
        except ImageRejected as exc:
            result.rejected.append((name, exc.reason))
            continue
        stored = image_store(
            study=study, pixels=decoded.pixels, source=source, round=round, original_name=name,
            file_sha256=hashlib.sha256(payload).hexdigest(), prompt=_report_for(reports, name),
            deid_removed=list(decoded.deid_removed), burned_in_phi=decoded.burned_in_phi,
            meta={"format": decoded.fmt, **decoded.metadata},
        )
        (result.imported if stored.created else result.duplicates).append(name)
    audit(actor=actor, action="images.import", study=study, source=source, **result.as_dict())
    return result
