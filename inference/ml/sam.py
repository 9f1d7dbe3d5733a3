"""Segment Anything models built from a spec, so tests build a tiny random SAM through the same builder that loads
Meta's checkpoints. No Django here.

`SAM_KINDS` mirrors segment_anything/build_sam.py for the official ViT-B/L/H (so `sam_vit_b_01ec64.pth`,
`sam_vit_l_0b3195.pth` and `sam_vit_h_4b8939.pth` load strictly) and adds a 0.4 M-parameter "tiny" kind for
tests and the offline demo. Weights are read only from a given local path; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from inference.ml.config import option
from inference.ml.errors import WeightsError

__all__ = ["SAM_KINDS", "SamSpec", "WeightsError", "build_sam", "build_tiny_sam", "save_sam", "sam_spec"]


@dataclass(frozen=True)
class SamSpec:
    """The architecture of one SAM kind. Defaults are the official values shared by ViT-B/L/H."""

    name: str = option("custom", "Kind name, shown in error messages.")
    encoder_embed_dim: int = option(768, "Width of the ViT image encoder (channels).")
    encoder_depth: int = option(12, "Number of transformer blocks in the image encoder.")
    encoder_num_heads: int = option(12, "Attention heads per encoder block.")
    encoder_global_attn_indexes: tuple[int, ...] = option(
        (2, 5, 8, 11), "Encoder blocks with global attention."
    )
    image_size: int = option(
        1024, "Side of the square encoder input, px; images are resized to it (long side)."
    )
    patch_size: int = option(16, "ViT patch side, px; the image embedding is image_size / patch_size wide.")
    window_size: int = option(14, "Side of the windowed-attention window, in patches.")
    mlp_ratio: float = option(4.0, "Encoder MLP hidden width / embed dim.")
    prompt_embed_dim: int = option(256, "Channels of the image embedding, prompt tokens and mask decoder.")
    mask_in_chans: int = option(16, "Hidden channels of the dense (mask) prompt downscaler.")
    decoder_depth: int = option(2, "Two-way transformer blocks in the mask decoder.")
    decoder_mlp_dim: int = option(2048, "MLP width inside the mask decoder's transformer.")
    decoder_num_heads: int = option(8, "Attention heads in the mask decoder's transformer.")
    iou_head_depth: int = option(3, "Layers of the mask-quality (IoU) head.")
    iou_head_hidden_dim: int = option(256, "Hidden width of the mask-quality head.")
    num_multimask_outputs: int = option(3, "Masks proposed per prompt when multimask_output=True.")
    pixel_mean: tuple[float, float, float] = option((123.675, 116.28, 103.53), "RGB normalisation mean, 0-255.")
    pixel_std: tuple[float, float, float] = option((58.395, 57.12, 57.375), "RGB normalisation std, 0-255.")

    @classmethod
    def tiny(cls) -> SamSpec:
        """0.4 M parameters at 256 px: builds in milliseconds, predicts a box in ~15 ms on a CPU."""
        return cls(
            name="tiny",
            encoder_embed_dim=64,
            encoder_depth=2,
            encoder_num_heads=2,
            encoder_global_attn_indexes=(1,),
            image_size=256,
            window_size=8,
            prompt_embed_dim=64,
            decoder_mlp_dim=128,
            decoder_num_heads=2,
            iou_head_hidden_dim=64,
        )


SAM_KINDS: dict[str, SamSpec] = {
    "vit_b": SamSpec(
        name="vit_b",
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    "vit_l": SamSpec(
        name="vit_l",
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamSpec(
        name="vit_h",
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
    "tiny": SamSpec.tiny(),
}


def sam_spec(kind: str | SamSpec) -> SamSpec:
    if isinstance(kind, SamSpec):
        return kind
    try:
        return SAM_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"Unknown SAM kind {kind!r}; choose one of {sorted(SAM_KINDS)} or pass a SamSpec."
        ) from None


def _modules(spec: SamSpec) -> Sam:
    embedding = spec.image_size // spec.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=spec.image_size,
            patch_size=spec.patch_size,
            embed_dim=spec.encoder_embed_dim,
            depth=spec.encoder_depth,
            num_heads=spec.encoder_num_heads,
            mlp_ratio=spec.mlp_ratio,
            out_chans=spec.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=spec.window_size,
            global_attn_indexes=tuple(spec.encoder_global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(embedding, embedding),
            input_image_size=(spec.image_size, spec.image_size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=spec.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=spec.iou_head_depth,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=list(spec.pixel_mean),
        pixel_std=list(spec.pixel_std),
    )


def build_sam(
    kind: str | SamSpec, checkpoint: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> Sam:
    """A SAM of `kind` ("vit_b", "vit_l", "vit_h", "tiny" or a SamSpec) in eval mode on `device`.

    Without a checkpoint the weights are random (tests; `device="meta"` sizes a model without allocating it).
    With one, the state dict (Meta's .pth layout, as `save_sam` writes) is loaded strictly, or WeightsError says
    which file failed and why. The model carries `cxr_spec` and `cxr_checkpoint` so callers can tell a trained
    model from a random one.
    """
    spec = sam_spec(kind)
    if checkpoint is None:
        with torch.device(device):
            sam = _modules(spec)
    else:
        state = _read_state_dict(Path(checkpoint), spec)
        # Build without memory, then adopt the checkpoint's tensors: skips a random init the checkpoint would
        # overwrite anyway (seconds for ViT-H) and never holds two copies of the weights.
        with torch.device("meta"):
            sam = _modules(spec)
        problems = _mismatch(sam.state_dict(), state)
        if problems:
            guess = _guess_kind(state)
            hint = f" It looks like a {guess!r} checkpoint." if guess and guess != spec.name else ""
            raise WeightsError(
                f"SAM checkpoint {checkpoint} does not fit SAM kind {spec.name!r}.{hint} {problems}"
            )
        sam.load_state_dict(state, strict=True, assign=True)
        # Non-persistent buffers are not in checkpoints, so they are still on "meta": set them from the spec.
        sam.register_buffer("pixel_mean", torch.tensor(spec.pixel_mean).view(-1, 1, 1), False)
        sam.register_buffer("pixel_std", torch.tensor(spec.pixel_std).view(-1, 1, 1), False)
        sam = sam.to(device)
    sam.cxr_spec, sam.cxr_checkpoint = spec, None if checkpoint is None else str(checkpoint)
    return sam.eval()


def build_tiny_sam(seed: int = 0, *, device: str | torch.device = "cpu") -> Sam:
    """A random tiny SAM; the same seed gives the same weights on every device, and the global RNG is left
    untouched (initialised on the CPU, then moved)."""
    # manual_seed reseeds initialised CUDA devices too, so fork their state as well.
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return build_sam("tiny", device="cpu").to(device)


def save_sam(model: Sam, path: str | Path) -> Path:
    """Write the state dict alone (CPU tensors), the layout of Meta's official .pth files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return path


def _read_state_dict(path: Path, spec: SamSpec) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"SAM checkpoint for kind {spec.name!r} not found at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, a non-torch file: all mean "unreadable"
        raise WeightsError(
            f"SAM checkpoint {path} (kind {spec.name!r}) could not be read as a PyTorch state dict "
            f"({type(exc).__name__}): the file is truncated, corrupt or not a weights-only checkpoint."
        ) from exc
    if isinstance(state, dict) and isinstance(
        state.get("model"), dict
    ):  # training checkpoints wrap the weights
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"SAM checkpoint {path} (kind {spec.name!r}) is not a state dict of tensors.")
    return state


def _guess_kind(state: dict[str, torch.Tensor]) -> str | None:
    """The registered kind whose encoder width and depth match the state dict, if any."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, spec in SAM_KINDS.items():
        if (spec.encoder_embed_dim, spec.encoder_depth) == (weight.shape[0], depth):
            return name
    return None


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """A short account of how a state dict differs from the model's, or "" when it fits."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {what} (e.g. {', '.join(items[:2])})"
        for what, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches, file vs model", shapes),
        )
        if items
    ]
    return "; ".join(parts) + "." if parts else ""
