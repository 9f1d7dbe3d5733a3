"""The simulated reader: one Django-free model of a reader whose taste is a known function of the pixels.

`score(image)` = logistic(direction · (property − centre) / scale), in [0, 1]. The product's simulated study
members answer portal tasks with it (`realism_answer`, `rubric_answer`, `preference_answer`, through
`annotation.reading.simulated`); the in-silico proof labels images with it directly (`label`, `feedback`). A
reader's settings are stored on its study membership as `as_dict()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from inference.ml.config import Settings, option
from training.ml.realism import RealismModel

CRITERIA = ("anatomy", "style", "artifacts")


def _pixels(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float64) / 255.0


def _centre(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    return pixels[h // 4 : h - h // 4, w // 4 : w - w // 4]


def mean_brightness(image: np.ndarray) -> float:
    """Mean grey level of the whole image, 0–1."""
    return float(_pixels(image).mean())


def centre_brightness(image: np.ndarray) -> float:
    """Mean grey level of the central half (by side) of the image, 0–1."""
    return float(_centre(_pixels(image)).mean())


def centre_contrast(image: np.ndarray) -> float:
    """Mean grey level of the central half (by side) minus that of the rest of the image, −1–1."""
    pixels = _pixels(image)
    centre = _centre(pixels)
    return float(centre.mean() - (pixels.sum() - centre.sum()) / (pixels.size - centre.size))


def contrast(image: np.ndarray) -> float:
    """Standard deviation of the grey levels, 0–1."""
    return float(_pixels(image).std())


def sharpness(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey levels (0–1 scale): fine detail and edges."""
    p = _pixels(image)
    lap = p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, 1:-1] + p[2:, 1:-1] - 4 * p[1:-1, 1:-1]
    return float(lap.var())


def entropy(image: np.ndarray) -> float:
    """Shannon entropy of the 64-bin grey-level histogram, bits (0–6): how many grey levels the image uses."""
    counts, _ = np.histogram(_pixels(image), bins=64, range=(0.0, 1.0))
    share = counts[counts > 0] / counts.sum()
    return float(-(share * np.log2(share)).sum())


def vertical_gradient(image: np.ndarray) -> float:
    """Mean grey level of the lower half minus the upper half, −1–1 (a chest film is denser toward the diaphragm)."""
    p = _pixels(image)
    h = p.shape[0] // 2
    return float(p[h:].mean() - p[:h].mean())


PROPERTIES: dict[str, Callable[[np.ndarray], float]] = {
    "brightness": mean_brightness,
    "centre_brightness": centre_brightness,
    "centre_contrast": centre_contrast,
    "contrast": contrast,
    "sharpness": sharpness,
    "entropy": entropy,
    "vertical_gradient": vertical_gradient,
}
TOWARD_REAL = "toward-real"


def parse_taste(text: str) -> tuple[str, float | None]:
    """'NAME', 'NAME:+1' or 'NAME:-1' → (property, ±1); 'toward-real' → (TOWARD_REAL, None): the direction is the
    one from the base model's images toward the real ones. An unknown name is refused with the list."""
    name, _, sign = text.strip().partition(":")
    if name == TOWARD_REAL:
        if sign:
            raise ValueError(f"{TOWARD_REAL} takes no sign: it points from the base's images toward the real ones.")
        return TOWARD_REAL, None
    if name not in PROPERTIES:
        raise ValueError(f"unknown reader taste {name!r}: choose {TOWARD_REAL} or one of {', '.join(PROPERTIES)} "
                         f"(optionally with :+1 or :-1).")
    if sign not in ("", "+1", "1", "-1"):
        raise ValueError(f"the sign of a reader taste is :+1 or :-1, not {sign!r}.")
    return name, -1.0 if sign == "-1" else 1.0


def directions_toward(real: Sequence[np.ndarray], base: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Per property: the sign that points from the base model's images toward the real ones ("toward_real", +1 or
    −1) and the distance between their means in the base images' SDs ("shift_sd")."""
    out = {}
    for name, fn in PROPERTIES.items():
        r, b = np.array([fn(i) for i in real]), np.array([fn(i) for i in base])
        shift = (r.mean() - b.mean()) / max(float(b.std(ddof=1)) if len(b) > 1 else 0.0, 1e-9)
        out[name] = {"toward_real": 1.0 if shift >= 0 else -1.0, "shift_sd": float(shift)}
    return out


def taste_name(prop: str, direction: float) -> str:
    return f"{prop}:{'+1' if direction > 0 else '-1'}"


@dataclass(frozen=True)
class SimulatedReader(Settings):
    """How one virtual reader sees images and answers. Scores are computed on the image as the reader is shown it."""

    what = "simulated-reader settings"

    property: str = option("centre_contrast", f"What the reader measures: one of {sorted(PROPERTIES)}.")
    direction: float = option(1.0, "+1: prefers higher values of the property; −1: lower.")
    centre: float = option(0.0, "Property value scored 0.5, in the property's units.")
    scale: float = option(0.05, "Property change per logistic unit of the score, in the property's units.")
    noise: float = option(0.1, "Std of the noise on each rubric score and preference, in 0–1 score units.")
    accuracy: float = option(0.75, "Chance of the right real/synthetic call for a reader with no bias, 0–1.")
    bias_real: float = option(0.0, "Added to the chance of calling any image real, −0.5–0.5.")
    preference_weight: float = option(0.3, "How much a liked synthetic image is more often called real, 0–1.")
    realism: dict = option({}, "The study's realism function of the pixels (training.ml.realism.RealismModel, "
                               "fitted once on its real and base-model images): a synthetic image is called real "
                               "with a chance from 1 − accuracy (realism 0) up to accuracy (realism 1); the base's "
                               "images score 0.1 on average, the real ones 0.9. Empty: calls follow accuracy, bias "
                               "and preference only.")
    readers: int = option(5, "In-silico labels: readers voting real/fake per image (the realism share's resolution).")
    rubric_levels: int = option(5, "In-silico labels: points of the rubric scale (5: a 1–5 Likert item).")
    criteria: tuple[str, ...] = option(CRITERIA, "In-silico labels: rubric criteria the reader scores.")
    answer_time_s: float = option(4.0, "Mean seconds per portal answer, recorded as the label's time spent.")
    sleep: bool = option(False, "Really wait answer_time_s between portal answers (load tests); off: record it.")
    seed: int = option(0, "Seeds the reader's noise in the portal.")
    taste: str = option("", "How the loop chose property and direction: 'toward-real' or 'NAME:±1' (a record).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(self.criteria))
        if self.property not in PROPERTIES:
            raise ValueError(f"property must be one of {sorted(PROPERTIES)}, not {self.property!r}.")
        if not 0.0 <= self.accuracy <= 1.0 or not -0.5 <= self.bias_real <= 0.5:
            raise ValueError("accuracy must be within 0–1 and bias_real within −0.5–0.5.")
        if self.scale <= 0 or self.direction == 0 or self.noise < 0 or self.answer_time_s < 0:
            raise ValueError("scale must be positive, direction non-zero, noise and answer_time_s ≥ 0.")
        if self.readers < 1 or self.rubric_levels < 2:
            raise ValueError("readers must be ≥ 1 and rubric_levels ≥ 2.")
        if self.realism:
            self.realism_model  # noqa: B018 - refuses a malformed function now, not at the first answer

    @classmethod
    def _inflate(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "preference" in data:  # the name profiles stored before the two reader models became one
            data["property"] = data.pop("preference")
        return data

    # --- what the reader sees ---

    def measure(self, image: np.ndarray) -> float:
        """The property itself, in its units."""
        return PROPERTIES[self.property](image)

    def preferred(self, image: np.ndarray) -> float:
        """The property signed so that higher is always more preferred."""
        return math.copysign(1.0, self.direction) * self.measure(image)

    @cached_property
    def realism_model(self):
        return RealismModel.from_dict(self.realism) if self.realism else None

    def realism_score(self, image: np.ndarray) -> float | None:
        """The realism function's score of `image` (0 = like the base model's images, 1 = like the real ones)."""
        return None if self.realism_model is None else self.realism_model.score(image)

    def p_real(self, *, is_real: bool, image: np.ndarray | None) -> float:
        """The chance this reader calls the image real (before its noise): the fooling probability of a synthetic
        image; the realism function, when the reader has one, moves it between 1 − accuracy and accuracy."""
        p_real = self.accuracy if is_real else 1.0 - self.accuracy
        if not is_real and image is not None:
            looks_real = self.realism_score(image)
            if looks_real is not None:
                p_real += (2 * self.accuracy - 1) * looks_real
            p_real += self.preference_weight * (self.score(image) - 0.5)
        return float(np.clip(p_real + self.bias_real, 0.0, 1.0))

    def score(self, image: np.ndarray) -> float:
        """The reader's noiseless preference for `image`, in [0, 1]."""
        z = float(np.clip(self.direction * (self.measure(image) - self.centre) / self.scale, -50, 50))
        return 1.0 / (1.0 + math.exp(-z))

    def calibrated(self, images: Sequence[np.ndarray], *, quantile: float = 0.5, spread: float = 1.0
                   ) -> SimulatedReader:
        """The same reader centred on the `quantile` of `images` in its preferred direction (0.75: it likes a
        quarter of them) with `scale` = `spread` × their std, so its scores span 0–1 on the images it will see."""
        values = np.array([self.measure(im) for im in images])
        q = quantile if self.direction > 0 else 1 - quantile
        return replace(self, centre=float(np.quantile(values, q)), scale=float(max(values.std(), 1e-6) * spread))

    # --- answers in the portal's format ---

    def realism_answer(self, *, is_real: bool, image: np.ndarray | None, rng: np.random.Generator) -> dict:
        """A real/synthetic call with a 1–5 confidence, drawn with the chance `p_real`."""
        p_real = self.p_real(is_real=is_real, image=image)
        call = "real" if rng.random() < p_real else "synthetic"
        sure = abs((p_real if call == "real" else 1 - p_real) - 0.5) * 2
        return {"call": call, "confidence": int(np.clip(round(1 + 4 * sure), 1, 5))}

    def rubric_answer(self, image: np.ndarray, rubric: Sequence[dict], rng: np.random.Generator) -> dict:
        """A whole-number score per rubric criterion ({"key", "min", "max"}), the liking plus noise."""
        liked = self.score(image)
        return {"scores": {
            c["key"]: int(round(c["min"] + float(np.clip(liked + rng.normal(0, self.noise), 0, 1))
                                * (c["max"] - c["min"])))
            for c in rubric
        }}

    def preference_answer(self, left: np.ndarray, right: np.ndarray, rng: np.random.Generator) -> dict:
        gap = self.score(left) - self.score(right) + rng.normal(0, self.noise)
        return {"choice": "left" if gap >= 0 else "right"}

    # --- labels for the in-silico proof ---

    def label(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """{"realism": share of readers voting real, "criteria": {name: normalised rubric score}}, noisy."""
        p = self.score(image)
        called_real = p if self.realism_model is None else self.p_real(is_real=False, image=image)
        top = self.rubric_levels - 1
        return {
            "realism": float(rng.binomial(self.readers, called_real) / self.readers),
            "criteria": {
                name: float(np.round(np.clip(p + rng.normal(0, self.noise), 0, 1) * top) / top)
                for name in self.criteria
            },
        }

    def feedback(self, images: Sequence[np.ndarray], prompts: Sequence[str], rng: np.random.Generator) -> list:
        """One `training.ml.reward.data.FeedbackItem` per image, labelled by this reader."""
        from training.ml.reward.data import FeedbackItem  # torch: the web imports this module

        return [FeedbackItem(image=image, prompt=prompt, realism=lab["realism"], criteria=lab["criteria"],
                             image_id=f"simulated-{i}")
                for i, (image, prompt) in enumerate(zip(images, prompts, strict=True))
                for lab in (self.label(image, rng),)]
