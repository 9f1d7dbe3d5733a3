"""Readers by invitation: one-time, expiring, unguessable links (only their hash stored); a new person sets a
password under Django's validators and lands in their queue, an existing account joins after signing in; a used,
expired or unknown link says so (and guessing is throttled); a deactivated reader keeps their labels, their open
cases go back to the pool so K is still reached, and they get no further case."""

import hashlib
import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from annotation.models import Invitation, Label, ReadingCase, ReadingTask, Role, StudyMembership, TaskStatus
from annotation.reading import assignment
from annotation.studies.members import invitation_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(make_study, make_user):
    study = make_study(task_kinds=["realism"], readers_per_image=2)
    admin = make_user("boss", is_superuser=True)
    client = Client()
    client.force_login(admin)
    return study, admin, client


def _link(client, study, **form) -> str:
    page = client.post(f"/dashboard/studies/{study.pk}/invitations/", {"role": "reader", "days": 7, **form})
    assert page.status_code == 200
    return re.search(r'value="(http[^"]+/portal/join/[^"]+/)" data-invitation-link', page.content.decode()).group(1)


def test_a_new_reader_joins_by_link_sets_a_password_and_lands_in_their_queue(admin_client, stored_round):
    study, admin, client = admin_client
    rnd = stored_round(study, real=2, synthetic=2)
    link = _link(client, study, note="Dr. Chen")
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert len(token) >= 40  # 256 random bits
    stored = Invitation.objects.get()
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in str(
        Invitation.objects.values())
    path = link.split("testserver", 1)[1]
    visitor = Client()
    assert "Join Study cxr" in visitor.get(path).content.decode()
    weak = visitor.post(path, {"username": "chen", "password1": "12345678", "password2": "12345678"})
    assert weak.status_code == 400 and "too common" in weak.content.decode()  # Django's validators
    assert not get_user_model().objects.filter(username="chen").exists()
    joined = visitor.post(path, {"username": "chen", "password1": "lung-window-77", "password2": "lung-window-77"})
    assert joined.status_code == 302 and joined["Location"] == "/portal/"
    chen = get_user_model().objects.get(username="chen")
    assert StudyMembership.objects.filter(study=study, user=chen, role=Role.READER).exists()
    home = visitor.get("/portal/").content.decode()
    assert "Study cxr" in home and "Start" in home
    queue = assignment.queue_for_reader(round=rnd, reader=chen)
    assert assignment.tasks_next_for_reader(queue=queue) is not None
    # single use: the same link again, by anyone, says so
    again = Client().get(path)
    assert again.status_code == 410 and "used on" in again.content.decode()
    assert Client().post(path, {"username": "eve", "password1": "lung-window-77",
                                "password2": "lung-window-77"}).status_code == 410
    assert not get_user_model().objects.filter(username="eve").exists()
    # the admin sees who joined
    page = client.get(f"/dashboard/studies/{study.pk}/").content.decode()
    assert "chen" in page and "used" in page and "by chen" in page


def test_an_existing_account_joins_after_signing_in_and_an_admin_invitation_makes_an_admin(admin_client, make_user):
    study, admin, _ = admin_client
    _, token = invitation_create(study=study, role=Role.ADMIN, actor=admin)
    friend = make_user("friend")
    visitor = Client()
    page = visitor.get(f"/portal/join/{token}/").content.decode()
    assert f"/accounts/login/?next=/portal/join/{token}/" in page
    visitor.force_login(friend)
    assert "Signed in as" in visitor.get(f"/portal/join/{token}/").content.decode()
    done = visitor.post(f"/portal/join/{token}/")
    assert done.status_code == 302 and done["Location"] == f"/dashboard/studies/{study.pk}/"
    assert StudyMembership.objects.filter(study=study, user=friend, role=Role.ADMIN).exists()


def test_expired_and_unknown_links_say_so_and_guessing_is_throttled(admin_client, settings):
    study, admin, _ = admin_client
    invitation, token = invitation_create(study=study, role=Role.READER, actor=admin, days=1)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    visitor = Client()
    expired = visitor.get(f"/portal/join/{token}/")
    assert expired.status_code == 410 and "expired on" in expired.content.decode()
    unknown = visitor.get(f"/portal/join/{token[:-2]}xy/")
    assert unknown.status_code == 404 and "not valid" in unknown.content.decode()
    for _ in range(settings.CXR_LOGIN_MAX_FAILURES):
        visitor.get(f"/portal/join/{uuid.uuid4().hex}/")
    assert visitor.get(f"/portal/join/{token}/").status_code == 429
    assert Client(REMOTE_ADDR="10.0.0.9").get(f"/portal/join/{token}/").status_code == 410  # another address


def test_bad_invitation_settings_are_refused(admin_client):
    study, _, client = admin_client
    for form, sentence in (({"days": 90}, "1 to 30 days"), ({"role": "owner"}, "role must be one of"),
                           ({"days": "soon"}, "whole number of days")):
        response = client.post(f"/dashboard/studies/{study.pk}/invitations/", {"role": "reader", "days": 7, **form})
        assert response.status_code == 400 and sentence in response.content.decode()
    assert not Invitation.objects.exists()


def test_a_deactivated_reader_keeps_their_labels_and_their_open_cases_return(admin_client, add_reader,
                                                                             stored_round):
    study, admin, client = admin_client
    rnd = stored_round(study, real=2, synthetic=2)
    leaver, stayer = add_reader(study, "leaver"), add_reader(study, "stayer")
    queue = assignment.queue_for_reader(round=rnd, reader=leaver)
    answered = assignment.tasks_next_for_reader(queue=queue)
    assignment.label_submit(reader=leaver, task_token=answered.token, answer={"call": "real", "confidence": 3},
                            submission_id=uuid.uuid4())
    held = assignment.tasks_next_for_reader(queue=queue)
    assert held.status == TaskStatus.CLAIMED
    taken = ReadingCase.objects.get(pk=held.case_id).taken
    member = StudyMembership.objects.get(study=study, user=leaver)
    response = client.post(f"/dashboard/studies/{study.pk}/members/{member.pk}/deactivate/")
    assert response.status_code == 302
    held.refresh_from_db()
    assert held.status == TaskStatus.EXPIRED and ReadingCase.objects.get(pk=held.case_id).taken == taken - 1
    assert Label.objects.filter(reader=leaver).count() == 1  # their labels stay
    # no further case for them, by page or API; their stale answer is refused
    reader = Client()
    reader.force_login(leaver)
    assert reader.get(f"/portal/q/{queue.token}/next/").status_code == 403
    assert reader.get(f"/portal/api/next?queue={queue.token}").status_code == 403
    assert reader.get(f"/portal/c/{held.token}/").status_code == 403
    assert "Study cxr" not in reader.get("/portal/").content.decode()
    stale = reader.post("/portal/api/submit", {"task": held.token, "answer": {"call": "real", "confidence": 3},
                                               "submission_id": str(uuid.uuid4())}, content_type="application/json")
    assert stale.status_code == 403 and "ended by its admin" in stale.json()["error"]
    # the returned case reaches the other reader (K = 2 still reachable)
    other = assignment.queue_for_reader(round=rnd, reader=stayer)
    seen = set()
    while (task := assignment.tasks_next_for_reader(queue=other)) is not None:
        seen.add(task.case_id)
        assignment.label_submit(reader=stayer, task_token=task.token, answer={"call": "real", "confidence": 3},
                                submission_id=uuid.uuid4())
    assert held.case_id in seen
    assert ReadingTask.objects.filter(case_id=held.case_id, status=TaskStatus.DONE).count() == 1
    # and back again
    client.post(f"/dashboard/studies/{study.pk}/members/{member.pk}/reactivate/")
    assert reader.get(f"/portal/q/{queue.token}/next/").status_code == 302
