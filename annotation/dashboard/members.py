"""The study's readers in the dashboard: invitation links (one-time, expiring; reader or study admin), who joined
and how far they read, deactivating and reactivating a reader."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotation.dashboard.views import _study_for_admin, study_page
from annotation.models import StudyMembership
from annotation.reading.membership import membership_deactivate, membership_reactivate
from annotation.studies.members import invitation_create


@login_required
@require_POST
def study_invite(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study_for_admin(request, pk)
    try:
        days = int(request.POST.get("days") or 7)
    except ValueError:
        return study_page(request, pk, error="Expires after: give a whole number of days.", status=400)
    try:
        _, token = invitation_create(study=study, role=request.POST.get("role", "reader"), actor=request.user,
                                     days=days, note=request.POST.get("note", ""))
    except ValidationError as exc:
        return study_page(request, pk, error=" ".join(exc.messages), status=400)
    link = request.build_absolute_uri(reverse("portal:join", args=[token]))
    return study_page(request, pk, invitation_link=link)  # shown once: only the token's hash is stored


@login_required
@require_POST
def member_action(request: HttpRequest, pk: int, member: int, action: str) -> HttpResponse:
    study = _study_for_admin(request, pk)
    row = get_object_or_404(StudyMembership.objects.select_related("user", "study"), pk=member, study=study)
    try:
        if action == "deactivate":
            membership_deactivate(member=row, actor=request.user)
        elif action == "reactivate":
            membership_reactivate(member=row, actor=request.user)
        else:
            return study_page(request, pk, error=f"Unknown action {action[:40]!r}.", status=404)
    except ValidationError as exc:
        return study_page(request, pk, error=" ".join(exc.messages), status=400)
    return redirect(reverse("dashboard:study", args=[study.pk]) + "#readers")
