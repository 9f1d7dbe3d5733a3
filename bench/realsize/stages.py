"""Measurements of bench/gpu_realsize.py: one generation / inpainting pipeline call, one LoRA finetuning step."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from .device import memory_gib, reset_peak, synchronize
from .models import BETAS, SCALING_FACTOR, Models, scheduler_for_inference


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure_generation(
    models: Models, *, batch: int, steps: int, repeats: int, inpaint: bool = False, warmup_steps: int = 3
) -> dict[str, Any]:
    """One pipeline call = text encoder on 2*batch prompts (cond + uncond) + ``steps`` CFG UNet steps + VAE decode."""
    device, res = models.device, models.sizes.resolution
    unet = models.unet("inpaint" if inpaint else "gen")
    pipe_cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = pipe_cls(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler_for_inference(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    ids = models.token_ids(2 * batch)
    extra: dict[str, Any] = {}
    if inpaint:
        gen = torch.Generator().manual_seed(7)
        extra["image"] = torch.rand(batch, 3, res, res, generator=gen)
        mask = torch.zeros(batch, 1, res, res)
        mask[:, :, res // 4 : 3 * res // 4, res // 4 : 3 * res // 4] = 1.0
        extra["mask_image"] = mask

    def call(n_steps: int) -> None:
        with torch.inference_mode():
            embeds = models.text_encoder(ids, return_dict=False)[0]
            cond, uncond = embeds[:batch], embeds[batch:]
            pipe(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond,
                height=res,
                width=res,
                num_inference_steps=n_steps,
                guidance_scale=4.0,
                generator=torch.Generator(device="cpu").manual_seed(0),
                output_type="pil",
                **extra,
            )

    call(min(warmup_steps, steps))  # same shapes as the timed calls: kernels picked, allocator warmed
    reset_peak(device)
    times = [timed(lambda: call(steps), device) for _ in range(repeats)]
    mean = statistics.mean(times)
    return dict(
        times_s=[round(t, 4) for t in times],
        mean_s=round(mean, 4),
        images_per_s=round(batch / mean, 4),
        s_per_image=round(mean / batch, 4),
        unet_steps_per_s=round(steps / mean, 3),  # includes text encoder + VAE decode overhead
        **memory_gib(device),
    )


def lora_train_step(
    models: Models,
    unet: UNet2DConditionModel,
    noise_scheduler: DDPMScheduler,
    optimizer: torch.optim.Optimizer,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    autocast: contextlib.AbstractContextManager,
) -> torch.Tensor:
    """The body of diffusers' train_text_to_image_lora.py: epsilon-prediction MSE on VAE latents."""
    with torch.no_grad():
        latents = models.vae.encode(pixel_values.to(models.dtype)).latent_dist.sample() * SCALING_FACTOR
        encoder_hidden_states = models.text_encoder(input_ids, return_dict=False)[0]
    noise = torch.randn_like(latents)
    bsz = latents.shape[0]
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device
    ).long()
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    with autocast:
        pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
    loss.backward()
    params = [p for p in unet.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure_finetune(
    models: Models, *, batch: int, steps: int, grad_checkpointing: bool = False
) -> dict[str, Any]:
    device, res = models.device, models.sizes.resolution
    unet = models.unet("lora")
    if grad_checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    noise_scheduler = DDPMScheduler(**BETAS, prediction_type="epsilon")
    gen = torch.Generator().manual_seed(3)
    pixel_values = (torch.rand(batch, 3, res, res, generator=gen) * 2 - 1).to(device)
    input_ids = models.token_ids(batch)
    use_autocast = device.type != "cpu"
    autocast = torch.autocast(device_type=device.type, dtype=models.dtype, enabled=use_autocast)

    # warm-up (also allocates AdamW state)
    lora_train_step(models, unet, noise_scheduler, optimizer, pixel_values, input_ids, autocast)
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        losses.append(
            lora_train_step(models, unet, noise_scheduler, optimizer, pixel_values, input_ids, autocast)
        )
    synchronize(device)
    total = time.perf_counter() - start
    last_loss = float(losses[-1])
    unet.disable_gradient_checkpointing()
    return dict(
        steps_timed=steps,
        total_s=round(total, 4),
        s_per_step=round(total / steps, 4),
        steps_per_s=round(steps / total, 4),
        images_per_s=round(batch * steps / total, 4),
        last_loss=last_loss,
        **memory_gib(device),
    )
