"""Labelled-dataset exports written to files, each with a manifest (sha256 and size of each file, the selection and
row counts). Formats:

- `jsonl` — one JSON object per label, the answer as it was stored;
- `csv` — the same rows with the answer flattened (`answer.call`, `answer.scores.anatomy`, ...);
- `parquet` — the CSV's columns, written in row groups;
- `imagefolder` — a ZIP with `images/*.png` and a `metadata.jsonl` (`file_name` + labels aggregated per image),
  loadable with `datasets.load_dataset("imagefolder", data_dir=...)`;
- `pairs` — preference pairs (`chosen` / `rejected` image ids with the prompt) for DPO training;
- `mrmc` — one round's realism reads as `treatment,reader,case,truth,rating` for MRMC software
  (`exports.mrmc`; `reader_stats FILE --mrmc` reads it).

Simulated readers' labels are left out unless asked for; readers are named by pseudonym unless the caller is a
study admin (`identities="username"`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db.models import Q

from annotation.exports.mrmc import mrmc_csv, mrmc_round
from annotation.exports.pairs_hf import selection_pairs, write_pairs_hf
from annotation.exports.rows import (
    CHUNK,
    COLUMNS,
    answer_columns,
    csv_chunks,
    flatten,
    jsonl_chunks,
    label_rows,
)
from annotation.exports.selection import Selection, selection_empty_reason
from annotation.models import Image, ReadingTask, Study, StudyMembership
from annotation.reading.aggregation import Aggregation, ImageReads

FORMATS = ("jsonl", "csv", "parquet", "imagefolder", "pairs", "pairs-hf", "mrmc")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_for(files: dict[str, Path], sel: Selection, fmt: str, counts: dict) -> dict:
    return {"format": fmt, "selection": sel.as_dict(), "counts": counts,
            "files": {name: {"sha256": _sha256(path), "bytes": path.stat().st_size} for name, path in files.items()}}


def manifest_verify(manifest: dict, root: Path) -> list[str]:
    """Names of the files whose bytes no longer match the manifest (empty: all verified)."""
    bad = []
    for name, entry in manifest["files"].items():
        path = root / name
        if not path.exists() or _sha256(path) != entry["sha256"]:
            bad.append(name)
    return bad


def export_check(sel: Selection, fmt: str) -> None:
    """Refuse, with the reason, an export that cannot be written (before a job is queued)."""
    if fmt not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(FORMATS)}.")
    if fmt == "mrmc":  # what the format itself needs (one comparison round) is said first
        mrmc_round(sel)
    # an empty image folder is not a dataset `datasets` can load: say why nothing matched instead
    if not sel.incremental and (empty := selection_empty_reason(sel)) is not None:
        raise ValidationError(empty)


def write_export(sel: Selection, fmt: str, out: Path, *, on_progress=None) -> dict:
    """Write one export to `out` (a file; imagefolder: a ZIP; pairs-hf: a folder of Parquet shards) and `out` +
    '.manifest.json'. Returns the manifest."""
    export_check(sel, fmt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    counts: dict = {}
    if fmt == "pairs-hf":
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValidationError(f"{out} exists and is not an empty folder: pairs-hf writes a folder of shards.")
        shutil.rmtree(partial, ignore_errors=True)
        files, counts["pairs"] = write_pairs_hf(sel, partial, on_progress)
        if out.exists():
            out.rmdir()
        partial.replace(out)
        manifest = manifest_for({name: out / name for name in files}, sel, fmt, counts)
        out.with_name(out.name + ".manifest.json").write_text(json.dumps(manifest, indent=2))
        return manifest
    if fmt in ("jsonl", "csv"):
        counter = {"rows": 0}
        with open(partial, "wb") as handle:
            for chunk in (jsonl_chunks(sel) if fmt == "jsonl" else csv_chunks(sel, counter)):
                handle.write(chunk)
                if fmt == "jsonl":
                    counter["rows"] += chunk.count(b"\n")  # JSON escapes newlines: one line per row
                if on_progress:
                    on_progress(counter["rows"])
        counts["rows"] = counter["rows"]
    elif fmt == "parquet":
        counts["rows"] = _write_parquet(sel, partial, on_progress)
    elif fmt == "pairs":
        counts["pairs"] = _write_pairs(sel, partial)
    elif fmt == "mrmc":
        text, counts["ratings"] = mrmc_csv(sel)
        partial.write_text(text, encoding="utf-8")
    else:
        counts.update(_write_imagefolder(sel, partial, on_progress))
    partial.replace(out)
    manifest = manifest_for({out.name: out}, sel, fmt, counts)
    if fmt == "imagefolder":
        with zipfile.ZipFile(out) as archive:
            manifest["archive"] = json.loads(archive.read("manifest.json"))
    out.with_name(out.name + ".manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _write_parquet(sel: Selection, path: Path, on_progress) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    study = Study.objects.get(name=sel.study)
    columns = answer_columns(study)
    types = {"label_id": pa.int64(), "task_id": pa.int64(), "round": pa.int64(), "image_id": pa.int64(),
             "image_b_id": pa.int64(), "seed": pa.int64(), "revision": pa.int64(), "repeat_of": pa.int64(),
             "time_spent_ms": pa.int64(), "reader_simulated": pa.bool_(), "superseded": pa.bool_(),
             "is_catch": pa.bool_(), "answer.confidence": pa.int64(), "answer.cannot_assess": pa.bool_(),
             "answer.preferred_image": pa.int64()}
    types.update({f"answer.scores.{c['key']}": pa.int64() for c in study.rubric})
    schema = pa.schema([(name, types.get(name, pa.string())) for name in list(COLUMNS) + columns])
    rows, batch = 0, []
    with pq.ParquetWriter(path, schema) as writer:
        for row in label_rows(sel):
            batch.append(flatten(row, columns))
            if len(batch) >= CHUNK:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                rows += len(batch)
                batch.clear()
                if on_progress:
                    on_progress(rows)
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            rows += len(batch)
    return rows


def pairs_lines(sel: Selection) -> Iterator[bytes]:
    """Preference pairs (`pairs_hf.selection_pairs`) as JSONL."""
    for pair in selection_pairs(sel):
        yield (json.dumps({"chosen": pair.chosen, "rejected": pair.rejected, "prompt": pair.prompt,
                           "source": pair.source}) + "\n").encode()


def _write_pairs(sel: Selection, path: Path) -> int:
    n = 0
    with open(path, "wb") as handle:
        for line in pairs_lines(sel):
            handle.write(line)
            n += 1
    return n


def image_aggregates(sel: Selection) -> Iterator[tuple[Image, dict]]:
    """Per image of the selection, in image order: how it was read (current, non-catch answers), aggregated by the
    rule training uses (`reading.aggregation`): `realism` is the confidence-weighted share of reads that called it
    real, `called_real` of `reads` the plain count; rubric means on the rubric's scale."""
    study = Study.objects.get(name=sel.study)
    rubric = [c["key"] for c in study.rubric]
    tasks = ReadingTask.objects.filter(round__study=study, current_label__isnull=False, is_catch=False)
    if sel.rounds:
        tasks = tasks.filter(round__number__in=sel.rounds)
    if sel.since_round is not None:
        tasks = tasks.filter(round__number__gt=sel.since_round)
    if not sel.include_simulated:
        tasks = tasks.exclude(reader_id__in=StudyMembership.objects.filter(study=study, is_simulated=True)
                              .values("user_id"))
    image_ids = tasks.values_list("image_id", flat=True).distinct().order_by("image_id")
    last = 0
    while True:
        ids = list(image_ids.filter(image_id__gt=last)[:500])
        if not ids:
            return
        images = {i.pk: i for i in Image.objects.filter(pk__in=ids).select_related("model_version")}
        agg = Aggregation(study.rubric)
        rows = tasks.filter(Q(image_id__in=ids) | Q(image_b_id__in=ids)).values_list(
            "kind", "image_id", "image_b_id", "current_label__answer")
        for kind, image_id, image_b_id, answer in rows:
            agg.add(kind, json.loads(answer) if isinstance(answer, str) else answer, image_id, image_b_id)
        for pk in ids:
            reads = agg.images.get(pk) or ImageReads()
            row = {"reads": reads.reads, "called_real": reads.called_real, "realism": reads.realism,
                   "preference_wins": reads.wins, "preference_comparisons": reads.comparisons}
            for key in rubric:
                row[f"rubric_{key}_mean"] = reads.mean(key)
                row[f"rubric_{key}_n"] = len(reads.scores.get(key) or [])
            yield images[pk], row
        last = ids[-1]


def _write_imagefolder(sel: Selection, path: Path, on_progress) -> dict:
    """A ZIP: images/<id>.png (the stored full-resolution image), metadata.jsonl, manifest.json (sha256 of each)."""
    hashes: dict[str, dict] = {}
    n = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        lines = []
        for image, agg in image_aggregates(sel):
            name = f"images/{image.pk}.png"
            with default_storage.open(image.storage_key, "rb") as handle:
                data = handle.read()
            archive.writestr(name, data)
            hashes[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            lines.append(json.dumps({
                "file_name": name, "image_id": image.pk, "source": image.source,
                "model_version": image.model_version.name if image.model_version_id else None,
                "prompt": image.prompt, "seed": image.seed, "findings": image.findings, **agg}))
            n += 1
            if on_progress and n % 50 == 0:
                on_progress(n)
        metadata = ("\n".join(lines) + "\n").encode() if lines else b""
        archive.writestr("metadata.jsonl", metadata)
        hashes["metadata.jsonl"] = {"sha256": hashlib.sha256(metadata).hexdigest(), "bytes": len(metadata)}
        archive.writestr("manifest.json", json.dumps({"files": hashes, "selection": sel.as_dict()}, indent=2))
    return {"images": n}
