"""The check a reward model passes before it is used, and the judge the finetune did not optimise. No Django here.

Cross-fitting: the labelled images are split into `folds` disjoint groups (by image); one model per fold trains on
the others. Each image's out-of-fold reward comes from the model that never saw it, so the Spearman correlation
between the out-of-fold rewards of the *synthetic* images and the readers' per-image target measures whether a
reward model trained on these labels ranks new synthetic images as the readers would (real-vs-synthetic AUROC
mostly measures the source, not the taste). One-sided test of rho > 0 at `check_alpha`; a model that fails drives
no finetune. The fold models' mean reward is the promotion judge: the finetune maximised the model trained on all
labels, never these, so a child that only learned to please its own reward model gains nothing with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from training.ml.reward.config import RewardConfig
from training.ml.reward.data import FeedbackItem

#: fewer synthetic images than this cannot show a ranking (Spearman's test needs a handful)
MIN_CHECK_IMAGES = 6


def label_target(item: FeedbackItem) -> float | None:
    """The readers' per-image target on the reward's scale: half the realism share, half the mean rubric score
    (`combine_reward`'s default weights); whichever is present when one is missing."""
    criteria = [v for v in item.criteria.values() if v is not None]
    parts = [(0.5 if criteria else 1.0, item.realism)] if item.realism is not None else []
    if criteria:
        parts.append((0.5 if parts else 1.0, float(np.mean(criteria))))
    return sum(w * v for w, v in parts) if parts else None


def fold_of(items: Sequence[FeedbackItem], folds: int, seed: int) -> list[int]:
    """Each item's fold; all records of one image (of one patient, when known) share one, and folds differ in size
    by at most one image (patient)."""
    keys = sorted({it.group for it in items})
    order = np.random.default_rng([seed, 0xC4EC]).permutation(len(keys))
    fold = {keys[i]: rank % folds for rank, i in enumerate(order)}
    return [fold[it.group] for it in items]


def spearman_check(predicted: Sequence[float], target: Sequence[float], alpha: float) -> dict[str, Any]:
    """rho with a Fisher-z 95 % CI, the one-sided p of rho > 0, n and the verdict."""
    from scipy.stats import spearmanr

    x, y = np.asarray(predicted, float), np.asarray(target, float)
    n = int(len(x))
    out: dict[str, Any] = {"rho": None, "ci_low": None, "ci_high": None, "p_value": None, "n": n, "alpha": alpha,
                           "valid": False}
    if n < MIN_CHECK_IMAGES:
        out["reason"] = f"too few labelled synthetic images to check the reward model (n={n}, need ≥ {MIN_CHECK_IMAGES})"
        return out
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        out["reason"] = (f"the readers' targets are all equal (n={n}): nothing to rank" if np.ptp(y) == 0 else
                         f"the reward model gives every synthetic image the same reward (n={n})")
        return out
    result = spearmanr(x, y, alternative="greater")
    rho = float(result.statistic)
    # Fisher z with the Spearman standard error (Fieller, Hartley & Pearson 1957): sqrt(1.06 / (n - 3))
    z, se = math.atanh(min(max(rho, -0.999999), 0.999999)), math.sqrt(1.06 / max(n - 3, 1))
    out.update(rho=rho, ci_low=math.tanh(z - 1.96 * se), ci_high=math.tanh(z + 1.96 * se),
               p_value=float(result.pvalue), valid=bool(result.pvalue < alpha))
    ranks = f"ρ = {rho:.2f} [{out['ci_low']:.2f}, {out['ci_high']:.2f}], one-sided p = {result.pvalue:.2g}, n = {n}"
    out["reason"] = (f"the reward model ranks synthetic images as the readers did ({ranks})" if out["valid"] else
                     f"reward model does not rank synthetic images better than chance: {ranks}")
    return out


def cross_fit(items: Sequence[FeedbackItem], cfg: RewardConfig, *,
              train: Callable[[list[FeedbackItem], RewardConfig], Any],
              score: Callable[[Any, list[np.ndarray], list[str]], Sequence[float]],
              synthetic: Callable[[FeedbackItem], bool]) -> tuple[list[Any], list[RewardConfig], dict[str, Any]]:
    """Train the fold models (`train(items, cfg)` → model) and check the out-of-fold rewards of the synthetic
    items against their label targets; returns (fold models, their configs, the check record)."""
    folds = fold_of(items, cfg.check_folds, cfg.seed)
    models, configs = [], []
    predicted, target = [], []
    for k in range(cfg.check_folds):
        fold_cfg = replace(cfg, val_fraction=0.0, seed=cfg.seed + 1 + k, check_folds=0)
        model = train([it for it, f in zip(items, folds, strict=True) if f != k], fold_cfg)
        models.append(model)
        configs.append(fold_cfg)
        held = [it for it, f in zip(items, folds, strict=True) if f == k and synthetic(it)
                and label_target(it) is not None]
        if held:
            predicted += [float(v) for v in score(model, [it.image for it in held], [it.prompt for it in held])]
            target += [label_target(it) for it in held]
    check = spearman_check(predicted, target, cfg.check_alpha)
    check["folds"] = cfg.check_folds
    return models, configs, check
