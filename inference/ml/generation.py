"""Text-to-image sampling for a batch: seeded per image, batched, with progress callbacks. No Django here."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from inference.ml.generation_config import POLICIES, GenerationConfig
from inference.ml.prompts import encode_prompts
from inference.ml.report_text import TEMPLATE_REPORTS


@dataclass(frozen=True)
class Request:
    index: int  # position in the batch: with the seed, what makes a generated image unique
    prompt: str
    seed: int


def plan_requests(*, prompts: Sequence[str], count: int, images_per_prompt: int, seed: int) -> list[Request]:
    """`count` requests: prompts drawn (seeded) from `prompts`, each repeated `images_per_prompt` times with its own
    image seed, so preference pairs share a prompt."""
    if not prompts:
        prompts = TEMPLATE_REPORTS
    rng = random.Random(seed)
    requests: list[Request] = []
    while len(requests) < count:
        prompt = rng.choice(list(prompts))
        for _ in range(images_per_prompt):
            if len(requests) < count:
                requests.append(Request(len(requests), prompt, rng.randrange(2**31)))
    return requests


def _chunks(items: Sequence[Request], size: int) -> Iterator[Sequence[Request]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def to_gray8(image: np.ndarray) -> np.ndarray:
    """float RGB in [0, 1] (H, W, 3) → uint8 grayscale (ITU-R 601 luma), as readers see it."""
    gray = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114 if image.ndim == 3 else image
    return np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _prompt_arguments(pipe, prompts: list[str], cfg: GenerationConfig, device: torch.device) -> dict:
    """`truncate`: the prompts as text (diffusers encodes the first 77 tokens, as `encode_prompts` does). `chunks`:
    the hidden states of every 77-token window, the negative prompt encoded to the same length."""
    if cfg.prompt_policy not in POLICIES:
        raise ValueError(f"prompt_policy must be one of {', '.join(POLICIES)}, not {cfg.prompt_policy!r}")
    if cfg.prompt_policy == "truncate":
        return {"prompt": prompts,
                "negative_prompt": [cfg.negative_prompt] * len(prompts) if cfg.negative_prompt else None}
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, policy="chunks", device=device)
    windows = embeds.shape[1] // int(pipe.tokenizer.model_max_length)
    negative = encode_prompts(pipe.tokenizer, pipe.text_encoder, [cfg.negative_prompt] * len(prompts),
                              policy="chunks", chunks=windows, device=device)
    if negative.shape[1] != embeds.shape[1]:  # a negative prompt longer than every positive one
        embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, policy="chunks",
                                chunks=negative.shape[1] // int(pipe.tokenizer.model_max_length), device=device)
    dtype = pipe.unet.dtype
    return {"prompt_embeds": embeds.to(dtype), "negative_prompt_embeds": negative.to(dtype)}


def generate(
    pipe,
    requests: Iterable[Request],
    cfg: GenerationConfig,
    *,
    device: torch.device,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[Request, np.ndarray]]:
    """Yield (request, uint8 grayscale image) per request. Each image's noise comes from its own seed, so an image
    does not depend on which batch it was sampled in."""
    todo = list(requests)
    done = 0
    generator_device = "cpu" if device.type == "mps" else device
    for chunk in _chunks(todo, max(1, cfg.batch_size)):
        generators = [torch.Generator(generator_device).manual_seed(r.seed) for r in chunk]
        with torch.inference_mode():
            out = pipe(
                **_prompt_arguments(pipe, [r.prompt for r in chunk], cfg, device),
                num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, height=cfg.height,
                width=cfg.width, generator=generators, output_type="np",
            )
        for request, image in zip(chunk, out.images, strict=True):
            yield request, to_gray8(image)
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, len(todo))
