"""REST API v1 for API clients: images, labels, reading tasks, model versions, exports and webhooks (studies and
rounds: `annotation.api.studies`).

Who sees what: a study admin (or superuser) sees the study's data through a session or a token of scope `export`
(read-only) or `admin` (read + actions + webhooks). A reader sees only their own reading tasks, blinded (opaque
tokens, no source, prompt or model), through a session or a `read` token. Readers are named by pseudonym unless the
caller administers the study. Lists use cursor pagination ordered by id, so a page never shifts while labels are
being added.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.files.storage import default_storage
from django.db.models import Q
from django.http import FileResponse, HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from annotation.api import serializers as s
from annotation.api.access import (
    COMMON,
    ID,
    ByIdCursor,
    admin_study_ids,
    administers,
    choice_param,
    filter_common,
    int_param,
    require_admin_action,
    scoped,
    token_scope,
)
from annotation.exports.jobs import export_job_start
from annotation.exports.model_export import model_archive, version_study
from annotation.models import (
    ExportJob,
    Image,
    Label,
    ReadingTask,
    Role,
    Study,
    StudyMembership,
    TokenScope,
    Webhook,
    WebhookDelivery,
)
from annotation.rounds.versions import study_versions
from annotation.webhooks import webhook_create
from inference.models import ModelVersion

# --- images, labels, tasks, versions ---------------------------------------------------------------------------------


class ImageViewSet(viewsets.ReadOnlyModelViewSet):
    lookup_value_regex = ID
    queryset = Image.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = s.ImageSerializer
    pagination_class = ByIdCursor

    def get_queryset(self):
        qs = scoped(Image.objects.select_related("round", "model_version"), "study_id", self.request)
        qs = filter_common(qs, self.request, study="study_id")
        if (value := int_param(self.request, "round")) is not None:
            qs = qs.filter(round__number=value)
        if (value := choice_param(self.request, "source", ("real", "synthetic"))):
            qs = qs.filter(source=value)
        if (value := int_param(self.request, "model_version")) is not None:
            qs = qs.filter(model_version_id=value)
        return qs

    @extend_schema(parameters=[*COMMON, OpenApiParameter("round", int), OpenApiParameter("source", str, enum=["real", "synthetic"]),
                               OpenApiParameter("model_version", int)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(responses={(200, "image/png"): bytes})
    @action(detail=True, methods=["get"])
    def file(self, request, pk=None):
        """The stored full-resolution image (PNG)."""
        image = self.get_object()
        return FileResponse(default_storage.open(image.storage_key, "rb"), content_type="image/png")


class LabelViewSet(viewsets.ReadOnlyModelViewSet):
    lookup_value_regex = ID
    queryset = Label.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = s.LabelSerializer
    pagination_class = ByIdCursor

    def get_queryset(self):
        request = self.request
        qs = scoped(Label.objects.select_related("task__round", "task__image__model_version", "reader"),
                 "task__round__study_id", request)
        qs = filter_common(qs, request, study="task__round__study_id")
        if (value := int_param(request, "round")) is not None:
            qs = qs.filter(task__round__number=value)
        if (value := choice_param(request, "kind", ("realism", "rubric", "preference"))):
            qs = qs.filter(task__kind=value)
        if (value := choice_param(request, "source", ("real", "synthetic"))):
            qs = qs.filter(task__image__source=value)
        if (value := int_param(request, "model_version")) is not None:
            qs = qs.filter(task__image__model_version_id=value)
        if (value := request.query_params.get("reader")):
            qs = qs.filter(Q(reader__memberships__pseudonym=value) | Q(reader__username=value)).distinct()
        if request.query_params.get("include_simulated", "").lower() not in ("1", "true", "yes"):
            qs = qs.exclude(reader__memberships__is_simulated=True)
        return qs

    @extend_schema(parameters=[*COMMON, OpenApiParameter("round", int), OpenApiParameter("kind", str, enum=["realism", "rubric", "preference"]),
                               OpenApiParameter("source", str, enum=["real", "synthetic"]), OpenApiParameter("model_version", int),
                               OpenApiParameter("reader", str), OpenApiParameter("include_simulated", bool)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    def get_serializer_context(self):
        ctx = super().get_serializer_context()
        members = StudyMembership.objects.filter(role=Role.READER)
        allowed = admin_study_ids(self.request)
        if allowed is not None:
            members = members.filter(study_id__in=allowed)
        ctx["pseudonyms"] = {(m.study_id, m.user_id): (m.pseudonym, m.is_simulated) for m in members}
        return ctx


class TaskViewSet(viewsets.ReadOnlyModelViewSet):
    """A reader's own tasks, blinded; a study admin's view of the study's tasks, with provenance."""

    lookup_value_regex = ID
    queryset = ReadingTask.objects.none()  # for the schema; get_queryset scopes it

    pagination_class = ByIdCursor

    def _admin_view(self) -> bool:
        """Provenance only for callers who administer some study (or everything); a reader signed in through the
        browser, or anyone asking for `mine=1`, gets their own tasks blinded."""
        if token_scope(self.request) == TokenScope.READ or self.request.query_params.get("mine") == "1":
            return False
        allowed = admin_study_ids(self.request)
        return allowed is None or bool(allowed)

    def get_serializer_class(self):
        if getattr(self, "swagger_fake_view", False):
            return s.AdminTaskSerializer
        return s.AdminTaskSerializer if self._admin_view() else s.ReaderTaskSerializer

    def get_queryset(self):
        qs = ReadingTask.objects.select_related("round", "current_label")
        if self._admin_view():
            allowed = admin_study_ids(self.request)  # the studies they administer: their own reading elsewhere
            qs = qs if allowed is None else qs.filter(round__study_id__in=allowed)  # is under mine=1, blinded
        else:
            qs = qs.filter(reader=self.request.user)
        qs = filter_common(qs, self.request, study="round__study_id", created="claimed_at")
        if (value := choice_param(self.request, "kind", ("realism", "rubric", "preference"))):
            qs = qs.filter(kind=value)
        return qs

    @extend_schema(parameters=[*COMMON, OpenApiParameter("kind", str, enum=["realism", "rubric", "preference"]), OpenApiParameter("mine", int)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)


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


# --- exports ------------------------------------------------------------------------------------------------------


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


# --- webhooks ------------------------------------------------------------------------------------------------------


class WebhookViewSet(viewsets.ModelViewSet):
    lookup_value_regex = ID
    queryset = Webhook.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = s.WebhookSerializer
    pagination_class = ByIdCursor
    http_method_names = ["get", "post", "patch", "delete"]

    def get_queryset(self):
        if token_scope(self.request) not in ("session", TokenScope.ADMIN):
            return Webhook.objects.none()
        return scoped(Webhook.objects.all(), "study_id", self.request)

    def perform_create(self, serializer):
        require_admin_action(self.request, serializer.validated_data["study"].pk)
        serializer.instance = webhook_create(actor=self.request.user, **serializer.validated_data)

    def perform_update(self, serializer):
        require_admin_action(self.request, serializer.instance.study_id)
        serializer.save()

    def perform_destroy(self, instance):
        require_admin_action(self.request, instance.study_id)
        instance.delete()

    @extend_schema(responses={200: s.DeliverySerializer(many=True)})
    @action(detail=True, methods=["get"])
    def deliveries(self, request, pk=None):
        hook = self.get_object()
        items = WebhookDelivery.objects.filter(webhook=hook).order_by("-pk")[:200]
        return Response(s.DeliverySerializer(items, many=True).data)
