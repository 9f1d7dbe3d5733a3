"""The API's export jobs: start one (any format; `annotation.exports.jobs.export_job_start`), poll it, download its
file. Export or admin scope; the streamed exports are the studies' (`annotation.api.studies`)."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.files.storage import default_storage
from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from annotation.api import serializers as s
from annotation.api.access import ID, ByIdCursor, administers, scoped
from annotation.exports.jobs import export_job_start
from annotation.models import ExportJob, Study


class ExportViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    lookup_value_regex = ID
    queryset = ExportJob.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = s.ExportJobSerializer
    pagination_class = ByIdCursor

    def get_queryset(self):
        return scoped(ExportJob.objects.select_related("study"), "study_id", self.request)

    @extend_schema(request=s.ExportRequestSerializer, responses={202: s.ExportJobSerializer})
    def create(self, request, *args, **kwargs):
        """Start an export job (any format); poll it, then download. Export or admin scope."""
        body = s.ExportRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        study = Study.objects.filter(pk=body.validated_data["study"]).first()
        if study is None or not administers(request, study.pk):
            raise NotFound("No such study.")
        params = {k: v for k, v in body.validated_data.items() if k not in ("study", "format")}
        try:
            job = export_job_start(study=study, actor=request.user, fmt=body.validated_data["format"], params=params)
        except DjangoValidationError as exc:
            raise ValidationError({"selection": exc.messages}) from None
        return Response(s.ExportJobSerializer(job, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={(200, "application/octet-stream"): bytes, 409: s.DetailSerializer})
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        job = self.get_object()
        if job.status != "done":
            return Response({"detail": f"The export is {job.status}."}, status=status.HTTP_409_CONFLICT)
        response = FileResponse(default_storage.open(job.file_key, "rb"), as_attachment=True,
                                filename=job.file_key.rsplit("/", 1)[-1])
        response["X-Content-SHA256"] = next(iter(job.manifest.get("files", {}).values()), {}).get("sha256", "")
        return response
