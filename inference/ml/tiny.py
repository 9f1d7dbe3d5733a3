"""Tiny random models built offline from configs, saved in the same on-disk formats as the real ones.

Stable Diffusion (text-to-image and inpainting) at diffusers-test size, a CLIP-layout BPE tokenizer trained on
report text, and a tiny SAM. The loader that reads real SD 2.1-base / SD2-inpainting / SAM weights reads these
too, so the demo and the tests run the production code path. No Django here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from inference.ml.phantoms import generate_phantoms
from inference.ml.report_text import TEMPLATE_REPORTS

CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@dataclass(frozen=True)
class TinySDConfig:
    """Sizes of a random Stable Diffusion. The default is diffusers' test size; `sd21_base()` has SD v2-1-base's
    real sizes (865.9 M UNet parameters), for benchmarks of the real-size path with random weights."""

    sample_size: int = 8  # latent side; images are 8x this (64 px), as SD's VAE downsamples by 8
    block_out_channels: tuple[int, ...] = (32, 64)
    attention_head_dim: tuple[int, ...] = (2, 4)
    layers_per_block: int = 2
    cross_attention_dim: int = 32
    vae_block_out_channels: tuple[int, ...] = (32, 32, 64, 64)  # four blocks: the same 8x factor as SD
    vae_norm_groups: int = 16
    vae_layers_per_block: int = 1
    text_layers: int = 5
    text_heads: int = 4
    text_intermediate: int = 37
    vocab_size: int = 1000
    seed: int = 0

    @classmethod
    def tiny(cls) -> TinySDConfig:
        return cls()

    @classmethod
    def sd21_base(cls) -> TinySDConfig:
        return cls(sample_size=64, block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                   cross_attention_dim=1024, vae_block_out_channels=(128, 256, 512, 512), vae_norm_groups=32,
                   vae_layers_per_block=2, text_layers=23, text_heads=16, text_intermediate=4096)


def build_tokenizer(out_dir: Path, *, texts: list[str] | None = None, vocab_size: int = 1000) -> Path:
    """Train a byte-level BPE the CLIP way (lower-cased, word-end suffix "</w>") and write vocab.json + merges.txt."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    if texts is None:
        texts = list(TEMPLATE_REPORTS) + [p.report for p in generate_phantoms(200, seed=7, size=64)]
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out_dir))
    merges = [m for m in (out_dir / "merges.txt").read_text().splitlines() if m and not m.startswith("#version")]
    # The trainer numbers tokens in no fixed order; lay the vocabulary out the way CLIP's is (byte symbols, the same
    # at a word's end, then each merge in order, then the specials), so the same texts give the same ids every time.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(a + "</w>" for a in alphabet), *(m.replace(" ", "") for m in merges),
                  "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    return out_dir


def load_tokenizer(path: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path), model_max_length=77, local_files_only=True)


def sd_components(cfg: TinySDConfig, tokenizer, *, in_channels: int = 4) -> dict:
    """Random pipeline components of the given sizes (the tokenizer is passed in)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    n = len(cfg.block_out_channels)
    unet = UNet2DConditionModel(
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        sample_size=cfg.sample_size, in_channels=in_channels, out_channels=4,
        cross_attention_dim=cfg.cross_attention_dim,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",) if n > 2
        else ("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1) if n > 2
        else ("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=cfg.attention_head_dim, use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=list(cfg.vae_block_out_channels), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * len(cfg.vae_block_out_channels),
        up_block_types=["UpDecoderBlock2D"] * len(cfg.vae_block_out_channels), sample_size=cfg.sample_size * 8,
        norm_num_groups=cfg.vae_norm_groups, layers_per_block=cfg.vae_layers_per_block,
    )
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=cfg.cross_attention_dim, intermediate_size=cfg.text_intermediate,
        num_attention_heads=cfg.text_heads,
        num_hidden_layers=cfg.text_layers, vocab_size=len(tokenizer), max_position_embeddings=77,
        layer_norm_eps=1e-5, projection_dim=32, hidden_act="gelu" if cfg.text_layers > 5 else "quick_gelu",
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    return {"unet": unet, "vae": vae, "text_encoder": CLIPTextModel(text_config), "tokenizer": tokenizer,
            "scheduler": scheduler, "safety_checker": None, "feature_extractor": None,
            "requires_safety_checker": False}


def build_tiny_sd(out_dir: Path, cfg: TinySDConfig | None = None, *, inpaint: bool = False) -> Path:
    """A tiny random SD (or SD-inpainting) pipeline saved with `save_pretrained` under out_dir."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    cfg = cfg or TinySDConfig()
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(build_tokenizer(out_dir.parent / "tokenizer", vocab_size=cfg.vocab_size))
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    cls(**sd_components(cfg, tokenizer, in_channels=9 if inpaint else 4)).save_pretrained(out_dir)
    (Path(out_dir) / "README.md").write_text(  # a model card as hub repositories carry one (licence in front matter)
        "---\nlicense: apache-2.0\n---\n# Tiny random Stable Diffusion\n\nBuilt from configs in cxr-loop "
        "(inference/ml/tiny.py) for tests and the demo; random or briefly pretrained weights, no real images.\n")
    return out_dir


def build_tiny_models(out_dir: Path, cfg: TinySDConfig | None = None) -> dict[str, Path]:
    """Write tiny `sd/`, `sd-inpaint/` (diffusers folders) and `sam-tiny.pth` under out_dir; return their paths."""
    from inference.ml.sam import build_tiny_sam, save_sam  # segment_anything + torchvision: this build only

    cfg = cfg or TinySDConfig()
    out_dir = Path(out_dir)
    paths = {"sd": out_dir / "sd", "sd_inpaint": out_dir / "sd-inpaint", "sam": out_dir / "sam-tiny.pth"}
    build_tiny_sd(paths["sd"], cfg)
    build_tiny_sd(paths["sd_inpaint"], cfg, inpaint=True)
    save_sam(build_tiny_sam(seed=cfg.seed), paths["sam"])
    (out_dir / "tiny-config.json").write_text(json.dumps(asdict(cfg)))
    return paths
