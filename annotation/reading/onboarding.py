"""A reader's first steps: joining a study by an invitation link (setting a password, or signing in to an existing
account) and the study's practice set with feedback, before the first real list."""

from __future__ import annotations

import hashlib

from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from annotation.login import failure_count, failures_exceeded, refused_for_failures
from annotation.models import PracticeCase, Role, Study, StudyMembership
from annotation.reading.practice import practice_answer, practice_next, practice_pending, practice_summary
from annotation.studies.members import invitation_accept, invitation_find


def _failures_key(request: HttpRequest) -> str:
    return "cxr:join-fail:" + hashlib.sha256(request.META.get("REMOTE_ADDR", "").encode()).hexdigest()


def _after_joining(member: StudyMembership) -> HttpResponse:
    if member.role == Role.ADMIN:
        return redirect("dashboard:study", member.study_id)
    if practice_pending(study=member.study, reader=member.user):
        return redirect("portal:practice", member.study_id)
    return redirect("portal:home")


def join(request: HttpRequest, token: str) -> HttpResponse:
    """An invitation link: a new person sets a username and password (Django's password validators), someone with
    an account signs in first; either way the invitation is used once and they land in their queue. A used,
    expired or unknown link says so; guessing links is throttled like failed logins."""
    if failures_exceeded(_failures_key(request)):
        return refused_for_failures("invalid invitation links from this address")
    try:
        invitation = invitation_find(token)
    except ValidationError as exc:
        failure_count(_failures_key(request))
        return render(request, "portal/join.html", {"problem": exc.messages[0]},
                      status=404 if exc.code == "unknown" else 410)
    context = {"invitation": invitation, "study": invitation.study,
               "login_url": f"{reverse('login')}?next={request.path}"}
    if request.user.is_authenticated:
        if request.method == "POST":
            try:
                return _after_joining(invitation_accept(token=token, user=request.user))
            except ValidationError as exc:
                return render(request, "portal/join.html", {"problem": exc.messages[0]}, status=410)
        return render(request, "portal/join.html", context)
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        try:
            member = invitation_accept(token=token, user=user)
        except ValidationError as exc:  # used by someone else between the page and the submit
            user.delete()
            return render(request, "portal/join.html", {"problem": exc.messages[0]}, status=410)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return _after_joining(member)
    return render(request, "portal/join.html", {**context, "form": form},
                  status=400 if request.method == "POST" else 200)


def _reader_study(request: HttpRequest, pk: int) -> Study:
    study = get_object_or_404(Study, pk=pk)
    if not StudyMembership.objects.filter(study=study, user=request.user, role=Role.READER,
                                          deactivated_at__isnull=True).exists():
        raise Http404("No such practice set.")
    return study


@login_required
def practice(request: HttpRequest, pk: int) -> HttpResponse:
    """One practice case at a time (R / S answers it), then the feedback on that answer, then the summary."""
    study = _reader_study(request, pk)
    if request.method == "POST":
        case = get_object_or_404(PracticeCase, pk=request.POST.get("case") or 0, study=study)
        try:
            answer = practice_answer(case=case, reader=request.user, call=request.POST.get("call", ""))
        except ValidationError as exc:
            return render(request, "portal/practice.html", {"study": study, "case": case,
                                                            "error": exc.messages[0], **_counts(study, request)},
                          status=400)
        return render(request, "portal/practice.html", {"study": study, "case": case, "feedback": answer,
                                                        **_counts(study, request)})
    case = practice_next(study=study, reader=request.user)
    if case is None:
        return render(request, "portal/practice.html", {"study": study, "summary": practice_summary(
            study=study, reader=request.user)})
    return render(request, "portal/practice.html", {"study": study, "case": case, **_counts(study, request)})


def _counts(study: Study, request: HttpRequest) -> dict:
    summary = practice_summary(study=study, reader=request.user)
    return {"done": summary["answered"], "total": summary["total"]}


@login_required
@require_GET
def practice_image(request: HttpRequest, pk: int, case: int) -> HttpResponse:
    study = _reader_study(request, pk)
    item = get_object_or_404(PracticeCase, pk=case, study=study)
    with default_storage.open(item.display_key, "rb") as handle:
        data = handle.read()
    return HttpResponse(data, content_type="image/png", headers={"Cache-Control": "private, max-age=3600",
                                                                 "X-Content-Type-Options": "nosniff"})
