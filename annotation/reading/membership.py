"""A reader's membership as the reading sees it: active, or ended by a study admin (their labels stay; the cases
they hold open go back to the pool so every case still reaches K; they get no new case)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation.models import Role, StudyMembership
from annotation.reading.assignment import claims_release
from annotation.studies.audit import audit


def membership_deactivate(*, member: StudyMembership, actor: AbstractUser) -> int:
    """End a reader's reading in the study: no new cases, their open claims back to the pool (returned: how many);
    their labels stay in every statistic and export."""
    if member.role != Role.READER:
        raise ValidationError("Only readers are deactivated here; a study admin's role is changed in the admin.")
    if member.is_simulated:
        raise ValidationError("Simulated readers are driven by code; they are not deactivated.")
    with transaction.atomic():
        if member.deactivated_at is None:
            member.deactivated_at = timezone.now()
            member.save(update_fields=["deactivated_at"])
            audit(actor=actor, action="membership.deactivate", study=member.study, obj=member,
                  user=member.user.username)
    return claims_release(study_id=member.study_id, reader=member.user)


def membership_reactivate(*, member: StudyMembership, actor: AbstractUser) -> None:
    with transaction.atomic():
        if member.deactivated_at is not None:
            member.deactivated_at = None
            member.save(update_fields=["deactivated_at"])
            audit(actor=actor, action="membership.reactivate", study=member.study, obj=member,
                  user=member.user.username)
