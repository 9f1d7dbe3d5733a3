"""The in-silico proof's settings and generator: `InSilicoConfig` and the tiny SD base shared by all seeds.

No Django here. The generator is `inference.tiny`'s random SD with two short fits, done once and shared by all
seeds (`build_insilico_base`), because the random model cannot carry the proof:

- its VAE is fitted as an autoencoder. With random weights the pixel → latent → pixel round trip keeps no pixel
  property (brightness of an image vs of its reconstruction: Spearman 0.03), and finetuning sees only latents;
- its UNet is pretrained on phantoms (a tiny stand-in for SD domain-adapted to CXRs). A LoRA on the attention
  layers of a random UNet barely learns anything in a CPU budget (its loss does not fall in 300 steps), so both
  arms only drift.

The default preference is `centre_contrast` (centre of the image brighter than its surround), not plain brightness:
the tiny UNet normalises each channel (GroupNorm with one channel per group) right before its output, so it cannot
move a latent channel's spatial mean, which is what whole-image brightness is; brightness labels are learnt
(reward-model Spearman 0.98) but neither arm's brightness can follow them.

The proof itself (`run_insilico`, `paired_comparison` and the command line) is in `training.ml.insilico`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference.ml.config import Settings, option
from inference.ml.phantoms import generate_phantoms
from inference.ml.tiny import TinySDConfig, build_tiny_sd
from training.ml.finetune import losses as D
from training.ml.simulated_reader import SimulatedReader

Progress = Callable[[str, int, int], None]  # (stage, done, total)

BASE_MARKER = "insilico.json"


# --- configuration -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InSilicoConfig(Settings):
    """One in-silico run (per seed). The defaults are the tuned CPU settings the slow test uses."""

    reader: SimulatedReader = option(
        SimulatedReader(), "The simulated reader; calibrated on the base's images."
    )
    reader_quantile: float = option(0.5, "Share of the base's images the calibrated reader scores below 0.5.")
    reader_spread: float = option(
        1.0, "The reader's logistic scale, in stds of the property over the base's images."
    )
    image_size: int = option(64, "Side of the images the base is fitted on and samples, px (multiple of 8).")
    unet_channels: tuple[int, ...] = option((32, 64), "Tiny UNet block widths (2 or 3 levels).")
    vae_channels: tuple[int, ...] = option(
        (16, 16, 32, 32), "Tiny VAE block widths (4 blocks: 8x downsampling)."
    )
    vae_norm_groups: int = option(8, "Tiny VAE GroupNorm groups.")
    vae_steps: int = option(300, "Autoencoder fitting steps of the tiny VAE, batch 16 (shared by all seeds).")
    vae_lr: float = option(2e-3, "Adam learning rate of the VAE fit.")
    vae_images: int = option(256, "Images the VAE is fitted on: half phantoms, half smooth random textures.")
    vae_crop: int = option(32, "Side of the random crops the VAE is fitted on, px (it is convolutional).")
    unet_steps: int = option(400, "Full-UNet pretraining steps on phantoms, batch 16 (shared by all seeds).")
    unet_lr: float = option(1e-3, "AdamW learning rate of the UNet pretraining.")
    unet_images: int = option(256, "Phantoms (with their reports) the UNet is pretrained on.")
    unet_batch: int = option(16, "Images per UNet pretraining step.")
    unet_cosine: bool = option(False, "Anneal the UNet learning rate to zero (cosine) over its steps.")
    n_samples: int = option(
        96, "Base images labelled by the reader: the reward model's and the finetune's set."
    )
    n_heldout: int = option(
        64, "Other base images on which the reward model's Spearman with the reader is measured."
    )
    n_fresh: int = option(
        64, "Fresh sampling seeds shared by the base and both finetuned arms (the paired tests)."
    )
    n_real: int = option(
        64, "Phantoms (with reports) in the finetune's real-data term, the same for both arms."
    )
    generation_steps: int = option(8, "Denoising steps per generated image.")
    guidance_scale: float = option(4.0, "Classifier-free guidance scale of the sampler.")
    reward_steps: int = option(150, "Reward-model optimiser steps (otherwise `RewardConfig.tiny()`).")
    finetune_steps: int = option(150, "Finetune optimiser steps per arm.")
    finetune_lr: float = option(
        1e-3, "LoRA learning rate (5e-3 and above made both arms drift apart at random)."
    )
    rank: int = option(8, "LoRA rank (alpha = rank).")
    beta: float = option(
        0.02, "Weight of the real-data loss; at 0.1 its pull outweighed the reward in 150 steps."
    )
    batch_size: int = option(8, "Images per finetune micro-batch, real and synthetic together.")
    real_fraction: float = option(0.25, "Share of each finetune micro-batch drawn from the real images.")
    reward_normalisation: str = option(
        "standardise",
        "How rewards become weights: 'none', 'minmax' or 'standardise'. Standardised weights also push away from "
        "low-reward samples: over these 150 steps that moved the property 1.5-1.8 base SDs (minmax: 0.1-0.25, too "
        "close to the base to count as moved on every tokenizer/base build).",
    )
    significance: float = option(0.01, "One-sided level at which a run counts as passed.")

    what = "in-silico settings"

    @classmethod
    def _inflate(cls, data: dict) -> dict:
        if isinstance(data.get("reader"), dict):
            data["reader"] = SimulatedReader.from_dict(data["reader"])
        for key in ("vae_channels", "unet_channels"):
            if key in data:
                data[key] = tuple(data[key])
        return data


def demo_base_config() -> InSilicoConfig:
    """The demo's base, built offline and shipped in the repository (`weights/tiny-demo`, by `manage.py
    build_tiny_bases`): the same recipe at 128 px
    with a three-level UNet and a wider VAE, trained ten times longer (about an hour on one CPU thread; 68 minutes here, sharing the machine), so its
    samples show the phantoms' lungs, heart and ribs at reading size instead of blurred blobs."""
    return InSilicoConfig(image_size=128, unet_channels=(32, 64, 64), vae_channels=(32, 32, 64, 64), vae_steps=1500,
                          vae_images=512, unet_steps=4000, unet_images=1024, unet_cosine=True)


#: The bases shipped in the repository (weights/<name>), by name: the recipe each is built from.
SHIPPED_BASES = {"tiny-domain": InSilicoConfig, "tiny-demo": demo_base_config}


# --- the base: tiny SD with a fitted VAE and a pretrained UNet -------------------------------------------------------


def _textures(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random textures of random mean grey level and contrast, float (n, size, size) in 0–1."""
    import cv2

    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        noise = cv2.GaussianBlur(
            rng.standard_normal((size, size)).astype(np.float32), (0, 0), rng.uniform(1, 6)
        )
        out[i] = np.clip(noise / noise.std() * rng.uniform(0.03, 0.25) + rng.uniform(0.2, 0.8), 0, 1)
    return out


def fit_vae(vae, cfg: InSilicoConfig, *, seed: int = 0, progress: Progress | None = None) -> dict[str, float]:
    """Fit the VAE as an autoencoder (MSE + a tiny KL) on phantoms and smooth textures, then set its scaling factor
    so that scaled latents have unit std, as SD's does."""
    rng = np.random.default_rng(seed)
    half = cfg.vae_images // 2
    size = cfg.image_size
    phantoms = np.stack([p.image for p in generate_phantoms(half, seed=10_000 + seed, size=size)]) / np.float32(
        255
    )
    pixels = (
        torch.from_numpy(np.concatenate([phantoms, _textures(cfg.vae_images - half, size, rng)]))[:, None] * 2
        - 1
    )
    gen = torch.Generator().manual_seed(seed)
    vae.requires_grad_(True).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    crop, losses = cfg.vae_crop, []
    for step in range(cfg.vae_steps):
        if progress is not None and step % 25 == 0:
            progress("fitting the tiny VAE", step, cfg.vae_steps)
        idx = torch.randint(0, len(pixels), (16,), generator=gen)
        top, left = torch.randint(0, size - crop + 1, (2,), generator=gen).tolist()
        x = pixels[idx, :, top : top + crop, left : left + crop].repeat(1, 3, 1, 1)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        loss = torch.nn.functional.mse_loss(vae.decode(z).sample, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        latents = vae.encode(pixels[:64].repeat(1, 3, 1, 1)).latent_dist.mean
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    return {
        "first_loss": float(np.mean(losses[:20])),
        "final_loss": float(np.mean(losses[-20:])),
        "scaling_factor": scaling,
    }


def pretrain_unet(pipe, cfg: InSilicoConfig, *, seed: int = 0, progress: Progress | None = None) -> dict[str, float]:
    """Train the whole UNet briefly on phantoms and their reports (10% empty prompts, so guidance has an
    unconditional model to work from)."""
    from diffusers import DDPMScheduler

    phantoms = list(generate_phantoms(cfg.unet_images, seed=20_000 + seed, size=cfg.image_size))
    cpu = torch.device("cpu")
    latents = D.encode_images(pipe.vae, D.prepare_images([p.image for p in phantoms]), cpu, torch.float32)
    embeds = D.encode_prompts(pipe.tokenizer, pipe.text_encoder, [p.report for p in phantoms], device=cpu)
    empty = D.encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], device=cpu)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet = pipe.unet.requires_grad_(True).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.0)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.unet_steps) if cfg.unet_cosine else None)
    gen = torch.Generator().manual_seed(seed)
    losses, batch = [], cfg.unet_batch
    for step in range(cfg.unet_steps):
        if progress is not None and step % 25 == 0:
            progress("pretraining the tiny UNet", step, cfg.unet_steps)
        idx = torch.randint(0, len(phantoms), (batch,), generator=gen)
        text = torch.where((torch.rand(batch, generator=gen) < 0.1)[:, None, None], empty, embeds[idx])
        loss = D.diffusion_loss_per_sample(unet, scheduler, latents[idx], text, generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if schedule is not None:
            schedule.step()
        losses.append(float(loss.detach()))
    unet.requires_grad_(False).eval()
    return {"first_loss": float(np.mean(losses[:20])), "final_loss": float(np.mean(losses[-20:]))}


def _built_with(path: Path, recipe: dict) -> bool:
    marker = path / BASE_MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("recipe") == recipe


def _copy_shipped(source: Path, path: Path, recipe: dict) -> None:
    """Copy a shipped base into place through a staging folder, so a web process and a worker starting together
    never see half a copy."""
    staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(path, ignore_errors=True)
    try:
        staging.rename(path)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not _built_with(path, recipe):  # not another process's finished copy
            raise


def build_insilico_base(base_dir: str | Path, cfg: InSilicoConfig | None = None, *, seed: int = 0,
                        shipped: str | Path | None = None, progress: Progress | None = None) -> Path:
    """`base_dir/sd`: the tiny SD with its VAE fitted and its UNet pretrained, reused when already built with the
    same recipe, copied from `shipped/sd` (a copy kept in the repository) when that one was built with it, else
    built here: on the CPU with one thread (the thread count is restored), `progress(stage, done, total)` called as
    it goes (a few CPU minutes for the default recipe, about an hour for `demo_base_config()`)."""
    from diffusers import StableDiffusionPipeline

    cfg = cfg or InSilicoConfig()
    path = Path(base_dir) / "sd"
    keys = (
        "image_size",
        "unet_channels",
        "unet_batch",
        "unet_cosine",
        "vae_channels",
        "vae_norm_groups",
        "vae_steps",
        "vae_lr",
        "vae_images",
        "vae_crop",
        "unet_steps",
        "unet_lr",
        "unet_images",
    )
    defaults = InSilicoConfig().as_dict()  # settings at their defaults stay out, so older caches keep their recipe
    recipe = {"seed": seed, **{k: v for k, v in cfg.as_dict().items()
                               if k in keys and (k in keys[4:] or v != defaults[k])}}
    if _built_with(path, recipe):
        return path
    if shipped is not None and _built_with(Path(shipped) / "sd", recipe):
        path.parent.mkdir(parents=True, exist_ok=True)
        _copy_shipped(Path(shipped) / "sd", path, recipe)
        return path
    marker = path / BASE_MARKER
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        build_tiny_sd(
            path,
            TinySDConfig(
                sample_size=cfg.image_size // 8, block_out_channels=tuple(cfg.unet_channels),
                attention_head_dim=tuple(min(2 ** (i + 1), 8) for i in range(len(cfg.unet_channels))),
                vae_block_out_channels=tuple(cfg.vae_channels), vae_norm_groups=cfg.vae_norm_groups, seed=seed
            ),
        )
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
        vae_fit = fit_vae(pipe.vae, cfg, seed=seed, progress=progress)
        unet_fit = pretrain_unet(pipe, cfg, seed=seed, progress=progress)
        if progress is not None:
            progress("pretraining the tiny UNet", cfg.unet_steps, cfg.unet_steps)
        pipe.vae.save_pretrained(str(path / "vae"))
        pipe.unet.save_pretrained(str(path / "unet"))
        marker.write_text(
            json.dumps(
                {
                    "recipe": recipe,
                    "vae_fit": vae_fit,
                    "unet_pretraining": unet_fit,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
        )
    finally:
        torch.set_num_threads(threads)
    return path
