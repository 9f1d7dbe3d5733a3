"""Per-image aggregation of readers' answers: the one rule the training snapshot (`rounds.feedback`) and the
dataset exports (`exports.formats`) share.

- realism: the confidence-weighted share of realism reads that called the image real (each read weighs its 1–5
  confidence; a read without one weighs 1). `reads` counts them.
- rubric: per criterion, the mean score on the rubric's own scale and normalised to 0–1 by the criterion's
  min/max; `answer_means` keeps each rubric answer's mean over its criteria (rubric-gap pairs compare those).
- preference: wins and comparisons from pairwise answers.
Answers marked cannot-assess are left out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class ImageReads:
    realism_reads: list[tuple[float, bool]] = field(default_factory=list)  # (weight, called real)
    scores: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    answer_means: list[float] = field(default_factory=list)
    wins: int = 0
    comparisons: int = 0

    @property
    def reads(self) -> int:
        return len(self.realism_reads)

    @property
    def called_real(self) -> int:
        return sum(real for _, real in self.realism_reads)

    @property
    def realism(self) -> float | None:
        total = sum(w for w, _ in self.realism_reads)
        return sum(w for w, real in self.realism_reads if real) / total if total else None

    def mean(self, key: str) -> float | None:
        values = self.scores.get(key) or []
        return sum(values) / len(values) if values else None


class Aggregation:
    """Feed answers with `add`; read `images[pk]`. `rubric` is the study's criteria ({"key", "min", "max"})."""

    def __init__(self, rubric: list[dict]):
        self.rubric = {c["key"]: c for c in rubric}
        self.images: dict[int, ImageReads] = defaultdict(ImageReads)

    def add(self, kind: str, answer: dict, image_id: int, image_b_id: int | None = None) -> tuple[int, int] | None:
        """Count one current answer; a preference answer returns its (chosen, rejected) image ids."""
        if answer.get("cannot_assess"):
            return None
        if kind == "realism":
            self.images[image_id].realism_reads.append((float(answer.get("confidence") or 1),
                                                        answer.get("call") == "real"))
        elif kind == "rubric":
            scores = answer.get("scores") or {}
            for key, value in scores.items():
                self.images[image_id].scores[key].append(value)
            if scores:
                self.images[image_id].answer_means.append(sum(scores.values()) / len(scores))
        elif kind == "preference" and answer.get("preferred") in ("a", "b") and image_b_id is not None:
            chosen, rejected = (image_id, image_b_id) if answer["preferred"] == "a" else (image_b_id, image_id)
            self.images[chosen].wins += 1
            for pk in (chosen, rejected):
                self.images[pk].comparisons += 1
            return chosen, rejected
        return None

    def normalised(self, pk: int) -> dict[str, float]:
        """Each criterion's mean rescaled to 0–1 by the rubric's range (the reward model's targets)."""
        out = {}
        for key, values in self.images[pk].scores.items():
            c = self.rubric.get(key)
            if c is not None and values:
                out[key] = (sum(values) / len(values) - c["min"]) / (c["max"] - c["min"])
        return out
