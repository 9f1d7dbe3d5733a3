"""Exports round-trip: what pandas and HF datasets read back equals the database; manifests verify."""

import json
import zipfile
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from annotation.exports.formats import manifest_verify
from annotation.exports.rows import jsonl_chunks, label_rows
from annotation.exports.selection import Selection
from annotation.models import Image, Label, ReadingTask, StudyMembership

pytestmark = pytest.mark.django_db


def _expected(study, *, simulated=False):
    qs = Label.objects.filter(task__round__study=study).select_related("task", "reader").order_by("pk")
    if not simulated:
        qs = qs.exclude(reader__memberships__is_simulated=True)
    return list(qs)


def test_jsonl_and_csv_equal_the_database(labelled, tmp_path):
    study = labelled["study"]
    call_command("export_dataset", study="exp", format="jsonl", out=str(tmp_path / "labels.jsonl"))
    call_command("export_dataset", study="exp", format="csv", out=str(tmp_path / "labels.csv"))
    expected = _expected(study)
    jsonl = pd.read_json(tmp_path / "labels.jsonl", lines=True)
    csv = pd.read_csv(tmp_path / "labels.csv")
    pseudonyms = dict(StudyMembership.objects.filter(study=study).values_list("user_id", "pseudonym"))
    assert list(jsonl["label_id"]) == list(csv["label_id"]) == [label.pk for label in expected]
    for row, label in zip(jsonl.to_dict("records"), expected, strict=True):
        assert row["answer"] == label.answer and row["kind"] == label.task.kind
        assert row["reader"] == pseudonyms[label.reader_id] and row["image_id"] == label.task.image_id
        assert row["superseded"] == (label.task.current_label_id != label.pk)
        assert row["source"] == label.task.image.source and row["time_spent_ms"] == label.time_spent_ms
    assert jsonl["superseded"].sum() == 1 and not jsonl["reader_simulated"].any()
    # JSONL lines are formatted from raw columns; they must carry exactly what the decoded rows carry.
    lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert lines == list(label_rows(Selection(study="exp")))
    assert [datetime.fromisoformat(line["created_at"]) for line in lines] == [label.created_at for label in expected]
    middle = expected[len(expected) // 2].created_at
    later = b"".join(jsonl_chunks(Selection(study="exp", updated_after=middle))).decode().splitlines()
    assert [json.loads(line)["label_id"] for line in later] == [lb.pk for lb in expected if lb.created_at > middle]
    # the same instant written with another offset selects the same labels (SQLite compares stored text)
    shifted = middle.astimezone(timezone(timedelta(hours=2)))
    assert [row["label_id"] for row in label_rows(Selection(study="exp", updated_after=shifted))] == \
        [json.loads(line)["label_id"] for line in later]
    realism = csv[csv["kind"] == "realism"]
    assert set(realism["answer.call"]) <= {"real", "synthetic"}
    rubric = csv[csv["kind"] == "rubric"]
    assert (rubric["answer.scores.anatomy"] == 4).all() and (rubric["answer.comment"] == 'ok, "quoted"\nline').all()
    manifest = json.loads((tmp_path / "labels.csv.manifest.json").read_text())
    assert manifest["counts"]["rows"] == len(expected) and manifest_verify(manifest, tmp_path) == []
    (tmp_path / "labels.csv").write_text("tampered")
    assert manifest_verify(manifest, tmp_path) == ["labels.csv"]


def test_parquet_incremental_and_simulated_selection(labelled, tmp_path):
    study = labelled["study"]
    call_command("export_dataset", study="exp", format="parquet", out=str(tmp_path / "all.parquet"),
                 include_simulated=True, current_only=True)
    frame = pd.read_parquet(tmp_path / "all.parquet")
    expected = [label for label in _expected(study, simulated=True) if label.task.current_label_id == label.pk]
    assert list(frame["label_id"]) == [label.pk for label in expected] and frame["reader_simulated"].any()
    assert not frame["superseded"].any()
    call_command("export_dataset", study="exp", format="jsonl", out=str(tmp_path / "later.jsonl"), since_round=1)
    assert (tmp_path / "later.jsonl").read_text() == ""  # nothing after round 1 yet
    with pytest.raises(CommandError, match="no round 7"):
        call_command("export_dataset", study="exp", format="jsonl", out=str(tmp_path / "x.jsonl"), round=[7])
    with pytest.raises(CommandError, match="No study named 'nope'"):
        call_command("export_dataset", study="nope", format="jsonl", out=str(tmp_path / "x.jsonl"))
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("export_dataset", study="exp", format="jsonl", out=str(tmp_path / "x.jsonl"),
                     updated_after="yesterday")
    assert not (tmp_path / "x.jsonl").exists()


def test_the_imagefolder_export_loads_with_hf_datasets_one_row_per_image(labelled, tmp_path):
    import datasets

    call_command("export_dataset", study="exp", format="imagefolder", out=str(tmp_path / "set.zip"))
    folder = tmp_path / "set"
    with zipfile.ZipFile(tmp_path / "set.zip") as archive:
        archive.extractall(folder)
    inner = json.loads((folder / "manifest.json").read_text())
    assert manifest_verify(inner, folder) == []
    data = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    read = Image.objects.filter(round=labelled["round"]).count()
    assert len(data) == read == 8
    rows = {row["image_id"]: row for row in data.remove_columns("image")}
    for image in Image.objects.filter(round=labelled["round"]):
        row = rows[image.pk]
        assert row["source"] == image.source and row["reads"] == 2  # alice and bob; the simulated reader left out
        answers = [t.current_label.answer for t in ReadingTask.objects.filter(
            image=image, kind="realism", reader__in=labelled["readers"]).select_related("current_label")]
        real = [a["confidence"] for a in answers if a["call"] == "real"]
        # the rule training uses: the confidence-weighted share of reads that called the image real
        assert row["realism"] == pytest.approx(sum(real) / sum(a["confidence"] for a in answers))
        assert row["called_real"] == len(real)
        assert row["rubric_anatomy_mean"] == 4
    assert data[0]["image"].size[0] > 0


def test_pairs_export_is_ready_for_dpo(labelled, tmp_path):
    call_command("export_dataset", study="exp", format="pairs", out=str(tmp_path / "pairs.jsonl"))
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all({"chosen", "rejected", "prompt"} <= p.keys() for p in pairs)
    synthetic = set(Image.objects.filter(source="synthetic").values_list("pk", flat=True))
    assert all(p["chosen"] in synthetic and p["rejected"] in synthetic and p["chosen"] != p["rejected"]
               for p in pairs)
