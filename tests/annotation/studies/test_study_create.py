"""A study created from the shell and over the API through one validating service: its settings (modalities,
views, prompt policy) stored as given, bad values refused with a sentence, only allowed users may create."""

import io
import json

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from annotation.api.auth import token_issue
from annotation.models import Role, Study, StudyMembership

pytestmark = pytest.mark.django_db


def test_study_create_from_the_shell_with_json():
    out = io.StringIO()
    call_command("study_create", "wrist-xr", "--title", "Wrist radiographs", "--modalities", "any", "--views", "",
                 "--prompt-policy", "chunks", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["name"] == "wrist-xr" and data["modalities"] == ["ANY"] and data["views"] == []
    study = Study.objects.get(name="wrist-xr")
    assert study.title == "Wrist radiographs" and study.prompt_policy == "chunks"
    call_command("study_create", "cxr-default", stdout=io.StringIO())
    default = Study.objects.get(name="cxr-default")
    assert default.modalities == ["CR", "DX"] and default.views == ["PA", "AP"] and default.title == "cxr-default"


@pytest.mark.parametrize(("args", "sentence"), [
    (["Bad Name!"], "use 1–80 lower-case letters"),
    (["ok", "--modalities", "C R"], "is not a DICOM code"),
    (["ok", "--modalities", ""], "modalities: give at least one"),
    (["ok", "--task-kinds", "vibes"], "task_kinds must be a non-empty list"),
    (["ok", "--readers-per-image", "0"], "readers_per_image must be ≥ 1"),
])
def test_study_create_refuses_bad_settings_with_a_sentence(args, sentence):
    with pytest.raises(CommandError, match=sentence):
        call_command("study_create", *args, stdout=io.StringIO())
    assert not Study.objects.exists()


def test_a_second_study_of_the_same_name_is_refused():
    call_command("study_create", "dup", stdout=io.StringIO())
    with pytest.raises(CommandError, match="A study named 'dup' exists already"):
        call_command("study_create", "dup", stdout=io.StringIO())


def test_post_studies_needs_a_user_allowed_to_create_studies(make_user):
    plain, creator = make_user("plain"), make_user("creator")
    creator.user_permissions.add(Permission.objects.get(codename="add_study"))
    body = {"name": "pacs-cxr", "title": "From the PACS", "modalities": ["cr", "DX"], "views": ["PA"]}
    api = APIClient()
    for user, scope in ((plain, "admin"), (creator, "export")):
        _, key = token_issue(user=user, name="t", scope=scope)
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        response = api.post("/api/v1/studies/", body, format="json")
        assert response.status_code == 403, response.content
        assert "allowed to create studies" in response.json()["detail"]
    assert not Study.objects.exists()
    _, key = token_issue(user=creator, name="t", scope="admin")
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = api.post("/api/v1/studies/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["modalities"] == ["CR", "DX"] and response.json()["views"] == ["PA"]
    study = Study.objects.get(name="pacs-cxr")
    assert StudyMembership.objects.filter(study=study, user=creator, role=Role.ADMIN).exists()
    assert api.get(f"/api/v1/studies/{study.pk}/").status_code == 200  # its creator administers it
    again = api.post("/api/v1/studies/", body, format="json")
    assert again.status_code == 400 and "exists already" in json.dumps(again.json())
    bad = api.post("/api/v1/studies/", {"name": "x2", "task_kinds": ["nope"]}, format="json")
    assert bad.status_code == 400 and "task_kinds" in json.dumps(bad.json())
    assert APIClient().post("/api/v1/studies/", body, format="json").status_code in (401, 403)
