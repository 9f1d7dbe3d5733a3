"""The round report: reader statistics from the stored labels, image metrics, its page, JSON and permissions."""

import json
import uuid

import pytest
from django.test import Client

from annotation.models import Role
from annotation.reading import assignment
from annotation.rounds.report import findings_from_report, round_report_compute
from annotation.studies.services import membership_add

pytestmark = pytest.mark.django_db


def test_findings_are_read_from_reports_with_negations():
    text = "PA chest radiograph. Cardiomegaly (CTR 0.61). No pleural effusion or pneumothorax. Small nodule."
    assert findings_from_report(text) == ["cardiomegaly", "nodule"]
    assert findings_from_report("No acute cardiopulmonary abnormality.") == []


@pytest.fixture
def labelled(make_study, add_reader, stored_round, django_user_model):
    study = make_study(readers_per_image=2, task_kinds=["realism", "rubric"])
    rnd = stored_round(study, real=6, synthetic=6)
    readers = [add_reader(study, f"rad{i}") for i in range(2)]
    for n, reader in enumerate(readers):
        queue = assignment.queue_for_reader(round=rnd, reader=reader)
        while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
            if task.kind == "realism":
                call = task.image.source if (task.position + n) % 4 else "real"
                answer = {"call": call, "confidence": 1 + task.position % 5}
            else:
                answer = {"scores": {"anatomy": 1 + task.position % 5, "style": 3, "artifacts": 4}}
            assignment.label_submit(reader=reader, task_token=task.token, answer=answer, submission_id=uuid.uuid4())
    admin = django_user_model.objects.create_user("study-admin", password="x")
    membership_add(study=study, user=admin, role=Role.ADMIN)
    return study, rnd, readers, admin


def test_report_counts_every_read_and_is_strict_json(labelled):
    study, rnd, readers, admin = labelled
    report = round_report_compute(round=rnd)
    json.dumps(report, allow_nan=False)
    pooled = report["reader"]["pooled"]
    assert pooled["n"] == 24 and set(report["reader"]["readers"]) == {"rad0", "rad1"}
    assert 0 <= pooled["accuracy"]["ci_low"] <= pooled["accuracy"]["value"] <= pooled["accuracy"]["ci_high"] <= 1
    assert sum(report["rubric_scores"]["style"].values()) == 24
    images = report["images"]
    assert images["n_real"] == 6 and images["n_synthetic"] == 6
    assert "fid" in images["skipped"]  # no Inception weights configured here: skipped with its reason
    assert images["prdc"] is not None
    rnd.refresh_from_db()
    assert rnd.metrics["report"]["round"] == rnd.number


def test_report_page_json_and_permissions(labelled):
    study, rnd, readers, admin = labelled
    url = f"/dashboard/rounds/{rnd.pk}/report/"
    staff = Client()
    staff.force_login(admin)
    assert "No report yet" in staff.get(url).content.decode()
    assert staff.get(url + "?format=json").status_code == 404
    round_report_compute(round=rnd, with_images=False)
    page = staff.get(url)
    assert page.status_code == 200 and page.content.decode().count("<svg") >= 3
    download = staff.get(url + "?format=json")
    assert download.status_code == 200 and download.json()["reader"]["pooled"]["n"] == 24
    assert "attachment" in download["Content-Disposition"]
    assert staff.get(url + "?print=1").status_code == 200
    reader = Client()
    reader.force_login(readers[0])
    assert reader.get(url).status_code == 404
    assert reader.post(url + "refresh/").status_code == 404
    assert Client().get(url).status_code == 302


def test_refresh_runs_the_report_task(labelled, django_capture_on_commit_callbacks):
    study, rnd, readers, admin = labelled
    staff = Client()
    staff.force_login(admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(f"/dashboard/rounds/{rnd.pk}/report/refresh/")
    assert response.status_code == 302
    rnd.refresh_from_db()
    assert rnd.metrics["report"]["reader"]["pooled"]["n"] == 24


def test_round_report_command_says_what_was_skipped(labelled):
    import io

    from django.core.management import CommandError, call_command

    study, rnd, readers, admin = labelled
    out = io.StringIO()
    call_command("round_report", study.name, str(rnd.number), stdout=out)
    text = out.getvalue()
    assert "24 realism reads" in text and "skipped fid: " in text
    out = io.StringIO()
    call_command("round_report", study.name, str(rnd.number), "--json", "--no-images", stdout=out)
    assert json.loads(out.getvalue())["images"] is None
    with pytest.raises(CommandError, match="has no round 9"):
        call_command("round_report", study.name, "9")


def test_a_fully_crossed_round_reports_its_mrmc_auc_as_the_cli_computes_it(labelled, tmp_path):
    import io

    from django.core.management import call_command

    from annotation.rounds.report import reads_for_round
    from annotation.stats.mrmc.ratings_csv import ratings_to_csv
    from annotation.stats.mrmc.round_reads import mrmc_ratings

    study, rnd, readers, admin = labelled
    mrmc = round_report_compute(round=rnd, with_images=False)["mrmc"]
    assert mrmc["reason"] is None
    value = mrmc["value"]
    assert value["n"] == {"treatments": 1, "readers": 2, "cases": 12, "positive": 6, "negative": 6}
    reads, _ = reads_for_round(round=rnd)
    path = tmp_path / "round.csv"
    path.write_text(ratings_to_csv(mrmc_ratings(reads)))
    out = io.StringIO()
    call_command("reader_stats", str(path), "--mrmc", "--json", "--margin", str(study.equivalence_margin), stdout=out)
    assert json.loads(out.getvalue()) == json.loads(json.dumps(value))
    assert value["rrrc"] is None and "one treatment" in value["skipped"]["differences"]


def test_a_round_not_fully_crossed_says_why_it_has_no_mrmc(make_study, add_reader, stored_round):
    study = make_study(readers_per_image=2, task_kinds=["realism"])
    rnd = stored_round(study, real=4, synthetic=4)
    for reader, reads in ((add_reader(study, "r0"), 8), (add_reader(study, "r1"), 3)):  # r1 stops after 3 cases
        queue = assignment.queue_for_reader(round=rnd, reader=reader)
        for _ in range(reads):
            task = assignment.tasks_next_for_reader(queue=queue)
            answer = {"call": "real", "confidence": 3}
            assignment.label_submit(reader=reader, task_token=task.token, answer=answer, submission_id=uuid.uuid4())
    mrmc = round_report_compute(round=rnd, with_images=False)["mrmc"]
    assert mrmc["value"] is None and mrmc["reason"].startswith("not fully crossed: 5 of 16 ratings missing (2 readers × 8 cases)")
