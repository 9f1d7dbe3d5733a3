"""Reward-model training: the masked loss, the training loop on a by-image split, and held-out metrics.

No Django here. `train_reward_model` trains a `training.ml.reward.RewardModel` on `FeedbackItem`s
(`training.ml.reward.data`), drawing mismatched-report negatives per step, and reports `evaluate_reward_model`'s
metrics on the held-out images: realism AUROC, Brier and ECE, per-criterion Spearman and MAE, and the AUROC of
true against mismatched reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference.ml.devices import precision_for
from training.ml.jsonable import json_safe
from training.ml.reporting import too_few
from training.ml.reward.config import REALISM, RewardConfig
from training.ml.reward.data import (
    FeedbackItem,
    mismatch_negatives,
    resize_images,
    split_by_image,
    targets_for,
)
from training.ml.reward.model import RewardModel, predict

# --- loss and training -----------------------------------------------------------------------------------------


def reward_loss(
    outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], cfg: RewardConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted BCE-with-logits on soft realism targets + weighted MSE/Huber on the given criteria; entries without
    a target are masked and each term is averaged over the weight of the entries it sees."""
    w = targets["weight"]
    bce = F.binary_cross_entropy_with_logits(
        outputs["realism_logit"].float(), targets["realism"], reduction="none"
    )
    m = targets["realism_mask"] * w
    realism = (bce * m).sum() / m.sum().clamp_min(1e-8)
    pred, goal = outputs["criteria"].float(), targets["criteria"]
    if cfg.criteria_loss == "huber":
        err = F.huber_loss(pred, goal, reduction="none", delta=cfg.huber_delta)
    else:
        err = (pred - goal) ** 2
    mc = targets["criteria_mask"] * w[:, None]
    criteria = (err * mc).sum() / mc.sum().clamp_min(1e-8)
    loss = realism + cfg.criteria_weight * criteria
    return loss, {"loss": loss.detach(), "realism": realism.detach(), "criteria": criteria.detach()}


def _lr_factor(step: int, cfg: RewardConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: nn.Module, cfg: RewardConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
    )


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype: with "auto", bf16 where the device has it, else none (fp16 would need a grad scaler)."""
    if precision == "fp32" or device.type == "cpu" and precision == "auto":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")
    return torch.bfloat16 if precision_for(device).autocast == torch.bfloat16 else None


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless reshuffled epochs; the last partial batch of an epoch is kept."""
    while True:
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            yield order[i : i + batch_size]


def train_reward_model(
    items: Sequence[FeedbackItem],
    cfg: RewardConfig,
    *,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    on_progress: Callable[[int, float], None] | None = None,
) -> tuple[RewardModel, dict[str, Any]]:
    """Train on a by-image split of `items`; returns the model (eval mode) and JSON-safe validation metrics.
    `on_progress(step, loss)` is called after every optimiser step (1-based)."""
    if not items:
        raise ValueError("no feedback items to train on")
    device = torch.device(device)
    dtype = _autocast_dtype(device, precision)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_idx, val_idx = split_by_image(items, cfg.val_fraction, cfg.seed)
    train = [items[i] for i in train_idx]
    targets_for(items, cfg.criteria)  # fail fast on unknown criteria
    pixels = resize_images([it.image for it in train], cfg.image_size)
    pool = [it.prompt for it in train]
    rate = cfg.mismatched_negative_rate if cfg.prompt_conditioning else 0.0
    model = RewardModel(cfg).to(device).train()
    opt = _optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    losses: list[float] = []
    batches = _batches(len(train), cfg.batch_size, rng)
    for step in range(cfg.steps):
        idx = next(batches)
        batch = [train[i] for i in idx]
        prompts, swapped = mismatch_negatives(
            [it.prompt for it in batch], [it.is_real for it in batch], pool, rate, rng
        )
        targets = {k: v.to(device) for k, v in targets_for(batch, cfg.criteria, swapped).items()}
        images = pixels[idx].to(device).float() / 255
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = model(images, prompts)
        loss, _ = reward_loss(outputs, targets, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_progress is not None:
            on_progress(step + 1, losses[-1])
    model.eval()
    metrics = evaluate_reward_model(model, [items[i] for i in val_idx], pool=pool, seed=cfg.seed)
    metrics["train"] = {
        "steps": cfg.steps,
        "items": len(train),
        "images": len({it.key for it in train}),
        "final_loss": float(np.mean(losses[-10:])),
    }
    return model, json_safe(metrics)

# --- evaluation ------------------------------------------------------------------------------------------------


def expected_calibration_error(prob: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """Σ over equal-width probability bins of (share of samples) × |mean prediction − mean target|; soft targets
    (shares of readers) are compared as they are, which is the usual ECE for 0/1 targets."""
    edges = np.minimum((prob * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(prob[edges == b].mean() - target[edges == b].mean()) * (edges == b).mean()
            for b in range(bins)
            if (edges == b).any()
        )
    )


#: Held-out targets below which an AUROC is not reported: on a handful of images it is 0, 0.5 or 1 by chance.
MIN_AUROC_TARGETS = 10


def _auroc(labels: np.ndarray, scores: np.ndarray, *, n: int | None = None) -> tuple[float | None, str | None]:
    """AUROC of `scores` for `labels`; under MIN_AUROC_TARGETS targets, None with "too few (n=…)" where n counts
    what the record's own `n` counts (`n`, default the targets)."""
    from sklearn.metrics import roc_auc_score

    if len(labels) < MIN_AUROC_TARGETS:
        return None, too_few(len(labels) if n is None else n)
    if len(np.unique(labels)) < 2:
        return None, f"only one class among {len(labels)} validation targets"
    return float(roc_auc_score(labels, scores)), None


def evaluate_reward_model(
    model: RewardModel, items: Sequence[FeedbackItem], *, pool: Sequence[str] = (), seed: int = 0
) -> dict[str, Any]:
    """Held-out metrics (deterministic predictions): realism AUROC (targets ≥ 0.5 count as real), Brier and ECE
    (10 bins) against the soft targets; per criterion Spearman and MAE; and, with prompt conditioning, the AUROC of
    true against mismatched reports on the real images (reports drawn from `pool` + the items' own)."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {"items": len(items), "images": len({it.key for it in items})}
    if not items:
        return {**out, "skipped": "no validation images (val_fraction or too few distinct images)"}
    mean, _ = predict(model, [it.image for it in items], [it.prompt for it in items], mc_samples=1)
    has = np.array([it.realism is not None for it in items])
    r: dict[str, Any] = {"n": int(has.sum())}
    if has.any():
        prob, soft = mean[REALISM][has], np.array([it.realism for it in items if it.realism is not None])
        r["auroc"], r["auroc_skipped"] = _auroc(soft >= 0.5, prob)
        r.update(
            positives=int((soft >= 0.5).sum()),
            brier=float(((prob - soft) ** 2).mean()),
            ece=expected_calibration_error(prob, soft),
            mean_prob=float(prob.mean()),
        )
    out[REALISM] = r
    out["criteria"] = {}
    for name in model.cfg.criteria:
        got = [
            (mean[name][i], it.criteria[name])
            for i, it in enumerate(items)
            if it.criteria.get(name) is not None
        ]
        pred, goal = (
            (np.array(v, float) for v in zip(*got, strict=True)) if got else (np.zeros(0), np.zeros(0))
        )
        c: dict[str, Any] = {"n": len(got), "mae": float(np.abs(pred - goal).mean()) if got else None}
        if len(got) < 3 or np.ptp(goal) == 0 or np.ptp(pred) == 0:
            c["spearman"], c["spearman_skipped"] = None, "fewer than 3 labelled images or a constant column"
        else:
            c["spearman"] = float(spearmanr(pred, goal).statistic)
        out["criteria"][name] = c
    if model.cfg.prompt_conditioning:
        out["mismatch"] = _mismatch_auroc(model, items, [*pool, *(it.prompt for it in items)], seed)
    return out


def _mismatch_auroc(
    model: RewardModel, items: Sequence[FeedbackItem], pool: Sequence[str], seed: int
) -> dict:
    real = [it for it in items if it.is_real]
    prompts, swapped = mismatch_negatives(
        [it.prompt for it in real], [True] * len(real), pool, 1.0, np.random.default_rng(seed)
    )
    real = [it for it, s in zip(real, swapped, strict=True) if s]
    if not real:
        return {"n": 0, "auroc": None, "auroc_skipped": "no real validation images with a different report"}
    images = [it.image for it in real]
    true, _ = predict(model, images, [it.prompt for it in real], mc_samples=1)
    wrong, _ = predict(model, images, [p for p, s in zip(prompts, swapped, strict=True) if s], mc_samples=1)
    scores = np.concatenate([true[REALISM], wrong[REALISM]])
    auroc, why = _auroc(np.r_[np.ones(len(real)), np.zeros(len(real))], scores, n=len(real))
    return {"n": len(real), "auroc": auroc, "auroc_skipped": why}
