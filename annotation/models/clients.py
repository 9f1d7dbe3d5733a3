"""What API clients hold and receive: tokens, export jobs, webhooks and their deliveries."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from annotation.models.studies import Study
from inference.models import Job


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class TokenScope(models.TextChoices):
    READ = "read", "Read (reader's own tasks / export)"
    EXPORT = "export", "Export labelled data"
    ADMIN = "admin", "Administer studies"


class ApiToken(models.Model):
    """A bearer token for API clients; only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=8, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=10, choices=TokenScope.choices, default=TokenScope.READ)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…, {self.scope})"


def new_submission_id() -> uuid.UUID:
    return uuid.uuid4()


class ExportJob(Job):
    """A large export written by a worker; the file lands in storage with its manifest."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="export_jobs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    format = models.CharField(max_length=12)
    selection = models.JSONField(default=dict, help_text="exports.Selection as JSON.")
    file_key = models.CharField(max_length=300, blank=True)
    manifest = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"{self.format} export {self.pk} of {self.study} ({self.status})"


class Webhook(models.Model):
    """An admin's URL told about round state changes and finished exports, signed with HMAC-SHA256."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, help_text="Signs each payload: X-CXR-Signature: sha256=<hex>.")
    events = models.JSONField(default=list, help_text="Event names ('round.status', 'export.done'); empty = all.")
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"webhook {self.pk} → {self.url}"


class WebhookDelivery(models.Model):
    """One event sent to one webhook: every attempt's outcome is kept."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    log = models.JSONField(default=list, blank=True, help_text="[{at, code, error}] per attempt.")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.event} to webhook {self.webhook_id} ({self.status})"
