"""The round report: reader statistics and image metrics, stored on the round and shown on its page."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image as PILImage

from inference.phantoms import FINDING_TERMS

from annotation import selectors
from annotation.models import Image, Round, Source
from annotation.stats import CatchRule, reader_report

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


def _pixels(image: Image) -> np.ndarray:
    with default_storage.open(image.storage_key, "rb") as handle:
        arr = np.asarray(PILImage.open(io.BytesIO(handle.read())))
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    return arr if arr.ndim == 2 else arr[..., 0]


def _stream(images: list[Image], side: int) -> Iterator[np.ndarray]:
    for image in images:
        arr = _pixels(image)
        if arr.shape != (side, side):
            arr = np.asarray(PILImage.fromarray(arr).resize((side, side), PILImage.Resampling.BILINEAR))
        yield arr


def image_metrics_for_round(*, round: Round, tiny: bool = False) -> dict:
    """FID (when weights are configured), PRDC, MS-SSIM diversity, memorisation and downstream utility, streamed
    image by image from storage. Synthetic images of the round are compared with the study's real images."""
    from training.metrics import MetricsConfig, build_extractors, image_metrics

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


def round_report_compute(*, round: Round, with_images: bool = True) -> dict:
    """Compute the report and store it on the round (`metrics["report"]`)."""
    study = round.study
    reads, rubric = selectors.reads_for_round(round=round)
    rule = CatchRule(**study.catch_rule) if study.catch_rule else None
    report = {
        "study": study.name,
        "round": round.number,
        "status": round.status,
        "computed_at": timezone.now().isoformat(),
        "reader": reader_report(reads, rubric, margin=study.equivalence_margin, catch_rule=rule),
        "rubric_scores": _score_counts(rubric),
        "images": image_metrics_for_round(round=round, tiny=study.display_size <= 128) if with_images else None,
    }
    Round.objects.filter(pk=round.pk).update(metrics={**round.metrics, "report": report})
    round.metrics = {**round.metrics, "report": report}
    return report


def _score_counts(rubric_reads) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for read in rubric_reads:
        for criterion, score in read.scores.items():
            bucket = counts.setdefault(criterion, {})
            bucket[str(score)] = bucket.get(str(score), 0) + 1
    return counts
