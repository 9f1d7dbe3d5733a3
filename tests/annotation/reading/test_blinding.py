"""Blinding: everything a reader receives is the same for real and synthetic images."""

import io
import json
import re
import struct

import pytest
from PIL import Image as PILImage

from annotation.models import Image, ReadingTask
from annotation.reading import assignment

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
        assert not re.search(rf"/{task.image_id}(?![\w-])", text)  # no database ids in URLs (tokens hold "-")


def test_a_reader_cannot_use_another_readers_image_url(mixed, add_reader):
    from django.test import Client

    study, rnd, reader, client_a = mixed
    task = assignment.tasks_next_for_reader(queue=assignment.queue_for_reader(round=rnd, reader=reader))
    client = Client()
    client.force_login(add_reader(study, "other-reader"))
    assert client.get(f"/portal/i/{task.token}").status_code == 404
    assert client_a.get(f"/portal/i/{task.token}").status_code == 200


# --- the audit over HTTP: every reader-facing response, real against synthetic, time to first byte included -------


def _normalised(text: str, done: int, total: int) -> str:
    """A page with its per-task tokens and its place in the list (case number, counter, progress) taken out; every
    other character, numbers included, must match between sources."""
    text = re.sub(r"[A-Za-z0-9_-]{20,}", "TOKEN", text)
    for found, put in ((f"Case {done + 1} ", "Case N "), (f">{done} / {total}<", ">D / T<"),
                       (f'"done": {done}, "total": {total}', '"done": D, "total": T'),
                       (f"width: {round(100 * done / total)}%", "width: W%")):
        text = text.replace(found, put)
    return text


def _sign_test_p(wins: int, n: int) -> float:
    """Two-sided binomial sign test: how likely a split this uneven is when neither side is faster."""
    from math import comb

    k = min(wins, n - wins)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


#: The sign test's threshold: identical code paths fail it about once in 100,000 runs, and a 10 ms difference in
#: time to first byte fails it even with both cores busy (see the test that injects one; on an idle machine 2 ms
#: is enough).
TTFB_P = 1e-5


@pytest.fixture
def audited(live_server, transactional_db, make_study, add_reader, stored_round):
    """A mixed realism round (6 real of another shape, 6 synthetic) and a reader's `get` over real HTTP that times
    the first byte; the reader answers everything, recording every response on the way."""
    import http.client
    import time
    from urllib.parse import urlsplit

    from django.test import Client

    study = make_study(readers_per_image=1, task_kinds=["realism"], display_size=96)
    rnd = stored_round(study, real=6, synthetic=6, shape=(150, 90))
    reader = add_reader(study, "audited-reader")
    client = Client()
    client.force_login(reader)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    host = urlsplit(live_server.url)

    def get(path: str) -> tuple[http.client.HTTPResponse, bytes, float]:
        # a fresh connection each time: on a kept-alive one, Nagle's algorithm and delayed ACKs put a ~40 ms floor
        # under every response, which would hide any difference smaller than that
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        connection.connect()
        started = time.perf_counter()
        connection.request("GET", path, headers={"Cookie": cookie})
        response = connection.getresponse()  # returns once the status line and headers are in: the first byte
        first_byte = time.perf_counter() - started
        body = response.read()
        connection.close()
        return response, body, first_byte

    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    seen = {"pages": {"real": set(), "synthetic": set()}, "payloads": {"real": set(), "synthetic": set()},
            "images": {"real": [], "synthetic": []}}
    answered = 0
    while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
        source = task.image.source
        response, body, _ = get(f"/portal/c/{task.token}/")
        assert response.status == 200
        data = json.loads(re.search(r'<script[^>]*id="case-data"[^>]*>(.*?)</script>', body.decode(), re.S)[1])
        if data["previous"] is not None:  # the first case alone has no way back: compare the others
            seen["pages"][source].add(_normalised(body.decode(), answered, 12))
            seen["payloads"][source].add(_normalised(json.dumps(data), answered, 12))
        (url,) = data["images"]
        assert re.fullmatch(r"/portal/i/[A-Za-z0-9_-]{24}", url), url  # one URL shape, no ids, no extension
        response, body, _ = get(url)
        headers = tuple(sorted((k, v) for k, v in response.getheaders() if k.lower() != "date"))
        seen["images"][source].append((url, response.status, headers, len(body)))
        assignment.label_submit(reader=reader, task_token=task.token, answer={"call": "real", "confidence": 3},
                                submission_id=__import__("uuid").uuid4())
        answered += 1
    return get, seen


def _ttfb_sign_test(get, images: dict, pairs: int = 60) -> tuple[int, float, dict]:
    """Time to first byte of the two sources' images, interleaved in pairs (order within a pair drawn at random) so
    drift and noise hit both alike: (pairs where real was slower, the sign test's p, medians in ms)."""
    import random

    rng = random.Random(7)
    wins, times = 0, {"real": [], "synthetic": []}
    for i in range(pairs):
        order = ["real", "synthetic"]
        rng.shuffle(order)
        measured = {}
        for source in order:
            response, _, first_byte = get(images[source][i % len(images[source])][0])
            assert response.status == 200
            measured[source] = first_byte
            times[source].append(first_byte)
        wins += measured["real"] > measured["synthetic"]
    return wins, _sign_test_p(wins, pairs), {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}


def test_blinding_audit_over_http_finds_nothing_that_tells_real_from_synthetic(audited):
    get, seen = audited
    pages, payloads, images = seen["pages"], seen["payloads"], seen["images"]
    assert len(images["real"]) == len(images["synthetic"]) == 6
    # the case page and its data are one and the same for both sources once tokens and the list position are out
    assert pages["real"] == pages["synthetic"] and len(pages["real"]) == 1
    assert payloads["real"] == payloads["synthetic"]
    # image responses: same status, same headers (Content-Length included), same byte length
    assert len({row[1:] for row in images["real"] + images["synthetic"]}) == 1
    wins, p, median = _ttfb_sign_test(get, images)
    assert p >= TTFB_P, f"time to first byte differs by source: real slower in {wins}/60 pairs, medians {median} ms"


def test_the_timing_audit_catches_a_ten_millisecond_difference(audited, monkeypatch):
    import time

    from annotation.reading import views

    task_for = views._task

    def slower_for_synthetic(request, token):
        task = task_for(request, token)
        if task.image.source == "synthetic":
            time.sleep(0.010)
        return task

    monkeypatch.setattr(views, "_task", slower_for_synthetic)  # the live server runs in this process
    get, seen = audited
    wins, p, median = _ttfb_sign_test(get, seen["images"])
    assert p < TTFB_P, f"a 10 ms delay went unnoticed: real slower in {wins}/60 pairs, medians {median} ms"
