"""Study setup in the dashboard: the form creates and edits a study through the same rule as the CLI and the API,
and refuses what would change running rounds or data already collected, with the reason, changing nothing."""

import html

import pytest
from django.test import Client

from annotation.models import AuditEvent, Role, Study, StudyMembership
from annotation.reading import assignment

pytestmark = pytest.mark.django_db

FORM = {"name": "pneumo-2027", "title": "Pneumothorax realism", "task_kinds": ["realism", "rubric"],
        "readers_per_image": 3, "images_per_round": 40, "real_fraction": 0.5, "catch_rate": 0.05,
        "repeat_rate": 0.1, "repeat_washout": 10, "display_size": 256, "modalities": "CR, dx", "views": "PA",
        "panel_size": 48, "promotion_panel_size": 32, "equivalence_margin": 0.1, "prompt_source": "reports",
        "prompt_policy": "truncate",
        "rubric-0-key": "anatomy", "rubric-0-label": "Anatomy", "rubric-0-min": 1, "rubric-0-max": 5,
        "rubric-0-help": "Ribs, heart and diaphragm where they belong",
        "rubric-1-key": "", "rubric-1-label": "", "rubric-1-min": 1, "rubric-1-max": 5}


@pytest.fixture
def creator(make_user):
    from django.contrib.auth.models import Permission

    user = make_user("creator")
    user.user_permissions.add(Permission.objects.get(codename="add_study"))
    client = Client()
    client.force_login(user)
    return user, client


def test_an_admin_with_the_right_creates_a_study_in_the_dashboard(creator):
    user, client = creator
    page = client.get("/dashboard/studies/new/").content.decode()
    # every setting carries its help text; the rubric editor is there
    assert "K: at most this many readers per image." in page and 'name="rubric-0-key"' in page
    response = client.post("/dashboard/studies/new/", FORM)
    study = Study.objects.get(name="pneumo-2027")
    assert response.status_code == 302 and response["Location"] == f"/dashboard/studies/{study.pk}/"
    assert (study.readers_per_image, study.display_size, study.modalities, study.views, study.catch_rate) == (
        3, 256, ["CR", "DX"], ["PA"], 0.05)
    assert study.rubric == [{"key": "anatomy", "label": "Anatomy", "min": 1, "max": 5,
                             "help": "Ribs, heart and diaphragm where they belong"}]
    assert StudyMembership.objects.filter(study=study, user=user, role=Role.ADMIN).exists()
    assert AuditEvent.objects.filter(action="study.create", study=study).exists()
    assert "pneumo-2027" in client.get("/dashboard/").content.decode()


@pytest.mark.parametrize("change, sentence", [
    ({"name": "Bad Name"}, "lower-case letters"),
    ({"modalities": "C R"}, "is not a DICOM code"),
    ({"rubric-0-min": 0}, "1 ≤ min < max ≤ 9"),
    ({"rubric-1-label": "Style"}, "needs a key"),
    ({"readers_per_image": 0}, "readers_per_image"),
    ({"task_kinds": []}, "task_kinds"),
])
def test_a_bad_setting_is_refused_with_the_reason_and_nothing_is_created(creator, change, sentence):
    _, client = creator
    response = client.post("/dashboard/studies/new/", {**FORM, **change})
    assert response.status_code == 400 and sentence in html.unescape(response.content.decode())
    assert not Study.objects.exists()


def test_without_the_right_no_study_is_created(make_user):
    client = Client()
    client.force_login(make_user("plain"))
    assert client.get("/dashboard/studies/new/").status_code == 403
    assert client.post("/dashboard/studies/new/", FORM).status_code == 403
    assert not Study.objects.exists()
    assert "give you the right to create studies" in client.get("/dashboard/", follow=True).content.decode()


def _edit(client, study, **changes):
    page = client.get(f"/dashboard/studies/{study.pk}/settings/")
    assert page.status_code == 200
    form = page.context["form"]
    data = {k: v for k, v in form.initial.items() if v is not None}
    data["task_kinds"] = list(study.task_kinds)
    for i, c in enumerate(study.rubric):
        data.update({f"rubric-{i}-{k}": c.get(k, "") for k in ("key", "label", "min", "max", "help")})
    data.update(changes)
    return client.post(f"/dashboard/studies/{study.pk}/settings/", data)


def test_settings_change_until_data_or_a_running_round_fix_them(make_study, make_user, stored_round, add_reader):
    study = make_study(task_kinds=["realism", "rubric"], readers_per_image=1)
    admin = make_user("boss", is_superuser=True)
    client = Client()
    client.force_login(admin)
    assert _edit(client, study, title="Renamed", readers_per_image=2).status_code == 302
    study.refresh_from_db()
    assert (study.title, study.readers_per_image) == ("Renamed", 2)
    assert AuditEvent.objects.filter(action="study.update", study=study).exists()

    rnd = stored_round(study, real=2, synthetic=2)  # images exist and a round is labeling
    refused = _edit(client, study, readers_per_image=3, display_size=128)
    text = html.unescape(refused.content.decode())
    assert refused.status_code == 400
    assert "round 1 is running (labeling): readers_per_image, display_size can change once it is done" in text
    assert "cannot change once images exist" in text
    assert _edit(client, study, title="Still editable", modalities="any").status_code == 302  # not read by rounds
    study.refresh_from_db()
    assert (study.readers_per_image, study.display_size, study.modalities) == (2, 64, ["ANY"])

    reader = add_reader(study, "scorer")
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    while (task := assignment.tasks_next_for_reader(queue=queue)) is not None and task.kind != "rubric":
        assignment.label_submit(reader=reader, task_token=task.token, answer={"call": "real", "confidence": 3},
                                submission_id=__import__("uuid").uuid4())
    assignment.label_submit(reader=reader, task_token=task.token, submission_id=__import__("uuid").uuid4(),
                            answer={"scores": {c["key"]: 3 for c in study.rubric}})
    rnd.status = "done"
    rnd.save(update_fields=["status"])
    refused = _edit(client, study, **{"rubric-0-max": 7})
    assert refused.status_code == 400 and "cannot change once rubric scores exist" in html.unescape(
        refused.content.decode())
    study.refresh_from_db()
    assert study.rubric[0]["max"] == 5
    assert _edit(client, study, readers_per_image=3).status_code == 302  # the round is over


def test_another_studys_settings_are_not_found(make_study, add_admin):
    mine, other = make_study("mine"), make_study("other")
    admin = add_admin(mine, "scoped")
    client = Client()
    client.force_login(admin)
    assert client.get(f"/dashboard/studies/{mine.pk}/settings/").status_code == 200
    assert client.get(f"/dashboard/studies/{other.pk}/settings/").status_code == 404
    assert client.post(f"/dashboard/studies/{other.pk}/settings/", {"title": "x"}).status_code == 404



def test_the_api_changes_settings_by_the_same_rule(make_study, make_user, stored_round):
    from rest_framework.test import APIClient

    study = make_study(readers_per_image=1)
    admin = make_user("api-boss", is_superuser=True)
    client = APIClient()
    client.force_login(admin)
    ok = client.patch(f"/api/v1/studies/{study.pk}/", {"readers_per_image": 2, "views": []}, format="json")
    assert ok.status_code == 200 and ok.json()["readers_per_image"] == 2 and ok.json()["views"] == []
    stored_round(study, real=1, synthetic=1)
    refused = client.patch(f"/api/v1/studies/{study.pk}/", {"display_size": 128}, format="json")
    assert refused.status_code == 400 and "cannot change once images exist" in str(refused.json()["detail"])
    assert client.patch(f"/api/v1/studies/{study.pk}/", {"name": "renamed"}, format="json").json()[
        "name"] == study.name  # the name is fixed: not a setting here
