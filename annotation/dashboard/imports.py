"""The dashboard's image import: upload a ZIP or an image file with a reports CSV, or pull from a PACS over
DICOMweb, as a job (`annotation.images.jobs`) whose page shows a progress bar and the per-file result table."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from annotation.dashboard.views import _study_for_admin, study_page
from annotation.images.jobs import import_job_create, import_job_rows
from annotation.models import ImportJob
from annotation.permissions import can_administer


@login_required
@require_POST
def study_import(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study_for_admin(request, pk)
    reports = request.FILES.get("reports")
    filters = [line.strip() for line in request.POST.get("filters", "").splitlines() if line.strip()]
    try:
        job = import_job_create(study=study, actor=request.user, upload=request.FILES.get("upload"),
                                reports_csv=reports.read() if reports else None,
                                url=request.POST.get("url", "").strip(), filters=filters)
    except ValidationError as exc:
        return study_page(request, pk, error=" ".join(exc.messages), status=400)
    return redirect("dashboard:import-job", job.pk)


@login_required
def import_job_page(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(ImportJob.objects.select_related("study"), pk=pk)
    if not can_administer(request.user, job.study_id):
        raise Http404("No such import.")
    progress = job.progress or {}
    return render(request, "dashboard/import_job.html", {
        "job": job, "study": job.study, "rows": import_job_rows(job), "done": progress.get("done", 0),
        "total": progress.get("total", 0), "live": job.status in (ImportJob.Status.PENDING, ImportJob.Status.RUNNING),
    })
