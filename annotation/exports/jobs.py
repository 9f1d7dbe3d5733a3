"""Export jobs: started by an admin (checked, audited, queued after commit), written by a worker to storage with
their manifest, and announced by the `export.done` webhook."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from django.contrib.auth.models import AbstractUser
from django.core.files.storage import default_storage
from django.db import transaction

from annotation.exports.formats import export_check, write_export
from annotation.exports.selection import selection_from, selection_load
from annotation.models import ExportJob, Study
from annotation.studies.audit import audit
from annotation.tasks import export_job_run_task
from annotation.webhooks import emit
from inference.models import JobStatus

EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet", "imagefolder": "zip", "pairs": "jsonl", "mrmc": "csv",
              "pairs-hf": "zip"}


def export_job_start(*, study: Study, actor: AbstractUser, fmt: str, params: dict) -> ExportJob:
    """Start an export of `fmt` of the labels `params` select (API/CLI parameters): refuse, with the reason, one
    that cannot be written (ValidationError), else create the job, audit it and queue its run after the commit."""
    sel = selection_from(params, study=study, is_admin=True)
    export_check(sel, fmt)
    with transaction.atomic():
        job = ExportJob.objects.create(study=study, requested_by=actor, format=fmt, selection=sel.as_dict())
        audit(actor=actor, action="export.job", study=study, obj=job, format=job.format)
        transaction.on_commit(lambda: export_job_run_task.delay(job_pk=job.pk))
    return job


def _store(local: Path, key: str) -> str:
    if default_storage.exists(key):
        default_storage.delete(key)
    with open(local, "rb") as handle:
        return default_storage.save(key, handle)


def export_job_run(job_pk: int) -> str:
    """Write the job's export to a temporary file, then to storage with its manifest; webhook 'export.done'."""
    job = ExportJob.objects.select_related("study").get(pk=job_pk)
    if job.status == JobStatus.DONE:
        return job.status
    job.job_start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            name = f"{job.study.name}-export-{job.pk}.{EXTENSIONS[job.format]}"
            local = Path(tmp) / name

            def progress(n: int) -> None:
                job.job_beat(rows=n)

            if job.format == "pairs-hf":  # a folder of Parquet shards, downloaded as one ZIP of that folder
                folder = Path(tmp) / f"{job.study.name}-pairs-hf-{job.pk}"
                manifest = write_export(selection_load(job.selection), job.format, folder, on_progress=progress)
                shutil.make_archive(str(local.with_suffix("")), "zip", root_dir=folder)
                folder.with_name(folder.name + ".manifest.json").replace(local.with_name(name + ".manifest.json"))
            else:
                manifest = write_export(selection_load(job.selection), job.format, local, on_progress=progress)
            key = _store(local, f"exports/{job.study.name}/{job.pk}/{name}")
            _store(local.with_name(name + ".manifest.json"), f"exports/{job.study.name}/{job.pk}/{name}.manifest.json")
    except Exception as exc:
        job.job_finish(JobStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    job.job_finish(JobStatus.DONE, file_key=key, manifest=manifest, progress=manifest["counts"])
    emit(study=job.study_id, event="export.done", payload={"export": job.pk, "format": job.format,
                                                          "counts": manifest["counts"]})
    return job.status


