"""Finetuning settings and the plain records the loop passes around, and the seeded order batches are drawn in.

No Django here. `FinetuneConfig` is one job's settings, `FinetuneData` its training data as plain Python; `Models`,
`Batch` and `Session` are what `training.ml.finetune` builds and steps. `BatchSampler` makes the data order a
function of (seed, stream position, process): a seeded permutation per epoch indexed by a cursor, so a resumed run
draws the same micro-batches. `split_validation` holds out the real images the early stopping watches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from inference.ml.config import Settings, option
from training.ml import diffusion as D

OBJECTIVES = ("reward_weighted", "dpo", "domain")
#: LoRA target modules by name: attention only (diffusers' text-to-image LoRA example), or also the ResNet
#: convolutions, the time-embedding projections and the transformer blocks' in/out projections — what a finetune
#: needs to move global properties of the image (brightness, contrast), which attention alone barely reaches.
LORA_TARGETS = {
    "attention": ("to_k", "to_q", "to_v", "to_out.0"),
    "attention+conv": ("to_k", "to_q", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj", "proj_in", "proj_out"),
}
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """One finetuning job. Defaults are the seed paper's (SD v2-1-base, LoRA, lr 1e-4, beta 0.3, 512 px)."""

    what = "finetuning settings"

    objective: str = option("reward_weighted", "'reward_weighted' (beta·L(real) + r·L(synthetic)), 'dpo' "
                                             "(pairwise preferences) or 'domain' (real image–report pairs only).")
    beta: float = option(0.3, "Weight of the real-image loss in the reward-weighted objective, unitless.")
    reward_normalisation: str = option("none", "How rewards become weights, over the whole synthetic set: 'none' "
                                             "(as given), 'minmax' (to [0, 1]), 'standardise' (z-scores) or 'exponential' "
                                             "(exp of the z-scores over their mean: all positive).")
    reward_clip: float = option(0.0, "Bound on z-scored weights ('standardise', 'group'): [−clip, clip]; 0 = none.")
    fresh_samples: int = option(0, "Reward-weighted: fresh images the parent samples on the labelled images' "
                                   "prompts before training (seeded by `seed`), scored by the round's reward model; "
                                   "they are the synthetic set the finetune weights. 0: the labelled images are.")
    fresh_per_prompt: int = option(4, "Fresh samples per prompt (a group for 'group' weights), images.")
    prompt_policy: str = option("truncate", "Prompts over the text encoder's 77 tokens: 'truncate' or 'chunks' "
                                            "(77-token windows, concatenated); the study's, as sampling uses.")
    lora_targets: str = option("attention", f"Modules the LoRA adapter trains: one of {sorted(LORA_TARGETS)}.")
    real_fraction: float = option(0.5, "Share of each reward-weighted micro-batch drawn from real images, 0–1.")
    dpo_beta: float = option(2500.0, "Diffusion-DPO KL strength beta, unitless (paper: 2500 for SD 1.5).")
    lr: float = option(1e-4, "AdamW learning rate for the LoRA weights, per optimiser step.")
    lr_warmup_steps: int = option(0, "Linear LR warm-up, optimiser steps; constant afterwards.")
    weight_decay: float = option(1e-2, "AdamW weight decay, unitless.")
    max_grad_norm: float = option(1.0, "Gradient-norm clipping threshold (L2); 0 turns clipping off.")
    steps: int = option(1000, "Optimiser steps to train (domain adaptation: epochs × images / (batch × accum)).")
    batch_size: int = option(4, "Images per micro-batch per process (DPO: pairs per micro-batch).")
    grad_accum: int = option(1, "Micro-batches accumulated per optimiser step.")
    rank: int = option(4, "LoRA rank r.")
    alpha: float = option(4.0, "LoRA alpha; the update is scaled by alpha / rank.")
    resolution: int = option(512, "Training image side, px (images are resized on the short side and centre-cropped).")
    mixed_precision: str = option("auto", "'auto' (bf16/fp16 autocast on accelerators, none on CPU), 'no', 'fp16', "
                                        "'bf16'. LoRA weights stay fp32 in every case.")
    gradient_checkpointing: bool = option(False, "Recompute UNet activations in backward: less memory, ~30% slower.")
    checkpoint_every: int = option(500, "Save a checkpoint every this many optimiser steps (and at the end); 0 = end only.")
    keep_last: int = option(3, "Checkpoints kept on disk, newest first.")
    val_every: int = option(100, "Evaluate the held-out real loss every this many optimiser steps; 0 = never.")
    val_fraction: float = option(0.05, "Share of real images held out when no validation set is given, 0–1.")
    val_max_images: int = option(64, "Most held-out images evaluated, images.")
    early_stopping_patience: int = option(5, "Stop after this many evaluations without improvement; 0 = never stop.")
    early_stopping_min_delta: float = option(0.0, "Smallest decrease of the held-out loss that counts as improvement.")
    restore_best: bool = option(True, "Write the adapter of the best held-out evaluation as the final adapter.")
    seed: int = option(0, "Seeds the LoRA init, data order, noise, timesteps and the validation split.")

    @classmethod
    def tiny(cls, resolution: int = 64) -> FinetuneConfig:
        """Seconds on a CPU with the tiny SD from `inference.tiny` (trained at its native side, `resolution` px)."""
        return cls(lr=1e-3, dpo_beta=50.0, steps=8, batch_size=2, resolution=resolution, checkpoint_every=4, keep_last=2,
                   val_every=4, val_fraction=0.25, val_max_images=4, early_stopping_patience=0)

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.prompt_policy not in ("truncate", "chunks"):
            raise ValueError(f"prompt_policy must be 'truncate' or 'chunks', not {self.prompt_policy!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, not {self.mixed_precision!r}")
        if self.reward_normalisation not in D.REWARD_NORMALISATIONS:
            raise ValueError(f"reward_normalisation must be one of {D.REWARD_NORMALISATIONS}")
        if self.lora_targets not in LORA_TARGETS:
            raise ValueError(f"lora_targets must be one of {sorted(LORA_TARGETS)}, not {self.lora_targets!r}")
        if self.fresh_samples < 0 or self.fresh_per_prompt < 1 or self.reward_clip < 0:
            raise ValueError("fresh_samples and reward_clip must be >= 0 and fresh_per_prompt >= 1")
        if self.fresh_samples and self.objective != "reward_weighted":
            raise ValueError("fresh_samples is a reward-weighted setting (DPO and domain adaptation train on "
                             "labelled pairs and real images)")
        if min(self.steps, self.batch_size, self.grad_accum, self.rank, self.keep_last) < 1:
            raise ValueError("steps, batch_size, grad_accum, rank and keep_last must be at least 1")
        if self.resolution % 8:
            raise ValueError("resolution must be a multiple of 8 (the VAE downsamples by 8)")
        if self.objective == "reward_weighted":
            self.real_synthetic_split()

    def real_synthetic_split(self) -> tuple[int, int]:
        """(real, synthetic) images per reward-weighted micro-batch; one forward pass takes both."""
        n_real = round(self.batch_size * self.real_fraction) if self.beta > 0 else 0
        n_real = min(max(n_real, 1 if self.beta > 0 else 0), self.batch_size - 1)
        if self.batch_size - n_real < 1 or (self.beta > 0 and n_real < 1):
            raise ValueError("a reward-weighted micro-batch needs a real and a synthetic image: batch_size >= 2")
        return n_real, self.batch_size - n_real


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
