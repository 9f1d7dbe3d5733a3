"""The API's webhooks: a study admin registers, changes and removes them (admin scope) and reads their deliveries.
Signing and delivery: `annotation.webhooks`."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from annotation.api import serializers as s
from annotation.api.access import ID, ByIdCursor, require_admin_action, scoped, token_scope
from annotation.models import TokenScope, Webhook, WebhookDelivery
from annotation.webhooks import webhook_create


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

    @extend_schema(responses={201: s.WebhookCreatedSerializer})
    def create(self, request, *args, **kwargs):
        """Register a webhook. A secret generated here (none given) is in this response, once: the receiver needs it
        to check the signatures; a secret the caller chose is not sent back."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        require_admin_action(request, serializer.validated_data["study"].pk)
        hook = webhook_create(actor=request.user, **serializer.validated_data)
        shown = s.WebhookSerializer if serializer.validated_data.get("secret") else s.WebhookCreatedSerializer
        return Response(shown(hook, context=self.get_serializer_context()).data, status=status.HTTP_201_CREATED)

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
