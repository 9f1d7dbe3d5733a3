"""Export jobs (large exports written by a worker) and the frozen label snapshot of each round."""

from __future__ import annotations

import tempfile
from pathlib import Path

from django.core.files.storage import default_storage
from django.utils import timezone

from annotation.exports import Selection, write_export
from annotation.models import ExportJob, Round

EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet", "imagefolder": "zip", "pairs": "jsonl"}


def selection_load(data: dict) -> Selection:
    from django.utils.dateparse import parse_datetime

    data = dict(data)
    data["rounds"] = tuple(data.get("rounds") or ())
    if data.get("updated_after"):
        data["updated_after"] = parse_datetime(data["updated_after"])
    return Selection(**data)


def _store(local: Path, key: str) -> str:
    if default_storage.exists(key):
        default_storage.delete(key)
    with open(local, "rb") as handle:
        return default_storage.save(key, handle)


def export_job_run(job_pk: int) -> str:
    """Write the job's export to a temporary file, then to storage with its manifest; webhook 'export.done'."""
    from annotation.webhooks import emit

    job = ExportJob.objects.select_related("study").get(pk=job_pk)
    if job.status == "done":
        return job.status
    ExportJob.objects.filter(pk=job.pk).update(status="running", error_message="")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            name = f"{job.study.name}-export-{job.pk}.{EXTENSIONS[job.format]}"
            local = Path(tmp) / name

            def progress(n: int) -> None:
                ExportJob.objects.filter(pk=job.pk).update(progress={"rows": n})

            manifest = write_export(selection_load(job.selection), job.format, local, on_progress=progress)
            key = _store(local, f"exports/{job.study.name}/{job.pk}/{name}")
            _store(local.with_name(name + ".manifest.json"), f"exports/{job.study.name}/{job.pk}/{name}.manifest.json")
    except Exception as exc:
        ExportJob.objects.filter(pk=job.pk).update(status="failed", error_message=f"{type(exc).__name__}: {exc}",
                                                   finished_at=timezone.now())
        raise
    ExportJob.objects.filter(pk=job.pk).update(status="done", file_key=key, manifest=manifest,
                                               progress=manifest["counts"], finished_at=timezone.now())
    emit(study=job.study_id, event="export.done", payload={"export": job.pk, "format": job.format,
                                                          "counts": manifest["counts"]})
    return "done"


def round_snapshot_freeze(rnd: Round) -> dict:
    """The round's labels as they stood when labeling closed (JSONL + manifest in storage), recorded on the round.
    Written once: a repeat returns the recorded snapshot."""
    rnd = Round.objects.select_related("study").get(pk=rnd.pk)
    if (rnd.metrics or {}).get("snapshot"):
        return rnd.metrics["snapshot"]
    sel = Selection(study=rnd.study.name, rounds=(rnd.number,), include_simulated=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "labels.jsonl"
        manifest = write_export(sel, "jsonl", local)
        prefix = f"exports/{rnd.study.name}/rounds/{rnd.number}"
        key = _store(local, f"{prefix}/labels.jsonl")
        _store(local.with_name("labels.jsonl.manifest.json"), f"{prefix}/labels.jsonl.manifest.json")
    snapshot = {"key": key, "rows": manifest["counts"]["rows"],
                "sha256": manifest["files"]["labels.jsonl"]["sha256"], "frozen_at": timezone.now().isoformat()}
    current = Round.objects.values_list("metrics", flat=True).get(pk=rnd.pk) or {}
    Round.objects.filter(pk=rnd.pk).update(metrics={**current, "snapshot": snapshot})
    return snapshot
