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
Settings, data and the batch order are in `training.ml.finetune.data`, adapter files and checkpoints in
`training.ml.finetune.checkpoints`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.ml.devices import precision_for
from inference.ml.loading import PipelineSpec, load_pipeline
from training.ml.finetune import losses as D
from training.ml.finetune.checkpoints import (
    ADAPTER_FILE,
    list_checkpoints,
    load_adapter_state,
    load_checkpoint,
    peft_state,
    save_adapter,
    save_checkpoint,
    set_adapter,
)
from training.ml.finetune.config import LORA_TARGETS, FinetuneConfig
from training.ml.finetune.data import (
    Batch,
    BatchSampler,
    FinetuneData,
    Models,
    Session,
    check_data,
    split_validation,
)

_VAL_SEED_OFFSET = 7_919  # the held-out loss uses its own fixed noise, not the training stream's


@dataclass
class FinetuneResult:
    lora_path: Path  # the final adapter file
    steps: int  # optimiser steps done in total (across resumptions)
    losses: list[float]  # training loss per optimiser step
    val_losses: list[tuple[int, float]]  # (step, held-out real loss); step 0 is before training
    stopped_early: bool
    best_step: int | None = None
    pipeline: Any = None  # the trained pipeline (adapter active), only with keep_pipeline=True


# --- the pure step ------------------------------------------------------------------------------------------------


def compute_loss(models: Models, batch: Batch, cfg: FinetuneConfig, *,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective's loss for one micro-batch and detached metrics. Pure: no optimiser, no state, no I/O."""
    device = models.device
    encode = lambda images: D.encode_images(models.vae, images, device, models.dtype, generator=generator)  # noqa: E731
    embed = lambda prompts: D.encode_prompts(models.tokenizer, models.text_encoder, prompts, device=device,  # noqa: E731
                                             policy=cfg.prompt_policy)
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
                                      device=models.device, policy=cfg.prompt_policy)
            per_sample = D.diffusion_loss_per_sample(models.unet, models.noise_scheduler, latents, embeds,
                                                     generator=generator)
            total += float(per_sample.sum())
            count += per_sample.shape[0]
    return total / max(count, 1)


# --- session: models, optimiser and the step ----------------------------------------------------------------------


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
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
                                target_modules=list(LORA_TARGETS[cfg.lora_targets])))
    if init_lora is not None:
        set_adapter(unet, load_adapter_state(Path(init_lora)))
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
    check_data(cfg, data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    session = setup_training(base_path, cfg, device, init_lora)
    acc, models = session.accelerator, session.models
    train_data, val_pairs = split_validation(cfg, data)
    check_data(cfg, train_data)
    val_images = D.prepare_images([x[0] for x in val_pairs], cfg.resolution) if val_pairs else None
    val_prompts = [x[1] for x in val_pairs]
    rewards = D.normalise_rewards([x[2] for x in train_data.synthetic], cfg.reward_normalisation,
                                  groups=[x[1] for x in train_data.synthetic], clip=cfg.reward_clip)
    sampler = BatchSampler(cfg, train_data, rewards, process=acc.process_index, processes=acc.num_processes)
    sizes = {"real": len(train_data.real), "synthetic": len(train_data.synthetic), "pairs": len(train_data.pairs),
             "val_real": len(val_pairs)}
    state: dict[str, Any] = {"step": 0, "data_position": sampler.cursors, "config": cfg.as_dict(),
                             "data_sizes": sizes, "losses": [], "val_losses": [], "best_val": None,
                             "best_step": None, "bad_evals": 0, "stopped_early": False}
    best: dict | None = None
    checkpoints = list_checkpoints(out_dir)
    if resume and checkpoints:
        state, best = load_checkpoint(session, checkpoints[-1])
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
            best = peft_state(models.peft_unet)
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
                save_checkpoint(session, out_dir, state, best)
            acc.wait_for_everyone()
        if on_progress is not None and acc.is_main_process:
            on_progress(step, cfg.steps, loss, extra)

    if cfg.restore_best and best is not None:
        set_adapter(models.peft_unet, best)
    lora_path = out_dir / ADAPTER_FILE
    if acc.is_main_process:
        save_adapter(peft_state(models.peft_unet), out_dir, models.peft_unet.peft_config["default"])
    acc.wait_for_everyone()
    models.peft_unet.eval()
    return FinetuneResult(lora_path=lora_path, steps=state["step"], losses=list(state["losses"]),
                          val_losses=[tuple(v) for v in state["val_losses"]], stopped_early=state["stopped_early"],
                          best_step=state["best_step"] if best is not None else None,
                          pipeline=session.pipe if keep_pipeline else None)
