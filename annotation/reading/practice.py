"""A study's practice set: cases with known answers (real or synthetic) that a reader answers before their first
real list, with feedback after each answer and a summary. Practice cases live apart from the study's images
(`PracticeCase`): they are never part of a round, a statistic or an export, and their feedback says nothing about
any real case."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from annotation.images.decoded import ImageRejected
from annotation.images.renditions import render_display
from annotation.images.uploads import decode_image
from annotation.models import PracticeAnswer, PracticeCase, ReadingTask, Source, Study, TaskStatus
from annotation.studies.audit import audit

MAX_CASES = 50


def practice_add(*, study: Study, files: list[tuple[str, bytes]], answer: str, explanation: str = "",
                 actor=None) -> tuple[list[PracticeCase], list[str]]:
    """Add uploaded images (PNG, JPEG or DICOM, checked as any upload is) as practice cases with the known
    `answer`; returns (cases added, refusals as sentences). All or nothing per file."""
    if answer not in Source.values:
        raise ValidationError("The known answer must be 'real' or 'synthetic'.")
    if not files:
        raise ValidationError("Choose at least one image file for the practice set.")
    have = study.practice_cases.count()
    if have + len(files) > MAX_CASES:
        raise ValidationError(f"A practice set holds at most {MAX_CASES} cases (this study has {have}).")
    added, refused = [], []
    for position, (name, data) in enumerate(files, start=have):
        try:
            decoded = decode_image(data, filename=name)
        except ImageRejected as exc:
            refused.append(f"{name}: {exc.reason}")
            continue
        key = default_storage.save(f"practice/{uuid.uuid4().hex}.png",
                                   ContentFile(render_display(decoded.pixels, study.display_size)))
        try:
            added.append(PracticeCase.objects.create(study=study, display_key=key, answer=answer,
                                                     explanation=(explanation or "").strip()[:500],
                                                     position=position))
        except BaseException:
            default_storage.delete(key)
            raise
    if added:
        audit(actor=actor, action="practice.add", study=study, obj=study, cases=len(added), answer=answer)
    return added, refused


def practice_remove(*, study: Study, actor=None) -> int:
    """Empty the study's practice set (readers' practice answers go with it)."""
    keys = list(study.practice_cases.values_list("display_key", flat=True))
    with transaction.atomic():
        count, _ = study.practice_cases.all().delete()
        audit(actor=actor, action="practice.clear", study=study, obj=study, cases=len(keys))
    for key in keys:
        default_storage.delete(key)
    return len(keys)


def practice_next(*, study: Study, reader) -> PracticeCase | None:
    """The reader's next unanswered practice case, None when they answered them all (or there are none)."""
    answered = PracticeAnswer.objects.filter(reader=reader, case__study=study).values("case_id")
    return study.practice_cases.exclude(pk__in=answered).first()


def practice_pending(*, study: Study, reader) -> bool:
    """The practice set comes before the reader's first real list: pending while they have cases left in it and
    have answered no real case of the study yet (a set added later does not interrupt someone already reading)."""
    if not study.practice_cases.exists() or practice_next(study=study, reader=reader) is None:
        return False
    return not ReadingTask.objects.filter(round__study=study, reader=reader, status=TaskStatus.DONE).exists()


def practice_answer(*, case: PracticeCase, reader, call: str) -> PracticeAnswer:
    if call not in Source.values:
        raise ValidationError("Answer 'real' or 'synthetic'.")
    answer, _ = PracticeAnswer.objects.update_or_create(case=case, reader=reader, defaults={
        "call": call, "correct": call == case.answer})
    return answer


def practice_summary(*, study: Study, reader) -> dict:
    answers = list(PracticeAnswer.objects.filter(reader=reader, case__study=study).select_related("case")
                   .order_by("case__position", "case__pk"))
    return {"total": study.practice_cases.count(), "answered": len(answers),
            "correct": sum(a.correct for a in answers), "answers": answers}
