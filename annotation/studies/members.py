"""Who joins a study: one-time, expiring invitation links (reader or study admin) and accepting one (ending a
reader's reading is `reading.membership`)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation.models import Invitation, Role, Study, StudyMembership
from annotation.studies.audit import audit
from annotation.studies.services import membership_add

MAX_DAYS = 30


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invitation_create(*, study: Study, role: str, actor: AbstractUser, days: int = 7,
                      note: str = "") -> tuple[Invitation, str]:
    """A new invitation and its token (256 random bits, shown once: only its hash is stored)."""
    if role not in Role.values:
        raise ValidationError(f"role must be one of {', '.join(Role.values)}.")
    if not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValidationError(f"An invitation expires after 1 to {MAX_DAYS} days.")
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        invitation = Invitation.objects.create(study=study, role=role, note=(note or "").strip()[:200],
                                               token_hash=token_hash(token), created_by=actor,
                                               expires_at=timezone.now() + timedelta(days=days))
        audit(actor=actor, action="invitation.create", study=study, obj=invitation, role=role, days=days)
    return invitation, token


def invitation_find(token: str) -> Invitation:
    """The open invitation of `token`; a sentence for one that is unknown, used or expired."""
    invitation = (Invitation.objects.select_related("study", "used_by").filter(token_hash=token_hash(token or ""))
                  .first())
    if invitation is None:
        raise ValidationError("This invitation link is not valid. Check that it was copied whole, or ask the study "
                              "admin for a new one.", code="unknown")
    if invitation.used_at is not None:
        raise ValidationError(f"This invitation was used on {invitation.used_at:%Y-%m-%d}; an invitation works "
                              "once. Sign in, or ask the study admin for a new one.", code="used")
    if invitation.expires_at <= timezone.now():
        raise ValidationError(f"This invitation expired on {invitation.expires_at:%Y-%m-%d}; ask the study admin "
                              "for a new one.", code="expired")
    return invitation


def invitation_accept(*, token: str, user: AbstractUser) -> StudyMembership:
    """Use the invitation once: `user` becomes a member in its role (a deactivated membership comes back)."""
    with transaction.atomic():
        invitation = invitation_find(token)
        used = Invitation.objects.filter(pk=invitation.pk, used_at__isnull=True).update(used_at=timezone.now(),
                                                                                        used_by=user)
        if not used:  # accepted a moment ago by someone else
            raise ValidationError("This invitation was just used; an invitation works once.")
        member = membership_add(study=invitation.study, user=user, role=invitation.role, actor=user)
        if member.deactivated_at is not None:
            member.deactivated_at = None
            member.save(update_fields=["deactivated_at"])
        audit(actor=user, action="invitation.accept", study=invitation.study, obj=invitation, role=invitation.role)
    return member
