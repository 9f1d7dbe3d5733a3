"""Race-free claiming of reading tasks and the append-only label submit.

A claim is one conditional UPDATE (`taken < capacity`), which the database applies atomically on PostgreSQL and
SQLite alike, so no case is ever handed to more than K readers. The reader's own queue row is locked for the
duration of a claim (SELECT … FOR UPDATE on PostgreSQL; IMMEDIATE transactions serialise writers on SQLite), so
one reader's parallel requests cannot both advance it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from annotation.models import (
    Label,
    ReaderQueue,
    ReadingCase,
    ReadingTask,
    Role,
    Round,
    RoundStatus,
    StudyMembership,
    TaskKind,
    TaskStatus,
    new_token,
)
from annotation.reading.answers import validate_answer
from annotation.reading.ordering import chance, derive_seed, permute, slot_for
from annotation.reading.selectors import reader_active
from annotation.reading.signals import case_filled

#: Candidates fetched per query while walking a reader's permutation.
WINDOW = 32
# The hot statements read only the columns they use (`only`): building and converting the whole round and study
# (their JSON fields among them) cost more CPU than the statement itself. A field left out still loads if read (one
# more statement), so add it here when the code below starts using it.
#: What a claim reads of the locked queue, its round and study (and the portal's payload: the rubric).
CLAIM_FIELDS = ("id", "reader_id", "round_id", "token", "seed", "cursor", "kind_index", "position", "done_count",
                "round__status", "round__pools", "round__study_id", "round__study__task_kinds",
                "round__study__real_fraction", "round__study__catch_rate", "round__study__repeat_rate",
                "round__study__repeat_washout", "round__study__rubric")
#: What an answer reads of its task, round, study and case.
SUBMIT_FIELDS = ("id", "round_id", "queue_id", "reader_id", "case_id", "kind", "swap", "status", "token",
                 "revisions", "current_label_id", "answered_at", "round__status", "round__study_id",
                 "round__study__rubric", "case__is_catch", "case__done", "case__capacity")
# Boolean filters below are written `is_catch__in=[...]`: Django renders `is_catch=False` as `NOT "is_catch"`,
# which stops SQLite from using the rest of the (round, kind, is_catch, slot, idx) index.


DEACTIVATED = "Your reading in this study was ended by its admin; your answers so far are kept."


class CaseReturned(ValidationError):
    """The claim expired and its case went to another reader; the answer cannot be stored."""


def queue_for_reader(*, round: Round, reader: AbstractUser) -> ReaderQueue:
    """The reader's queue for a round, created on first use (readers may join mid-round)."""
    if not reader_active(study_id=round.study_id, user=reader):
        raise PermissionDenied(DEACTIVATED if StudyMembership.objects.filter(
            study_id=round.study_id, user=reader, role=Role.READER).exists() else "You are not a reader of this study.")
    queue = ReaderQueue.objects.filter(round=round, reader=reader).first()
    if queue:
        return queue
    index = reader_index(study_id=round.study_id, reader=reader)
    if index is None:
        raise PermissionDenied("You are not a reader of this study.")
    try:
        with transaction.atomic():
            return ReaderQueue.objects.create(
                round=round, reader=reader, seed=derive_seed(round.study.seed, round.number, index)
            )
    except IntegrityError:
        return ReaderQueue.objects.get(round=round, reader=reader)


def reader_index(*, study_id: int, reader: AbstractUser) -> int | None:
    """The reader's position among the study's readers (in the order they joined), None if not a reader. Queue
    order and simulated answers are seeded by it with the study seed and round number, never by database ids, so
    a study's twin (a control arm) draws the same order and noise for its readers."""
    member = StudyMembership.objects.filter(study_id=study_id, user=reader, role=Role.READER).first()
    if member is None:
        return None
    return StudyMembership.objects.filter(study_id=study_id, role=Role.READER, pk__lt=member.pk).count()


def tasks_next_for_reader(*, queue: ReaderQueue, after: ReadingTask | None = None) -> ReadingTask | None:
    """The reader's next open task, claiming a new case if they hold none past `after`; None when done.

    `after` lets the portal prefetch the case that follows the one on screen.
    """
    with transaction.atomic():
        q = (ReaderQueue.objects.select_for_update(of=("self",)).select_related("round__study").only(*CLAIM_FIELDS)
             .get(pk=queue.pk))
        if q.round.status != RoundStatus.LABELING:
            return None
        # Every task is counted in `position` when handed out (under this lock) and in `done_count` at its first
        # answer (under the task's), so a reader whose counts are equal holds no claimed task: no statement to look.
        if q.position > q.done_count:
            held = ReadingTask.objects.filter(queue=q, status=TaskStatus.CLAIMED)
            if after is not None:
                held = held.filter(position__gt=after.position)
            task = held.order_by("position").first()
            if task is not None:
                task.queue = q  # with its round and study, read above: the caller needs no further statement
                return task
        return _claim(q)


def _claim(q: ReaderQueue) -> ReadingTask | None:
    study, rnd = q.round.study, q.round
    kinds = [k for k in study.task_kinds if k in rnd.pools]
    for ki in range(q.kind_index, len(kinds)):
        kind = kinds[ki]
        cursor = q.cursor.setdefault(kind, {"served": 0})
        served = cursor["served"]
        pools = rnd.pools[kind]
        if kind == TaskKind.PREFERENCE:
            preferred = "pair"
        else:
            preferred = slot_for(served, study.real_fraction, derive_seed(q.seed, kind))
        special = _special(q, kind, cursor, preferred, pools, served)
        if special is not None:
            return special
        for slot in (preferred, *[s for s in pools if s != preferred and not s.startswith("catch:")]):
            case = _walk(q, kind, slot, cursor, pools.get(slot, 0))
            if case is not None:
                return _create_task(q, case, kind, cursor)
        case = _returned_case(q, kind)
        if case is not None:
            return _create_task(q, case, kind, cursor)
        # Cases claimed by others may still come back; move past the kind for good only when none can.
        if ki == q.kind_index and not _unread(q, kind, ReadingCase.objects.filter(done__lt=F("capacity"))).exists():
            q.kind_index += 1
            ReaderQueue.objects.filter(pk=q.pk).update(kind_index=q.kind_index, cursor=q.cursor)
    return None


def _walk(q: ReaderQueue, kind: str, slot: str, cursor: dict, n: int) -> ReadingCase | None:
    """Advance along the reader's permutation of one pool and claim the first case with room."""
    key = derive_seed(q.seed, kind, slot)
    while cursor.get(slot, 0) < n:
        start = cursor.get(slot, 0)
        positions = range(start, min(start + WINDOW, n))
        order = {permute(p, n, key): p for p in positions}
        candidates = sorted(
            ReadingCase.objects.filter(
                round_id=q.round_id, kind=kind, is_catch__in=[False], slot=slot, idx__in=list(order),
                taken__lt=F("capacity"),
            ).only("pk", "idx", "image_id", "image_b_id", "slot"),
            key=lambda c: order[c.idx],
        )
        for case in candidates:
            cursor[slot] = order[case.idx] + 1
            if ReadingCase.objects.filter(pk=case.pk, taken__lt=F("capacity")).update(taken=F("taken") + 1):
                return case
        cursor[slot] = positions.stop
    return None


def _returned_case(q: ReaderQueue, kind: str) -> ReadingCase | None:
    """Once the reader has walked every pool: a case whose claim expired and that they have not read."""
    for case in _unread(q, kind, ReadingCase.objects.filter(taken__lt=F("capacity")))[:WINDOW]:
        if ReadingCase.objects.filter(pk=case.pk, taken__lt=F("capacity")).update(taken=F("taken") + 1):
            return case
    return None


def _unread(q: ReaderQueue, kind: str, cases):
    mine = ReadingTask.objects.filter(
        reader_id=q.reader_id, kind=kind, image_id=OuterRef("image_id"), repeat_of__isnull=True
    ).exclude(status=TaskStatus.EXPIRED)
    return cases.filter(round_id=q.round_id, kind=kind, is_catch__in=[False]).exclude(Exists(mine))


def _special(q: ReaderQueue, kind: str, cursor: dict, slot: str, pools: dict, served: int) -> ReadingTask | None:
    """A catch trial or a test–retest repeat in place of the next case, drawn from the same slot."""
    study = q.round.study
    draw = chance(q.seed, kind, "special", served)
    if draw < study.catch_rate:
        seen = cursor.get(f"catch:{slot}", 0)
        if seen < pools.get(f"catch:{slot}", 0):
            idx = permute(seen, pools[f"catch:{slot}"], derive_seed(q.seed, kind, "catch", slot))
            case = ReadingCase.objects.get(round_id=q.round_id, kind=kind, is_catch__in=[True], slot=slot, idx=idx)
            cursor[f"catch:{slot}"] = seen + 1
            ReadingCase.objects.filter(pk=case.pk).update(taken=F("taken") + 1)
            return _create_task(q, case, kind, cursor, is_catch=True)
    elif draw < study.catch_rate + study.repeat_rate and q.position >= study.repeat_washout:
        original = (
            ReadingTask.objects.filter(
                queue=q, kind=kind, slot=slot, status=TaskStatus.DONE, repeat_of__isnull=True, is_catch=False,
                repeated=False, position__lte=q.position - study.repeat_washout,
            ).select_related("case").order_by("position").first()
        )
        if original is not None:
            ReadingTask.objects.filter(pk=original.pk).update(repeated=True)
            return _create_task(q, original.case, kind, cursor, repeat_of=original)
    return None


def _create_task(q: ReaderQueue, case: ReadingCase, kind: str, cursor: dict, *, is_catch: bool = False,
                 repeat_of: ReadingTask | None = None) -> ReadingTask:
    cursor["served"] = cursor.get("served", 0) + 1
    task = ReadingTask.objects.create(
        round_id=q.round_id, queue=q, reader_id=q.reader_id, case=case, kind=kind, slot=case.slot,
        image_id=case.image_id, image_b_id=case.image_b_id, position=q.position,
        swap=case.image_b_id is not None and chance(q.seed, "swap", q.position) < 0.5,
        token_b=new_token() if case.image_b_id else None, is_catch=is_catch, repeat_of=repeat_of,
        claimed_at=timezone.now(),
    )
    ReaderQueue.objects.filter(pk=q.pk).update(position=F("position") + 1, cursor=q.cursor,
                                               kind_index=q.kind_index)
    q.position += 1
    return task


# --- submit ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    label: Label
    replayed: bool


def label_submit(*, reader: AbstractUser, task_token: str, answer: dict, submission_id: uuid.UUID | str,
                 time_spent_ms: int = 0) -> Submitted:
    """Store one answer exactly once per submission id; a revision supersedes, nothing is overwritten."""
    try:
        submission_id = uuid.UUID(str(submission_id))
    except ValueError:
        raise ValidationError("submission_id must be a UUID generated by the client.") from None
    try:
        return _submit(reader, task_token, answer, submission_id, max(0, min(int(time_spent_ms), 86_400_000)))
    except IntegrityError:
        # The same submission raced in twice: the first one won; report it.
        label = Label.objects.get(submission_id=submission_id)
        return Submitted(label, True)


def _submit(reader, task_token: str, answer: dict, submission_id: uuid.UUID, time_spent_ms: int) -> Submitted:
    with transaction.atomic():
        previous = Label.objects.filter(submission_id=submission_id).first()
        if previous is not None:
            if previous.reader_id != reader.pk:
                raise PermissionDenied("This submission id belongs to another reader.")
            return Submitted(previous, True)
        task = next(iter(  # the token is unique: [:1], no ORDER BY
            ReadingTask.objects.select_for_update(of=("self",))
            .select_related("round__study", "case")
            .only(*SUBMIT_FIELDS)
            .filter(token=task_token, reader_id=reader.pk)[:1]
        ), None)
        if task is None:
            raise ReadingTask.DoesNotExist("No such task.")
        if not reader_active(study_id=task.round.study_id, user=reader):
            raise PermissionDenied(DEACTIVATED)
        if task.round.status != RoundStatus.LABELING:
            raise ValidationError("This round is closed for labeling.")
        clean = validate_answer(task.kind, answer, rubric=task.round.study.rubric)
        if task.kind == TaskKind.PREFERENCE and "choice" in clean:
            clean["preferred"] = _preferred_image(task, clean["choice"])
        if task.status == TaskStatus.EXPIRED:
            took = ReadingCase.objects.filter(pk=task.case_id, taken__lt=F("capacity")).update(taken=F("taken") + 1)
            if not took:
                raise CaseReturned("This case was idle too long and went to another reader.")
        label = Label.objects.create(task=task, reader_id=reader.pk, revision=task.revisions + 1, answer=clean,
                                     time_spent_ms=time_spent_ms, submission_id=submission_id)
        first_answer = task.status != TaskStatus.DONE
        task.status, task.current_label, task.revisions = TaskStatus.DONE, label, task.revisions + 1
        task.answered_at = label.created_at
        task.save(update_fields=["status", "current_label", "revisions", "answered_at"])
        if first_answer:
            ReadingCase.objects.filter(pk=task.case_id).update(done=F("done") + 1)
            ReaderQueue.objects.filter(pk=task.queue_id).update(done_count=F("done_count") + 1)
            if not task.case.is_catch and task.case.done + 1 >= task.case.capacity:  # read with the task: no query
                round_id = task.round_id
                # robust: the label is committed; if the message cannot be sent (the broker is down or locked) the
                # reader still gets their answer acknowledged, the failure is logged, and the reconciler closes
                # the round's labeling when it finds every case full
                transaction.on_commit(lambda: case_filled.send(sender=ReadingCase, round_id=round_id), robust=True)
    return Submitted(label, False)


def _preferred_image(task: ReadingTask, choice: str) -> str:
    if choice == "none":
        return "none"
    left_is_a = not task.swap
    return "a" if (choice == "left") == left_is_a else "b"


# --- expiry ------------------------------------------------------------------------------------------------------


def claims_expire_stale(*, older_than_s: int | None = None) -> int:
    """Return idle claims to the pool. Safe to run any number of times, concurrently with readers."""
    cutoff = timezone.now() - timedelta(seconds=settings.CXR_CLAIM_TIMEOUT_S if older_than_s is None
                                        else older_than_s)
    return _release(ReadingTask.objects.filter(status=TaskStatus.CLAIMED, claimed_at__lt=cutoff))


def claims_release(*, study_id: int, reader: AbstractUser) -> int:
    """Return every case the reader holds open in the study's rounds to the pool (a reader deactivated by an
    admin), so each case can still reach its K reads; their answered cases stay."""
    return _release(ReadingTask.objects.filter(status=TaskStatus.CLAIMED, reader=reader, round__study_id=study_id))


def _release(claimed) -> int:
    """Expire the claimed tasks of `claimed` one by one (each a conditional update, so a reader's answer arriving
    at the same moment either lands first or finds the task expired) and give each case its place back."""
    released = 0
    for pk in list(claimed.values_list("pk", flat=True)[:10_000]):
        with transaction.atomic():
            changed = claimed.filter(pk=pk).update(status=TaskStatus.EXPIRED)  # still claimed: its filters again
            if changed:
                case_id = ReadingTask.objects.filter(pk=pk).values_list("case_id", flat=True).get()
                ReadingCase.objects.filter(pk=case_id, taken__gt=0).update(taken=F("taken") - 1)
                released += 1
    return released


def task_touch(*, task: ReadingTask) -> None:
    """A reader looking at a case keeps their claim alive."""
    if task.status == TaskStatus.CLAIMED:
        ReadingTask.objects.filter(pk=task.pk, status=TaskStatus.CLAIMED).update(claimed_at=timezone.now())
