"""Reads for the portal and dashboards. Nothing here writes."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.core.cache import cache
from django.db.models import F, Q, Sum

from annotation.models import (
    ReaderQueue,
    ReadingCase,
    ReadingTask,
    Role,
    Round,
    RoundStatus,
    StudyMembership,
    TaskStatus,
)


def rounds_open_for_reader(*, reader: AbstractUser) -> list[Round]:
    studies = StudyMembership.objects.filter(user=reader, role=Role.READER, deactivated_at__isnull=True).values(
        "study_id")
    return list(
        Round.objects.filter(study_id__in=studies, status=RoundStatus.LABELING)
        .select_related("study")
        .order_by("study__title", "number")
    )


def round_open_capacity(*, round_id: int) -> int:
    """Reads the round still wants (cached briefly: it is shown on every case page)."""
    key = f"cxr:open-capacity:{round_id}"
    value = cache.get(key)
    if value is None:
        value = (
            ReadingCase.objects.filter(round_id=round_id, is_catch=False, taken__lt=F("capacity"))
            .aggregate(n=Sum(F("capacity") - F("taken")))["n"]
            or 0
        )
        cache.set(key, value, 10)
    return value


def queue_progress(*, queue: ReaderQueue) -> dict:
    """Answered cases and an honest estimate of the total: what the reader can still read, capped by what the
    round still needs."""
    pools = queue.round.pools
    left_for_reader = sum(
        n for slots in pools.values() for slot, n in slots.items() if not slot.startswith("catch:")
    ) - sum(c.get("served", 0) for c in queue.cursor.values())
    open_claims = queue.position - queue.done_count
    remaining = max(0, min(left_for_reader, round_open_capacity(round_id=queue.round_id))) + open_claims
    return {"done": queue.done_count, "total": queue.done_count + remaining}


def task_for_reader(*, token: str, reader: AbstractUser) -> ReadingTask | None:
    return (
        ReadingTask.objects.select_related("queue__round__study", "current_label")
        .filter(Q(token=token) | Q(token_b=token), reader_id=reader.pk)
        .first()
    )


def task_previous(*, task: ReadingTask) -> ReadingTask | None:
    return (
        ReadingTask.objects.filter(queue_id=task.queue_id, position__lt=task.position, status=TaskStatus.DONE)
        .order_by("-position")
        .first()
    )


def queue_review(*, queue: ReaderQueue) -> list[ReadingTask]:
    return list(
        ReadingTask.objects.filter(queue=queue, status=TaskStatus.DONE)
        .select_related("image", "image_b", "current_label")
        .order_by("position")
    )


def reader_active(*, study_id: int, user: AbstractUser) -> bool:
    """Whether `user` is a reader of the study whose reading an admin has not ended."""
    return StudyMembership.objects.filter(study_id=study_id, user=user, role=Role.READER,
                                          deactivated_at__isnull=True).exists()
