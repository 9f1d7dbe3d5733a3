"""Finetuning settings: `FinetuneConfig` and the choices it validates against. Imports no torch, so the web side
(a round's launch form and its checks) reads them without loading the ML stack; the trainer is
`training.ml.finetune.loop`, its data records `training.ml.finetune.data`. No Django here."""

from __future__ import annotations

from dataclasses import dataclass

from inference.ml.config import Settings, option

#: How rewards become the synthetic images' loss weights (`training.ml.finetune.losses.normalise_rewards`).
REWARD_NORMALISATIONS = ("none", "minmax", "standardise", "exponential", "group")
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
        if self.reward_normalisation not in REWARD_NORMALISATIONS:
            raise ValueError(f"reward_normalisation must be one of {REWARD_NORMALISATIONS}")
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
