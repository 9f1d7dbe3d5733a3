"""Reports as prompts: a report's findings/impression sections, whitespace normalised, encoded within the CLIP text
encoder's 77-token window either truncated (recorded) or in 77-token chunks whose hidden states are concatenated
(as long-prompt weighting in diffusers' community pipelines and compel do). One policy for sampling and training.
No Django here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.ml.generation_config import POLICIES

MAX_CHUNKS = 3  # 3 × 75 tokens: a long report's findings and impression, within the UNet's cross-attention budget

@dataclass(frozen=True)
class EncodedPrompt:
    text: str  # what the text encoder actually reads (the kept tokens, decoded)
    tokens: int  # the prompt's length in tokens, without BOS/EOS
    kept: int  # tokens encoded
    chunks: int  # 77-token windows used

    @property
    def shortened(self) -> bool:
        return self.kept < self.tokens

    def as_dict(self, policy: str) -> dict:
        return {"prompt_encoded": self.text, "prompt_tokens": self.tokens, "prompt_tokens_kept": self.kept,
                "prompt_chunks": self.chunks, "prompt_shortened": self.shortened, "prompt_policy": policy}


def _window(tokenizer) -> int:
    return int(tokenizer.model_max_length) - 2  # BOS and EOS take two of the 77 places


def _token_chunks(tokenizer, prompt: str, policy: str, max_chunks: int) -> tuple[list[list[int]], int]:
    if policy not in POLICIES:
        raise ValueError(f"prompt policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    window = _window(tokenizer)
    limit = window if policy == "truncate" else window * max(1, max_chunks)
    kept = ids[:limit]
    chunks = [kept[i : i + window] for i in range(0, len(kept), window)] or [[]]
    return chunks, len(ids)


def encoded_prompt(tokenizer, prompt: str, policy: str = "truncate", max_chunks: int = MAX_CHUNKS) -> EncodedPrompt:
    """What `encode_prompts` makes of `prompt` under `policy`: the text actually encoded and its token counts."""
    chunks, total = _token_chunks(tokenizer, prompt, policy, max_chunks)
    kept = [t for chunk in chunks for t in chunk]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return EncodedPrompt(text=text, tokens=total, kept=len(kept), chunks=len(chunks))


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], *, policy: str = "truncate",
                   max_chunks: int = MAX_CHUNKS, chunks: int | None = None, device: torch.device | None = None
                   ) -> torch.Tensor:
    """Prompts → text-encoder hidden states (B, 77·k, D). `truncate`: k = 1, the first 75 tokens, exactly as
    diffusers' pipelines encode. `chunks`: each 75-token piece wrapped in BOS/EOS and padded to 77, encoded on its
    own, concatenated; k is the batch's longest (or `chunks`, so a negative prompt matches its positives), padded
    with empty windows."""
    per_prompt = [_token_chunks(tokenizer, p, policy, max_chunks)[0] for p in prompts]
    k = max(chunks or 1, max(len(c) for c in per_prompt)) if per_prompt else (chunks or 1)
    size = int(tokenizer.model_max_length)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for piece_list in per_prompt:
        pieces = piece_list + [[] for _ in range(k - len(piece_list))]
        rows.append([[bos, *p, eos] + [pad] * (size - len(p) - 2) for p in pieces])
    ids = torch.tensor(rows, dtype=torch.long)  # (B, k, 77)
    batch = ids.shape[0]
    with torch.no_grad():
        hidden = text_encoder(ids.view(batch * k, size).to(device or text_encoder.device), return_dict=False)[0]
    return hidden.view(batch, k * size, hidden.shape[-1])
