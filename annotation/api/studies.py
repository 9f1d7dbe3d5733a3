"""The API's studies and rounds: create and read studies (with their streamed export and panel), launch rounds
and act on them. Who may do what is `annotation.api.access`."""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import StreamingHttpResponse
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
    filter_common,
    require_admin_action,
    scoped,
    token_scope,
)
from annotation.exports.formats import pairs_lines
from annotation.exports.rows import csv_chunks, jsonl_chunks
from annotation.exports.selection import selection_empty_reason, selection_from
from annotation.models import (
    Round,
    Study,
    TokenScope,
)
from annotation.permissions import can_create_studies
from annotation.rounds.panel import panel_versions
from annotation.rounds.services import round_cancel, round_close_labeling, round_launch, round_retry
from annotation.rounds.transitions import IllegalTransition
from annotation.studies.audit import audit
from annotation.studies.services import study_create, study_update

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

    @extend_schema(request=s.StudyUpdateSerializer, responses={200: s.StudySerializer, 400: s.DetailSerializer,
                                                               403: s.DetailSerializer})
    def partial_update(self, request, *args, **kwargs):
        """Change a study's settings (the study's admin, session or admin-scope token), by the dashboard's rule."""
        study = self.get_object()
        require_admin_action(request, study.pk)
        body = s.StudyUpdateSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        try:
            study = study_update(study=study, actor=request.user, **body.validated_data)
        except DjangoValidationError as exc:
            raise ValidationError({"detail": exc.messages}) from None
        return Response(s.StudySerializer(study).data)

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
