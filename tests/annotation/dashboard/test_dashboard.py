"""The admin dashboard: who may see it, live progress JSON, launching and steering rounds from the browser."""

import json

import pytest

from annotation.models import Round
from annotation.rounds.services import round_launch
from annotation.studies.services import membership_add, study_create
from tests.annotation.rounds.preset import TINY_ROUND, tiny_study

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people(make_user):
    study = tiny_study()
    admin, reader, stranger = make_user("boss"), make_user("reader1"), make_user("other-admin")
    membership_add(study=study, user=admin, role="admin")
    membership_add(study=study, user=reader, role="reader")
    other = study_create(name="other", title="Other")
    membership_add(study=other, user=stranger, role="admin")
    return study, admin, reader, stranger


def test_admins_launch_a_round_watch_its_progress_and_see_its_pages(client, people):
    study, admin, reader, stranger = people
    client.force_login(admin)
    bad = client.post(f"/dashboard/studies/{study.pk}/launch/", {"selection": "clever"})
    assert bad.status_code == 400 and b"selection must be one of" in bad.content and not Round.objects.exists()
    response = client.post(f"/dashboard/studies/{study.pk}/launch/", {
        "selection": "random", "objective": "reward_weighted", "promote": "auto",
        "advanced": json.dumps(TINY_ROUND)})
    rnd = Round.objects.get(study=study)
    assert response.status_code == 302 and response["Location"] == f"/dashboard/rounds/{rnd.pk}/"
    progress = client.get(f"/dashboard/rounds/{rnd.pk}/progress.json").json()
    assert progress["status"] == "done"
    assert progress["generation"] == {"done": 4, "total": 4, "status": "done"}
    assert progress["cleaning"] == {"done": 8, "total": 8}
    assert progress["labeling"]["answered"] == progress["labeling"]["planned"] == 32
    assert [r["answered"] for r in progress["labeling"]["readers"]] == [16, 16]
    assert all(r["simulated"] for r in progress["labeling"]["readers"])
    assert progress["finetune"]["step"] == progress["finetune"]["total"] == 6
    assert progress["finetune"]["loss"] is not None and progress["promotion"]["samples"] == 4

    for url in ("/dashboard/", f"/dashboard/studies/{study.pk}/", f"/dashboard/rounds/{rnd.pk}/",
                f"/dashboard/rounds/{rnd.pk}/gallery/", f"/dashboard/rounds/{rnd.pk}/report/"):
        page = client.get(url)
        assert page.status_code == 200, url
    study_page = client.get(f"/dashboard/studies/{study.pk}/").content.decode()
    assert study_page.count("<svg") >= 3  # accuracy/fooling, AUROC/preference, loss curves
    gallery = client.get(f"/dashboard/rounds/{rnd.pk}/gallery/").content.decode()
    image = rnd.images.first()
    assert f"/dashboard/images/{image.pk}/raw.png" in gallery and "seed" in gallery
    png = client.get(f"/dashboard/images/{image.pk}/raw.png")
    assert png.status_code == 200 and b"".join(png.streaming_content)[:4] == b"\x89PNG"

    for user, expected in ((reader, 404), (stranger, 404)):
        client.force_login(user)
        for url in (f"/dashboard/studies/{study.pk}/", f"/dashboard/rounds/{rnd.pk}/progress.json",
                    f"/dashboard/rounds/{rnd.pk}/gallery/", f"/dashboard/images/{image.pk}/raw.png"):
            assert client.get(url).status_code == expected, (user, url)
        assert client.post(f"/dashboard/rounds/{rnd.pk}/cancel/").status_code == expected
    client.logout()
    assert client.get(f"/dashboard/rounds/{rnd.pk}/progress.json").status_code == 302  # to the login page


def test_admin_actions_refuse_what_the_state_machine_refuses_and_steer_versions(client, people):
    study, admin, _, _ = people
    client.force_login(admin)
    rnd = round_launch(study=study, config={**TINY_ROUND, "promote": "manual"})
    rnd.refresh_from_db()
    refused = client.post(f"/dashboard/rounds/{rnd.pk}/retry/")
    assert refused.status_code == 409 and b"only a failed round can be retried" in refused.content
    assert client.post(f"/dashboard/rounds/{rnd.pk}/cancel/").status_code == 409  # done rounds stay done
    study.refresh_from_db()
    assert study.current_version == rnd.model_version  # manual promotion: nothing changed by itself
    chosen = client.post(f"/dashboard/studies/{study.pk}/version/", {"version": rnd.produced_version.pk})
    assert chosen.status_code == 302
    study.refresh_from_db()
    assert study.current_version == rnd.produced_version
    client.post(f"/dashboard/studies/{study.pk}/version/", {"rollback": "1"})
    study.refresh_from_db()
    assert study.current_version == rnd.model_version
    missing = client.post(f"/dashboard/studies/{study.pk}/version/", {"version": "999999"})
    assert missing.status_code == 400 and b"Choose a model version" in missing.content
    assert client.get(f"/dashboard/rounds/{rnd.pk}/cancel/").status_code == 405  # actions are POST only


def test_a_statistic_from_too_few_items_reads_too_few_not_a_number(client, people):
    study, admin, _, _ = people
    round_ = Round.objects.create(study=study, number=1, status="done", metrics={
        "reward_auroc": None, "skipped": {"reward_auroc": "too few (n=2)"}, "reader_accuracy": 0.5})
    client.force_login(admin)
    page = client.get(f"/dashboard/studies/{study.pk}/").content.decode()
    row = page[page.index(f'<th><a href="/dashboard/rounds/{round_.pk}/"'):]  # the rounds table's row
    row = row[:row.index("</tr>")]
    assert "too few (n=2)" in row and "0.000" not in row and "1.000" not in row
