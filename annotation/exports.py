"""Labelled-dataset exports, streamed at flat memory.

One row per label (revisions included, flagged `superseded`), read in keyset-paginated chunks of raw column values,
so a million labels never sit in memory at once. Formats:

- `jsonl` — one JSON object per label, the answer as it was stored;
- `csv` — the same rows with the answer flattened (`answer.call`, `answer.scores.anatomy`, ...);
- `parquet` — the CSV's columns, written in row groups;
- `imagefolder` — a ZIP with `images/*.png` and a `metadata.jsonl` (`file_name` + labels aggregated per image),
  loadable with `datasets.load_dataset("imagefolder", data_dir=...)`;
- `pairs` — preference pairs (`chosen` / `rejected` image ids with the prompt) for DPO training.

Every export written to a file gets a manifest (sha256 and size of each file, the selection and row counts).
Simulated readers' labels are left out unless asked for; readers are named by pseudonym unless the caller is a
study admin (`identities="username"`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db.models import Q

from annotation.models import Image, ReadingTask, Round, Study, StudyMembership

FORMATS = ("jsonl", "csv", "parquet", "imagefolder", "pairs")
CHUNK = 5000

#: Columns of every row, in order (CSV and Parquet add the flattened answer columns after them).
COLUMNS = ("label_id", "task_id", "study", "round", "kind", "image_id", "image_b_id", "source", "model_version",
           "prompt", "seed", "reader", "reader_simulated", "revision", "superseded", "is_catch", "repeat_of",
           "time_spent_ms", "created_at")


@dataclass(frozen=True)
class Selection:
    """Which labels an export holds."""

    study: str
    rounds: tuple[int, ...] = ()
    since_round: int | None = None
    updated_after: datetime | None = None
    include_simulated: bool = False
    include_superseded: bool = True
    identities: str = "pseudonym"
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["rounds"] = list(self.rounds)
        out["updated_after"] = self.updated_after.isoformat() if self.updated_after else None
        return out


def selection_from(params: dict, *, study: Study, is_admin: bool) -> Selection:
    """A Selection from API/CLI parameters, refusing what does not make sense with a sentence."""
    from django.utils.dateparse import parse_datetime

    rounds: list[int] = []
    raw = params.get("round") or params.get("rounds") or []
    for value in raw if isinstance(raw, list | tuple) else str(raw).split(","):
        if str(value).strip():
            try:
                number = int(value)
            except ValueError:
                raise ValidationError(f"round must be a round number, not {value!r}.") from None
            if not 0 < number < 2**31:
                raise ValidationError(f"round must be a round number, not {value!r}.")
            rounds.append(number)
    since = params.get("since_round")
    try:
        since = int(since) if since not in (None, "") else None
    except ValueError:
        raise ValidationError("since_round must be a round number.") from None
    if since is not None and not 0 <= since < 2**31:
        raise ValidationError("since_round must be a round number.")
    updated = params.get("updated_after")
    updated_at = None
    if updated not in (None, ""):
        try:
            updated_at = updated if isinstance(updated, datetime) else parse_datetime(str(updated))
        except ValueError:  # well formed but impossible, e.g. 2026-02-30
            updated_at = None
        if updated_at is None:
            raise ValidationError("updated_after must be an ISO 8601 date-time, e.g. 2026-11-26T12:00:00Z.")
        updated_at = _utc(updated_at)
    identities = params.get("identities") or "pseudonym"  # usernames only when a study admin asks for them
    if identities not in ("pseudonym", "username"):
        raise ValidationError("identities must be 'pseudonym' or 'username'.")
    if identities == "username" and not is_admin:
        raise ValidationError("Only study admins may export reader usernames.")
    missing = set(rounds) - set(Round.objects.filter(study=study, number__in=rounds).values_list("number",
                                                                                                   flat=True))
    if missing:
        raise ValidationError(f"Study {study.name} has no round {', '.join(map(str, sorted(missing)))}.")

    def flag(name: str, default: bool) -> bool:
        value = params.get(name)
        return default if value in (None, "") else str(value).lower() in ("1", "true", "yes", "on")

    return Selection(study=study.name, rounds=tuple(sorted(rounds)), since_round=since, updated_after=updated_at,
                     include_simulated=flag("include_simulated", False),
                     include_superseded=flag("include_superseded", True), identities=identities)


# --- rows ----------------------------------------------------------------------------------------------------------

def _scope(sel: Selection, study: Study) -> tuple[dict[int, int], list[int]]:
    """The selected rounds (id → number) and the simulated readers to leave out, resolved once per export so the
    row query joins only labels and tasks."""
    rounds = Round.objects.filter(study=study)
    if sel.rounds:
        rounds = rounds.filter(number__in=sel.rounds)
    if sel.since_round is not None:
        rounds = rounds.filter(number__gt=sel.since_round)
    simulated = [] if sel.include_simulated else list(
        StudyMembership.objects.filter(study=study, is_simulated=True).values_list("user_id", flat=True))
    return dict(rounds.values_list("pk", "number")), simulated


def _utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _names(sel: Selection, study: Study) -> dict[int, tuple[str, bool]]:
    members = StudyMembership.objects.filter(study=study, role="reader").select_related("user")
    return {m.user_id: (m.user.get_username() if sel.identities == "username" else m.pseudonym, m.is_simulated)
            for m in members}


def _label_sql(sel: Selection, round_ids: list[int], simulated: list[int], connection) -> tuple[str, list]:
    """The keyset-paginated label query; params[0] is the last label id seen. Columns: (id, task, round id, kind,
    image, image_b, reader, revision, current label, is_catch, repeat_of, time_spent_ms, created_at as ISO text
    without its offset (stored in UTC), answer as JSON text)."""
    sqlite = connection.vendor == "sqlite"
    created = ("replace(l.created_at, ' ', 'T')" if sqlite
               else "to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')")
    answer = "l.answer" if sqlite else "l.answer::text"
    where, params = ["l.id > %s", f"t.round_id IN ({', '.join(['%s'] * len(round_ids))})"], [0, *round_ids]
    if sel.updated_after is not None:
        where.append("l.created_at > %s")
        # as the ORM would store it (SQLite compares text: naive UTC, never an offset)
        params.append(connection.ops.adapt_datetimefield_value(_utc(sel.updated_after)))
    if simulated:
        where.append(f"l.reader_id NOT IN ({', '.join(['%s'] * len(simulated))})")
        params += simulated
    if not sel.include_superseded:
        where.append("t.current_label_id = l.id")
    sql = ("SELECT l.id, l.task_id, t.round_id, t.kind, t.image_id, t.image_b_id, l.reader_id, l.revision, "
           f"t.current_label_id, t.is_catch, t.repeat_of_id, l.time_spent_ms, {created}, {answer} "
           "FROM annotation_label l JOIN annotation_readingtask t ON t.id = l.task_id "
           f"WHERE {' AND '.join(where)} ORDER BY l.id LIMIT {CHUNK}")
    return sql, params


class _Images:
    """Image columns for the labels of a chunk, one query per chunk for the images not yet seen; bounded, so memory
    stays flat however many images a study holds."""

    LIMIT = 20_000  # several chunks of distinct images; prompts make entries a few hundred bytes each

    def __init__(self):
        self.seen: dict[int, tuple] = {}

    def fetch(self, ids) -> dict[int, tuple]:
        from django.db import connection

        ids = set(ids)
        missing = [pk for pk in ids if pk not in self.seen]
        if len(self.seen) + len(missing) > self.LIMIT:
            self.seen.clear()
            missing = list(ids)
        for start in range(0, len(missing), 900):  # SQLite allows 999 parameters
            part = missing[start:start + 900]
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT i.id, i.source, CASE WHEN i.source = 'synthetic' THEN COALESCE(mv.name, "
                    "NULLIF(i.generator, '')) END, i.prompt, i.seed FROM annotation_image i LEFT JOIN "
                    "inference_modelversion mv ON mv.id = i.model_version_id "
                    f"WHERE i.id IN ({', '.join(['%s'] * len(part))})", part)
                for pk, *values in cursor.fetchall():
                    self.seen[pk] = tuple(values)
        return self.seen


def _chunks(sel: Selection) -> Iterator[tuple[list[tuple], dict[int, tuple], dict[int, int]]]:
    """Label rows straight from the database cursor, CHUNK at a time in label order (keyset pagination: flat memory
    at any size), with the image columns (source, model version, prompt, seed) of the chunk and the round numbers.
    No ORM conversion per value: that was most of the cost at a million rows."""
    from django.db import connection

    study = Study.objects.get(name=sel.study)
    rounds, simulated = _scope(sel, study)
    if not rounds:
        return
    sql, params = _label_sql(sel, sorted(rounds), simulated, connection)
    images = _Images()
    with connection.cursor() as cursor:
        while True:
            cursor.execute(sql, params)
            chunk = cursor.fetchall()
            if not chunk:
                return
            yield chunk, images.fetch(row[4] for row in chunk), rounds
            params[0] = chunk[-1][0]


def label_rows(sel: Selection) -> Iterator[dict]:
    """Every selected label as a dict (answer decoded), in label order, CHUNK rows per query."""
    names = _names(sel, Study.objects.get(name=sel.study))
    for chunk, images, rounds in _chunks(sel):
        for (pk, task_id, round_id, kind, image_id, image_b_id, reader_id, revision, current_id, is_catch,
             repeat_of, spent, created, answer) in chunk:
            source, version, prompt, seed = images[image_id]
            name, simulated = names.get(reader_id, (f"user-{reader_id}", False))
            yield {
                "label_id": pk, "task_id": task_id, "study": sel.study, "round": rounds[round_id], "kind": kind,
                "image_id": image_id, "image_b_id": image_b_id, "source": source, "model_version": version,
                "prompt": prompt, "seed": seed, "reader": name, "reader_simulated": bool(simulated),
                "revision": revision, "superseded": current_id != pk, "is_catch": bool(is_catch),
                "repeat_of": repeat_of, "time_spent_ms": spent, "created_at": created + "+00:00",
                "answer": json.loads(answer) if isinstance(answer, str) else answer,
            }


def jsonl_chunks(sel: Selection) -> Iterator[bytes]:
    """JSONL bytes, a chunk of rows at a time. Lines are formatted from the raw columns: the answer is already JSON
    text in the database, and the image and reader parts are encoded once per image and reader, not per label."""
    dumps = json.dumps
    study_json = dumps(sel.study)
    readers = {pk: f'"reader":{dumps(name)},"reader_simulated":{"true" if simulated else "false"}'
               for pk, (name, simulated) in _names(sel, Study.objects.get(name=sel.study)).items()}
    parts: dict[int, str] = {}
    for chunk, images, rounds in _chunks(sel):
        if len(parts) > _Images.LIMIT:
            parts.clear()
        lines = []
        add = lines.append
        for (pk, task_id, round_id, kind, image_id, image_b_id, reader_id, revision, current_id, is_catch,
             repeat_of, spent, created, answer) in chunk:
            image = parts.get(image_id)
            if image is None:
                source, version, prompt, seed = images[image_id]
                image = parts[image_id] = (f'"source":{dumps(source)},"model_version":{dumps(version)},'
                                           f'"prompt":{dumps(prompt)},"seed":{dumps(seed)}')
            reader = readers.get(reader_id)
            if reader is None:
                reader = readers[reader_id] = f'"reader":"user-{reader_id}","reader_simulated":false'
            add(f'{{"label_id":{pk},"task_id":{task_id},"study":{study_json},"round":{rounds[round_id]},'
                f'"kind":"{kind}","image_id":{image_id},"image_b_id":{"null" if image_b_id is None else image_b_id},'
                f'{image},{reader},"revision":{revision},"superseded":{"false" if current_id == pk else "true"},'
                f'"is_catch":{"true" if is_catch else "false"},'
                f'"repeat_of":{"null" if repeat_of is None else repeat_of},"time_spent_ms":{spent},'
                f'"created_at":"{created}+00:00","answer":{answer}}}\n')
        yield "".join(lines).encode()


def answer_columns(study: Study) -> list[str]:
    """The flattened answer columns every CSV/Parquet export of the study has, whatever the rows hold."""
    cols = ["answer.call", "answer.confidence"]
    cols += [f"answer.scores.{c['key']}" for c in study.rubric]
    cols += ["answer.choice", "answer.preferred_image", "answer.comment", "answer.boxes", "answer.cannot_assess",
             "answer.reason"]
    return cols


def _answer_cells(answer: dict, paths: list[tuple[str, list[str]]], image_id, image_b_id) -> list:
    cells = []
    for col, path in paths:
        value = answer
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if col == "answer.preferred_image" and answer.get("preferred") in ("a", "b"):
            value = image_id if answer["preferred"] == "a" else image_b_id
        if isinstance(value, list | dict):
            value = json.dumps(value, separators=(",", ":"))
        cells.append(value)
    return cells


def _paths(columns: list[str]) -> list[tuple[str, list[str]]]:
    return [(col, col.split(".")[1:]) for col in columns]


def flatten(row: dict, columns: list[str]) -> dict:
    flat = {k: v for k, v in row.items() if k != "answer"}
    flat.update(zip(columns, _answer_cells(row["answer"] or {}, _paths(columns), row["image_id"], row["image_b_id"]),
                    strict=True))
    return flat


def csv_chunks(sel: Selection, counter: dict | None = None) -> Iterator[bytes]:
    """CSV bytes with a header; `counter["rows"]` counts rows (fields may hold newlines, so lines do not)."""
    study = Study.objects.get(name=sel.study)
    columns = answer_columns(study)
    paths = _paths(columns)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(COLUMNS) + columns)
    n = 0
    for row in label_rows(sel):  # dicts in COLUMNS order, then the answer
        answer = row.pop("answer") or {}
        writer.writerow([*row.values(), *_answer_cells(answer, paths, row["image_id"], row["image_b_id"])])
        n += 1
        if n % 5000 == 0:
            if counter is not None:
                counter["rows"] = n
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    if counter is not None:
        counter["rows"] = n
    yield out.getvalue().encode()


# --- files -------------------------------------------------------------------------------------------------------


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


def write_export(sel: Selection, fmt: str, out: Path, *, on_progress=None) -> dict:
    """Write one export to `out` (a file; imagefolder: a ZIP) and `out` + '.manifest.json'. Returns the manifest."""
    if fmt not in FORMATS:
        raise ValidationError(f"format must be one of {', '.join(FORMATS)}.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    counts: dict = {}
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
    """Preference pairs as JSONL: explicit pairwise answers (current labels), plus rubric-gap pairs as the training
    snapshot derives them (`feedback.feedback_items`), over the selection's rounds."""
    from annotation.feedback import feedback_items

    study = Study.objects.get(name=sel.study)
    rounds = Round.objects.filter(study=study, labeling_opened_at__isnull=False)
    if sel.rounds:
        rounds = rounds.filter(number__in=sel.rounds)
    if sel.since_round is not None:
        rounds = rounds.filter(number__gt=sel.since_round)
    for pair in feedback_items(rounds=list(rounds.order_by("number")))["pairs"]:
        yield (json.dumps({k: pair[k] for k in ("chosen", "rejected", "prompt", "source")}) + "\n").encode()


def _write_pairs(sel: Selection, path: Path) -> int:
    n = 0
    with open(path, "wb") as handle:
        for line in pairs_lines(sel):
            handle.write(line)
            n += 1
    return n


def image_aggregates(sel: Selection) -> Iterator[tuple[Image, dict]]:
    """Per image of the selection: how it was read (current, non-catch answers), in image order."""
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
        stats: dict[int, dict] = {pk: {"reads": 0, "called_real": 0, **{f"rubric_{k}": [] for k in rubric},
                                       "preference_wins": 0, "preference_comparisons": 0} for pk in ids}
        rows = tasks.filter(Q(image_id__in=ids) | Q(image_b_id__in=ids)).values_list(
            "kind", "image_id", "image_b_id", "current_label__answer")
        for kind, image_id, image_b_id, answer in rows:
            answer = json.loads(answer) if isinstance(answer, str) else answer
            if answer.get("cannot_assess"):
                continue
            if kind == "realism" and image_id in stats:
                stats[image_id]["reads"] += 1
                stats[image_id]["called_real"] += answer.get("call") == "real"
            elif kind == "rubric" and image_id in stats:
                for key, value in answer.get("scores", {}).items():
                    stats[image_id].setdefault(f"rubric_{key}", []).append(value)
            elif kind == "preference" and answer.get("preferred") in ("a", "b"):
                winner = image_id if answer["preferred"] == "a" else image_b_id
                for pk in (image_id, image_b_id):
                    if pk in stats:
                        stats[pk]["preference_comparisons"] += 1
                        stats[pk]["preference_wins"] += pk == winner
        for pk in ids:
            s = stats[pk]
            agg = {"reads": s["reads"], "called_real_share": s["called_real"] / s["reads"] if s["reads"] else None,
                   "preference_wins": s["preference_wins"], "preference_comparisons": s["preference_comparisons"]}
            for key in rubric:
                values = s[f"rubric_{key}"]
                agg[f"rubric_{key}_mean"] = sum(values) / len(values) if values else None
                agg[f"rubric_{key}_n"] = len(values)
            yield images[pk], agg
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
