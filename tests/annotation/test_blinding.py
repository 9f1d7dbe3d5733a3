"""Blinding: everything a reader receives is the same for real and synthetic images."""

import io
import json
import re
import struct

import pytest
from PIL import Image as PILImage

from annotation import assignment
from annotation.models import Image, ReadingTask

pytestmark = pytest.mark.django_db


def png_chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append(kind.decode())
        pos += 12 + length
    return chunks


@pytest.fixture
def mixed(make_study, add_reader, stored_round, client):
    study = make_study(readers_per_image=1, task_kinds=["realism", "preference"], display_size=96)
    # real images of several sizes and aspect ratios, synthetic ones square: the served files must not differ
    rnd = stored_round(study, real=4, synthetic=4, shape=(150, 90))
    reader = add_reader(study, "blind-reader")
    client.force_login(reader)
    return study, rnd, reader, client


def test_served_bytes_do_not_depend_on_the_source(mixed):
    study, rnd, reader, client = mixed
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    seen = {"real": [], "synthetic": []}
    while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
        if task.kind == "realism":
            response = client.get(f"/portal/i/{task.token}")
            assert response.status_code == 200
            seen[task.image.source].append(response)
        assignment.label_submit(reader=reader, task_token=task.token,
                                answer={"call": "real", "confidence": 1} if task.kind == "realism" else
                                {"choice": "none"}, submission_id=__import__("uuid").uuid4())
    assert len(seen["real"]) == len(seen["synthetic"]) == 4
    responses = seen["real"] + seen["synthetic"]
    lengths = {len(r.content) for r in responses}
    assert len(lengths) == 1
    header_sets = {tuple(sorted((k, v) for k, v in r.headers.items())) for r in responses}
    assert len(header_sets) == 1  # identical headers, Content-Length included
    for r in responses:
        img = PILImage.open(io.BytesIO(r.content))
        assert (img.format, img.mode, img.size) == ("PNG", "L", (96, 96))
        assert img.info == {}  # no text, EXIF, gamma or resolution chunks
        assert png_chunks(r.content)[0] == "IHDR" and set(png_chunks(r.content)) == {"IHDR", "IDAT", "IEND"}
        assert "Last-Modified" not in r.headers and "ETag" not in r.headers


def test_reader_pages_and_json_carry_no_provenance(mixed):
    study, rnd, reader, client = mixed
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    home = client.get("/portal/").content.decode()
    bodies = [home]
    first = client.get(f"/portal/api/next?queue={queue.token}").json()
    for _ in range(12):
        page = client.get(first["url"])
        bodies += [page.content.decode(), json.dumps(first)]
        body = {"task": first["task"], "submission_id": str(__import__("uuid").uuid4()),
                "answer": {"call": "synthetic", "confidence": 2} if first["kind"] == "realism" else {"choice": "left"}}
        submitted = client.post("/portal/api/submit", body, content_type="application/json")
        bodies.append(submitted.content.decode())
        first = client.get(f"/portal/api/next?queue={queue.token}").json()
        if first.get("done"):
            break
    text = "\n".join(bodies)
    for image in Image.objects.filter(study=study):
        for secret in (image.prompt, image.display_key, image.storage_key, image.sha256, image.generator):
            if secret:
                assert secret not in text
    assert f"round {rnd.number}" not in text.lower() and "round" not in first
    payload_keys = set(json.loads(json.dumps(first)).keys())
    assert not payload_keys & {"source", "image_id", "round", "prompt", "model_version", "seed"}
    for task in ReadingTask.objects.filter(reader=reader):
        assert not re.search(rf"/{task.image_id}\b", text)  # no database ids in URLs


def test_a_reader_cannot_use_another_readers_image_url(mixed, add_reader):
    from django.test import Client

    study, rnd, reader, client_a = mixed
    task = assignment.tasks_next_for_reader(queue=assignment.queue_for_reader(round=rnd, reader=reader))
    client = Client()
    client.force_login(add_reader(study, "other-reader"))
    assert client.get(f"/portal/i/{task.token}").status_code == 404
    assert client_a.get(f"/portal/i/{task.token}").status_code == 200
