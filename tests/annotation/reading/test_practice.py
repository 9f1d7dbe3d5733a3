"""The reader practice set: cases with known answers shown before the first real list, feedback after each answer
and a summary; never a label, never in a round, a statistic or an export, and it unblinds no real case."""

import io
import json
import uuid

import numpy as np
import pytest
from django.core.management import call_command
from django.test import Client
from PIL import Image as PILImage

from annotation.models import Image, Label, PracticeAnswer, PracticeCase
from annotation.reading import assignment
from annotation.rounds.report import round_report_compute

pytestmark = pytest.mark.django_db


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray((np.random.default_rng(seed).random((80, 64)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _upload(client, study, answer, *files, explanation=""):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(f"/dashboard/studies/{study.pk}/practice/", {
        "answer": answer, "explanation": explanation,
        "images": [SimpleUploadedFile(name, data) for name, data in files]})


@pytest.fixture
def practice_world(make_study, make_user, add_reader, stored_round):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    rnd = stored_round(study, real=2, synthetic=2)
    admin = make_user("boss", is_superuser=True)
    client = Client()
    client.force_login(admin)
    images_before = Image.objects.count()
    assert _upload(client, study, "real", ("a.png", _png(1)), ("b.png", _png(2)),
                   explanation="Look at the rib edges").status_code == 302
    refused = _upload(client, study, "synthetic", ("c.png", _png(3)), ("evil.png", b"\x89PNG\r\n\x1a\nnot really"))
    assert refused.status_code == 200 and "Added 1 practice case; refused: evil.png" in refused.content.decode()
    assert Image.objects.count() == images_before  # practice images are not study images
    reader = add_reader(study, "learner")
    return {"study": study, "round": rnd, "admin": client, "reader": reader}


def test_the_practice_set_comes_first_with_feedback_and_a_summary(practice_world):
    study, rnd, reader = practice_world["study"], practice_world["round"], practice_world["reader"]
    client = Client()
    client.force_login(reader)
    home = client.get("/portal/").content.decode()
    assert "Practice first" in home
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    assert client.get(f"/portal/q/{queue.token}/next/")["Location"] == f"/portal/practice/{study.pk}/"
    calls = []
    for _ in range(3):
        page = client.get(f"/portal/practice/{study.pk}/")
        case = page.context["case"]
        image = client.get(f"/portal/practice/{study.pk}/{case.pk}.png")
        assert image.status_code == 200 and image["Content-Type"] == "image/png"
        feedback = client.post(f"/portal/practice/{study.pk}/", {"case": case.pk, "call": "real"}).content.decode()
        assert ("Correct" if case.answer == "real" else "Not quite") in feedback
        assert f"This image is <strong>{case.answer}</strong>" in feedback
        if case.answer == "real":
            assert "Look at the rib edges" in feedback
        calls.append(case.answer == "real")
    summary = client.get(f"/portal/practice/{study.pk}/").content.decode()
    assert f"You answered {sum(calls)} of 3 correctly." in summary
    # practice done: the real list opens, and practice answers are no labels
    assert client.get(f"/portal/q/{queue.token}/next/")["Location"].startswith("/portal/c/")
    assert not Label.objects.exists() and PracticeAnswer.objects.count() == 3
    # the admin sees the practice score
    assert f"{sum(calls)} / 3 correct" in practice_world["admin"].get(f"/dashboard/studies/{study.pk}/").content.decode()


def test_practice_is_in_no_round_no_statistic_and_no_export(practice_world, tmp_path):
    study, rnd, reader = practice_world["study"], practice_world["round"], practice_world["reader"]
    client = Client()
    client.force_login(reader)
    for case in PracticeCase.objects.filter(study=study):
        client.post(f"/portal/practice/{study.pk}/", {"case": case.pk, "call": "synthetic"})
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
        assignment.label_submit(reader=reader, task_token=task.token, answer={"call": "real", "confidence": 3},
                                submission_id=uuid.uuid4())
    keys = set(PracticeCase.objects.values_list("display_key", flat=True))
    assert not Image.objects.filter(display_key__in=keys).exists()
    report = round_report_compute(round=rnd, with_images=False)
    pooled = report["reader"]["pooled"]  # the 4 real-list reads only (the 3 practice answers differ from them)
    assert pooled["n"] == 4 and pooled["accuracy"]["value"] == 0.5
    export = tmp_path / "export.jsonl"
    call_command("export_dataset", study=study.name, format="jsonl", out=str(export))
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(rows) == 4 and not any("practice" in json.dumps(r) for r in rows)


def test_a_non_member_sees_no_practice(practice_world, make_user):
    stranger = Client()
    stranger.force_login(make_user("stranger"))
    study = practice_world["study"]
    case = PracticeCase.objects.first()
    assert stranger.get(f"/portal/practice/{study.pk}/").status_code == 404
    assert stranger.get(f"/portal/practice/{study.pk}/{case.pk}.png").status_code == 404
