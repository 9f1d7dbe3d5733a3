"""Reward-model settings and training data: `RewardConfig`, `FeedbackItem` records and their tensors.

No Django here. Training data are `FeedbackItem`s, one per (image, prompt) record. With prompt conditioning, each
real image is, with probability `mismatched_negative_rate` per step, shown with another image's (different) report
and a realism target of 0, as the seed paper does, so the model learns that a plausible image must also fit its
report (`mismatch_negatives`). Its rubric scores are masked for that draw (they were given for the true pairing).
Without prompt conditioning the model cannot see the report, so no negatives are drawn.

The model is in `training.ml.reward`, its training loop in `training.ml.reward_training`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from typing import Any

import cv2
import numpy as np
import torch

from inference.ml.config import Settings, option
from training.ml.snapshot import SnapshotItem

REALISM = "realism"
_LOSSES = ("mse", "huber")
_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class RewardConfig(Settings):
    """One reward-model training job; stored as config.json beside the weights."""

    what = "reward-model settings"

    backbone: str = option("convnext_atto", "timm model name (built with pretrained=False; e.g. resnet18).")
    image_size: int = option(224, "Side the images are resized (shorter side) and centre-cropped to, px.")
    in_chans: int = option(1, "Backbone input channels; grayscale input is repeated when 3.")
    pretrained_path: str | None = option(
        None, "Local backbone weights (safetensors or torch file); None: random."
    )
    criteria: tuple[str, ...] = option(("anatomy", "style", "artifacts"), "Rubric keys, one score head each.")
    prompt_conditioning: bool = option(True, "Condition on the report/prompt (FiLM by a hashed bag of words).")
    text_buckets: int = option(4096, "Hash buckets of the word/bigram embedding table, rows.")
    text_dim: int = option(128, "Width of the text embedding.")
    hidden_dim: int = option(256, "Width of the head's hidden layer.")
    dropout: float = option(0.2, "Dropout of the head (kept on for MC-dropout at inference), probability.")
    lr: float = option(3e-4, "AdamW peak learning rate.")
    weight_decay: float = option(0.05, "AdamW weight decay on weight matrices (not on norms and biases).")
    steps: int = option(
        3000, "Optimiser steps; batches cycle through reshuffled epochs of the training images."
    )
    warmup_steps: int = option(100, "Linear learning-rate warm-up, steps.")
    lr_schedule: str = option("cosine", "After warm-up: 'cosine' (to 0) or 'constant'.")
    batch_size: int = option(16, "Records per step.")
    max_grad_norm: float = option(1.0, "Gradient clipping, global L2 norm.")
    criteria_loss: str = option("mse", "'mse' or 'huber' on the criterion scores.")
    huber_delta: float = option(0.1, "Huber threshold, in normalised score units.")
    criteria_weight: float = option(1.0, "Weight of the criteria loss against the realism BCE.")
    mismatched_negative_rate: float = option(0.25, "Share of real images shown with a wrong report, target 0.")
    val_fraction: float = option(0.2, "Share of distinct images held out for validation metrics.")
    mc_samples: int = option(20, "MC-dropout forward passes of the head per image in predict().")
    eval_batch_size: int = option(64, "Images per forward pass outside training.")
    seed: int = option(0, "Seed of weights, split, batches and negatives.")
    check_folds: int = option(2, "The check before use: cross-fitted models on this many disjoint folds of the "
                                 "labelled images (by image); each predicts the fold it did not see, and the "
                                 "out-of-fold rewards of the synthetic images must rank them as the readers did. "
                                 "Their ensemble is the promotion judge. 0 = no check.")
    check_alpha: float = option(0.05, "One-sided level of the check's Spearman test (rho > 0).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(self.criteria))
        if len(set(self.criteria)) != len(self.criteria) or REALISM in self.criteria:
            raise ValueError(f"criteria must be distinct and not {REALISM!r}: {self.criteria}")
        if not 0 <= self.mismatched_negative_rate <= 1 or not 0 <= self.val_fraction < 1:
            raise ValueError("mismatched_negative_rate must be in [0, 1] and val_fraction in [0, 1)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.criteria_loss not in _LOSSES or self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"criteria_loss must be one of {_LOSSES}, lr_schedule one of {_SCHEDULES}")
        if self.check_folds == 1 or self.check_folds < 0 or not 0 < self.check_alpha < 1:
            raise ValueError("check_folds must be 0 (no check) or at least 2, check_alpha within (0, 1)")
        if min(self.steps, self.batch_size, self.image_size, self.mc_samples, self.eval_batch_size) < 1:
            raise ValueError("steps, batch_size, image_size, mc_samples and eval_batch_size must be positive")

    @classmethod
    def tiny(cls, **overrides: Any) -> RewardConfig:
        """A few-second CPU job at 64 px on timm's test-size ResNet (0.4 M parameters). On the tests' pixel rules
        it reached Spearman >= 0.9 on six seeds in 60 steps (0.69-0.94 in 40); test_convnext learned slower."""
        base = dict(
            backbone="test_resnet",
            image_size=64,
            text_buckets=512,
            text_dim=16,
            hidden_dim=32,
            lr=3e-3,
            weight_decay=0.01,
            steps=60,
            warmup_steps=5,
            batch_size=16,
            mc_samples=8,
        )
        return cls(**{**base, **overrides})


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
