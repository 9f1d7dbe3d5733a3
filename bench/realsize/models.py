"""Models of bench/gpu_realsize.py: SD 2.1-base (and tiny CPU) configs, built with random weights on the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .device import free_memory

SCALING_FACTOR = 0.18215  # SD 2.x VAE latent scale
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@dataclass(frozen=True)
class Sizes:
    """Model and run sizes; ``real()`` is SD 2.1-base, ``tiny()`` runs the same code on a CPU."""

    resolution: int
    gen_steps: int
    inpaint_steps: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]

    @classmethod
    def real(cls) -> Sizes:
        return cls(
            resolution=512,
            gen_steps=75,
            inpaint_steps=50,
            unet=dict(
                sample_size=64,
                in_channels=4,
                out_channels=4,
                layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True,
                norm_num_groups=32,
                act_fn="silu",
                flip_sin_to_cos=True,
                freq_shift=0,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=4,
                norm_num_groups=32,
                act_fn="silu",
                sample_size=512,
                scaling_factor=SCALING_FACTOR,
            ),
            text=dict(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=23,
                num_attention_heads=16,
                max_position_embeddings=77,
                hidden_act="gelu",
                vocab_size=49408,
                projection_dim=512,
                layer_norm_eps=1e-5,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=0,
            ),
        )

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(
            resolution=64,
            gen_steps=2,
            inpaint_steps=2,
            unet=dict(
                sample_size=32,
                in_channels=4,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                norm_num_groups=32,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(32, 64),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=32,
                sample_size=64,
                scaling_factor=SCALING_FACTOR,
            ),
            text=dict(
                hidden_size=32,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                hidden_act="gelu",
                vocab_size=1000,
                projection_dim=32,
                bos_token_id=998,
                eos_token_id=999,
                pad_token_id=0,
            ),
        )


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Models:
    """Builds models lazily on the device and keeps at most one UNet resident, so peaks stay comparable."""

    def __init__(self, sizes: Sizes, device: torch.device, dtype: torch.dtype) -> None:
        self.sizes, self.device, self.dtype = sizes, device, dtype
        self.params: dict[str, int] = {}
        self._unet_kind: str | None = None
        self._unet: UNet2DConditionModel | None = None
        with torch.device(device):
            self.vae = AutoencoderKL(**sizes.vae).to(dtype=dtype).eval().requires_grad_(False)
            self.text_encoder = (
                CLIPTextModel(CLIPTextConfig(**sizes.text)).to(dtype=dtype).eval().requires_grad_(False)
            )
        self.params.update(vae=n_params(self.vae), text_encoder=n_params(self.text_encoder))

    def unet(self, kind: str) -> UNet2DConditionModel:
        """kind: 'gen' (4 in-channels), 'inpaint' (9 in-channels) or 'lora' (gen + trainable LoRA)."""
        if self._unet_kind == kind and self._unet is not None:
            return self._unet
        self._unet, self._unet_kind = None, None
        free_memory(self.device)
        config = dict(self.sizes.unet)
        if kind == "inpaint":
            config["in_channels"] = 9
        torch.manual_seed(0)
        with torch.device(self.device):
            unet = UNet2DConditionModel(**config).to(dtype=self.dtype).requires_grad_(False)
        self.params[f"unet_{kind}"] = n_params(unet)
        if kind == "lora":
            from diffusers.training_utils import cast_training_params
            from peft import LoraConfig

            unet.add_adapter(
                LoraConfig(
                    r=4,
                    lora_alpha=4,
                    init_lora_weights="gaussian",
                    target_modules=["to_k", "to_q", "to_v", "to_out.0"],
                )
            )
            cast_training_params(unet, dtype=torch.float32)
            self.params["lora_trainable"] = sum(p.numel() for p in unet.parameters() if p.requires_grad)
            unet.train()
        else:
            unet.eval()
        self._unet, self._unet_kind = unet, kind
        return unet

    def token_ids(self, n: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1234)
        vocab = self.sizes.text["vocab_size"]
        return torch.randint(0, vocab, (n, self.sizes.text["max_position_embeddings"]), generator=gen).to(
            self.device
        )


def scheduler_for_inference() -> DDIMScheduler:
    return DDIMScheduler(
        **BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon"
    )

