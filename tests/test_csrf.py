"""Every state-changing form and endpoint a browser posts to refuses a request without the CSRF token (403) and
accepts it with one; the API's token clients are exempt only because they send no cookies."""

import json
import re
import uuid

import pytest
from django.test import Client

from annotation.models import StudyMembership
from annotation.reading import assignment

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(make_study, add_reader, stored_round, add_admin):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    rnd = stored_round(study, real=2, synthetic=2)
    reader = add_reader(study, "csrf-reader")
    admin = add_admin(study, "csrf-admin", is_superuser=True, is_staff=True)
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    task = assignment.tasks_next_for_reader(queue=queue)
    member = StudyMembership.objects.get(study=study, user=reader)
    return {"study": study, "round": rnd, "reader": reader, "admin": admin, "task": task, "member": member}


def test_invitation_and_practice_forms_need_the_token(world):
    from annotation.models import PracticeCase
    from annotation.studies.members import invitation_create

    _, invite = invitation_create(study=world["study"], role="reader", actor=world["admin"])
    case = PracticeCase.objects.create(study=world["study"], display_key="practice/x.png", answer="real")
    anonymous = Client(enforce_csrf_checks=True)
    body = {"username": "newcomer", "password1": "lung-window-77", "password2": "lung-window-77"}
    assert anonymous.post(f"/portal/join/{invite}/", body).status_code == 403
    token = _token(anonymous, f"/portal/join/{invite}/")
    assert anonymous.post(f"/portal/join/{invite}/", {**body, "csrfmiddlewaretoken": token}).status_code == 302
    reader = Client(enforce_csrf_checks=True)
    reader.force_login(world["reader"])
    url = f"/portal/practice/{world['study'].pk}/"
    assert reader.post(url, {"case": case.pk, "call": "real"}).status_code == 403
    token = _token(reader, "/portal/")
    assert reader.post(url, {"case": case.pk, "call": "real", "csrfmiddlewaretoken": token}).status_code == 200


def _token(client: Client, url: str) -> str:
    client.get(url)
    return client.cookies["csrftoken"].value


def test_portal_submit_and_logout_need_the_token(world):
    c = Client(enforce_csrf_checks=True)
    c.force_login(world["reader"])
    body = json.dumps({"task": world["task"].token, "answer": {"call": "real", "confidence": 3},
                       "submission_id": str(uuid.uuid4())})
    assert c.post("/portal/api/submit", body, content_type="application/json").status_code == 403
    token = _token(c, f"/portal/c/{world['task'].token}/")
    ok = c.post("/portal/api/submit", body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert ok.status_code == 200
    assert c.post("/accounts/logout/").status_code == 403
    assert c.post("/accounts/logout/", {"csrfmiddlewaretoken": token}).status_code == 302


def test_login_needs_the_token():
    c = Client(enforce_csrf_checks=True)
    assert c.post("/accounts/login/", {"username": "x", "password": "y"}).status_code == 403
    token = _token(c, "/accounts/login/")
    assert c.post("/accounts/login/", {"username": "x", "password": "y", "csrfmiddlewaretoken": token}
                  ).status_code == 200  # the form again, with its error


def test_dashboard_actions_need_the_token(world):
    c = Client(enforce_csrf_checks=True)
    c.force_login(world["admin"])
    rnd, study = world["round"], world["study"]
    posts = [f"/dashboard/studies/{study.pk}/launch/", f"/dashboard/studies/{study.pk}/version/",
             f"/dashboard/rounds/{rnd.pk}/close/", f"/dashboard/rounds/{rnd.pk}/retry/",
             f"/dashboard/rounds/{rnd.pk}/cancel/", f"/dashboard/rounds/{rnd.pk}/report/refresh/",
             "/tools/clean/", "/dashboard/studies/new/", f"/dashboard/studies/{study.pk}/settings/",
             f"/dashboard/studies/{study.pk}/invitations/", f"/dashboard/studies/{study.pk}/practice/",
             f"/dashboard/studies/{study.pk}/members/{world['member'].pk}/deactivate/"]
    for url in posts:
        assert c.post(url, {}).status_code == 403, url
    token = _token(c, f"/dashboard/rounds/{rnd.pk}/")
    page = c.get(f"/dashboard/rounds/{rnd.pk}/").content.decode()
    assert len(re.findall(r'name="csrfmiddlewaretoken"', page)) >= 2  # close and cancel forms carry it
    assert c.post(f"/dashboard/rounds/{rnd.pk}/cancel/", {"csrfmiddlewaretoken": token}).status_code == 302


def test_api_session_writes_need_the_token_and_token_clients_do_not(world):
    from rest_framework.test import APIClient

    from annotation.api.auth import token_issue

    url = f"/api/v1/rounds/{world['round'].pk}/cancel/"
    c = Client(enforce_csrf_checks=True)
    c.force_login(world["admin"])
    assert c.post(url).status_code == 403  # DRF's SessionAuthentication enforces CSRF for a browser session
    key = token_issue(user=world["admin"], name="t", scope="admin")[1]
    bearer = APIClient(enforce_csrf_checks=True)
    assert bearer.post(url, HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
