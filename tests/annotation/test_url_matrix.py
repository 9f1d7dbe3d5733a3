"""One permission matrix over every URL the site serves, for six callers: anonymous, reader A, reader B (same study),
the study's admin (session), an export-scope token and an admin-scope token (both the study admin's).

Every named URL pattern must have a row here (a new view without one fails the completeness test), every Django admin
model gets its list and change pages checked, and every state-changing endpoint is posted to by each caller who may
not use it: refused, and nothing in the database changes.
"""

from __future__ import annotations

import pytest
from django.contrib import admin as django_admin
from django.urls import URLPattern, URLResolver, get_resolver

from annotation.models import (
    ApiToken,
    AuditEvent,
    ExportJob,
    ImportJob,
    Invitation,
    Label,
    PracticeAnswer,
    PracticeCase,
    Round,
    Study,
    StudyMembership,
    Webhook,
)

pytestmark = pytest.mark.django_db

WHO = ("anonymous", "reader_a", "reader_b", "study_admin", "export_token", "admin_token")
L = "login"  # a redirect to the sign-in page
A = "admin-login"  # a redirect to the Django admin's sign-in page


# name: (url template, expected status per caller in WHO order). A study admin's session acts with the admin scope
# in the API; tokens are for the API only, so portal and dashboard pages send a token holder to sign in.
OURS = (404, 404, 200, 200, 200)  # (reader_a, reader_b, study_admin, export_token, admin_token) for study data
GET_MATRIX: dict[str, tuple[str, tuple]] = {
    "root": ("/", (302, 302, 302, 302, 302, 302)),
    "login": ("/accounts/login/", (200, 302, 302, 302, 200, 200)),  # signed-in users are sent on
    "logout": ("/accounts/logout/", (405, 405, 405, 405, 405, 405)),
    "portal:home": ("/portal/", (L, 200, 200, 200, L, L)),
    "portal:queue-next": ("/portal/q/{queue.token}/next/", (L, 302, 404, 404, L, L)),
    "portal:done": ("/portal/q/{queue.token}/done/", (L, 200, 404, 404, L, L)),
    "portal:review": ("/portal/q/{queue.token}/review/", (L, 403, 404, 404, L, L)),
    "portal:case": ("/portal/c/{task.token}/", (L, 200, 404, 404, L, L)),
    "portal:image": ("/portal/i/{task.token}", (L, 200, 404, 404, L, L)),
    "portal:api-next": ("/portal/api/next?queue={queue.token}", (L, 200, 404, 404, L, L)),
    "portal:api-submit": ("/portal/api/submit", (L, 405, 405, 405, L, L)),
    "inference:clean-preview": ("/tools/clean/", (A, A, A, 200, A, A)),
    "dashboard:home": ("/dashboard/", (L, 302, 302, 200, L, L)),  # readers are sent to the portal
    # creating a study needs annotation.add_study (the study admin holds every annotation permission)
    "dashboard:study-new": ("/dashboard/studies/new/", (L, 403, 403, 200, L, L)),
    "dashboard:study-settings": ("/dashboard/studies/{study.pk}/settings/", (L, 404, 404, 200, L, L)),
    "dashboard:study-invite": ("/dashboard/studies/{study.pk}/invitations/", (L, 405, 405, 405, L, L)),
    "dashboard:member-action": ("/dashboard/studies/{study.pk}/members/{member.pk}/deactivate/",
                                (L, 405, 405, 405, L, L)),
    "dashboard:practice-upload": ("/dashboard/studies/{study.pk}/practice/", (L, 405, 405, 405, L, L)),
    # an invitation link is its own authorisation: anyone holding it sees the join page (GET uses nothing)
    "portal:join": ("/portal/join/{invite_token}/", (200, 200, 200, 200, 200, 200)),
    "portal:practice": ("/portal/practice/{study.pk}/", (L, 200, 200, 404, L, L)),
    "portal:practice-image": ("/portal/practice/{study.pk}/{practice.pk}.png", (L, 200, 200, 404, L, L)),
    "dashboard:study": ("/dashboard/studies/{study.pk}/", (L, 404, 404, 200, L, L)),
    "dashboard:study-launch": ("/dashboard/studies/{study.pk}/launch/", (L, 405, 405, 405, L, L)),
    "dashboard:study-import": ("/dashboard/studies/{study.pk}/import/", (L, 405, 405, 405, L, L)),
    "dashboard:import-job": ("/dashboard/imports/{import_job.pk}/", (L, 404, 404, 200, L, L)),
    "dashboard:study-version": ("/dashboard/studies/{study.pk}/version/", (L, 405, 405, 405, L, L)),
    "dashboard:round": ("/dashboard/rounds/{round.pk}/", (L, 404, 404, 200, L, L)),
    "dashboard:round-progress": ("/dashboard/rounds/{round.pk}/progress.json", (L, 404, 404, 200, L, L)),
    "dashboard:round-gallery": ("/dashboard/rounds/{round.pk}/gallery/", (L, 404, 404, 200, L, L)),
    "dashboard:round-report": ("/dashboard/rounds/{round.pk}/report/", (L, 404, 404, 200, L, L)),
    "dashboard:round-report-refresh": ("/dashboard/rounds/{round.pk}/report/refresh/", (L, 405, 405, 405, L, L)),
    "dashboard:round-action": ("/dashboard/rounds/{round.pk}/close/", (L, 405, 405, 405, L, L)),
    "dashboard:image-file": ("/dashboard/images/{image.pk}/full.png", (L, 404, 404, 200, L, L)),
    "dashboard:generated-file": ("/dashboard/generated/{generated.pk}.png", (L, 404, 404, 200, L, L)),
    "api:schema": ("/api/v1/schema/", (200, 200, 200, 200, 200, 200)),
    "api:docs": ("/api/v1/docs/", (200, 200, 200, 200, 200, 200)),
    "api:api-root": ("/api/v1/", (401, 200, 200, 200, 200, 200)),
    "api:study-list": ("/api/v1/studies/", (401, 200, 200, 200, 200, 200)),
    "api:study-detail": ("/api/v1/studies/{study.pk}/", (401, *OURS)),
    "api:study-panel": ("/api/v1/studies/{study.pk}/panel/", (401, *OURS)),
    "api:study-export": ("/api/v1/studies/{study.pk}/export/?format=jsonl", (401, *OURS)),
    "api:round-list": ("/api/v1/rounds/", (401, 200, 200, 200, 200, 200)),
    "api:round-detail": ("/api/v1/rounds/{round.pk}/", (401, *OURS)),
    "api:round-report": ("/api/v1/rounds/{round.pk}/report/", (401, *OURS)),
    "api:round-cancel": ("/api/v1/rounds/{round.pk}/cancel/", (401, 405, 405, 405, 405, 405)),
    "api:round-close": ("/api/v1/rounds/{round.pk}/close/", (401, 405, 405, 405, 405, 405)),
    "api:round-retry": ("/api/v1/rounds/{round.pk}/retry/", (401, 405, 405, 405, 405, 405)),
    "api:image-list": ("/api/v1/images/", (401, 200, 200, 200, 200, 200)),
    "api:image-detail": ("/api/v1/images/{image.pk}/", (401, *OURS)),
    "api:image-file": ("/api/v1/images/{image.pk}/file/", (401, *OURS)),
    "api:label-list": ("/api/v1/labels/", (401, 200, 200, 200, 200, 200)),
    "api:label-detail": ("/api/v1/labels/{label.pk}/", (401, *OURS)),
    "api:task-list": ("/api/v1/tasks/", (401, 200, 200, 200, 200, 200)),
    "api:task-detail": ("/api/v1/tasks/{task.pk}/", (401, 200, 404, 200, 200, 200)),  # reader A's own task
    "api:model-version-list": ("/api/v1/model-versions/", (401, 200, 200, 200, 200, 200)),
    "api:model-version-detail": ("/api/v1/model-versions/{version.pk}/", (401, *OURS)),
    # the world's version is a base without an adapter: those who may download it are told so (409)
    "api:model-version-download": ("/api/v1/model-versions/{version.pk}/download/", (401, 404, 404, 409, 409, 409)),
    "api:export-list": ("/api/v1/exports/", (401, 200, 200, 200, 200, 200)),
    "api:export-detail": ("/api/v1/exports/{export.pk}/", (401, *OURS)),
    "api:export-download": ("/api/v1/exports/{export.pk}/download/", (401, 404, 404, 409, 409, 409)),
    "api:webhook-list": ("/api/v1/webhooks/", (401, 200, 200, 200, 200, 200)),
    # webhooks are the admin scope's: an export token does not see them at all
    "api:webhook-detail": ("/api/v1/webhooks/{hook.pk}/", (401, 404, 404, 200, 404, 200)),
    "api:webhook-deliveries": ("/api/v1/webhooks/{hook.pk}/deliveries/", (401, 404, 404, 200, 404, 200)),
}

# Another study's data: only a superuser would see it; the study admin and their tokens get 404 like the readers.
OTHER_MATRIX = {
    "dashboard:study": ("/dashboard/studies/{other.pk}/", (L, 404, 404, 404, L, L)),
    "dashboard:round": ("/dashboard/rounds/{other_round.pk}/", (L, 404, 404, 404, L, L)),
    "api:study-detail": ("/api/v1/studies/{other.pk}/", (401, 404, 404, 404, 404, 404)),
    "api:study-panel": ("/api/v1/studies/{other.pk}/panel/", (401, 404, 404, 404, 404, 404)),
    "api:round-detail": ("/api/v1/rounds/{other_round.pk}/", (401, 404, 404, 404, 404, 404)),
    "api:study-export": ("/api/v1/studies/{other.pk}/export/?format=jsonl", (401, 404, 404, 404, 404, 404)),
    "api:image-detail": ("/api/v1/images/{other_image.pk}/", (401, 404, 404, 404, 404, 404)),
    "api:image-file": ("/api/v1/images/{other_image.pk}/file/", (401, 404, 404, 404, 404, 404)),
    "api:webhook-detail": ("/api/v1/webhooks/{other_hook.pk}/", (401, 404, 404, 404, 404, 404)),
    "api:webhook-deliveries": ("/api/v1/webhooks/{other_hook.pk}/deliveries/", (401, 404, 404, 404, 404, 404)),
    "dashboard:image-file": ("/dashboard/images/{other_image.pk}/full.png", (L, 404, 404, 404, L, L)),
    "admin:image": ("/admin/annotation/image/{other_image.pk}/change/", (A, A, A, 302, A, A)),
}


def _names(resolver, ns: str = "") -> set[str]:
    names = set()
    for p in resolver.url_patterns:
        if isinstance(p, URLResolver):
            if p.app_name == "admin":
                continue  # the Django admin: checked model by model below
            names |= _names(p, ns + (f"{p.namespace}:" if p.namespace else ""))
        elif isinstance(p, URLPattern):
            names.add(ns + (p.name or "root"))
    return names


def test_every_url_pattern_has_a_row_in_the_matrix():
    assert _names(get_resolver()) == set(GET_MATRIX)


def _mismatch(response, expected) -> str | None:
    """None when the response is what the matrix says, else what it was."""
    got = response.status_code
    location = response.get("Location", "")
    if expected == L and got == 302 and location.startswith("/accounts/login/"):
        return None
    if expected == A and got == 302 and location.startswith("/admin/login/"):
        return None
    if expected == got and not (got == 302 and "/login/" in location):  # a plain 302 is never a sign-in bounce
        return None
    return f"{got} {location}".strip()


@pytest.mark.parametrize("who", WHO)
def test_get_matrix(world, who):
    column = WHO.index(who)
    client = world["client"](who)
    wrong = []
    for matrix in (GET_MATRIX, OTHER_MATRIX):
        for template, expected in matrix.values():
            url = template.format(**world)
            got = _mismatch(client.get(url), expected[column])
            if got is not None:
                wrong.append(f"{url}: expected {expected[column]}, got {got}")
    assert not wrong, "\n".join(wrong)


def _admin_urls(world) -> list[tuple[str, str]]:
    """(url, what the study admin gets) for the admin index, the import view, and each registered model's list and
    change pages: "ours" (200), "other" (another study's object: not found) or "no-permission" (403: models outside
    the annotation app, which study admins hold no permissions on)."""
    other_event = AuditEvent.objects.get(study=world["other"], action="membership.add")
    other_token = ApiToken.objects.get(name="stranger's")
    urls = [("/admin/", "ours"), (f"/admin/annotation/study/{world['study'].pk}/import/", "ours"),
            (f"/admin/annotation/study/{world['other'].pk}/import/", "other"),
            (f"/admin/annotation/study/{world['other'].pk}/change/", "other"),
            (f"/admin/annotation/round/{world['other_round'].pk}/change/", "other"),
            (f"/admin/annotation/auditevent/{other_event.pk}/change/", "other"),
            (f"/admin/annotation/apitoken/{other_token.pk}/change/", "other")]
    for model in django_admin.site._registry:
        meta = model._meta
        base = f"/admin/{meta.app_label}/{meta.model_name}/"
        if meta.app_label != "annotation":
            urls.append((base, "no-permission"))
            continue
        urls.append((base, "ours"))
        obj = _our_object(model, world)
        if obj is not None:
            urls.append((f"{base}{obj.pk}/change/", "ours"))
    return urls


def _our_object(model, world):
    from annotation.admin import StudyScopedAdmin

    model_admin = django_admin.site._registry[model]
    if not isinstance(model_admin, StudyScopedAdmin):
        return None
    path = model_admin.study_path
    return model._default_manager.filter(**{path if path != "pk" else "pk": world["study"].pk}).first()


@pytest.mark.parametrize("who", WHO)
def test_django_admin_matrix(world, who):
    client = world["client"](who)
    for url, kind in _admin_urls(world):
        response = client.get(url)
        if who != "study_admin":
            assert _mismatch(response, A) is None, (who, url, response.status_code)
        elif kind == "ours":
            assert response.status_code == 200, (url, response.status_code)
        elif kind == "no-permission":
            assert response.status_code == 403, (url, response.status_code)
        else:  # another study's object: not found (the admin sends it back to its index with a message)
            assert response.status_code in (302, 404), (url, response.status_code)
            if response.status_code == 302:
                assert "/login/" not in response["Location"]
    if who == "study_admin":  # lists hold only what is theirs
        events = client.get("/admin/annotation/auditevent/").content.decode()
        assert "membership.add" in events and "stranger" not in events
        assert "stranger&#x27;s" not in client.get("/admin/annotation/apitoken/").content.decode()


def _state(world) -> tuple:
    """What a refused write must leave as it was (token names last: the admin may rename its own)."""
    rnd = Round.objects.get(pk=world["round"].pk)
    return (Round.objects.count(), rnd.status, rnd.config, rnd.metrics, ExportJob.objects.count(),
            Study.objects.count(), ImportJob.objects.count(),
            sorted(Webhook.objects.values_list("pk", "url", "active", "events")), Label.objects.count(),
            AuditEvent.objects.count(), Study.objects.get(pk=world["study"].pk).current_version_id,
            sorted(ApiToken.objects.values_list("pk", "user_id", "scope", "revoked_at")),
            Study.objects.get(pk=world["study"].pk).title, Invitation.objects.count(), PracticeCase.objects.count(),
            PracticeAnswer.objects.count(), StudyMembership.objects.filter(deactivated_at__isnull=False).count(),
            sorted(ApiToken.objects.values_list("pk", "name")))


# Writes and who may make them (the rest are refused). Bodies are valid enough to do something if allowed.
WRITES = {
    "/portal/api/submit": ({"task": "{task.token}", "answer": {"call": "real", "confidence": 3},
                            "submission_id": "7b0f2b8e-3b5e-4a43-9a39-1f1f3f3f3f3f"}, {"reader_a"}),
    "/dashboard/studies/{study.pk}/launch/": ({"synthetic": 2, "real": 2}, {"study_admin"}),
    "/dashboard/studies/{study.pk}/import/": ({"url": "http://127.0.0.1:9/dicom-web"}, {"study_admin"}),
    # creating studies needs annotation.add_study (this study admin has every annotation permission) and admin scope
    "/api/v1/studies/": ({"name": "made-here"}, {"study_admin", "admin_token"}),
    "/api/v1/studies/{study.pk}/": ({"title": "changed by the API"}, {"study_admin", "admin_token"}),
    "/dashboard/studies/{study.pk}/version/": ({"version": "{version.pk}"}, {"study_admin"}),
    "/dashboard/studies/new/": ({"name": "made-in-form", "title": "x", "task_kinds": "realism"}, {"study_admin"}),
    "/dashboard/studies/{study.pk}/settings/": ({"title": "changed"}, {"study_admin"}),
    "/dashboard/studies/{study.pk}/invitations/": ({"role": "admin", "days": 7}, {"study_admin"}),
    "/dashboard/studies/{study.pk}/members/{member.pk}/deactivate/": ({}, {"study_admin"}),
    "/dashboard/studies/{study.pk}/practice/": ({"clear": "1"}, {"study_admin"}),
    "/portal/practice/{study.pk}/": ({"case": "{practice.pk}", "call": "real"}, {"reader_a", "reader_b"}),
    "/dashboard/rounds/{round.pk}/close/": ({}, {"study_admin"}),
    "/dashboard/rounds/{round.pk}/cancel/": ({}, {"study_admin"}),
    "/dashboard/rounds/{round.pk}/report/refresh/": ({}, {"study_admin"}),
    "/api/v1/rounds/": ({"study": "{study.pk}"}, {"study_admin", "admin_token"}),
    "/api/v1/rounds/{round.pk}/close/": ({}, {"study_admin", "admin_token"}),
    "/api/v1/rounds/{round.pk}/cancel/": ({}, {"study_admin", "admin_token"}),
    "/api/v1/rounds/{round.pk}/retry/": ({}, {"study_admin", "admin_token"}),
    "/api/v1/exports/": ({"study": "{study.pk}", "format": "jsonl"}, {"study_admin", "export_token",
                                                                       "admin_token"}),
    "/api/v1/webhooks/": ({"study": "{study.pk}", "url": "http://127.0.0.1:9/x"}, {"study_admin", "admin_token"}),
    "/api/v1/webhooks/{hook.pk}/": ({"active": False}, {"study_admin", "admin_token"}),
}


def _fill(value, world):
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value.format(**world) if isinstance(value, str) else value


@pytest.mark.parametrize("who", [w for w in WHO if w != "study_admin"])
def test_writes_by_callers_who_may_not_are_refused_and_change_nothing(world, who):
    client = world["client"](who)
    before = _state(world)
    for template, (body, allowed) in WRITES.items():
        if who in allowed:
            continue
        url = template.format(**world)
        method = client.patch if template.startswith(("/api/v1/webhooks/{", "/api/v1/studies/{")) else client.post
        response = method(url, _fill(body, world), format="json")
        assert response.status_code in (302, 401, 403, 404), (who, url, response.status_code)
        if response.status_code == 302:
            assert response["Location"].startswith("/accounts/login/"), (who, url)
        assert _state(world) == before, (who, url)


def test_a_study_admins_writes_into_another_study_are_refused(world):
    client = world["client"]("study_admin")
    before = _state(world)
    for url in (f"/dashboard/studies/{world['other'].pk}/launch/", f"/dashboard/rounds/{world['other_round'].pk}/close/",
                f"/dashboard/studies/{world['other'].pk}/settings/", f"/dashboard/studies/{world['other'].pk}/invitations/",
                f"/dashboard/studies/{world['other'].pk}/practice/",
                f"/dashboard/studies/{world['other'].pk}/members/{world['member'].pk}/deactivate/",
                f"/api/v1/rounds/{world['other_round'].pk}/close/"):
        assert client.post(url, {}, format="json").status_code == 404, url
    created = client.post("/api/v1/exports/", {"study": world["other"].pk, "format": "jsonl"}, format="json")
    assert created.status_code in (400, 403, 404), created.status_code
    assert _state(world) == before


def test_the_django_admin_lets_a_study_admin_neither_forge_nor_reach_into_another_study(world):
    client = world["client"]("study_admin")
    before = _state(world)
    # the audit trail, labels, tasks and images are written by the code that owns them, never by hand
    for model in ("auditevent", "label", "readingtask", "image", "apitoken"):
        assert client.get(f"/admin/annotation/{model}/add/").status_code == 403, model
        assert client.post(f"/admin/annotation/{model}/add/", {"study": world["other"].pk}).status_code == 403
    # a token's owner and scope cannot be changed (that would borrow another user's rights); its name can
    token = ApiToken.objects.filter(user__username="studyadmin", scope="export").get()
    page = client.get(f"/admin/annotation/apitoken/{token.pk}/change/").content.decode()
    assert 'name="user"' not in page and 'name="scope"' not in page and 'name="name"' in page
    stranger = ApiToken.objects.get(name="stranger's").user
    saved = client.post(f"/admin/annotation/apitoken/{token.pk}/change/",
                        {"name": "renamed", "user": stranger.pk, "scope": "admin", "revoked_at_0": "",
                         "revoked_at_1": ""})
    assert saved.status_code == 302
    token.refresh_from_db()
    assert (token.name, token.user.username, token.scope) == ("renamed", "studyadmin", "export")
    # foreign keys offer (and accept) only the admin's own studies; stored images and rounds stay where they are
    form = client.get("/admin/annotation/round/add/").content.decode()
    assert "Elsewhere" not in form and "Study exp" in form
    refused = client.post("/admin/annotation/round/add/", {"study": world["other"].pk, "number": 9,
                                                           "status": "draft"})
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    image_page = client.get(f"/admin/annotation/image/{world['image'].pk}/change/").content.decode()
    assert 'name="study"' not in image_page and 'name="round"' not in image_page
    round_page = client.get(f"/admin/annotation/round/{world['round'].pk}/change/").content.decode()
    assert 'name="study"' not in round_page and 'name="number"' not in round_page
    assert _state(world)[:-1] == before[:-1] and not Round.objects.filter(study=world["other"], number=9).exists()
