"""Reward model: predicts what expert readers say about a chest X-ray, for reward-informed finetuning.

No Django here. A timm backbone (1 channel, global pooled features) feeds a small head with two outputs:

- realism: a logit for the share of readers who would call the image real (the seed paper's "plausible");
- criteria: one score in [0, 1] per rubric criterion (the rubric's scale normalised to 0–1).

Prompt conditioning is FiLM on the projected image features by a bag-of-words text embedding. The text encoder
needs no tokenizer and no download: lower-cased words and word bigrams (so "no effusion" differs from "effusion")
are hashed with CRC-32 into `text_buckets` rows of an `nn.EmbeddingBag` (mean). The hash is stable across
processes and the checkpoint is self-contained; reports are short template-like text, so subwords buy little.

Uncertainty is MC-dropout: at inference only the head's dropout stays active (the backbone runs once, in eval
mode), so `mc_samples` costs little. `reward()` folds the outputs into one scalar per image.

This module holds the model, inference and checkpoints; the settings and training data are in
`training.ml.reward.data`, the loss, training loop and held-out metrics in `training.ml.reward.train`.
"""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.ml.jsonable import json_safe
from training.ml.reward.config import REALISM, RewardConfig
from training.ml.reward.data import resize_images

WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE = "model.safetensors", "config.json", "metrics.json"


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
