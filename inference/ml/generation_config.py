"""How a batch is sampled: `GenerationConfig`. Imports no torch, so the web side (a round's launch, the evaluation
panel's record) reads and checks it without loading the ML stack; the sampler is `inference.ml.generation`.
No Django here."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.ml.config import Settings

#: How a prompt longer than the text encoder's window is encoded (`inference.ml.prompts`).
POLICIES = ("truncate", "chunks")


@dataclass(frozen=True)
class GenerationConfig(Settings):
    """How a batch is sampled. Defaults are the seed paper's: classifier-free guidance 4, 75 steps, 512 px."""

    what = "generation settings"

    guidance_scale: float = field(default=4.0, metadata={"help": "classifier-free guidance scale"})
    steps: int = field(default=75, metadata={"help": "denoising steps"})
    height: int = field(default=512, metadata={"help": "image height, px (multiple of 8)"})
    width: int = field(default=512, metadata={"help": "image width, px (multiple of 8)"})
    negative_prompt: str = field(default="", metadata={"help": "what to steer away from, e.g. 'text, letters'"})
    images_per_prompt: int = field(default=1, metadata={"help": "images per prompt (>= 2 for preference pairs)"})
    batch_size: int = field(default=4, metadata={"help": "images per forward pass"})
    scheduler: str | None = field(default=None, metadata={"help": "diffusers scheduler class; None = the base's"})
    prompt_policy: str = field(default="truncate", metadata={
        "help": "prompts over the text encoder's 77 tokens: 'truncate' (recorded) or 'chunks' (77-token windows, "
                "concatenated)"})

    @classmethod
    def tiny(cls, size: int = 64) -> GenerationConfig:
        """Seconds on a CPU with a tiny SD whose native side is `size` px."""
        return cls(steps=8, height=size, width=size, batch_size=8)
