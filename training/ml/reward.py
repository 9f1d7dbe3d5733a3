"""Reward model: predicts what expert readers say about a chest X-ray, for reward-informed finetuning.

No Django here. A timm backbone (1 channel, global pooled features) feeds a small head with two outputs:

- realism: a logit for the share of readers who would call the image real (the seed paper's "plausible");
- criteria: one score in [0, 1] per rubric criterion (the rubric's scale normalised to 0–1).

Prompt conditioning is FiLM on the projected image features by a bag-of-words text embedding. The text encoder
needs no tokenizer and no download: lower-cased words and word bigrams (so "no effusion" differs from "effusion")
are hashed with CRC-32 into `text_buckets` rows of an `nn.EmbeddingBag` (mean). The hash is stable across
processes and the checkpoint is self-contained; reports are short template-like text, so subwords buy little.

Training data are `FeedbackItem`s, one per (image, prompt) record. With prompt conditioning, each real image is,
with probability `mismatched_negative_rate` per step, shown with another image's (different) report and a realism
target of 0, as the seed paper does, so the model learns that a plausible image must also fit its report. Its
rubric scores are masked for that draw (they were given for the true pairing). Without prompt conditioning the
model cannot see the report, so no negatives are drawn.

Uncertainty is MC-dropout: at inference only the head's dropout stays active (the backbone runs once, in eval
mode), so `mc_samples` costs little. `reward()` folds the outputs into one scalar per image.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from hashlib import sha1
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference.ml.config import Settings, option
from training.ml.jsonable import json_safe
from training.ml.snapshot import SnapshotItem

REALISM = "realism"
WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "config.json", "metrics.json"
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

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W), got {self.image.dtype} {self.image.shape}")
        values = [self.realism, *self.criteria.values()]
        if any(v is not None and not 0 <= v <= 1 for v in values) or not self.weight >= 0:
            raise ValueError("realism and criteria must be in [0, 1] (or None), weight non-negative")

    @property
    def key(self) -> str:
        return self.image_id or sha1(self.image.tobytes() + str(self.image.shape).encode()).hexdigest()

    @classmethod
    def from_snapshot(cls, item: SnapshotItem, image: np.ndarray) -> FeedbackItem:
        """From an item of the feedback snapshot (`training.ml.snapshot`) and its decoded image."""
        return cls(image=image, prompt=item.prompt or "", realism=item.realism, criteria=dict(item.criteria),
                   is_real=item.source == "real", image_id=item.sha256 or str(item.image))


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
    """(train, val) indices; all records of one image land on the same side."""
    keys = sorted({it.key for it in items})
    n_val = round(val_fraction * len(keys))
    if val_fraction > 0 and len(keys) >= 2:
        n_val = min(max(n_val, 1), len(keys) - 1)
    order = np.random.default_rng(seed).permutation(len(keys))
    val_keys = {keys[i] for i in order[:n_val]}
    val = [i for i, it in enumerate(items) if it.key in val_keys]
    return [i for i, it in enumerate(items) if it.key not in val_keys], val


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


# --- model -----------------------------------------------------------------------------------------------------


def text_token_ids(prompt: str, buckets: int) -> list[int]:
    """CRC-32 buckets of the lower-cased words and word bigrams of `prompt` (numbers like 0.62 stay whole)."""
    words = re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", prompt.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return [zlib.crc32(g.encode()) % buckets for g in grams]


def load_backbone_weights(backbone: nn.Module, path: str | Path, in_chans: int) -> None:
    """Local weights into a timm backbone: the classifier is dropped, a 3-channel stem summed for 1 channel."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.state_dict()
    for k, v in state.items():
        if k in own and v.ndim == 4 and v.shape[1] == 3 and own[k].shape[1] == 1 == in_chans:
            state[k] = v.sum(dim=1, keepdim=True)
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(
            f"weights at {path} do not fit the backbone: {len(missing)} missing, e.g. {missing[:3]}"
        )
    backbone.load_state_dict({k: state[k] for k in own})


class RewardModel(nn.Module):
    """Image (+ prompt) → {"realism_logit": (B,), "criteria": (B, C) in [0, 1]}."""

    def __init__(self, cfg: RewardConfig) -> None:
        super().__init__()
        import timm

        self.cfg = cfg
        self.backbone = timm.create_model(
            cfg.backbone, pretrained=False, num_classes=0, in_chans=cfg.in_chans
        )
        if cfg.pretrained_path:
            load_backbone_weights(self.backbone, cfg.pretrained_path, cfg.in_chans)
        width = self.backbone.num_features
        self.feature_dropout = nn.Dropout(cfg.dropout)
        self.project = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.hidden_dim))
        if cfg.prompt_conditioning:
            self.text = nn.EmbeddingBag(cfg.text_buckets, cfg.text_dim, mode="mean")
            self.film = nn.Linear(cfg.text_dim, 2 * cfg.hidden_dim)
            nn.init.zeros_(self.film.weight)  # starts as the identity: the image path trains from step one
            nn.init.zeros_(self.film.bias)
        self.hidden_dropout = nn.Dropout(cfg.dropout)
        self.realism_head = nn.Linear(cfg.hidden_dim, 1)
        self.criteria_head = nn.Linear(cfg.hidden_dim, len(cfg.criteria))

    @property
    def output_names(self) -> tuple[str, ...]:
        return (REALISM, *self.cfg.criteria)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] → pooled backbone features (B, F); resized to the configured side if needed."""
        size = self.cfg.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        x = (images - 0.5) / 0.25
        return self.backbone(x.expand(-1, self.cfg.in_chans, -1, -1) if x.shape[1] == 1 else x)

    def embed_text(self, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        ids = [text_token_ids(p, self.cfg.text_buckets) for p in prompts]
        offsets = torch.tensor([0, *np.cumsum([len(i) for i in ids[:-1]])], dtype=torch.long)
        flat = torch.tensor([t for i in ids for t in i], dtype=torch.long)
        return self.text(flat.to(device), offsets.to(device))

    def head(self, feats: torch.Tensor, text: torch.Tensor | None) -> dict[str, torch.Tensor]:
        h = self.project(self.feature_dropout(feats))
        if text is not None:
            gamma, beta = self.film(text.to(h.dtype)).chunk(2, dim=-1)
            h = h * (1 + gamma) + beta
        h = self.hidden_dropout(F.gelu(h))
        return {
            "realism_logit": self.realism_head(h).squeeze(-1),
            "criteria": torch.sigmoid(self.criteria_head(h)),
        }

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return self.head(feats, self._text(prompts, len(images), feats.device))

    def _text(self, prompts: Sequence[str] | None, n: int, device: torch.device) -> torch.Tensor | None:
        if not self.cfg.prompt_conditioning:
            return None
        if prompts is None or len(prompts) != n:
            raise ValueError(f"a prompt-conditioned reward model needs one prompt per image ({n})")
        return self.embed_text(prompts, device)


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
    from inference.ml.devices import precision_for

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


# --- inference -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _inference_mode(model: RewardModel, *, dropout: bool) -> Iterator[None]:
    """Eval mode, with the head's dropout on for MC sampling; the previous modes come back afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    if dropout:
        model.feature_dropout.train()
        model.hidden_dropout.train()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)


def _as_tensor(images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    return resize_images(list(images), size).float() / 255


def predict(
    model: RewardModel,
    images: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    prompts: Sequence[str] | None,
    *,
    mc_samples: int | None = None,
    batch_size: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-image mean and std of the realism probability and each criterion score ({name: (N,)} each) over
    `mc_samples` MC-dropout passes of the head (default: the config's). One sample, or dropout 0, is a single
    deterministic eval pass with std 0. Images: uint8 (H, W) arrays, or a float tensor (N, 1, H, W) in [0, 1]."""
    cfg = model.cfg
    mc = cfg.mc_samples if mc_samples is None else mc_samples
    mc = 1 if cfg.dropout == 0 else max(1, mc)
    bs = batch_size or cfg.eval_batch_size
    device = next(model.parameters()).device
    chunks = []
    with _inference_mode(model, dropout=mc > 1), torch.no_grad():
        for i in range(0, len(images), bs):
            x = _as_tensor(images[i : i + bs], cfg.image_size).to(device)
            feats = model.features(x)
            text = model._text(None if prompts is None else prompts[i : i + bs], len(x), device)
            draws = [model.head(feats, text) for _ in range(mc)]
            chunks.append(
                torch.stack(
                    [torch.cat([torch.sigmoid(d["realism_logit"])[:, None], d["criteria"]], 1) for d in draws]
                )
                .float()
                .cpu()
            )
    samples = torch.cat(chunks, 1) if chunks else torch.zeros(mc, 0, len(model.output_names))
    mean = samples.mean(0).numpy()
    std = samples.std(0, unbiased=False).numpy()
    names = model.output_names
    return ({n: mean[:, j] for j, n in enumerate(names)}, {n: std[:, j] for j, n in enumerate(names)})


def combine_reward(
    realism_prob: torch.Tensor,
    criteria: torch.Tensor,
    names: Sequence[str],
    weights: dict[str, float] | None = None,
) -> torch.Tensor:
    """Σ w·score / Σ w over "realism" and the criteria. Default: the mean of the realism probability and the mean
    criterion score (half each), or the realism probability alone when there are no criteria."""
    if weights is None:
        weights = {REALISM: 1.0} if not names else {REALISM: 0.5, **{n: 0.5 / len(names) for n in names}}
    unknown = set(weights) - {REALISM, *names}
    if unknown or sum(weights.values()) <= 0:
        raise ValueError(f"reward weights need positive total over known outputs; unknown: {sorted(unknown)}")
    total = realism_prob * weights.get(REALISM, 0.0)
    for j, name in enumerate(names):
        total = total + criteria[:, j] * weights.get(name, 0.0)
    return total / sum(weights.values())


def reward(
    model: RewardModel,
    images: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
    prompts: Sequence[str] | None,
    *,
    weights: dict[str, float] | None = None,
) -> torch.Tensor:
    """One scalar per image (N,), deterministic (eval mode, no dropout); see `combine_reward` for the weights.
    A float tensor input (N, 1, H, W) in [0, 1] keeps the graph, for reward backpropagation into a generator
    (freeze the reward model with `requires_grad_(False)`); uint8 arrays are scored without gradients."""
    keep_graph = isinstance(images, torch.Tensor)
    device = next(model.parameters()).device
    x = _as_tensor(images, model.cfg.image_size).to(device)
    with (
        _inference_mode(model, dropout=False),
        torch.set_grad_enabled(keep_graph and torch.is_grad_enabled()),
    ):
        out = model(x, prompts)
    return combine_reward(torch.sigmoid(out["realism_logit"]), out["criteria"], model.cfg.criteria, weights)


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


def _auroc(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, str | None]:
    from sklearn.metrics import roc_auc_score

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
    auroc, why = _auroc(np.r_[np.ones(len(real)), np.zeros(len(real))], scores)
    return {"n": len(real), "auroc": auroc, "auroc_skipped": why}


# --- checkpoints -----------------------------------------------------------------------------------------------


def save_reward_model(
    model: RewardModel, cfg: RewardConfig, path_dir: str | Path, metrics: dict[str, Any] | None = None
) -> Path:
    """model.safetensors + config.json (+ metrics.json) in `path_dir`."""
    from safetensors.torch import save_model

    if cfg != model.cfg:
        raise ValueError("cfg differs from the config the model was built with")
    path = Path(path_dir)
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / WEIGHTS_FILE))
    (path / CONFIG_FILE).write_text(json.dumps(cfg.as_dict(), indent=2))
    (path / METRICS_FILE).write_text(json.dumps(json_safe(metrics or {}), indent=2, allow_nan=False))
    return path


def load_reward_model(path_dir: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """The saved model in eval mode; the backbone's `pretrained_path` is not read again (the file has it all)."""
    from safetensors.torch import load_model

    path = Path(path_dir)
    cfg = RewardConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    model = RewardModel(replace(cfg, pretrained_path=None))
    load_model(model, str(path / WEIGHTS_FILE), device=str(device))
    model.cfg = cfg
    return model.to(device).eval()
