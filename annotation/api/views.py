"""REST API v1 for API clients: studies (with their evaluation panel), rounds (with admin actions), images, labels,
reading tasks, model versions, round reports, exports and webhooks.

Who sees what: a study admin (or superuser) sees the study's data through a session or a token of scope `export`
(read-only) or `admin` (read + actions + webhooks). A reader sees only their own reading tasks, blinded (opaque
tokens, no source, prompt or model), through a session or a `read` token. Readers are named by pseudonym unless the
caller administers the study. Lists use cursor pagination ordered by id, so a page never shifts while labels are
being added.
"""

from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.files.storage import default_storage
from django.db.models import Q
from django.http import FileResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response

from annotation.api import serializers as s
from annotation.api.access import (
    COMMON,
    ID,
    ByIdCursor,
    admin_study_ids,
    choice_param,
    filter_common,
    int_param,
    require_admin_action,
    scoped,
    token_scope,
)
from annotation.exports.formats import export_check, pairs_lines
from annotation.exports.rows import csv_chunks, jsonl_chunks
from annotation.exports.selection import selection_empty_reason, selection_from
from annotation.models import (
    ExportJob,
    Image,
    Label,
    ReadingTask,
    Role,
    Round,
    Study,
    StudyMembership,
    TokenScope,
    Webhook,
    WebhookDelivery,
)
from annotation.permissions import can_create_studies
from annotation.rounds.panel import panel_versions
from annotation.rounds.services import round_cancel, round_close_labeling, round_launch, round_retry
from annotation.rounds.transitions import IllegalTransition
from annotation.rounds.versions import study_versions
from annotation.studies.audit import audit
from annotation.studies.services import study_create
from annotation.tasks import export_job_run_task

# --- studies -------------------------------------------------------------------------------------------------------


class StudyViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    lookup_value_regex = ID
    queryset = Study.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = s.StudySerializer
    pagination_class = ByIdCursor

    def get_queryset(self):
        return scoped(Study.objects.select_related("current_version"), "pk", self.request)

    @extend_schema(request=s.StudyCreateSerializer, responses={201: s.StudySerializer, 400: s.DetailSerializer,
                                                               403: s.DetailSerializer})
    def create(self, request, *args, **kwargs):
        """Create a study (an admin-scope token of a user allowed to create studies: a superuser or one with the
        `annotation.add_study` permission); the caller becomes its study admin."""
        if token_scope(request) not in ("session", TokenScope.ADMIN) or not can_create_studies(request.user):
            raise PermissionDenied("Creating a study needs an admin-scope token of a user allowed to create studies "
                                   "(a superuser, or the annotation.add_study permission).")
        body = s.StudyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            study = study_create(actor=request.user, **body.validated_data)
        except DjangoValidationError as exc:
            raise ValidationError({"detail": exc.messages}) from None
        return Response(s.StudySerializer(study).data, status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[OpenApiParameter("format", str, enum=["jsonl", "csv", "pairs"]),
                               OpenApiParameter("round", str), OpenApiParameter("since_round", int),
                               OpenApiParameter("updated_after", str), OpenApiParameter("include_simulated", bool),
                               OpenApiParameter("include_superseded", bool)],
                   responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"], url_path="export")
    def export(self, request, pk=None):
        """Stream labels as JSONL or CSV (flat memory, any size), or preference pairs as JSONL."""
        study = self.get_object()
        fmt = request.query_params.get("format", "jsonl")
        if fmt not in ("jsonl", "csv", "pairs"):
            raise ValidationError({"format": "stream jsonl, csv or pairs here; parquet and imagefolder are jobs "
                                             "(POST /api/v1/exports/)."})
        try:
            sel = selection_from(dict(request.query_params.items()), study=study, is_admin=True)
        except DjangoValidationError as exc:
            raise ValidationError({"selection": exc.messages}) from None
        if not sel.incremental and (empty := selection_empty_reason(sel)) is not None:
            raise ValidationError({"selection": [empty]})
        audit(actor=request.user, action="export.stream", study=study, obj=study, format=fmt)
        if fmt == "pairs":
            response = StreamingHttpResponse(pairs_lines(sel), content_type="application/jsonl")
        elif fmt == "jsonl":
            response = StreamingHttpResponse(jsonl_chunks(sel), content_type="application/jsonl")
        else:
            response = StreamingHttpResponse(csv_chunks(sel), content_type="text/csv; charset=utf-8")
        ext = "csv" if fmt == "csv" else "jsonl"
        response["Content-Disposition"] = f'attachment; filename="{study.name}-{fmt}.{ext}"'
        return response

    @extend_schema(responses={200: s.PanelSerializer, 404: s.DetailSerializer})
    @action(detail=True, methods=["get"])
    def panel(self, request, pk=None):
        """The study's evaluation panel: each scored model version's mean scores (bootstrap 95% CI, n)."""
        return Response(s.PanelSerializer(panel_versions(self.get_object())).data)


# --- rounds --------------------------------------------------------------------------------------------------------


class RoundViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    lookup_value_regex = ID
    queryset = Round.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = s.RoundSerializer
    pagination_class = ByIdCursor

    def get_queryset(self):
        qs = scoped(Round.objects.select_related("study", "model_version", "produced_version"), "study_id",
                 self.request)
        qs = filter_common(qs, self.request, study="study_id")
        if (value := self.request.query_params.get("status")):
            qs = qs.filter(status=value)
        return qs

    @extend_schema(parameters=[*COMMON, OpenApiParameter("status", str)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=s.LaunchSerializer, responses={201: s.RoundSerializer})
    def create(self, request, *args, **kwargs):
        """Launch a round of a study (admin scope)."""
        body = s.LaunchSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        study = Study.objects.filter(pk=body.validated_data["study"]).first()
        if study is None:
            raise NotFound("No such study.")
        require_admin_action(request, study.pk)
        try:
            rnd = round_launch(study=study, actor=request.user, config=body.validated_data.get("config"))
        except DjangoValidationError as exc:
            raise ValidationError({"config": exc.messages}) from None
        return Response(s.RoundSerializer(rnd).data, status=status.HTTP_201_CREATED)

    def _act(self, request, fn):
        rnd = self.get_object()
        require_admin_action(request, rnd.study_id)
        try:
            fn(round=rnd, actor=request.user)
        except IllegalTransition as exc:
            return Response({"detail": " ".join(exc.messages)}, status=status.HTTP_409_CONFLICT)
        return Response(s.RoundSerializer(Round.objects.get(pk=rnd.pk)).data)

    @extend_schema(request=None, responses={200: s.RoundSerializer, 409: s.DetailSerializer})
    @action(detail=True, methods=["post"])
    def close(self, request, pk=None):
        """Close labeling now (the share answered is recorded) and start training."""
        return self._act(request, round_close_labeling)

    @extend_schema(request=None, responses={200: s.RoundSerializer, 409: s.DetailSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Restart a failed round at the stage that failed."""
        return self._act(request, round_retry)

    @extend_schema(request=None, responses={200: s.RoundSerializer, 409: s.DetailSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._act(request, round_cancel)

    @extend_schema(responses={200: dict, 404: s.DetailSerializer})
    @action(detail=True, methods=["get"])
    def report(self, request, pk=None):
        """The round report (reader statistics with CIs, image metrics), as computed."""
        report = (self.get_object().metrics or {}).get("report")
        if report is None:
            raise NotFound("No report computed for this round yet.")
        return Response(report)


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
        from inference.models import ModelVersion

        allowed = admin_study_ids(self.request)
        if allowed is None:
            return ModelVersion.objects.all()
        ids: set[int] = set()
        for study in Study.objects.filter(pk__in=allowed):
            ids |= {v.pk for v in study_versions(study)}
        return ModelVersion.objects.filter(pk__in=ids)


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
        from django.db import transaction


        body = s.ExportRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        study = Study.objects.filter(pk=body.validated_data["study"]).first()
        allowed = admin_study_ids(request)
        if study is None or (allowed is not None and study.pk not in allowed):
            raise NotFound("No such study.")
        params = {k: v for k, v in body.validated_data.items() if k not in ("study", "format")}
        try:
            sel = selection_from(params, study=study, is_admin=True)
            export_check(sel, body.validated_data["format"])
        except DjangoValidationError as exc:
            raise ValidationError({"selection": exc.messages}) from None
        job = ExportJob.objects.create(study=study, requested_by=request.user, format=body.validated_data["format"],
                                       selection=sel.as_dict())
        audit(actor=request.user, action="export.job", study=study, obj=job, format=job.format)
        transaction.on_commit(lambda: export_job_run_task.delay(job_pk=job.pk))
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
        study = serializer.validated_data["study"]
        require_admin_action(self.request, study.pk)
        hook = serializer.save(created_by=self.request.user,
                               secret=serializer.validated_data.get("secret") or secrets.token_urlsafe(24))
        audit(actor=self.request.user, action="webhook.create", study=study, obj=hook, url=hook.url)

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
