"""LoRA finetuning of the SD generator: domain adaptation, reward-weighted finetuning and Diffusion-DPO.

No Django here. `run_finetune` is a thin loop around the pure `compute_loss` (objectives in `training.diffusion`):
it draws batches in a seeded order, calls `train_step` (accumulation, backward, clipping, optimiser and LR
scheduler), evaluates a held-out real-image loss, writes checkpoints and reports progress.

- The base is read by `inference.loading.load_pipeline`, the worker's loader, at the device's precision. Only the
  LoRA adapter (`LoraConfig` as in diffusers' `train_text_to_image_lora.py`) trains, in fp32.
- accelerate's `Accelerator` does mixed precision (autocast, fp16 loss scaling), gradient accumulation and, under
  `accelerate launch`, multi-GPU data parallelism: the same code, chosen by configuration. With N processes, each
  takes its own `batch_size` slice of every micro-batch.
- Randomness is a function of (seed, step, micro-batch, process): the data order is a seeded permutation per epoch
  indexed by a cursor, and each micro-batch's noise, timesteps and VAE samples come from a generator seeded from
  its position. So resuming from `checkpoint-{step}` (adapter, optimizer, LR scheduler, RNG states, cursors, loss
  history, early-stopping state) continues exactly as if never stopped.
- Early stopping watches the denoising loss on held-out REAL images (fixed noise, same every evaluation): reward
  weighting and DPO can drift from the data while the reward rises (reward hacking); `restore_best` then keeps
  the adapter of the best evaluation.

The final adapter (`out_dir/pytorch_lora_weights.safetensors`) loads with `PipelineSpec(base, lora=out_dir)`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.ml.config import Settings, option
from training.ml import diffusion as D

OBJECTIVES = ("reward_weighted", "dpo", "domain")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
BEST_ADAPTER_FILE = "best_lora_weights.safetensors"
#: Settings that may change between a run and its resumption (they do not change what a step computes).
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep_last"})
_VAL_SEED_OFFSET = 7_919  # the held-out loss uses its own fixed noise, not the training stream's


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """One finetuning job. Defaults are the seed paper's (SD v2-1-base, LoRA, lr 1e-4, beta 0.3, 512 px)."""

    what = "finetuning settings"

    objective: str = option("reward_weighted", "'reward_weighted' (beta·L(real) + r·L(synthetic)), 'dpo' "
                                             "(pairwise preferences) or 'domain' (real image–report pairs only).")
    beta: float = option(0.3, "Weight of the real-image loss in the reward-weighted objective, unitless.")
    reward_normalisation: str = option("none", "How rewards become weights, over the whole synthetic set: 'none' "
                                             "(as given), 'minmax' (to [0, 1]) or 'standardise' (z-scores).")
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
    def tiny(cls) -> FinetuneConfig:
        """Seconds on a CPU with the tiny SD from `inference.tiny`."""
        return cls(lr=1e-3, dpo_beta=50.0, steps=8, batch_size=2, resolution=64, checkpoint_every=4, keep_last=2,
                   val_every=4, val_fraction=0.25, val_max_images=4, early_stopping_patience=0)

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, not {self.mixed_precision!r}")
        if self.reward_normalisation not in D.REWARD_NORMALISATIONS:
            raise ValueError(f"reward_normalisation must be one of {D.REWARD_NORMALISATIONS}")
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


@dataclass
class FinetuneResult:
    lora_path: Path  # the final adapter file
    steps: int  # optimiser steps done in total (across resumptions)
    losses: list[float]  # training loss per optimiser step
    val_losses: list[tuple[int, float]]  # (step, held-out real loss); step 0 is before training
    stopped_early: bool
    best_step: int | None = None
    pipeline: Any = None  # the trained pipeline (adapter active), only with keep_pipeline=True


# --- models and the pure step -----------------------------------------------------------------------------------


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


def compute_loss(models: Models, batch: Batch, cfg: FinetuneConfig, *,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective's loss for one micro-batch and detached metrics. Pure: no optimiser, no state, no I/O."""
    device = models.device
    encode = lambda images: D.encode_images(models.vae, images, device, models.dtype, generator=generator)  # noqa: E731
    embed = lambda prompts: D.encode_prompts(models.tokenizer, models.text_encoder, prompts, device=device)  # noqa: E731
    if cfg.objective == "domain":
        per_sample = D.diffusion_loss_per_sample(models.unet, models.noise_scheduler, encode(batch.real),
                                                 embed(batch.real_prompts), generator=generator)
        loss = per_sample.mean()
        return loss, {"real_loss": loss.detach()}
    if cfg.objective == "reward_weighted":
        n_real = 0 if batch.real is None else batch.real.shape[0]
        images = batch.synthetic if batch.real is None else torch.cat([batch.real, batch.synthetic])
        per_sample = D.diffusion_loss_per_sample(models.unet, models.noise_scheduler, encode(images),
                                                 embed(batch.real_prompts + batch.synthetic_prompts),
                                                 generator=generator)
        real, synth = per_sample[:n_real], per_sample[n_real:]
        loss = D.reward_weighted_loss(real, synth, batch.rewards, cfg.beta)
        metrics = {"synthetic_loss": synth.detach().mean()}
        if n_real:
            metrics["real_loss"] = real.detach().mean()
        return loss, metrics
    # Diffusion-DPO: chosen and rejected share noise and timestep, and are encoded to their posterior means, so a
    # pair's two losses differ only through its images; the reference is the same UNet with the adapter off.
    latents = D.encode_images(models.vae, torch.cat([batch.chosen, batch.rejected]), device, models.dtype)
    embeds = embed(batch.pair_prompts).repeat(2, 1, 1)
    noise, timesteps = D.sample_noise(latents, models.noise_scheduler.config.num_train_timesteps, generator,
                                      share_pairs=True)
    with torch.no_grad(), D.adapters_disabled(models.peft_unet):  # through the same (autocast) wrapper as below
        ref = D.diffusion_loss_per_sample(models.unet, models.noise_scheduler, latents, embeds, noise=noise,
                                          timesteps=timesteps)
    model = D.diffusion_loss_per_sample(models.unet, models.noise_scheduler, latents, embeds, noise=noise,
                                        timesteps=timesteps)
    model_w, model_l = model.chunk(2)
    ref_w, ref_l = ref.chunk(2)
    loss = D.dpo_loss(model_w, model_l, ref_w, ref_l, cfg.dpo_beta)
    return loss, {"implicit_accuracy": D.dpo_implicit_accuracy(model_w.detach(), model_l.detach(), ref_w, ref_l),
                  "model_loss": model.detach().mean(), "ref_loss": ref.mean()}


def validation_loss(models: Models, images: torch.Tensor, prompts: Sequence[str], cfg: FinetuneConfig) -> float:
    """Mean denoising loss on held-out real images with fixed noise and timesteps (comparable between calls)."""
    generator = torch.Generator().manual_seed(cfg.seed + _VAL_SEED_OFFSET)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = images[start : start + cfg.batch_size]
            latents = D.encode_images(models.vae, chunk, models.device, models.dtype, generator=generator)
            embeds = D.encode_prompts(models.tokenizer, models.text_encoder, prompts[start : start + cfg.batch_size],
                                      device=models.device)
            per_sample = D.diffusion_loss_per_sample(models.unet, models.noise_scheduler, latents, embeds,
                                                     generator=generator)
            total += float(per_sample.sum())
            count += per_sample.shape[0]
    return total / max(count, 1)


# --- session: models, optimiser and the step ----------------------------------------------------------------------


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


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    from inference.ml.devices import precision_for

    if setting != "auto":
        return setting
    autocast = precision_for(device).autocast
    return "no" if autocast is None else ("bf16" if autocast == torch.bfloat16 else "fp16")


def _accelerator(cfg: FinetuneConfig, device: torch.device, mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    kwargs = dict(mixed_precision=mixed_precision, cpu=device.type == "cpu", device_placement=False,
                  gradient_accumulation_steps=cfg.grad_accum)
    try:
        return Accelerator(**kwargs)
    except ValueError:
        # accelerate keeps device and precision in process-wide state; a long-lived single-process worker may
        # train on another device or precision than its previous job. Only safe to reset when not distributed.
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


def setup_training(base_path: str | Path, cfg: FinetuneConfig, device: torch.device,
                   init_lora: str | Path | None = None) -> Session:
    """Load the base with the worker's loader, add an fp32 LoRA adapter — fresh (seeded), or continuing the
    parent version's adapter `init_lora` (same rank) — and build the optimiser."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from inference.ml.loading import PipelineSpec, load_pipeline

    cfg.validate()
    mixed_precision = resolve_mixed_precision(cfg.mixed_precision, device)
    accelerator = _accelerator(cfg, device, mixed_precision)
    if accelerator.num_processes > 1:  # under `accelerate launch` each process owns the device it was given
        device = accelerator.device
    pipe = load_pipeline(PipelineSpec(base=str(base_path)), device)
    if mixed_precision == "no" and pipe.unet.dtype != torch.float32:
        pipe.to(dtype=torch.float32)  # no autocast: frozen weights in fp32 too, or bf16 matmuls slip in
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the gaussian LoRA init draws from the global RNG
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if init_lora is not None:
        _set_adapter(unet, load_adapter_state(Path(init_lora)))
    cast_training_params(unet, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, eps=1e-8)
    # The LR scheduler stays outside accelerator.prepare: it is stepped once per optimiser step, on every process.
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.lr_warmup_steps)
    wrapped_unet, optimizer = accelerator.prepare(unet, optimizer)
    models = Models(unet=wrapped_unet, peft_unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=pipe.tokenizer,
                    noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), dtype=vae.dtype, device=device)
    return Session(cfg, accelerator, models, pipe, params, optimizer, lr_scheduler, device)


def step_generator(seed: int, step: int, micro: int, process: int) -> torch.Generator:
    """The generator of one micro-batch: a function of its position only, so a resumed run draws the same."""
    state = np.random.SeedSequence([seed, step, micro, process]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def train_step(session: Session, batches: Sequence[Batch], *, step: int) -> tuple[float, dict[str, float]]:
    """One optimiser step over `grad_accum` micro-batches; returns the mean loss and metrics (across processes)."""
    acc, cfg = session.accelerator, session.cfg
    losses, metrics = [], {}
    for micro, batch in enumerate(batches):
        with acc.accumulate(session.models.unet):
            loss, extra = compute_loss(session.models, batch, cfg,
                                       generator=step_generator(cfg.seed, step, micro, acc.process_index))
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(session.params, cfg.max_grad_norm)
            session.optimizer.step()
            session.optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        for key, value in extra.items():
            metrics.setdefault(key, []).append(value)
    session.lr_scheduler.step()
    summary = torch.stack([torch.stack(losses).mean()] + [torch.stack(v).mean() for v in metrics.values()])
    summary = acc.reduce(summary.float(), reduction="mean").tolist()
    return summary[0], dict(zip(metrics, summary[1:], strict=True))


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


def _check_data(cfg: FinetuneConfig, data: FinetuneData) -> None:
    need = {"domain": ("real",), "dpo": ("pairs",), "reward_weighted": ("synthetic",) + (("real",) if cfg.beta else ())}
    missing = [name for name in need[cfg.objective] if not getattr(data, name)]
    if missing:
        raise ValueError(f"the {cfg.objective} objective needs {' and '.join(missing)} data")


# --- checkpoints ---------------------------------------------------------------------------------------------------


def _peft_state(unet) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(unet).items()}


def save_adapter(state: dict[str, torch.Tensor], directory: Path, lora_config, weight_name: str = ADAPTER_FILE) -> Path:
    """A peft-format LoRA state → diffusers' LoRA safetensors (what `pipe.load_lora_weights` reads)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    StableDiffusionPipeline.save_lora_weights(
        directory, unet_lora_layers=convert_state_dict_to_diffusers(state), weight_name=weight_name,
        safe_serialization=True, unet_lora_adapter_metadata=lora_config.to_dict(),
    )
    return Path(directory) / weight_name


def load_adapter_state(path: Path) -> dict[str, torch.Tensor]:
    """diffusers' LoRA safetensors → the peft-format state `set_peft_model_state_dict` takes."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file

    raw = load_file(str(path))
    return convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in raw.items()})


def _set_adapter(unet, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"adapter keys do not match the model: {result.unexpected_keys[:3]}")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                       "has_gauss": np_state[3], "cached": np_state[4]}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints (their state.json written), oldest first."""
    found = [p for p in Path(out_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _save_checkpoint(session: Session, out_dir: Path, state: dict, best: dict | None) -> Path:
    """Written to a temporary folder and renamed, so a crash never leaves a half-written latest checkpoint."""
    step = state["step"]
    final, tmp = out_dir / f"checkpoint-{step}", out_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lora_config = session.models.peft_unet.peft_config["default"]
    save_adapter(_peft_state(session.models.peft_unet), tmp, lora_config)
    if best is not None:
        save_adapter(best, tmp, lora_config, BEST_ADAPTER_FILE)
    torch.save(session.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(session.lr_scheduler.state_dict(), tmp / "scheduler.pt")
    rng = _rng_state()
    if session.accelerator.scaler is not None:
        rng["grad_scaler"] = session.accelerator.scaler.state_dict()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(out_dir)[: -session.cfg.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(session: Session, path: Path) -> tuple[dict, dict | None]:
    state = json.loads((path / "state.json").read_text())
    stored = state["config"]
    changed = {k for k, v in session.cfg.as_dict().items() if stored.get(k) != v} - RESUMABLE_CHANGES
    if changed:
        raise ValueError(f"{path} was written with other settings ({', '.join(sorted(changed))}); "
                         "resume with the same configuration or start a new run")
    _set_adapter(session.models.peft_unet, load_adapter_state(path / ADAPTER_FILE))
    session.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=session.device))
    session.lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    rng = torch.load(path / "rng.pt")
    _set_rng_state(rng)
    if "grad_scaler" in rng and session.accelerator.scaler is not None:
        session.accelerator.scaler.load_state_dict(rng["grad_scaler"])
    best = load_adapter_state(path / BEST_ADAPTER_FILE) if (path / BEST_ADAPTER_FILE).exists() else None
    return state, best


# --- the loop ----------------------------------------------------------------------------------------------------


def run_finetune(
    base_path: str | Path,
    cfg: FinetuneConfig,
    data: FinetuneData | dict,
    out_dir: str | Path,
    *,
    device: torch.device,
    resume: bool = True,
    on_progress: Callable[[int, int, float, dict], None] | None = None,
    keep_pipeline: bool = False,
    init_lora: str | Path | None = None,
) -> FinetuneResult:
    """Train a LoRA adapter on `base_path` and write it to `out_dir`; resume from its latest checkpoint if asked.

    `on_progress(step, total, loss, extra)` is called after every optimiser step (after that step's checkpoint),
    on the main process; `extra` holds the objective's metrics, the LR and, when evaluated, `val_loss`. An
    exception raised from it stops the run, which a later call with `resume=True` continues. `init_lora` continues
    the parent version's adapter instead of a fresh one; DPO's reference stays the base with the adapter off."""
    data = data if isinstance(data, FinetuneData) else FinetuneData(**data)
    cfg.validate()
    _check_data(cfg, data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    session = setup_training(base_path, cfg, device, init_lora)
    acc, models = session.accelerator, session.models
    train_data, val_pairs = split_validation(cfg, data)
    _check_data(cfg, train_data)
    val_images = D.prepare_images([x[0] for x in val_pairs], cfg.resolution) if val_pairs else None
    val_prompts = [x[1] for x in val_pairs]
    rewards = D.normalise_rewards([x[2] for x in train_data.synthetic], cfg.reward_normalisation)
    sampler = BatchSampler(cfg, train_data, rewards, process=acc.process_index, processes=acc.num_processes)
    sizes = {"real": len(train_data.real), "synthetic": len(train_data.synthetic), "pairs": len(train_data.pairs),
             "val_real": len(val_pairs)}
    state: dict[str, Any] = {"step": 0, "data_position": sampler.cursors, "config": cfg.as_dict(),
                             "data_sizes": sizes, "losses": [], "val_losses": [], "best_val": None,
                             "best_step": None, "bad_evals": 0, "stopped_early": False}
    best: dict | None = None
    checkpoints = list_checkpoints(out_dir)
    if resume and checkpoints:
        state, best = _load_checkpoint(session, checkpoints[-1])
        if state["data_sizes"] != sizes:
            raise ValueError(f"{checkpoints[-1]} was trained on other data ({state['data_sizes']} vs {sizes})")
        state["config"] = cfg.as_dict()
        sampler.cursors = state["data_position"]
    else:
        if acc.is_main_process:
            for old in checkpoints:
                shutil.rmtree(old)
        acc.wait_for_everyone()

    def evaluate(step: int) -> float:
        nonlocal best
        value = validation_loss(models, val_images, val_prompts, cfg)
        state["val_losses"].append([step, value])
        if state["best_val"] is None or value < state["best_val"] - cfg.early_stopping_min_delta:
            state.update(best_val=value, best_step=step, bad_evals=0)
            best = _peft_state(models.peft_unet)
        else:
            state["bad_evals"] += 1
            if cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience:
                state["stopped_early"] = True
        return value

    if val_pairs and not state["val_losses"]:
        evaluate(0)  # the base model's held-out loss: the baseline the adapter must not get worse than
    while state["step"] < cfg.steps and not state["stopped_early"]:
        batches = [sampler.next_batch() for _ in range(cfg.grad_accum)]
        loss, extra = train_step(session, batches, step=state["step"])
        state["step"] += 1
        state["losses"].append(loss)
        extra["lr"] = session.lr_scheduler.get_last_lr()[0]
        step = state["step"]
        if val_pairs and step % cfg.val_every == 0:
            extra["val_loss"] = evaluate(step)
        done = step >= cfg.steps or state["stopped_early"]
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or done:
            if acc.is_main_process:
                _save_checkpoint(session, out_dir, state, best)
            acc.wait_for_everyone()
        if on_progress is not None and acc.is_main_process:
            on_progress(step, cfg.steps, loss, extra)

    if cfg.restore_best and best is not None:
        _set_adapter(models.peft_unet, best)
    lora_path = out_dir / ADAPTER_FILE
    if acc.is_main_process:
        save_adapter(_peft_state(models.peft_unet), out_dir, models.peft_unet.peft_config["default"])
    acc.wait_for_everyone()
    models.peft_unet.eval()
    return FinetuneResult(lora_path=lora_path, steps=state["step"], losses=list(state["losses"]),
                          val_losses=[tuple(v) for v in state["val_losses"]], stopped_early=state["stopped_early"],
                          best_step=state["best_step"] if best is not None else None,
                          pipeline=session.pipe if keep_pipeline else None)


def epochs_to_steps(n_images: int, epochs: float, cfg: FinetuneConfig, *, processes: int = 1) -> int:
    """Optimiser steps for `epochs` passes over `n_images` (e.g. the seed paper's 10 domain-adaptation epochs)."""
    per_step = cfg.batch_size * cfg.grad_accum * processes
    return max(1, math.ceil(n_images * epochs / per_step))
