"""Reward-model settings: `RewardConfig`. Imports no torch, so the web side reads and checks them without loading
the ML stack; the model is `training.ml.reward.model`, its data `training.ml.reward.data`, its training loop
`training.ml.reward.train`. No Django here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.ml.config import Settings, option

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
