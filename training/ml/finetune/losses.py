"""Pure building blocks of diffusion finetuning: images → latents, prompts → embeddings, per-sample losses.

No Django, no optimiser, no I/O: every function maps tensors (and frozen modules) to tensors, so the objectives
are unit-tested on CPU and reused unchanged by the training loop (`training.finetune`) and the benchmark.

Objectives (all built from the per-sample denoising loss `diffusion_loss_per_sample`, the MSE of the UNet's
prediction against the scheduler's target, averaged over C×H×W):

- domain adaptation: mean loss on real image–report pairs (diffusers' `train_text_to_image_lora.py`);
- reward weighted (Lee et al. 2023, as used by the pathologist-in-the-loop seed paper):
  `beta · mean(L(real)) + mean(r · L(synthetic))`; the real term keeps the model close to the data;
- Diffusion-DPO (Wallace et al. 2023): `-log σ(-β/2 · ((Lθ(w) - Lθ(l)) - (Lref(w) - Lref(l))))` with the same noise
  and timestep for the chosen (w) and rejected (l) image of a pair; the reference is the same UNet with its LoRA
  adapter switched off (`adapters_disabled`), so no second UNet is held in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from inference.ml.prompts import encode_prompts as prompts_encode
from training.ml.finetune.config import REWARD_NORMALISATIONS

# --- inputs ---------------------------------------------------------------------------------------------------


def _to_gray_float(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3); uint8 0–255 or float 0–1 → float32 (H, W) in 0–1."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3:
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3] @ np.array([0.299, 0.587, 0.114])
    if array.ndim != 2:
        raise ValueError(f"expected a grayscale (H, W) or (H, W, 3) image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def prepare_images(images: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
                   resolution: int | None = None) -> torch.Tensor:
    """Grayscale images → float tensor (B, 1, R, R) in 0–1: shorter side resized to `resolution` (area / bilinear),
    then centre-cropped, as diffusers' text-to-image examples do. No random flips: laterality matters in a CXR."""
    out = []
    for image in images:
        gray = _to_gray_float(image)
        if resolution is not None and gray.shape != (resolution, resolution):
            h, w = gray.shape
            scale = resolution / min(h, w)
            size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            top, left = (gray.shape[0] - resolution) // 2, (gray.shape[1] - resolution) // 2
            gray = gray[top : top + resolution, left : left + resolution]
        out.append(torch.from_numpy(np.ascontiguousarray(gray)))
    return torch.stack(out).unsqueeze(1)


def encode_images(vae, images, device: torch.device, dtype: torch.dtype, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (uint8 (B, H, W), float 0–1, or a prepared (B, 1|3, H, W) tensor) → scaled VAE latents (B, 4, H/8, W/8).

    Grayscale is repeated to 3 channels and mapped to [-1, 1] as SD expects. With a generator the latent is sampled
    from the VAE posterior (as in training scripts), its noise drawn on the generator's device so runs are
    reproducible on any accelerator; without one the posterior mean is used."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        pixels = images.float()
        if images.dtype == torch.uint8:
            pixels = pixels / 255.0
    else:
        pixels = prepare_images(images)
    if pixels.shape[1] == 1:
        pixels = pixels.repeat(1, 3, 1, 1)
    pixels = (pixels * 2.0 - 1.0).to(device=device, dtype=dtype)
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.mean
        if generator is not None:
            eps = torch.randn(latents.shape, generator=generator, device=generator.device, dtype=torch.float32)
            latents = latents + posterior.std * eps.to(device=device, dtype=latents.dtype)
    return latents * vae.config.scaling_factor


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], *, device: torch.device | None = None,
                   policy: str = "truncate") -> torch.Tensor:
    """Prompts → the text encoder's last hidden states (B, 77·k, D) under the study's prompt policy, the same
    encoding sampling uses (`inference.ml.prompts`): truncated to 77 tokens as in SD, or 77-token chunks."""
    return prompts_encode(tokenizer, text_encoder, list(prompts), policy=policy, device=device)


# --- the denoising loss ---------------------------------------------------------------------------------------


def sample_noise(latents: torch.Tensor, num_train_timesteps: int, generator: torch.Generator | None,
                 *, share_pairs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise and uniform timesteps for a batch of latents, drawn from `generator` (on its device).

    With `share_pairs` the batch is [chosen..., rejected...] and both halves get the same noise and timesteps,
    as Diffusion-DPO requires."""
    n = latents.shape[0] // 2 if share_pairs else latents.shape[0]
    gen_device = generator.device if generator is not None else latents.device
    noise = torch.randn((n, *latents.shape[1:]), generator=generator, device=gen_device, dtype=torch.float32)
    timesteps = torch.randint(0, num_train_timesteps, (n,), generator=generator, device=gen_device)
    if share_pairs:
        noise, timesteps = noise.repeat(2, 1, 1, 1), timesteps.repeat(2)
    return noise.to(latents.device, latents.dtype), timesteps.to(latents.device)


def diffusion_loss_per_sample(unet, noise_scheduler, latents: torch.Tensor, text_embeds: torch.Tensor, *,
                              noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample denoising loss (B,), float32: MSE between the UNet output and the target of the scheduler's
    `prediction_type` ("epsilon": the noise; "v_prediction": the velocity), averaged over C×H×W.

    Noise and timesteps are taken as given or drawn from `generator`."""
    if noise is None or timesteps is None:
        drawn_noise, drawn_t = sample_noise(latents, noise_scheduler.config.num_train_timesteps, generator)
        noise = drawn_noise if noise is None else noise
        timesteps = drawn_t if timesteps is None else timesteps
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction type {prediction_type!r}")
    pred = unet(noisy, timesteps, text_embeds.to(noisy.dtype), return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


@contextlib.contextmanager
def adapters_disabled(unet) -> Iterator[None]:
    """The base model: LoRA adapters off inside the block, back on (and trainable again) after it.

    peft switches `requires_grad` off with the adapters; re-enabling restores it, even if the block raises."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


# --- objectives -----------------------------------------------------------------------------------------------


def normalise_rewards(rewards: Sequence[float] | np.ndarray, mode: str = "none", *,
                      groups: Sequence[str] | None = None, clip: float = 0.0) -> np.ndarray:
    """Rewards as per-sample weights, normalised over the WHOLE synthetic set (not per batch, so a weight does not
    depend on what it was batched with):

    - "none": as given (the seed paper: reward-model scores in [0, 1], or 0/1 expert labels);
    - "minmax": mapped to [0, 1] (lowest → 0 weight, highest → 1); a constant set maps to all ones;
    - "standardise": z-scores. Negative weights *raise* the loss of bad images, which is unbounded below, so keep
      `beta` > 0 and bound them with `clip`;
    - "exponential": exp(z) over the z-scores, divided by its mean (advantage-weighted regression, Peng et al.
      2019): every weight positive (no loss is ever raised), mean 1, an image 1 SD better weighted e ≈ 2.7× more;
    - "group": group-relative advantages (as Flow-GRPO / DanceGRPO): z-scores within each group of `groups` (the
      samples of one prompt), so a weight says how a sample compares with its siblings, not how easy its prompt
      is; a group of one (or of equal rewards) weighs 0.

    `clip` > 0 bounds the z-scored weights ("standardise", "group") to [−clip, clip].
    """
    r = np.asarray(rewards, dtype=np.float64)
    if mode not in REWARD_NORMALISATIONS:
        raise ValueError(f"reward normalisation must be one of {REWARD_NORMALISATIONS}, not {mode!r}")
    if mode == "none" or r.size == 0:
        return r
    if mode == "minmax":
        span = r.max() - r.min()
        return np.ones_like(r) if span == 0 else (r - r.min()) / span
    if mode == "group":
        if groups is None or len(groups) != r.size:
            raise ValueError("group-relative weights need one group (prompt) per reward")
        z = np.zeros_like(r)
        keys = np.asarray(list(groups), dtype=object)
        for key in dict.fromkeys(keys.tolist()):
            members = keys == key
            z[members] = _zscores(r[members])
        return np.clip(z, -clip, clip) if clip > 0 else z
    z = _zscores(r)
    if mode == "standardise":
        return np.clip(z, -clip, clip) if clip > 0 else z
    w = np.exp(np.clip(z, -10, 10))
    return w / w.mean()


def _zscores(r: np.ndarray) -> np.ndarray:
    std = r.std()
    return np.zeros_like(r) if std == 0 else (r - r.mean()) / std


def reward_weighted_loss(per_sample_real: torch.Tensor, per_sample_synth: torch.Tensor, rewards: torch.Tensor,
                         beta: float) -> torch.Tensor:
    """`beta · mean(L(real)) + mean(r · L(synthetic))` (Lee et al. 2023; the seed paper uses beta = 0.3).

    `rewards` are used as given: normalise them beforehand with `normalise_rewards`. An empty real batch adds 0."""
    real = per_sample_real.mean() if per_sample_real.numel() else per_sample_synth.new_zeros(())
    weights = rewards.to(per_sample_synth.device, per_sample_synth.dtype)
    return beta * real + (weights * per_sample_synth).mean()


def dpo_loss(model_losses_w: torch.Tensor, model_losses_l: torch.Tensor, ref_losses_w: torch.Tensor,
             ref_losses_l: torch.Tensor, beta_dpo: float) -> torch.Tensor:
    """Diffusion-DPO (Wallace et al. 2023, eq. 14 with the per-timestep weight folded into beta):
    `mean(-log σ(-beta_dpo/2 · ((Lθ(w) - Lθ(l)) - (Lref(w) - Lref(l)))))`.

    The loss falls when the model denoises the chosen image better (relative to the reference) than the rejected
    one. At initialisation (LoRA up-weights zero, so model = reference) it equals log 2. The paper uses
    beta_dpo = 2500 (SD 1.5) / 5000 (SDXL)."""
    inside = -0.5 * beta_dpo * ((model_losses_w - model_losses_l) - (ref_losses_w - ref_losses_l))
    return -F.logsigmoid(inside).mean()


def dpo_implicit_accuracy(model_losses_w, model_losses_l, ref_losses_w, ref_losses_l) -> torch.Tensor:
    """Share of pairs where the model prefers the chosen image more than the reference does (ties count half)."""
    margin = (ref_losses_w - ref_losses_l) - (model_losses_w - model_losses_l)
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
