"""The API's study data: images (with their file), labels and reading tasks. A study admin sees the study's rows
with provenance; a reader sees only their own tasks, blinded; readers are named by pseudonym. Who may do what is
`annotation.api.access`."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.db.models import Q
from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action

from annotation.api import serializers as s
from annotation.api.access import (
    COMMON,
    ID,
    ByIdCursor,
    admin_study_ids,
    choice_param,
    filter_common,
    int_param,
    scoped,
    token_scope,
)
from annotation.models import Image, Label, ReadingTask, Role, StudyMembership, TokenScope


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
