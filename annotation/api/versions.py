"""The API's model versions: the versions of the studies the caller administers, and a version's LoRA adapter and
model card as a ZIP."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from annotation.api import serializers as s
from annotation.api.access import ID, ByIdCursor, admin_study_ids
from annotation.exports.model_export import model_archive, version_study
from annotation.models import Study
from annotation.rounds.versions import study_versions
from inference.models import ModelVersion


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    lookup_value_regex = ID
    serializer_class = s.ModelVersionSerializer
    pagination_class = ByIdCursor

    def get_queryset(self):
        allowed = admin_study_ids(self.request)
        if allowed is None:
            return ModelVersion.objects.all()
        ids: set[int] = set()
        for study in Study.objects.filter(pk__in=allowed):
            ids |= {v.pk for v in study_versions(study)}
        return ModelVersion.objects.filter(pk__in=ids)

    @extend_schema(responses={(200, "application/zip"): bytes, 409: s.DetailSerializer})
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        """The version as a ZIP of the folder `export_model` writes: `pytorch_lora_weights.safetensors` (load with
        `StableDiffusionPipeline.load_lora_weights`) and the model card README.md."""
        version = self.get_object()
        if not version.lora_key:
            return Response({"detail": f"{version.name} is a base without a LoRA adapter: nothing to download."},
                            status=status.HTTP_409_CONFLICT)
        study = version_study(version, admin_study_ids(request))
        data = model_archive(version, study)
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{version.name}.zip"'
        return response
