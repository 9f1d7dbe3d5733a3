"""Fresh samples for a reward-informed finetune: the parent model samples several images per prompt, the round's
reward model scores them, and those scores (not the readers' labels) weight the finetune. No Django here.

The labels buy a reward model; the reward model is what generalises to images no reader saw (the seed paper's step
3: "use the reward model to inform finetuning"). Several samples per prompt make groups for group-relative weights
(a sample compared with its siblings). The requests are a function of the seed only, so both arms of a loop and a
rerun draw the same images from the same parent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from inference.ml.generation import Request


def fresh_requests(prompts: Sequence[str], *, count: int, per_prompt: int, seed: int) -> list[Request]:
    """`count` requests, `per_prompt` per prompt, the prompts a seeded draw (without replacement while they last)
    from the distinct `prompts`; a prompt drawn twice gives one larger group."""
    distinct = list(dict.fromkeys(p for p in prompts if p))
    if not distinct:
        raise ValueError("fresh samples need at least one prompt")
    rng = np.random.default_rng([seed, 0xF5E5])
    groups = math.ceil(count / per_prompt)
    order = np.concatenate([rng.permutation(len(distinct)) for _ in range(math.ceil(groups / len(distinct)))])
    seeds = rng.integers(0, 2**31, size=groups * per_prompt)
    chosen = sorted(order[:groups].tolist(), key=lambda i: distinct[i])  # one prompt's samples side by side
    requests: list[Request] = []
    for g, prompt_index in enumerate(chosen):
        for k in range(per_prompt):
            if len(requests) < count:
                requests.append(Request(len(requests), distinct[prompt_index], int(seeds[g * per_prompt + k])))
    return requests


def fresh_scored(sample: Callable[[list[Request]], list[np.ndarray]],
                 score: Callable[[list[np.ndarray], list[str]], Sequence[float]],
                 requests: list[Request]) -> list[tuple[np.ndarray, str, float]]:
    """(image, prompt, reward) per request: `sample` draws the images, `score` is the reward model."""
    images = sample(requests)
    prompts = [r.prompt for r in requests]
    rewards = [float(x) for x in score(images, prompts)]
    return list(zip(images, prompts, rewards, strict=True))
