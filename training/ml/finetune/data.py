"""The plain records the finetuning loop passes around, and the seeded order batches are drawn in.

No Django here. `FinetuneConfig` (one job's settings) is in `training.ml.finetune.config`; `FinetuneData` is its
training data as plain Python; `Models`,
`Batch` and `Session` are what `training.ml.finetune.loop` builds and steps. `BatchSampler` makes the data order a
function of (seed, stream position, process): a seeded permutation per epoch indexed by a cursor, so a resumed run
draws the same micro-batches. `split_validation` holds out the real images the early stopping watches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.ml.finetune import losses as D
from training.ml.finetune.config import FinetuneConfig


@dataclass
class FinetuneData:
    """Training data as plain Python. Images are uint8 (H, W) arrays (float 0–1 also accepted)."""

    real: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (image, report)
    synthetic: list[tuple[np.ndarray, str, float]] = field(default_factory=list)  # (image, prompt, reward)
    pairs: list[tuple[np.ndarray, np.ndarray, str]] = field(default_factory=list)  # (chosen, rejected, prompt)
    val_real: list[tuple[np.ndarray, str]] | None = None  # held-out real pairs; None = split off `real`


# --- what the loop passes around ----------------------------------------------------------------------------------


@dataclass
class Models:
    unet: Any  # what the forward pass calls (wrapped by accelerate for autocast / DDP)
    peft_unet: Any  # the same UNet unwrapped: adapters are toggled and saved through it
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    dtype: torch.dtype  # of the frozen weights
    device: torch.device  # kept here: diffusers' `ModelMixin.device` walks every module (ms per call)


@dataclass
class Batch:
    """One micro-batch, images as prepared float tensors (B, 1, R, R) in 0–1 on the CPU."""

    real: torch.Tensor | None = None
    real_prompts: list[str] = field(default_factory=list)
    synthetic: torch.Tensor | None = None
    synthetic_prompts: list[str] = field(default_factory=list)
    rewards: torch.Tensor | None = None  # normalised, (B,)
    chosen: torch.Tensor | None = None
    rejected: torch.Tensor | None = None
    pair_prompts: list[str] = field(default_factory=list)


@dataclass
class Session:
    cfg: FinetuneConfig
    accelerator: Any
    models: Models
    pipe: Any
    params: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    device: torch.device


# --- data order --------------------------------------------------------------------------------------------------


class _Order:
    """Position p of a stream → item index: a seeded permutation per epoch, so any position is reproducible."""

    def __init__(self, n: int, seed: int, stream: int) -> None:
        self.n, self.seed, self.stream = n, seed, stream
        self._perms: dict[int, np.ndarray] = {}

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            epoch, i = divmod(position, self.n)
            if epoch not in self._perms:
                self._perms = {epoch: np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n)}
            out.append(int(self._perms[epoch][i]))
        return out


class BatchSampler:
    """Builds micro-batches from the data and advances the stream cursors (the data position)."""

    def __init__(self, cfg: FinetuneConfig, data: FinetuneData, rewards: np.ndarray, *, process: int,
                 processes: int) -> None:
        self.cfg, self.data, self.rewards = cfg, data, rewards
        self.process, self.processes = process, processes
        self.orders = {name: _Order(len(items), cfg.seed, k) for k, (name, items) in
                       enumerate((("real", data.real), ("synthetic", data.synthetic), ("pairs", data.pairs)))
                       if items}
        self.cursors = {"real": 0, "synthetic": 0, "pairs": 0}

    def _indices(self, stream: str, count: int) -> list[int]:
        start = self.cursors[stream] + self.process * count
        self.cursors[stream] += count * self.processes
        return self.orders[stream].take(start, count)

    def next_batch(self) -> Batch:
        cfg, data, res = self.cfg, self.data, self.cfg.resolution
        if cfg.objective == "dpo":
            idx = self._indices("pairs", cfg.batch_size)
            return Batch(chosen=D.prepare_images([data.pairs[i][0] for i in idx], res),
                         rejected=D.prepare_images([data.pairs[i][1] for i in idx], res),
                         pair_prompts=[data.pairs[i][2] for i in idx])
        n_real, n_synth = (cfg.batch_size, 0) if cfg.objective == "domain" else cfg.real_synthetic_split()
        batch = Batch()
        if n_real:
            idx = self._indices("real", n_real)
            batch.real = D.prepare_images([data.real[i][0] for i in idx], res)
            batch.real_prompts = [data.real[i][1] for i in idx]
        if n_synth:
            idx = self._indices("synthetic", n_synth)
            batch.synthetic = D.prepare_images([data.synthetic[i][0] for i in idx], res)
            batch.synthetic_prompts = [data.synthetic[i][1] for i in idx]
            batch.rewards = torch.tensor(self.rewards[idx], dtype=torch.float32)
        return batch


def split_validation(cfg: FinetuneConfig, data: FinetuneData) -> tuple[FinetuneData, list[tuple[np.ndarray, str]]]:
    """(training data, held-out real pairs): the given validation set, else a seeded share of the real images (DPO
    does not train on real images, so there all of them, up to `val_max_images`, are held out)."""
    if cfg.val_every <= 0:
        return data, []
    if data.val_real is not None:
        return data, list(data.val_real)[: cfg.val_max_images]
    if cfg.objective == "dpo":
        order = np.random.default_rng([cfg.seed, 99]).permutation(len(data.real))[: cfg.val_max_images]
        return data, [data.real[i] for i in sorted(order.tolist())]
    if len(data.real) < 2:
        return data, []
    n_val = min(max(1, round(len(data.real) * cfg.val_fraction)), cfg.val_max_images, len(data.real) - 1)
    held = set(np.random.default_rng([cfg.seed, 99]).permutation(len(data.real))[:n_val].tolist())
    train = FinetuneData(real=[x for i, x in enumerate(data.real) if i not in held], synthetic=data.synthetic,
                         pairs=data.pairs)
    return train, [x for i, x in enumerate(data.real) if i in held]


def check_data(cfg: FinetuneConfig, data: FinetuneData) -> None:
    need = {"domain": ("real",), "dpo": ("pairs",), "reward_weighted": ("synthetic",) + (("real",) if cfg.beta else ())}
    missing = [name for name in need[cfg.objective] if not getattr(data, name)]
    if missing:
        raise ValueError(f"the {cfg.objective} objective needs {' and '.join(missing)} data")


def epochs_to_steps(n_images: int, epochs: float, cfg: FinetuneConfig, *, processes: int = 1) -> int:
    """Optimiser steps for `epochs` passes over `n_images` (e.g. the seed paper's 10 domain-adaptation epochs)."""
    per_step = cfg.batch_size * cfg.grad_accum * processes
    return max(1, math.ceil(n_images * epochs / per_step))
