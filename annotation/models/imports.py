"""Import jobs: real images brought into a study from the dashboard (an uploaded ZIP or files, or a DICOMweb pull)
by a worker, with their progress and a per-file result."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from annotation.models.studies import Study
from inference.models import Job, JobStatus


class ImportJob(Job):
    Status = JobStatus  # the job life cycle every worker job shares

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="import_jobs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    source = models.CharField(max_length=10, choices=[("upload", "Upload"), ("dicomweb", "DICOMweb")])
    upload_key = models.CharField(max_length=300, blank=True, help_text="The uploaded ZIP or file (storage key); "
                                                                      "removed when the job is done.")
    upload_name = models.CharField(max_length=255, blank=True)
    url = models.CharField(max_length=500, blank=True, help_text="DICOMweb root (QIDO-RS / WADO-RS).")
    filters = models.JSONField(default=dict, blank=True, help_text="QIDO-RS search filters.")
    reports = models.JSONField(default=dict, blank=True, help_text="File name / accession:… / study:… → report.")
    progress = models.JSONField(default=dict, blank=True, help_text="{done, total} files or instances.")
    result = models.JSONField(default=dict, blank=True, help_text="images.importing.ImportResult.as_dict().")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.source} import {self.pk} into {self.study} ({self.status})"
