"""Import jobs from the dashboard: what the admin gave is checked when the job is created (a bad archive, reports
CSV, URL or filter is refused then, with the reason, before anything is queued), then a worker imports it through
the same path as `import_images` and records progress and the per-file result on the row. Each image is stored
whole or not at all; a job that fails midway keeps what it imported, and running it again goes on from there."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from annotation.images.dicomweb import DicomwebUnreachable, dicomweb_import, filters_parse, url_check
from annotation.images.importing import (
    ArchiveRejected,
    ImportResult,
    images_import_path,
    limits_from_settings,
    read_reports_csv,
)
from annotation.images.uploads import iter_archive
from annotation.models import ImportJob, Study
from annotation.studies.audit import audit
from annotation.tasks import import_job_run_task

PROGRESS_EVERY = 5  # files between progress writes (and always the last one)


def import_job_create(*, study: Study, actor, upload=None, reports_csv: bytes | None = None, url: str = "",
                      filters: list[str] | tuple[str, ...] = ()) -> ImportJob:
    """Check the request and queue the job: an uploaded ZIP or image file (`upload`, a Django UploadedFile), or a
    DICOMweb root `url` with QIDO-RS `filters` ("KEY=VALUE"); an optional reports CSV."""

    if (upload is None) == (not url):
        raise ValidationError("Give a file (a ZIP or an image) to upload, or a DICOMweb URL to pull from (not both).")
    reports = read_reports_csv(reports_csv) if reports_csv else {}
    fields = {"study": study, "requested_by": actor if actor and actor.is_authenticated else None,
              "reports": reports}
    if url:
        fields.update(source="dicomweb", url=url_check(url), filters=filters_parse(list(filters)))
    else:
        name = PurePosixPath(upload.name or "upload").name
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as tmp:
            for chunk in upload.chunks():
                tmp.write(chunk)
            tmp.flush()
            if zipfile.is_zipfile(tmp.name):
                try:
                    iter_archive(tmp.name, limits=limits_from_settings())  # a bad archive is refused whole, now
                except ArchiveRejected as exc:
                    raise ValidationError(f"Archive refused, nothing imported: {exc.reason}.") from None
            tmp.seek(0)
            key = default_storage.save(f"imports/{study.pk}/{timezone.now():%Y%m%d-%H%M%S}-{name}", File(tmp))
        fields.update(source="upload", upload_key=key, upload_name=name)
    with transaction.atomic():
        job = ImportJob.objects.create(**fields)
        audit(actor=actor, action="images.import.start", study=study, obj=job, source=job.source,
              file=job.upload_name, url=job.url)
        transaction.on_commit(lambda: import_job_run_task.delay(job_pk=job.pk))
    return job


def import_job_run(job_pk: int) -> str:
    """Run the job (safe to run twice: a done job is left alone; images already stored are found again as
    duplicates, not stored twice)."""
    job = ImportJob.objects.select_related("study").get(pk=job_pk)
    if job.status == ImportJob.Status.DONE:
        return job.status
    job.job_start()

    def progress(done: int, total: int) -> None:
        if done % PROGRESS_EVERY == 0 or done == total:
            job.job_beat(done=done, total=total)

    try:
        if job.source == "dicomweb":
            result = dicomweb_import(study=job.study, url=job.url, filters=job.filters, reports=job.reports,
                                     actor=job.requested_by, progress=progress)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / (job.upload_name or "upload")
                with default_storage.open(job.upload_key, "rb") as src, open(local, "wb") as dst:
                    for chunk in iter(lambda: src.read(1024 * 1024), b""):
                        dst.write(chunk)
                result = images_import_path(study=job.study, path=local, reports=job.reports,
                                            actor=job.requested_by, progress=progress)
    except (DicomwebUnreachable, ArchiveRejected) as exc:
        return _finish(job, ImportJob.Status.FAILED, ImportResult(), exc.reason + " Images imported before the "
                       "failure stay; run the import again to go on.")
    except Exception as exc:
        _finish(job, ImportJob.Status.FAILED, ImportResult(), f"{type(exc).__name__}: {exc}")
        raise
    if job.upload_key:
        default_storage.delete(job.upload_key)  # the images are stored; the upload itself is not kept
    return _finish(job, ImportJob.Status.DONE, result)


def _finish(job: ImportJob, status: str, result: ImportResult, error: str = "") -> str:
    job.job_finish(status, error, **({"result": result.as_dict()} if status == ImportJob.Status.DONE else {}))
    return status


def import_job_rows(job: ImportJob) -> list[dict]:
    """The per-file result table: every file or instance, what became of it and why."""
    result = job.result or {}
    rows = [{"file": name, "outcome": "imported", "detail": ""} for name in result.get("imported_files", [])]
    rows += [{"file": d["file"], "outcome": "duplicate", "detail": f"duplicate of {d['duplicate_of']} (same "
              f"{d['matched_by']})"} for d in result.get("duplicate_files", [])]
    rows += [{"file": r["file"], "outcome": "refused", "detail": r["reason"]} for r in result.get("rejected", [])]
    return rows
