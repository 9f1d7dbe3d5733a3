"""Preference pairs as a Hugging Face dataset in Pick-a-Pic's layout: written by the CLI (a folder of Parquet shards)
and by an export job (a ZIP of that folder), loaded with `datasets`, each row's images decoded as diffusers'
Diffusion-DPO example decodes them."""

import io
import json
import zipfile

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

pytestmark = pytest.mark.django_db


def _pairs_jsonl(study, tmp_path) -> list[dict]:
    out = tmp_path / "pairs.jsonl"
    call_command("export_dataset", "--study", study.name, "--format", "pairs", "--out", str(out), stdout=io.StringIO())
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_pairs_load_with_datasets_and_decode_as_the_dpo_example_does(labelled, tmp_path):
    import datasets

    study = labelled["study"]
    folder = tmp_path / "pairs-hf"
    call_command("export_dataset", "--study", study.name, "--format", "pairs-hf", "--out", str(folder),
                 stdout=io.StringIO())
    shards = sorted(p.name for p in folder.iterdir())
    assert shards and all(name.startswith("train-") and name.endswith(".parquet") for name in shards)
    manifest = json.loads((tmp_path / "pairs-hf.manifest.json").read_text())
    assert sorted(manifest["files"]) == shards
    data = datasets.load_dataset("parquet", data_dir=str(folder), split="train")
    expected = _pairs_jsonl(study, tmp_path)
    assert len(data) == len(expected) == manifest["counts"]["pairs"] > 0
    assert {"jpg_0", "jpg_1", "label_0", "caption"} <= set(data.column_names)
    by_ids = {(p["chosen"], p["rejected"]): p for p in expected}
    for row in data:
        first = Image.open(io.BytesIO(row["jpg_0"])).convert("RGB")  # as train_diffusion_dpo.py does
        second = Image.open(io.BytesIO(row["jpg_1"])).convert("RGB")
        assert first.size[0] > 0 and second.size[0] > 0 and row["label_0"] in (0.0, 1.0)
        chosen, rejected = (row["image_0"], row["image_1"]) if row["label_0"] == 1.0 else (row["image_1"],
                                                                                            row["image_0"])
        assert by_ids[(chosen, rejected)]["prompt"] == row["caption"]
    with pytest.raises(CommandError, match="not an empty folder"):
        call_command("export_dataset", "--study", study.name, "--format", "pairs-hf", "--out", str(folder),
                     stdout=io.StringIO())


def test_a_pairs_hf_export_job_downloads_as_a_zip_of_shards(labelled, django_capture_on_commit_callbacks):
    from rest_framework.test import APIClient

    from annotation.api.auth import token_issue

    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=labelled['admin'], name='e', scope='export')[1]}")
    with django_capture_on_commit_callbacks(execute=True):
        job = c.post("/api/v1/exports/", {"study": labelled["study"].pk, "format": "pairs-hf"}, format="json")
    assert job.status_code == 202
    status = c.get(f"/api/v1/exports/{job.json()['id']}/").json()
    assert status["status"] == "done", status
    body = b"".join(c.get(status["download"]).streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert [n for n in archive.namelist() if n.endswith(".parquet")]
