"""Label rows, streamed at flat memory: one row per label (revisions included, flagged `superseded`), read in
keyset-paginated chunks of raw column values, so a million labels never sit in memory at once; as dicts, JSONL
bytes or CSV bytes (the answer flattened into `answer.*` columns)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from annotation.exports.selection import Selection, selection_scope, utc
from annotation.models import Study, StudyMembership

CHUNK = 5000
#: Columns of every row, in order (CSV and Parquet add the flattened answer columns after them).
COLUMNS = ("label_id", "task_id", "study", "round", "kind", "image_id", "image_b_id", "source", "model_version",
           "prompt", "seed", "reader", "reader_simulated", "revision", "superseded", "is_catch", "repeat_of",
           "time_spent_ms", "created_at")


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
        params.append(connection.ops.adapt_datetimefield_value(utc(sel.updated_after)))
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
    rounds, simulated = selection_scope(sel, study)
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
