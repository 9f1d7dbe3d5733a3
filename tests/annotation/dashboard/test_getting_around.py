"""Getting around in the first hour: a reader who opens the dashboard is sent to their lists, lists are numbered by
round, the top bar offers the dashboard to study admins, the dashboard points to the exports and the API docs, and
the API docs say how to authenticate."""

import pytest
from django.test import Client

from annotation.models import Round, RoundStatus

pytestmark = pytest.mark.django_db


def test_a_reader_opening_the_dashboard_lands_on_their_lists_with_a_sentence(make_study, add_reader):
    study = make_study(task_kinds=["realism"])
    reader = add_reader(study)
    client = Client()
    client.force_login(reader)
    response = client.get("/dashboard/", follow=True)
    assert response.redirect_chain[-1][0].startswith("/portal/")
    page = response.content.decode()
    assert "The dashboard is for study admins" in page and "Your reading lists" in page
    assert 'href="/dashboard/"' not in page  # no dashboard link for a reader


def test_reading_lists_are_numbered_by_round(make_study, add_reader, stored_round):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    reader = add_reader(study)
    first = stored_round(study, real=1, synthetic=1)
    Round.objects.filter(pk=first.pk).update(status=RoundStatus.DONE)
    stored_round(study, real=1, synthetic=1)
    client = Client()
    client.force_login(reader)
    page = client.get("/portal/").content.decode()
    assert "· list 2" in page and "· list 1" not in page


def test_a_study_admin_gets_the_dashboard_link_exports_and_api_docs(make_study, add_admin):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    boss = add_admin(study, "boss")
    client = Client()
    client.force_login(boss)
    home = client.get("/portal/").content.decode()
    assert 'href="/dashboard/"' in home
    dash = client.get("/dashboard/").content.decode()
    assert 'href="/api/v1/docs/"' in dash
    page = client.get(f"/dashboard/studies/{study.pk}/").content.decode()
    assert f'href="/api/v1/studies/{study.pk}/export/?format=csv"' in page and "export_dataset" in page
    assert "1 reader per image" in page
    csv = client.get(f"/api/v1/studies/{study.pk}/export/?format=csv")
    assert csv.status_code in (200, 400)  # the link reaches the export (400: no labels yet, with a sentence)


def test_the_api_docs_say_how_to_make_a_token_and_send_it(make_user):
    client = Client()
    client.force_login(make_user("someone"))
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "Authorization: Bearer" in text and "manage.py api_token" in text


def test_the_admin_names_generation_batches_properly():
    from inference.models import GenerationBatch

    assert GenerationBatch._meta.verbose_name_plural == "generation batches"
