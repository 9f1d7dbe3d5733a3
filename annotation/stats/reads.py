"""The inputs of the reader statistics: one realism read, one rubric read, the catch rule, and the scale and
test constants they share. No Django here (see `annotation.stats.reader_report`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from scipy import stats as sps

REAL, SYNTHETIC = "real", "synthetic"
CALLS = (REAL, SYNTHETIC)
CONFIDENCE_RANGE = (1, 5)  # the reader form's scale (annotation/answers.py asks for 1..5)
DEFAULT_MARGIN = 0.10
ALPHA = 0.05
Z95 = float(sps.norm.isf(ALPHA / 2))
UNSPECIFIED_VERSION = "unspecified"
IDENTICAL = "all answers identical: agreement expected by chance is total"

Stat = dict[str, Any]
RATING_SCALE = (1, 10)


def realism_rating(call: str, confidence: int | None) -> int:
    """A realism read on one 10-point scale, higher = more sure it is synthetic: real-and-sure (confidence 5) is 1,
    real-and-unsure 5, synthetic-and-unsure 6, synthetic-and-sure 10 (a missing confidence counts as 1). The AUC of
    the reader statistics and the MRMC analysis both rate reads on it."""
    c = 1 if confidence is None else min(max(int(confidence), CONFIDENCE_RANGE[0]), CONFIDENCE_RANGE[1])
    return 5 + c if call == SYNTHETIC else 6 - c


@dataclass(frozen=True)
class Read:
    """One realism read. ``repeat_of`` marks a deliberate re-read of the same case by the same reader; ``item`` is
    the MRMC case it belongs to (`mrmc.round_reads.mrmc_case`; default: ``case_id``)."""

    case_id: str
    reader: str
    truth: str
    call: str
    confidence: int | None = None
    model_version: str | None = None
    is_catch: bool = False
    repeat_of: str | None = None
    item: str | None = None

    def __post_init__(self):
        for name in ("truth", "call"):
            if getattr(self, name) not in CALLS:
                raise ValueError(f"{name} must be 'real' or 'synthetic', got {getattr(self, name)!r}")
        if self.confidence is not None and self.confidence < 1:
            raise ValueError(f"confidence must be a positive integer, got {self.confidence!r}")


@dataclass(frozen=True)
class RubricRead:
    """One rubric read: an integer score per criterion (ordinal scale)."""

    case_id: str
    reader: str
    scores: dict[str, int]


@dataclass(frozen=True)
class CatchRule:
    """Readers whose catch-trial accuracy is below ``min_accuracy`` (after at least ``min_trials`` catch trials)
    are flagged; with ``action="exclude"`` their reads are also left out of every pooled statistic."""

    min_accuracy: float = 0.8
    action: Literal["flag", "exclude"] = "flag"
    min_trials: int = 1

    def __post_init__(self):
        if not 0 <= self.min_accuracy <= 1:
            raise ValueError("min_accuracy must lie in [0, 1]")
        if self.action not in ("flag", "exclude"):
            raise ValueError("action must be 'flag' or 'exclude'")
        if self.min_trials < 1:
            raise ValueError("min_trials must be at least 1")
