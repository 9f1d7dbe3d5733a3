"""The round report: reader statistics, image metrics and the round's evaluation-panel record, stored on the round
and shown on its page; computed by a worker when the round ends and again when an admin asks."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import transaction
from django.utils import timezone
from PIL import Image as PILImage

from annotation.models import Image, ReadingTask, Round, Source, TaskStatus
from annotation.stats.mrmc.round_reads import mrmc_case, round_mrmc
from annotation.stats.reader_report import reader_report
from annotation.stats.reads import CatchRule, Read, RubricRead
from annotation.studies.audit import audit
from annotation.tasks import round_report_build_task
from inference.ml.phantoms import FINDING_TERMS
from inference.storage import image_load

_NEGATION = re.compile(r"^\s*(no|without|negative for)\b", re.IGNORECASE)


def findings_from_report(text: str) -> list[str]:
    """Finding names a report asserts (sentences that open with a negation, "No effusion.", assert nothing)."""
    found = []
    for sentence in re.split(r"[.;\n]", text or ""):
        if _NEGATION.match(sentence):
            continue
        lowered = sentence.lower()
        found += [name for name, term in FINDING_TERMS.items() if term in lowered and name not in found]
    return found


def _stream(images: list[Image], side: int) -> Iterator[np.ndarray]:
    for image in images:
        arr = image_load(image.storage_key)
        if arr.shape != (side, side):
            arr = np.asarray(PILImage.fromarray(arr).resize((side, side), PILImage.Resampling.BILINEAR))
        yield arr


def image_metrics_for_round(*, round: Round, tiny: bool = False) -> dict:
    """FID (when weights are configured), PRDC, MS-SSIM diversity, memorisation and downstream utility, streamed
    image by image from storage. Synthetic images of the round are compared with the study's real images."""
    from training.ml.metrics.features import build_extractors  # torch: the web imports this module
    from training.ml.metrics.images import MetricsConfig, image_metrics  # torch: the web imports this

    real = list(Image.objects.filter(study=round.study, source=Source.REAL, is_catch=False).order_by("pk"))
    fake = list(Image.objects.filter(round=round, source=Source.SYNTHETIC, is_catch=False).order_by("pk"))
    if not real or not fake:
        return {"skipped": {"all": "the round needs real and synthetic images"}}
    side = min(round.study.display_size, 256)
    extractor, domain, skipped = build_extractors(
        inception_weights=settings.CXR_FID_WEIGHTS or None,
        cxr_model=settings.CXR_DOMAIN_FEATURES_MODEL or None,
        cxr_weights=settings.CXR_DOMAIN_FEATURES_WEIGHTS or None,
    )
    return image_metrics(
        _stream(real, side), _stream(fake, side), extractor=extractor, domain_extractor=domain,
        real_findings=[i.findings or findings_from_report(i.prompt) for i in real],
        fake_findings=[findings_from_report(i.prompt) for i in fake],
        config=MetricsConfig.tiny() if tiny else MetricsConfig(), skipped=skipped,
    )


def round_report_rebuild(*, round: Round, actor: AbstractUser | None = None) -> None:
    """An admin's request for a fresh report: audited, and computed by a worker after the commit."""
    with transaction.atomic():
        audit(actor=actor, action="report.refresh", study=round.study, obj=round)
        transaction.on_commit(lambda: round_report_build_task.delay(round_pk=round.pk))


def round_report_compute(*, round: Round, with_images: bool = True) -> dict:
    """Compute the report and store it on the round (`metrics["report"]`)."""
    study = round.study
    reads, rubric = reads_for_round(round=round)
    rule = CatchRule(**study.catch_rule) if study.catch_rule else None
    report = {
        "study": study.name,
        "round": round.number,
        "status": round.status,
        "computed_at": timezone.now().isoformat(),
        "reader": reader_report(reads, rubric, margin=study.equivalence_margin, catch_rule=rule),
        "mrmc": round_mrmc(reads, treatments=round_treatments(round), margin=study.equivalence_margin),
        "rubric_scores": _score_counts(rubric),
        "images": image_metrics_for_round(round=round, tiny=study.display_size <= 128) if with_images else None,
        "panel": round.metrics.get("panel"),
    }
    Round.objects.filter(pk=round.pk).update(metrics={**round.metrics, "report": report})
    round.metrics = {**round.metrics, "report": report}
    return report


def round_treatments(rnd: Round) -> list[str] | None:
    """The treatments of the round's MRMC design: a comparison round's versions in the order the admin gave them,
    else None (the versions of its synthetic images, by name)."""
    return list((rnd.config or {}).get("compare") or []) or None


def _score_counts(rubric_reads) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for read in rubric_reads:
        for criterion, score in read.scores.items():
            bucket = counts.setdefault(criterion, {})
            bucket[str(score)] = bucket.get(str(score), 0) + 1
    return counts


def reads_for_round(*, round: Round) -> tuple[list, list]:
    """The round's current answers as statistics inputs: realism reads and rubric reads (cannot-assess left out).
    Readers are named by username: only study admins see these."""
    reads, rubric = [], []
    tasks = (
        ReadingTask.objects.filter(round=round, status=TaskStatus.DONE, current_label__isnull=False)
        .exclude(kind="preference")
        .select_related("current_label", "image__model_version", "reader")
        .order_by("position", "pk")
    )
    for task in tasks:
        answer = task.current_label.answer
        if answer.get("cannot_assess"):
            continue
        case = f"{task.kind}:{task.image_id}"
        if task.kind == "realism":
            image = task.image
            version = image.model_version.name if image.model_version_id else (image.generator or None)
            reads.append(Read(case_id=case, reader=task.reader.username, truth=image.source, call=answer["call"],
                              confidence=answer.get("confidence"), model_version=version if image.source ==
                              "synthetic" else None, is_catch=task.is_catch,
                              repeat_of=f"task:{task.repeat_of_id}" if task.repeat_of_id else None,
                              item=mrmc_case(source=image.source, image_id=image.pk, prompt=image.prompt,
                                             seed=image.seed)))
        elif not task.repeat_of_id and not task.is_catch:
            rubric.append(RubricRead(case_id=case, reader=task.reader.username, scores=answer["scores"]))
    return reads, rubric
