"""Who may open what: every reader-facing URL for anonymous, reader A, reader B (same study) and a superuser."""

import uuid

import pytest
from django.test import Client

from annotation.reading import assignment
from annotation.studies.services import membership_add, study_reveal

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(make_study, add_reader, stored_round, django_user_model):
    study = make_study(task_kinds=["realism", "preference"], readers_per_image=2)
    rnd = stored_round(study, real=2, synthetic=4)
    a, b = add_reader(study, "reader-a"), add_reader(study, "reader-b")
    admin = django_user_model.objects.create_superuser("boss", "boss@example.org", "pw")
    queue = assignment.queue_for_reader(round=rnd, reader=a)
    task = assignment.tasks_next_for_reader(queue=queue)
    clients = {"anonymous": Client()}
    for name, user in (("reader_a", a), ("reader_b", b), ("admin", admin)):
        clients[name] = Client()
        clients[name].force_login(user)
    return study, queue, task, clients


def urls(queue, task):
    return {
        "home": "/portal/",
        "queue-next": f"/portal/q/{queue.token}/next/",
        "done": f"/portal/q/{queue.token}/done/",
        "review": f"/portal/q/{queue.token}/review/",
        "case": f"/portal/c/{task.token}/",
        "image": f"/portal/i/{task.token}",
        "api-next": f"/portal/api/next?queue={queue.token}",
    }


EXPECTED = {
    #            anonymous  reader_a  reader_b  admin
    "home": (302, 200, 200, 200),
    "queue-next": (302, 302, 404, 404),
    "done": (302, 200, 404, 404),
    "review": (302, 403, 404, 404),
    "case": (302, 200, 404, 404),
    "image": (302, 200, 404, 404),
    "api-next": (302, 200, 404, 404),
}


@pytest.mark.parametrize("who", ["anonymous", "reader_a", "reader_b", "admin"])
def test_reader_urls_permission_matrix(world, who):
    study, queue, task, clients = world
    column = ["anonymous", "reader_a", "reader_b", "admin"].index(who)
    for name, url in urls(queue, task).items():
        response = clients[who].get(url)
        assert response.status_code == EXPECTED[name][column], (name, who)
        if who == "anonymous":
            assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(("who", "status"), [("anonymous", 302), ("reader_a", 200), ("reader_b", 404),
                                             ("admin", 404)])
def test_submit_permission_matrix(world, who, status):
    study, queue, task, clients = world
    body = {"task": task.token, "answer": {"call": "real", "confidence": 2}, "submission_id": str(uuid.uuid4())}
    assert clients[who].post("/portal/api/submit", body, content_type="application/json").status_code == status


def test_review_opens_after_reveal(world):
    study, queue, task, clients = world
    study_reveal(study=study, actor=None)
    assert clients["reader_a"].get(f"/portal/q/{queue.token}/review/").status_code == 200
    assert clients["reader_b"].get(f"/portal/q/{queue.token}/review/").status_code == 404


def test_submit_needs_csrf_and_gives_clear_4xx(world):
    study, queue, task, clients = world
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(task.reader)
    body = {"task": task.token, "answer": {"call": "real", "confidence": 2}, "submission_id": str(uuid.uuid4())}
    assert strict.post("/portal/api/submit", body, content_type="application/json").status_code == 403
    c = clients["reader_a"]
    bad = c.post("/portal/api/submit", "not json", content_type="application/json")
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]
    bad = c.post("/portal/api/submit", {**body, "answer": {"call": "maybe"}}, content_type="application/json")
    assert bad.status_code == 400 and "Choose Real or Synthetic" in bad.json()["error"]
    assert c.get("/portal/api/next?queue=nope").status_code == 404


def test_login_is_throttled(world, settings, make_user):
    settings.CXR_LOGIN_MAX_FAILURES = 3
    make_user("victim")
    c = Client()
    for _ in range(3):
        assert c.post("/accounts/login/", {"username": "victim", "password": "wrong"}).status_code == 200
    assert c.post("/accounts/login/", {"username": "victim", "password": "pw-victim"}).status_code == 429


def test_study_admins_see_only_their_studies_in_the_admin(make_study, make_user, stored_round):
    from django.contrib.auth.models import Permission

    from annotation.models import Role

    mine, theirs = make_study("mine"), make_study("theirs")
    stored_round(mine, real=1, synthetic=1)
    stored_round(theirs, real=1, synthetic=1)
    staff = make_user("study-admin", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label="annotation"))
    membership_add(study=mine, user=staff, role=Role.ADMIN)
    c = Client()
    c.force_login(staff)
    listing = c.get("/admin/annotation/study/").content.decode()
    assert "Study mine" in listing and "Study theirs" not in listing
    images = c.get("/admin/annotation/image/").content.decode()
    assert "Study mine" in images and "Study theirs" not in images
    assert c.get(f"/admin/annotation/study/{theirs.pk}/change/").status_code == 302  # not found → admin index
    assert c.get(f"/admin/annotation/study/{theirs.pk}/import/").status_code == 404
    assert c.get(f"/admin/annotation/study/{mine.pk}/import/").status_code == 200
