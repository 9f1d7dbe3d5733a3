"""Simulated readers: study members whose answers come from a `training.ml.simulated_reader.SimulatedReader` instead of a
person, stored through the same claim and submit services as people's.

Simulated members have `is_simulated=True`, an unusable password and their reader's settings in
`membership.simulation`; their labels are ordinary labels, so statistics, training and exports treat them like
anyone else's unless told to leave them out.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from annotation.models import ReadingTask, Role, Round, Study, StudyMembership
from annotation.reading import assignment
from annotation.reading.ordering import derive_seed
from annotation.studies.services import membership_add
from inference.storage import image_load
from training.ml.simulated_reader import SimulatedReader


def reader_of(member: StudyMembership) -> SimulatedReader:
    """The member's simulated reader (settings stored before the two reader models merged are read too)."""
    try:
        return SimulatedReader.from_dict(member.simulation or {})
    except ValueError as exc:
        raise ValidationError(f"Simulated reader {member.user}: {exc}") from None


def simulated_answer(reader: SimulatedReader, task: ReadingTask, rubric: list[dict], rng: np.random.Generator
                     ) -> dict:
    """The reader's answer to `task` in the portal's format, scored on the blinded display images it is served."""
    if task.kind == "realism":
        return reader.realism_answer(is_real=task.image.source == "real", rng=rng,
                                     image=None if task.image.source == "real" else image_load(task.image.display_key))
    if task.kind == "rubric":
        return reader.rubric_answer(image_load(task.image.display_key), rubric, rng)
    left, right = (task.image_b, task.image) if task.swap else (task.image, task.image_b)  # display order
    return reader.preference_answer(image_load(left.display_key), image_load(right.display_key), rng)


def simulated_readers_ensure(*, study: Study, count: int, readers: list[SimulatedReader] | None = None,
                             actor=None) -> list[StudyMembership]:
    """`count` simulated readers in the study (created once; existing ones keep their settings). Without
    `readers`, they get accuracies spread over 0.6–0.9 and their own noise seeds."""
    User = get_user_model()
    members = []
    for i in range(count):
        username = f"sim-{study.name}-{i + 1}"[:150]
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User(username=username, first_name="Simulated", last_name=f"reader {i + 1}")
            user.set_unusable_password()
            user.save()
        member = membership_add(study=study, user=user, role=Role.READER, simulated=True, actor=actor)
        if not member.simulation:
            reader = readers[i] if readers else SimulatedReader(
                accuracy=round(0.6 + 0.3 * (i / max(count - 1, 1)), 3), seed=i + 1)
            member.is_simulated = True
            member.simulation = reader.as_dict()
            member.save(update_fields=["is_simulated", "simulation"])
        members.append(member)
    return members


def simulated_members(study: Study) -> list[StudyMembership]:
    return list(StudyMembership.objects.filter(study=study, role=Role.READER, is_simulated=True)
                .select_related("user").order_by("pk"))


def answer_seed(reader: SimulatedReader, rnd: Round, index: int, task: ReadingTask) -> int:
    """The noise of one answer: a function of (reader seed, study seed, round number, reader index, the case's
    position in the round, task kind, re-read or not), never of database ids or queue order, so a control arm's
    readers answer its identical images exactly as the feedback arm's do (before the permutation)."""
    case = task.case
    return derive_seed("simulated", reader.seed, rnd.study.seed, rnd.number, index, case.kind, case.slot,
                       case.is_catch, case.idx, task.repeat_of_id is not None)


def round_simulate_readers(*, round: Round, on_answer=None) -> int:
    """Every simulated reader of the study works through its queue for the round; returns answers stored.

    Safe to run twice or concurrently: each answer goes through `assignment.label_submit` with a submission id
    derived from the task, so a repeated answer is recognised, never stored twice."""
    stored = 0
    rubric = round.study.rubric
    for member in simulated_members(round.study):
        reader = reader_of(member)
        queue = assignment.queue_for_reader(round=round, reader=member.user)
        index = assignment.reader_index(study_id=round.study_id, reader=member.user)
        while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
            rng = np.random.default_rng(answer_seed(reader, round, index, task))
            answer = simulated_answer(reader, task, rubric, rng)
            seconds = max(0.2, rng.normal(reader.answer_time_s, reader.answer_time_s / 4))
            if reader.sleep:
                time.sleep(seconds)
            result = assignment.label_submit(
                reader=member.user, task_token=task.token, answer=answer, time_spent_ms=int(seconds * 1000),
                submission_id=uuid.uuid5(uuid.NAMESPACE_URL, f"simulated:{task.pk}:{task.revisions}"))
            stored += not result.replayed
            if on_answer is not None:
                on_answer()
    return stored
