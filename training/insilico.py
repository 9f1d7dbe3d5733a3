"""In-silico proof that the reward, not training as such, moves the generator toward what readers prefer.

No Django here. A `SimulatedReader` with a known, pixel-measurable preference (by default: brighter images) labels
images from a tiny generator; the reward model (`training.reward`) learns those labels; one reward-weighted finetune
(`training.finetune`) on its rewards must move the measured property of freshly generated images toward the
preference, and move it further than a control run whose rewards are permuted across the same images (same seed,
steps, noise, real-data term and configuration). The comparison is paired over shared sampling seeds.

The generator is the tiny random SD of `inference.tiny` with one change: its VAE is first fitted as an autoencoder
for a few seconds (`build_insilico_base`). With random VAE weights the pixel → latent → pixel round trip keeps no
pixel property (mean brightness of an image and of its reconstruction: Spearman 0.03), while finetuning works on
latents; so no finetune, however good its rewards, could move a pixel property. A real SD's VAE round-trips, so
the fitted tiny VAE is the faithful stand-in. The UNet and text encoder stay random.

    python -m training.insilico --out bench/results/insilico.json        # seeds 0, 1, 2 on the CPU
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.tiny import TEMPLATE_REPORTS, TinySDConfig

BASE_MARKER = "insilico.json"
CRITERIA = ("anatomy", "style", "artifacts")


def _opt(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


# --- the simulated reader ------------------------------------------------------------------------------------------


def mean_brightness(image: np.ndarray) -> float:
    """Mean grey level of the whole image, 0–1."""
    return float(np.asarray(image, np.float64).mean() / 255.0)


def centre_brightness(image: np.ndarray) -> float:
    """Mean grey level of the central half (by side) of the image, 0–1."""
    h, w = image.shape[:2]
    return float(np.asarray(image[h // 4 : h - h // 4, w // 4 : w - w // 4], np.float64).mean() / 255.0)


def centre_contrast(image: np.ndarray) -> float:
    """Mean grey level of the central half (by side) minus that of the rest of the image, −1–1."""
    h, w = image.shape[:2]
    pixels = np.asarray(image, np.float64) / 255.0
    centre = pixels[h // 4 : h - h // 4, w // 4 : w - w // 4]
    return float(centre.mean() - (pixels.sum() - centre.sum()) / (pixels.size - centre.size))


def contrast(image: np.ndarray) -> float:
    """Standard deviation of the grey levels, 0–1."""
    return float(np.asarray(image, np.float64).std() / 255.0)


PROPERTIES: dict[str, Callable[[np.ndarray], float]] = {
    "brightness": mean_brightness,
    "centre_brightness": centre_brightness,
    "centre_contrast": centre_contrast,
    "contrast": contrast,
}


@dataclass(frozen=True)
class SimulatedReader:
    """A reader whose taste is a known function of the pixels: `score(image)` = logistic((property − centre) ·
    direction / scale), in [0, 1]. `label` turns it into what real readers give: a realism share from `readers`
    noisy yes/no votes and rubric scores on a `rubric_levels`-point scale with per-criterion noise."""

    property: str = _opt("brightness", f"What the reader measures: one of {sorted(PROPERTIES)}.")
    direction: float = _opt(1.0, "+1: prefers higher values of the property; −1: lower.")
    centre: float = _opt(0.5, "Property value scored 0.5, in the property's units (0–1).")
    scale: float = _opt(0.02, "Property change per logistic unit of the score, property units.")
    noise: float = _opt(0.1, "Std of the per-criterion rubric noise, score units (0–1).")
    readers: int = _opt(5, "Simulated readers voting real/fake per image (the realism share's resolution).")
    rubric_levels: int = _opt(5, "Points of the rubric scale (e.g. 5 for a 1–5 Likert item).")
    criteria: tuple[str, ...] = _opt(CRITERIA, "Rubric criteria the reader scores.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(self.criteria))
        if self.property not in PROPERTIES:
            raise ValueError(f"property must be one of {sorted(PROPERTIES)}, not {self.property!r}")
        if self.scale <= 0 or self.direction == 0 or self.readers < 1 or self.rubric_levels < 2:
            raise ValueError("scale must be positive, direction non-zero, readers >= 1, rubric_levels >= 2")

    def measure(self, image: np.ndarray) -> float:
        return PROPERTIES[self.property](image)

    def score(self, image: np.ndarray) -> float:
        """The reader's noiseless preference for `image`, in [0, 1]."""
        z = np.clip(self.direction * (self.measure(image) - self.centre) / self.scale, -50, 50)
        return float(1.0 / (1.0 + math.exp(-z)))

    def label(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        """{"realism": share of readers voting real, "criteria": {name: normalised rubric score}}, noisy."""
        p = self.score(image)
        realism = float(rng.binomial(self.readers, p) / self.readers)
        steps = self.rubric_levels - 1
        criteria = {
            name: float(np.round(np.clip(p + rng.normal(0, self.noise), 0, 1) * steps) / steps)
            for name in self.criteria
        }
        return {"realism": realism, "criteria": criteria}

    def calibrated(self, images: Sequence[np.ndarray], *, quantile: float = 0.5, spread: float = 1.0
                   ) -> SimulatedReader:
        """The same reader centred on the `quantile` of `images` (in the preferred direction: 0.75 likes a quarter
        of them) with `scale` = `spread` × their std, so its scores span 0–1 on the images it will see."""
        values = np.array([self.measure(im) for im in images])
        q = quantile if self.direction > 0 else 1 - quantile
        return replace(self, centre=float(np.quantile(values, q)), scale=float(max(values.std(), 1e-6) * spread))

    def feedback(self, images: Sequence[np.ndarray], prompts: Sequence[str], rng: np.random.Generator):
        """`FeedbackItem`s for the reward model, one per image."""
        from training.reward import FeedbackItem

        items = []
        for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            lab = self.label(image, rng)
            items.append(FeedbackItem(image=image, prompt=prompt, realism=lab["realism"], criteria=lab["criteria"],
                                      image_id=f"sim-{i}"))
        return items


# --- the experiment's configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InSilicoConfig:
    """One in-silico run (per seed). The defaults are the tuned CPU settings the slow test uses."""

    reader: SimulatedReader = _opt(SimulatedReader(), "The simulated reader (calibrated on the base's images).")
    vae_channels: tuple[int, ...] = _opt((16, 16, 32, 32), "Tiny VAE block widths (4 blocks: 8x downsampling).")
    vae_norm_groups: int = _opt(8, "Tiny VAE GroupNorm groups.")
    vae_steps: int = _opt(300, "Autoencoder fitting steps of the tiny VAE (shared by all seeds).")
    vae_lr: float = _opt(2e-3, "Adam learning rate of the VAE fit.")
    vae_images: int = _opt(256, "Images the VAE is fitted on (half phantoms, half smooth textures).")
    vae_crop: int = _opt(32, "Side of the random crops the VAE is fitted on, px (it is convolutional).")
    unet_steps: int = _opt(400, "Full-UNet pretraining steps on phantoms (shared by all seeds).")
    unet_lr: float = _opt(1e-3, "AdamW learning rate of the UNet pretraining.")
    unet_images: int = _opt(256, "Phantoms (with their reports) the UNet is pretrained on.")
    reader_quantile: float = _opt(0.5, "Share of the base's images the calibrated reader scores below 0.5.")
    reader_spread: float = _opt(1.0, "The reader's logistic scale, in stds of the property over the base's images.")
    n_samples: int = _opt(96, "Images generated from the base, labelled, and used as the finetune's synthetic set.")
    n_heldout: int = _opt(64, "Other base images on which the reward model's Spearman with the reader is measured.")
    n_fresh: int = _opt(64, "Fresh sampling seeds shared by the base and both finetuned arms (the paired test).")
    n_real: int = _opt(64, "Real images (phantoms with reports) in the finetune's real-data term.")
    generation_steps: int = _opt(8, "Denoising steps per generated image.")
    guidance_scale: float = _opt(4.0, "Classifier-free guidance scale of the sampler.")
    reward_steps: int = _opt(60, "Reward-model optimiser steps (tiny preset).")
    finetune_steps: int = _opt(60, "Finetune optimiser steps per arm.")
    finetune_lr: float = _opt(1e-3, "LoRA learning rate.")
    rank: int = _opt(8, "LoRA rank.")
    beta: float = _opt(0.1, "Weight of the real-data loss in the reward-weighted objective.")
    batch_size: int = _opt(8, "Images per finetune micro-batch (real and synthetic together).")
    real_fraction: float = _opt(0.25, "Share of each micro-batch drawn from the real images.")
    reward_normalisation: str = _opt("minmax", "How rewards become weights: 'none', 'minmax' or 'standardise'.")
    alpha: float = _opt(0.01, "One-sided significance level the run is judged at.")

    @classmethod
    def from_dict(cls, data: dict) -> InSilicoConfig:
        data = dict(data)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown in-silico settings: {sorted(unknown)}")
        if isinstance(data.get("reader"), dict):
            data["reader"] = SimulatedReader(**data["reader"])
        for key in ("vae_channels",):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["reader"]["criteria"] = list(self.reader.criteria)
        out["vae_channels"] = list(self.vae_channels)
        return out


# --- the base: tiny random SD with a fitted VAE ----------------------------------------------------------------------


def _textures(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random textures with random mean grey level and contrast, float (n, size, size) in 0–1."""
    import cv2

    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), rng.uniform(1, 6))
        out[i] = np.clip(noise / noise.std() * rng.uniform(0.03, 0.25) + rng.uniform(0.2, 0.8), 0, 1)
    return out


def fit_vae(vae, cfg: InSilicoConfig, *, seed: int = 0) -> dict[str, float]:
    """Fit the VAE as an autoencoder (MSE + a tiny KL) on phantoms and smooth textures; set its scaling factor so
    the scaled latents have unit std, as SD's does. Returns the final loss and the fitted scaling factor."""
    from inference.phantoms import generate_phantoms

    rng = np.random.default_rng(seed)
    half = cfg.vae_images // 2
    phantoms = np.stack([p.image for p in generate_phantoms(half, seed=10_000 + seed, size=64)]) / np.float32(255)
    pixels = torch.from_numpy(np.concatenate([phantoms, _textures(cfg.vae_images - half, 64, rng)]))[:, None] * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    vae.requires_grad_(True).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    crop, losses = cfg.vae_crop, []
    for _ in range(cfg.vae_steps):
        idx = torch.randint(0, len(pixels), (16,), generator=gen)
        top, left = torch.randint(0, 64 - crop + 1, (2,), generator=gen).tolist()
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
    return {"final_loss": float(np.mean(losses[-20:])), "scaling_factor": scaling}


def pretrain_unet(pipe, cfg: InSilicoConfig, *, seed: int = 0) -> dict[str, float]:
    """Train the whole UNet briefly on phantoms and their reports (10% empty prompts, for guidance): the tiny
    stand-in for a generator that was pretrained and domain-adapted. Returns the first and last losses."""
    from diffusers import DDPMScheduler

    from inference.phantoms import generate_phantoms
    from training import diffusion as D

    phantoms = list(generate_phantoms(cfg.unet_images, seed=20_000 + seed, size=64))
    device = torch.device("cpu")
    latents = D.encode_images(pipe.vae, D.prepare_images([p.image for p in phantoms]), device, torch.float32)
    reports = [p.report for p in phantoms]
    empty = D.encode_prompts(pipe.tokenizer, pipe.text_encoder, [""], device=device)
    embeds = D.encode_prompts(pipe.tokenizer, pipe.text_encoder, reports, device=device)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet = pipe.unet.requires_grad_(True).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(cfg.unet_steps):
        idx = torch.randint(0, len(phantoms), (16,), generator=gen)
        drop = torch.rand(16, generator=gen) < 0.1
        text = torch.where(drop[:, None, None], empty, embeds[idx])
        loss = D.diffusion_loss_per_sample(unet, scheduler, latents[idx], text, generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    unet.requires_grad_(False).eval()
    return {"first_loss": float(np.mean(losses[:20])), "final_loss": float(np.mean(losses[-20:]))}


def build_insilico_base(base_dir: str | Path, cfg: InSilicoConfig | None = None, *, seed: int = 0) -> Path:
    """`base_dir/sd`: the tiny random SD with its VAE fitted (`fit_vae`); reused when built with the same settings."""
    from diffusers import StableDiffusionPipeline

    from inference.tiny import build_tiny_sd

    cfg = cfg or InSilicoConfig()
    path = Path(base_dir) / "sd"
    recipe = {"vae_channels": list(cfg.vae_channels), "vae_norm_groups": cfg.vae_norm_groups, "seed": seed,
              **{k: getattr(cfg, k) for k in ("vae_steps", "vae_lr", "vae_images", "vae_crop", "unet_steps",
                                              "unet_lr", "unet_images")}}
    marker = path / BASE_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("recipe") == recipe:
        return path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        build_tiny_sd(path, TinySDConfig(vae_block_out_channels=tuple(cfg.vae_channels),
                                         vae_norm_groups=cfg.vae_norm_groups, seed=seed))
        pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
        fit = fit_vae(pipe.vae, cfg, seed=seed)
        pretrain = pretrain_unet(pipe, cfg, seed=seed)
        pipe.vae.save_pretrained(str(path / "vae"))
        pipe.unet.save_pretrained(str(path / "unet"))
        marker.write_text(json.dumps({"recipe": recipe, "vae_fit": fit, "unet_pretraining": pretrain,
                                      "seconds": round(time.perf_counter() - started, 1)}))
    finally:
        torch.set_num_threads(threads)
    return path


# --- one run --------------------------------------------------------------------------------------------------------


def _requests(n: int, seed: int, stream: int) -> list:
    """`n` requests with sampling seeds unique to (seed, stream); prompts cycle through the template reports."""
    from inference.generation import Request

    seeds = np.random.SeedSequence([seed, stream]).generate_state(n, dtype=np.uint32)
    return [Request(i, TEMPLATE_REPORTS[i % len(TEMPLATE_REPORTS)], int(s) >> 1) for i, s in enumerate(seeds)]


def _generate(pipe, requests: Sequence, cfg: InSilicoConfig, device: torch.device) -> list[np.ndarray]:
    from inference.generation import GenerationConfig, generate

    gen = replace(GenerationConfig.tiny(), steps=cfg.generation_steps, guidance_scale=cfg.guidance_scale)
    return [image for _, image in generate(pipe, requests, gen, device=device)]


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """One-sided paired tests of "a is higher than b" over shared seeds: t-test and Wilcoxon signed-rank p-values,
    the mean difference and Cohen's d of the differences (d_z = mean / std)."""
    from scipy.stats import ttest_rel, wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a - b
    sd = diff.std(ddof=1)
    return {
        "mean_difference": float(diff.mean()),
        "cohens_d": float(diff.mean() / sd) if sd > 0 else float("inf") * np.sign(diff.mean()),
        "p_ttest": float(ttest_rel(a, b, alternative="greater").pvalue),
        "p_wilcoxon": float(wilcoxon(a, b, alternative="greater").pvalue),
        "share_higher": float((diff > 0).mean()),
    }


def _finetune_arm(base: Path, cfg: InSilicoConfig, seed: int, real, synthetic, out_dir: Path, device):
    from training.finetune import FinetuneConfig, FinetuneData, run_finetune

    ft = FinetuneConfig(
        objective="reward_weighted", beta=cfg.beta, reward_normalisation=cfg.reward_normalisation,
        real_fraction=cfg.real_fraction, lr=cfg.finetune_lr, steps=cfg.finetune_steps, batch_size=cfg.batch_size,
        rank=cfg.rank, alpha=float(cfg.rank), resolution=64, checkpoint_every=0, keep_last=1, val_every=0,
        early_stopping_patience=0, restore_best=False, seed=seed,
    )
    return run_finetune(base, ft, FinetuneData(real=real, synthetic=synthetic), out_dir, device=device,
                        resume=False)


def run_insilico(
    seed: int,
    *,
    base_dir: str | Path,
    cfg: InSilicoConfig | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> dict[str, Any]:
    """The whole proof for one seed (see the module docstring); `overrides` are `InSilicoConfig` fields. Returns a
    JSON-safe dict: the reward model's held-out Spearman with the reader, the property's mean for the base and both
    arms on the fresh seeds, the paired comparisons (reward arm vs control, reward arm vs base) and timings."""
    from scipy.stats import spearmanr

    from inference.loading import PipelineSpec, load_pipeline
    from inference.phantoms import generate_phantoms
    from training.reward import RewardConfig, reward, train_reward_model

    cfg = replace(cfg or InSilicoConfig(), **overrides)
    device = torch.device(device)
    base_dir = Path(base_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = build_insilico_base(base_dir, cfg)
        pipe = load_pipeline(PipelineSpec(base=str(base)), device)
        lap("base")
        train_req, held_req, fresh_req = (_requests(n, seed, k) for k, n in
                                          enumerate((cfg.n_samples, cfg.n_heldout, cfg.n_fresh)))
        images = _generate(pipe, train_req, cfg, device)
        held = _generate(pipe, held_req, cfg, device)
        fresh_base = _generate(pipe, fresh_req, cfg, device)
        del pipe
        lap("generate_base")

        reader = cfg.reader.calibrated(images, quantile=cfg.reader_quantile, spread=cfg.reader_spread)
        prompts = [r.prompt for r in train_req]
        items = reader.feedback(images, prompts, np.random.default_rng([seed, 11]))
        rcfg = RewardConfig.tiny(criteria=reader.criteria, steps=cfg.reward_steps, val_fraction=0.0, seed=seed)
        model, _ = train_reward_model(items, rcfg, device=device)
        held_reward = reward(model, held, [r.prompt for r in held_req]).cpu().numpy()
        spearman = float(spearmanr(held_reward, [reader.score(im) for im in held]).statistic)
        rewards = reward(model, images, prompts).cpu().numpy().astype(float)
        train_spearman = float(spearmanr(rewards, [reader.score(im) for im in images]).statistic)
        lap("reward_model")

        real = [(p.image, p.report) for p in generate_phantoms(cfg.n_real, seed=100_000 + 1_000 * seed, size=64)]
        permuted = rewards[np.random.default_rng([seed, 13]).permutation(len(rewards))]
        arms: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix=f"insilico-seed{seed}-", dir=base_dir) as work:
            for name, arm_rewards in (("reward", rewards), ("control", permuted)):
                synthetic = [(im, p, float(r)) for im, p, r in zip(images, prompts, arm_rewards, strict=True)]
                result = _finetune_arm(base, cfg, seed, real, synthetic, Path(work) / name, device)
                lap(f"finetune_{name}")
                tuned = load_pipeline(PipelineSpec(base=str(base), lora=str(result.lora_path)), device)
                arms[name] = {"fresh": _generate(tuned, fresh_req, cfg, device), "losses": result.losses}
                del tuned
                lap(f"generate_{name}")

        measure = reader.measure
        prop = {"base": [measure(im) for im in fresh_base],
                **{name: [measure(im) for im in arm["fresh"]] for name, arm in arms.items()}}
        vs_control = paired_comparison(prop["reward"], prop["control"])
        vs_base = paired_comparison(prop["reward"], prop["base"])
        control_vs_base = paired_comparison(prop["control"], prop["base"])
        base_sd = float(np.std(prop["base"], ddof=1))
        sign = 1.0 if reader.direction > 0 else -1.0
        if sign < 0:  # "higher" in the tests means "more preferred"
            vs_control = paired_comparison([-v for v in prop["reward"]], [-v for v in prop["control"]])
            vs_base = paired_comparison([-v for v in prop["reward"]], [-v for v in prop["base"]])
            control_vs_base = paired_comparison([-v for v in prop["control"]], [-v for v in prop["base"]])
        timings["total"] = round(sum(timings.values()), 2)
    finally:
        torch.set_num_threads(threads)

    w = np.asarray(_normalised(rewards, cfg.reward_normalisation))
    train_prop = np.array([measure(im) for im in images])
    return _json_safe({
        "seed": seed,
        "property": reader.property,
        "direction": reader.direction,
        "reader": asdict(reader),
        "reward_model": {"heldout_spearman": spearman, "train_spearman": train_spearman,
                         "heldout_images": cfg.n_heldout},
        "training_set": {"images": cfg.n_samples, "mean_property": float(train_prop.mean()),
                         "reward_weighted_mean_property": float((w * train_prop).sum() / w.sum()),
                         "control_weighted_mean_property":
                             float((np.asarray(_normalised(permuted, cfg.reward_normalisation)) * train_prop).sum()
                                   / np.asarray(_normalised(permuted, cfg.reward_normalisation)).sum())},
        "means": {k: float(np.mean(v)) for k, v in prop.items()},
        "base_sd": base_sd,
        "reward_vs_control": vs_control,
        "reward_vs_base": vs_base,
        "control_vs_base": control_vs_base,
        "shift_in_base_sd": {k: (float(np.mean(prop[k])) - float(np.mean(prop["base"]))) / base_sd
                             for k in ("reward", "control")},
        "passed": bool(vs_control["p_ttest"] < cfg.alpha and vs_base["mean_difference"] > 0),
        "finetune_losses": {name: [round(x, 5) for x in arm["losses"]] for name, arm in arms.items()},
        "fresh_images": cfg.n_fresh,
        "timings_s": timings,
        "config": cfg.as_dict(),
    })


def _normalised(rewards: np.ndarray, mode: str) -> np.ndarray:
    from training.diffusion import normalise_rewards

    return normalise_rewards(rewards, mode)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    return obj
