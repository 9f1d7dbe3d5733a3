"""What an independent probe of the API, dashboard and portal found, kept fixed: a webhook moved into another
study, readers' browser sessions getting unblinded tasks from the API, and 500s on odd input."""

from __future__ import annotations

import uuid

import pytest

from annotation.models import Round, Study, Webhook

pytestmark = pytest.mark.django_db


def test_a_webhook_stays_with_its_study_and_its_events_are_checked_on_update(world):
    client = world["client"]("admin_token")
    hook = world["hook"]
    moved = client.patch(f"/api/v1/webhooks/{hook.pk}/", {"study": world["other"].pk, "url": "http://x.invalid/"},
                         format="json")
    assert moved.status_code == 400 and "stays with its study" in str(moved.json())
    unknown = client.patch(f"/api/v1/webhooks/{hook.pk}/", {"events": ["nope"]}, format="json")
    assert unknown.status_code == 400 and "unknown events" in str(unknown.json())
    hook.refresh_from_db()
    assert (hook.study_id, hook.url, hook.events) == (world["study"].pk, "http://127.0.0.1:9/hook", [])
    renamed = client.patch(f"/api/v1/webhooks/{hook.pk}/", {"url": "http://127.0.0.1:9/new",
                                                            "events": ["round.status"]}, format="json")
    assert renamed.status_code == 200 and renamed.json()["url"] == "http://127.0.0.1:9/new"


def test_a_readers_browser_session_gets_only_blinded_tasks_from_the_api(world):
    client = world["client"]("reader_a")
    rows = client.get("/api/v1/tasks/?page_size=1000").json()["results"]
    assert rows and all(set(r) == {"token", "kind", "position", "status", "images", "answer", "claimed_at",
                                   "answered_at"} for r in rows)
    detail = client.get(f"/api/v1/tasks/{world['task'].pk}/").json()
    assert "image" not in detail and "is_catch" not in detail and "repeat_of" not in detail
    # the study admin still sees provenance for their study's tasks
    admin_rows = world["client"]("study_admin").get("/api/v1/tasks/?page_size=1000").json()["results"]
    assert admin_rows and all("image" in r and "is_catch" in r for r in admin_rows)


@pytest.mark.parametrize("url", [
    "/api/v1/labels/?created_after=2026-02-30T00:00:00",
    "/api/v1/rounds/?created_before=2026-02-30T00:00:00Z",
    "/api/v1/tasks/?created_after=2026-02-31T10:00:00",
    "/api/v1/images/?created_after=2026-13-01T00:00:00",
    "/api/v1/studies/{study.pk}/export/?format=jsonl&updated_after=2026-02-30T00:00:00",
])
def test_an_impossible_date_is_a_400(world, url):
    response = world["client"]("admin_token").get(url.format(**world))
    assert response.status_code == 400 and "ISO 8601" in str(response.content)


def test_an_absurd_time_spent_is_a_400(world):
    body = (f'{{"task": "{world["task"].token}", "answer": {{"call": "real", "confidence": 3}}, '
            f'"submission_id": "{uuid.uuid4()}", "time_spent_ms": 1e400}}')
    response = world["client"]("reader_a").post("/portal/api/submit", body, content_type="application/json")
    assert response.status_code == 400 and "time_spent_ms" in response.json()["error"]


@pytest.mark.parametrize(("config", "says"), [
    ({"oversample": 1e308}, "oversample must be a number from 1 to 100"),
    ({"oversample": "inf"}, "oversample must be a number"),
    ({"seed": "abc"}, "seed must be a whole number"),
    ({"synthetic": 10**30}, "synthetic must be a whole number from 0 to 100000"),
    ({"real": -1}, "real must be a whole number"),
    ({"train": "yes"}, "train must be true or false"),
    ({"generation": [1]}, "generation must be an object"),
])
def test_an_absurd_round_config_is_a_400_and_launches_nothing(world, config, says):
    before = Round.objects.count()
    response = world["client"]("admin_token").post("/api/v1/rounds/", {"study": world["study"].pk,
                                                                       "config": config}, format="json")
    assert response.status_code == 400 and says in str(response.json())
    assert Round.objects.count() == before


@pytest.mark.parametrize(("form", "says"), [
    ({"oversample": "inf"}, "oversample must be a number"),
    ({"oversample": "nan"}, "oversample must be a number"),
    ({"synthetic": str(10**30)}, "synthetic must be a whole number"),
    ({"advanced": '{"seed": "abc"}'}, "seed must be a whole number"),
])
def test_the_dashboard_launch_form_refuses_absurd_numbers(world, form, says):
    before = Round.objects.count()
    response = world["client"]("study_admin").post(f"/dashboard/studies/{world['study'].pk}/launch/", form)
    assert response.status_code == 400 and says in response.content.decode()
    assert Round.objects.count() == before


@pytest.mark.parametrize("version", ["abc", "1.5", "-3", "9" * 30])
def test_the_dashboard_version_choice_refuses_what_is_not_an_id(world, version):
    response = world["client"]("study_admin").post(f"/dashboard/studies/{world['study'].pk}/version/",
                                                   {"version": version})
    assert response.status_code == 400 and "Choose a model version" in response.content.decode()
    assert Study.objects.get(pk=world["study"].pk).current_version_id is None


def test_webhooks_of_another_study_cannot_be_reached_by_patch(world):
    other = Webhook.objects.create(study=world["other"], url="http://127.0.0.1:9/o", secret="s")
    response = world["client"]("admin_token").patch(f"/api/v1/webhooks/{other.pk}/", {"active": False},
                                                    format="json")
    assert response.status_code == 404
    other.refresh_from_db()
    assert other.active


@pytest.mark.parametrize("url", ["/api/v1/rounds/?status=%00", "/api/v1/labels/?reader=a%00b",
                                 "/portal/api/next?queue=%00", "/dashboard/?x=%00"])
def test_a_nul_in_a_parameter_is_a_400_on_every_database(world, url):
    response = world["client"]("admin_token" if "/api/" in url else "study_admin").get(url)
    assert response.status_code == 400 and "NUL" in response.json()["detail"]


def test_a_nul_in_an_answer_is_a_400_and_nothing_is_stored(world):
    from annotation.models import Label

    before = Label.objects.count()
    body = (f'{{"task": "{world["task"].token}", "answer": {{"call": "real", "confidence": 3, "comment": "a\\u0000b"}},'
            f' "submission_id": "{uuid.uuid4()}"}}')
    response = world["client"]("reader_a").post("/portal/api/submit", body, content_type="application/json")
    assert response.status_code == 400 and "NUL" in response.json()["detail"]
    form = world["client"]("study_admin").post(f"/dashboard/studies/{world['study'].pk}/launch/",
                                               {"advanced": '{"seed": "\x00"}'})
    assert form.status_code == 400 and Label.objects.count() == before
