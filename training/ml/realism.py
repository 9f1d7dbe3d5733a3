"""A realism function of the pixels: how far an image has moved from what the base model makes toward what the
study's real images look like, fitted once from the two sets (numpy only: no Django, no torch).

Features are image statistics on a fixed 64 px grid (grey-level mean, spread and quantiles, centre contrast,
edge energy, dark/bright shares); a ridge-regularised logistic regression separates real images from the base
model's on standardised features; `score(image)` is a logistic of its linear predictor placed on the two anchors:
0.1 at the base model's mean, 0.9 at the real images' mean (smooth, so it still ranks images beyond either). Simulated readers call a synthetic image real more
often the higher it scores (`training.ml.simulated_reader`); nothing trained or selected by the product ever reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GRID = 64
FEATURES = ("mean", "std", "p10", "p50", "p90", "centre_contrast", "edges", "dark", "bright")


def _grid(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, np.float64)
    if x.ndim == 3:
        x = x.mean(axis=2)
    x = x / 255.0
    h, w = x.shape
    rows = (np.arange(GRID) * h / GRID).astype(int)
    cols = (np.arange(GRID) * w / GRID).astype(int)
    if h >= GRID and w >= GRID:  # area average: each grid cell is the mean of its block
        ys, xs = np.linspace(0, h, GRID + 1).astype(int), np.linspace(0, w, GRID + 1).astype(int)
        return np.add.reduceat(np.add.reduceat(x, ys[:-1], axis=0), xs[:-1], axis=1) / np.outer(
            np.diff(ys), np.diff(xs))
    return x[np.ix_(rows, cols)]


def image_features(image: np.ndarray) -> np.ndarray:
    """The statistics named in `FEATURES`, for one grey or RGB uint8 image of any size."""
    g = _grid(image)
    q = GRID // 4
    centre = g[q:-q, q:-q]
    rest = (g.sum() - centre.sum()) / (g.size - centre.size)
    edges = np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()
    p10, p50, p90 = np.quantile(g, [0.1, 0.5, 0.9])
    return np.array([g.mean(), g.std(), p10, p50, p90, centre.mean() - rest, edges,
                     (g < 0.1).mean(), (g > 0.9).mean()])


@dataclass(frozen=True)
class RealismModel:
    """Fitted weights and anchors; `as_dict`/`from_dict` store it with a simulated reader's settings."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    base_anchor: float
    real_anchor: float
    auc: float
    n_real: int
    n_base: int

    @classmethod
    def fit(cls, real: Sequence[np.ndarray], base: Sequence[np.ndarray], *, ridge: float = 1.0,
            iterations: int = 50) -> RealismModel:
        """Logistic regression (Newton's method, L2 penalty `ridge`) of real (1) vs base-model (0) images."""
        if len(real) < 2 or len(base) < 2:
            raise ValueError(f"a realism function needs ≥ 2 real and ≥ 2 base-model images, not "
                             f"{len(real)} and {len(base)}")
        xr = np.stack([image_features(i) for i in real])
        xb = np.stack([image_features(i) for i in base])
        x = np.vstack([xr, xb])
        mu, sd = x.mean(axis=0), x.std(axis=0)
        sd = np.where(sd > 1e-9, sd, 1.0)
        z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
        y = np.r_[np.ones(len(xr)), np.zeros(len(xb))]
        beta = np.zeros(z.shape[1])
        penalty = np.diag([ridge] * (z.shape[1] - 1) + [0.0])
        for _ in range(iterations):
            p = 1 / (1 + np.exp(-np.clip(z @ beta, -30, 30)))
            grad = z.T @ (p - y) + penalty @ beta
            hess = (z * (p * (1 - p))[:, None]).T @ z + penalty + 1e-9 * np.eye(len(beta))
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.abs(step).max() < 1e-8:
                break
        eta = z @ beta
        er, eb = eta[: len(xr)], eta[len(xr):]
        auc = float(((er[:, None] > eb[None, :]).sum() + 0.5 * (er[:, None] == eb[None, :]).sum())
                    / (len(er) * len(eb)))
        if er.mean() - eb.mean() < 1e-9:
            raise ValueError("the real images and the base model's images cannot be told apart by their "
                             "statistics: no realism function to fit")
        return cls(mean=tuple(map(float, mu)), scale=tuple(map(float, sd)), weights=tuple(map(float, beta[:-1])),
                   bias=float(beta[-1]), base_anchor=float(eb.mean()), real_anchor=float(er.mean()), auc=auc,
                   n_real=len(xr), n_base=len(xb))

    def linear(self, image: np.ndarray) -> float:
        f = (image_features(image) - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(f @ np.asarray(self.weights) + self.bias)

    def score(self, image: np.ndarray) -> float:
        """In (0, 1): 0.1 as the base model's images look on average, 0.9 as the real images do."""
        slope = 2 * np.log(9.0) / (self.real_anchor - self.base_anchor)
        mid = (self.real_anchor + self.base_anchor) / 2
        return float(1 / (1 + np.exp(-np.clip(slope * (self.linear(image) - mid), -50, 50))))

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict) -> RealismModel:
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except TypeError as exc:
            raise ValueError(f"realism function: {exc}") from None
