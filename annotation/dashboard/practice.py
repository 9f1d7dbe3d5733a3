"""The study's practice set in the dashboard: upload images with their known answer, or empty the set."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotation.dashboard.views import _study_for_admin, study_page
from annotation.images.decoded import IngestLimits
from annotation.reading.practice import practice_add, practice_remove


@login_required
@require_POST
def practice_upload(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study_for_admin(request, pk)
    if request.POST.get("clear"):
        practice_remove(study=study, actor=request.user)
        return redirect(reverse("dashboard:study", args=[study.pk]) + "#practice")
    limit = IngestLimits().max_file_bytes
    files, refused = [], []
    for upload in request.FILES.getlist("images"):
        if upload.size > limit:  # refused before it is read into memory
            refused.append(f"{upload.name}: file is over the {limit // 2**20} MB limit")
            continue
        files.append((upload.name, upload.read()))
    try:
        added, more = practice_add(study=study, files=files, answer=request.POST.get("answer", ""),
                                   explanation=request.POST.get("explanation", ""), actor=request.user)
    except ValidationError as exc:
        return study_page(request, pk, error=" ".join(exc.messages + refused), status=400)
    refused += more
    if refused:
        return study_page(request, pk, error=f"Added {len(added)} practice case{'s' if len(added) != 1 else ''}; "
                          f"refused: {'; '.join(r.rstrip('.') for r in refused)}.", status=400 if not added else 200)
    return redirect(reverse("dashboard:study", args=[study.pk]) + "#practice")
