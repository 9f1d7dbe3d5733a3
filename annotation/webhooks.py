"""Webhooks: admins' URLs told about round state changes and finished exports.

Each delivery is a row (payload, attempts, the outcome of every attempt). The body is JSON; the headers carry the
event, the delivery id and `X-CXR-Signature: sha256=<hex HMAC-SHA256 of the body with the webhook's secret>`.
A failed attempt (network error or a non-2xx answer) is retried by the worker with exponential backoff
(CXR_WEBHOOK_BACKOFF_S × 2^attempt) up to CXR_WEBHOOK_MAX_ATTEMPTS; then the delivery is marked failed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import urllib.error
import urllib.request

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import transaction
from django.utils import timezone

from annotation.models import DeliveryStatus, Study, Webhook, WebhookDelivery
from annotation.studies.audit import audit
from annotation.tasks import webhook_deliver_task

log = logging.getLogger("cxr.webhooks")
EVENTS = ("round.status", "export.done")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), signature or "")


def webhook_create(*, study: Study, actor: AbstractUser, url: str, events: list[str] | None = None,
                   active: bool = True, secret: str = "") -> Webhook:
    """Register an admin's URL (a secret is generated when none is given) and audit it."""
    with transaction.atomic():
        hook = Webhook.objects.create(study=study, url=url, events=events or [], active=active, created_by=actor,
                                      secret=secret or secrets.token_urlsafe(24))
        audit(actor=actor, action="webhook.create", study=study, obj=hook, url=url)
    return hook


def emit(*, study: Study | int, event: str, payload: dict) -> list[WebhookDelivery]:
    """Queue a delivery of `event` to every active webhook of the study that wants it (after commit)."""
    study_id = study if isinstance(study, int) else study.pk
    deliveries = []
    for hook in Webhook.objects.filter(study_id=study_id, active=True):
        if hook.events and event not in hook.events:
            continue
        delivery = WebhookDelivery.objects.create(webhook=hook, event=event, payload={
            "event": event, "study": study_id, "sent_at": timezone.now().isoformat(), **payload})
        transaction.on_commit(lambda pk=delivery.pk: webhook_deliver_task.delay(delivery_pk=pk))
        deliveries.append(delivery)
    return deliveries


def on_round_status_changed(sender, *, round, status: str, previous: str, **_) -> None:
    """The receiver of `round_status_changed`: tell the study's webhooks (deliveries are written in the same
    transaction as the status, and sent after it commits)."""
    emit(study=round.study_id, event="round.status", payload={"round": round.number, "round_id": round.pk,
                                                              "status": status, "previous": previous})


def deliver(delivery: WebhookDelivery) -> bool:
    """One attempt; records its outcome. True when the receiver answered 2xx."""
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    hook = delivery.webhook
    request = urllib.request.Request(hook.url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "cxr-loop-webhooks/1",
        "X-CXR-Event": delivery.event, "X-CXR-Delivery": str(delivery.pk), "X-CXR-Signature": sign(hook.secret, body)})
    code, error = None, ""
    try:
        with urllib.request.urlopen(request, timeout=settings.CXR_WEBHOOK_TIMEOUT_S) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code, error = exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    ok = code is not None and 200 <= code < 300
    delivery.attempts += 1
    delivery.response_code = code
    delivery.last_error = "" if ok else error
    delivery.log = [*delivery.log, {"at": timezone.now().isoformat(), "code": code, "error": error or None}]
    if ok:
        delivery.status, delivery.delivered_at = DeliveryStatus.DELIVERED, timezone.now()
    elif delivery.attempts >= settings.CXR_WEBHOOK_MAX_ATTEMPTS:
        delivery.status = DeliveryStatus.FAILED
    delivery.save()
    return ok


def backoff_s(attempts: int) -> float:
    return settings.CXR_WEBHOOK_BACKOFF_S * (2 ** max(0, attempts - 1))
