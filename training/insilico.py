"""In-silico proof that the reward, not training as such, moves the generator toward what readers prefer.

No Django here. A `SimulatedReader` with a known, pixel-measurable preference (by default: brighter images) labels
images from a tiny generator; the reward model (`training.reward`) learns those labels; one reward-weighted finetune
(`training.finetune`) on its rewards must move the measured property of freshly generated images toward the
preference, and move it further than a control run whose rewards are permuted across the same images (same seed,
steps, noise, real-data term and configuration). The comparison is paired over shared sampling seeds.

The generator is the tiny random SD of `inference.tiny` with one change: its VAE is first fitted as an autoencoder
for a few seconds (`build_insilico_base`). With random VAE weights the pixel → latent → pixel round trip keeps no
pixel property (mean brightness of an image and of its reconstruction: Spearman 0.03), while finetuning works on
latents; so no finetune, however good its rewards, could move a pixel property. A real SD's VAE round-trips, so
the fitted tiny VAE is the faithful stand-in. The UNet and text encoder stay random.

    python -m training.insilico --out bench/results/insilico.json        # seeds 0, 1, 2 on the CPU
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.tiny import TEMPLATE_REPORTS, TinySDConfig

BASE_MARKER = "insilico.json"
CRITERIA = ("anatomy", "style", "artifacts")


def _opt(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


# --- the simulated reader ------------------------------------------------------------------------------------------


def mean_brightness(image: np.ndarray) -> float:
    """Mean grey level of the whole image, 0–1."""
    return float(np.asarray(image, np.float64).mean() / 255.0)


def centre_brightness(image: np.ndarray) -> float:
    """Mean grey level of the central half (by side) of the image, 0–1."""
    h, w = image.shape[:2]
    return float(np.asarray(image[h // 4 : h - h // 4, w // 4 : w - w // 4], np.float64).mean() / 255.0)


def contrast(image: np.ndarray) -> float:
    """Standard deviation of the grey levels, 0–1."""
    return float(np.asarray(image, np.float64).std() / 255.0)


PROPERTIES: dict[str, Callable[[np.ndarray], float]] = {
    "brightness": mean_brightness,
    "centre_brightness": centre_brightness,
    "contrast": contrast,
}


@dataclass(frozen=True)
class SimulatedReader:
    """A reader whose taste is a known function of the pixels: `score(image)` = logistic((property − centre) ·
    direction / scale), in [0, 1]. `label` turns it into what real readers give: a realism share from `readers`
    noisy yes/no votes and rubric scores on a `rubric_levels`-point scale with per-criterion noise."""

    property: str = _opt("brightness", f"What the reader measures: one of {sorted(PROPERTIES)}.")
    direction: float = _opt(1.0, "+1: prefers higher values of the property; −1: lower.")
    centre: float = _opt(0.5, "Property value scored 0.5, in the property's units (0–1).")
    scale: float = _opt(0.02, "Property change per logistic unit of the score, property units.")
    noise: float = _opt(0.1, "Std of the per-criterion rubric noise, score units (0–1).")
    readers: int = _opt(5, "Simulated readers voting real/fake per image (the realism share's resolution).")
    rubric_levels: int = _opt(5, "Points of the rubric scale (e.g. 5 for a 1–5 Likert item).")
    criteria: tuple[str, ...] = _opt(CRITERIA, "Rubric criteria the reader scores.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(self.criteria))
        if self.property not in PROPERTIES:
            raise ValueError(f"property must be one of {sorted(PROPERTIES)}, not {self.property!r}")
        if self.scale <= 0 or self.direction == 0 or self.readers < 1 or self.rubric_levels < 2:
            raise ValueError("scale must be positive, direction non-zero, readers >= 1, rubric_levels >= 2")

    def measure(self, image: np.ndarray) -> float:
        return PROPERTIES[self.property](image)

    def score(self, image: np.ndarray) -> float:
        """The reader's noiseless preference for `image`, in [0, 1]."""
        z = np.clip(self.direction * (self.measure(image) - self.centre) / self.scale, -50, 50)
        return float(1.0 / (1.0 + math.exp(-z)))

    def label(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """{"realism": share of readers voting real, "criteria": {name: normalised rubric score}}, noisy."""
        p = self.score(image)
        realism = float(rng.binomial(self.readers, p) / self.readers)
        steps = self.rubric_levels - 1
        criteria = {
            name: float(np.round(np.clip(p + rng.normal(0, self.noise), 0, 1) * steps) / steps)
            for name in self.criteria
        }
        return {"realism": realism, "criteria": criteria}

    def calibrated(self, images: Sequence[np.ndarray], *, spread: float = 1.0) -> SimulatedReader:
        """The same reader centred on the median of `images` with `scale` = `spread` × their std, so its scores
        use the whole 0–1 range on the images it will see."""
        values = np.array([self.measure(im) for im in images])
        return replace(self, centre=float(np.median(values)), scale=float(max(values.std(), 1e-6) * spread))

    def feedback(self, images: Sequence[np.ndarray], prompts: Sequence[str], rng: np.random.Generator):
        """`FeedbackItem`s for the reward model, one per image."""
        from training.reward import FeedbackItem

        items = []
        for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            lab = self.label(image, rng)
            items.append(FeedbackItem(image=image, prompt=prompt, realism=lab["realism"], criteria=lab["criteria"],
                                      image_id=f"sim-{i}"))
        return items
