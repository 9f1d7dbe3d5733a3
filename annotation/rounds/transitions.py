"""The round's state machine: which status may follow which, and the one function that changes a round's status.

    draft → generating → cleaning → labeling → training_reward → finetuning → evaluating → done
                                                  (failed, with its stage and error; cancelled)

Every status change goes through `round_transition`, which locks the row, refuses illegal moves, stamps the times,
writes the audit event and sends `round_status_changed` after the transaction commits (webhooks listen to it).
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from annotation.models import ACTIVE_STATUSES, Round, RoundStatus
from annotation.studies.audit import audit

#: Legal round transitions; every status change goes through `round_transition`.
ROUND_TRANSITIONS: dict[str, set[str]] = {
    RoundStatus.DRAFT: {RoundStatus.GENERATING, RoundStatus.LABELING, RoundStatus.CANCELLED},
    RoundStatus.GENERATING: {RoundStatus.CLEANING, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.CLEANING: {RoundStatus.LABELING, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.LABELING: {RoundStatus.TRAINING_REWARD, RoundStatus.DONE, RoundStatus.CANCELLED},
    # a reward model that fails its check skips the finetune: the round is evaluated with no new version
    RoundStatus.TRAINING_REWARD: {RoundStatus.FINETUNING, RoundStatus.EVALUATING, RoundStatus.FAILED,
                                  RoundStatus.CANCELLED},
    RoundStatus.FINETUNING: {RoundStatus.EVALUATING, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.EVALUATING: {RoundStatus.DONE, RoundStatus.FAILED, RoundStatus.CANCELLED},
    RoundStatus.FAILED: {
        RoundStatus.GENERATING,
        RoundStatus.CLEANING,
        RoundStatus.TRAINING_REWARD,
        RoundStatus.FINETUNING,
        RoundStatus.EVALUATING,
        RoundStatus.CANCELLED,
    },
    RoundStatus.DONE: set(),
    RoundStatus.CANCELLED: set(),
}

#: Statuses in which a round is running (one at a time per study).
ACTIVE = ACTIVE_STATUSES

#: Sent inside the transaction that changed a round's status. kwargs: round, status, previous.
round_status_changed = Signal()


class IllegalTransition(ValidationError):
    pass


def round_transition(*, round: Round, to: str, actor: AbstractUser | None = None, error: str = "") -> Round:
    """Move a round to `to`, refusing illegal moves; the row is locked so two workers cannot both move it."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().get(pk=round.pk)
        if to == rnd.status:
            return rnd
        if to not in ROUND_TRANSITIONS[rnd.status]:
            raise IllegalTransition(f"A round cannot go from {rnd.status} to {to}.")
        previous, rnd.status = rnd.status, to
        now = timezone.now()
        if to == RoundStatus.FAILED:
            rnd.stage_error = f"{previous}: {error}" if error else previous
        if to in (RoundStatus.DONE, RoundStatus.CANCELLED):
            rnd.finished_at = now
        if previous == RoundStatus.LABELING:
            rnd.labeling_closed_at = now
        rnd.save()
        audit(actor=actor, action=f"round.{to}", study=rnd.study, obj=rnd, previous=previous)
        round_status_changed.send(sender=Round, round=rnd, status=to, previous=previous)
    return rnd
