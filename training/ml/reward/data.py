"""Reward-model training data: `FeedbackItem` records and their tensors (the settings, `RewardConfig`, are in
`training.ml.reward.config`).

No Django here. Training data are `FeedbackItem`s, one per (image, prompt) record. With prompt conditioning, each
real image is, with probability `mismatched_negative_rate` per step, shown with another image's (different) report
and a realism target of 0, as the seed paper does, so the model learns that a plausible image must also fit its
report (`mismatch_negatives`). Its rubric scores are masked for that draw (they were given for the true pairing).
Without prompt conditioning the model cannot see the report, so no negatives are drawn.

The model is in `training.ml.reward.model`, its training loop in `training.ml.reward.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha1

import cv2
import numpy as np
import torch

from training.ml.snapshot import SnapshotItem

# --- data ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FeedbackItem:
    """One image with its prompt and the readers' feedback; None marks a target nobody gave."""

    image: np.ndarray  # uint8 (H, W)
    prompt: str
    realism: float | None = None  # confidence-weighted share of readers who called it real, 0–1
    criteria: dict[str, float | None] = field(default_factory=dict)  # rubric key → normalised score, 0–1
    weight: float = 1.0
    is_real: bool = False  # a real study (source of mismatched-report negatives)
    image_id: str | None = None  # groups records of one image for the split; None: hash of the pixels
    patient: str = ""  # a real image's patient pseudonym: all images of one patient fall on one side of a split

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W), got {self.image.dtype} {self.image.shape}")
        values = [self.realism, *self.criteria.values()]
        if any(v is not None and not 0 <= v <= 1 for v in values) or not self.weight >= 0:
            raise ValueError("realism and criteria must be in [0, 1] (or None), weight non-negative")

    @property
    def key(self) -> str:
        return self.image_id or sha1(self.image.tobytes() + str(self.image.shape).encode()).hexdigest()

    @property
    def group(self) -> str:
        """What a held-out split keeps together: the patient when known, else the image."""
        return f"patient:{self.patient}" if self.patient else self.key

    @classmethod
    def from_snapshot(cls, item: SnapshotItem, image: np.ndarray) -> FeedbackItem:
        """From an item of the feedback snapshot (`training.ml.snapshot`) and its decoded image."""
        return cls(image=image, prompt=item.prompt or "", realism=item.realism, criteria=dict(item.criteria),
                   is_real=item.source == "real", image_id=item.sha256 or str(item.image),
                   patient=item.patient)


def resize_images(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 (H, W) images → uint8 (N, 1, size, size): shorter side to `size` (area when shrinking), centre crop."""
    out = np.empty((len(images), 1, size, size), np.uint8)
    for i, img in enumerate(images):
        h, w = img.shape
        scale = size / min(h, w)
        if (h, w) != (size, size):
            dsize = (max(size, round(w * scale)), max(size, round(h * scale)))
            img = cv2.resize(img, dsize, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
            img = img[top : top + size, left : left + size]
        out[i, 0] = img
    return torch.from_numpy(out)


def split_by_image(
    items: Sequence[FeedbackItem], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, val) indices; all records of one image (of one patient, when known) land on the same side."""
    keys = sorted({it.group for it in items})
    n_val = round(val_fraction * len(keys))
    if val_fraction > 0 and len(keys) >= 2:
        n_val = min(max(n_val, 1), len(keys) - 1)
    order = np.random.default_rng(seed).permutation(len(keys))
    val_keys = {keys[i] for i in order[:n_val]}
    val = [i for i, it in enumerate(items) if it.group in val_keys]
    return [i for i, it in enumerate(items) if it.group not in val_keys], val


def mismatch_negatives(
    prompts: Sequence[str],
    is_real: Sequence[bool],
    pool: Sequence[str],
    rate: float,
    rng: np.random.Generator,
) -> tuple[list[str], np.ndarray]:
    """Each real image's prompt is, with probability `rate`, replaced by a different one drawn from `pool`;
    returns the prompts and a bool mask of the swapped records (their realism target becomes 0)."""
    out, swapped = list(prompts), np.zeros(len(prompts), bool)
    for i, (prompt, real) in enumerate(zip(prompts, is_real, strict=True)):
        if not real or rng.random() >= rate:
            continue
        for _ in range(8):  # a few tries for a different text; a pool of one report cannot give a negative
            other = pool[rng.integers(len(pool))]
            if other.strip().lower() != prompt.strip().lower():
                out[i], swapped[i] = other, True
                break
    return out, swapped


def targets_for(
    items: Sequence[FeedbackItem], criteria: Sequence[str], swapped: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """Dense targets with masks for `reward_loss`; swapped (mismatched) records get realism 0, criteria masked."""
    n, c = len(items), len(criteria)
    realism, realism_mask = np.zeros(n, np.float32), np.zeros(n, np.float32)
    scores, scores_mask = np.zeros((n, c), np.float32), np.zeros((n, c), np.float32)
    for i, it in enumerate(items):
        unknown = set(it.criteria) - set(criteria)
        if unknown:
            raise ValueError(f"criteria {sorted(unknown)} are not among the model's {list(criteria)}")
        if swapped is not None and swapped[i]:
            realism_mask[i] = 1.0
            continue
        if it.realism is not None:
            realism[i], realism_mask[i] = it.realism, 1.0
        for j, key in enumerate(criteria):
            if it.criteria.get(key) is not None:
                scores[i, j], scores_mask[i, j] = it.criteria[key], 1.0
    weight = np.array([it.weight for it in items], np.float32)
    return {
        k: torch.from_numpy(v)
        for k, v in dict(
            realism=realism,
            realism_mask=realism_mask,
            criteria=scores,
            criteria_mask=scores_mask,
            weight=weight,
        ).items()
    }
