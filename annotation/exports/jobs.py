"""Export jobs: large exports written by a worker to storage, with their manifest and the `export.done` webhook."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from django.core.files.storage import default_storage

from annotation.exports.formats import write_export
from annotation.exports.selection import selection_load
from annotation.models import ExportJob
from annotation.webhooks import emit
from inference.models import JobStatus

EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet", "imagefolder": "zip", "pairs": "jsonl", "mrmc": "csv",
              "pairs-hf": "zip"}


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


