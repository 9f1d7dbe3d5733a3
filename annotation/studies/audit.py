"""The audit log: one append-only row per action that changed something (who, what, which study, on which object)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser

from annotation.models import AuditEvent, Study


def audit(*, actor: AbstractUser | None, action: str, study: Study | None = None, obj=None, **data) -> None:
    AuditEvent.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        study=study,
        object_type=type(obj).__name__.lower() if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        data=data,
    )
