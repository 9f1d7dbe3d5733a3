"""Which generated images go to readers when a round generates more than its reading budget.

`random` draws prompt groups with the round's seed. `active` ranks them greedily by the current reward model's
uncertainty (MC-dropout std, mean over its heads) and by diversity (distance, in a small pixel thumbnail space, to
the images already chosen). Images generated together for one prompt (preference pairs) are chosen together.
The result, with every candidate's uncertainty, is recorded on the round, so the choice can be reproduced.
"""

from __future__ import annotations

import numpy as np
from django.conf import settings

from annotation.models import Round, RoundStatus
from inference.models import GeneratedImage
from inference.storage import image_load
from training.models import RunKind
from training.services import reward_scorer

THUMB = 16


def latest_reward_run(rnd: Round):
    """The reward model of the study's latest earlier round that trained one, or None."""
    earlier = (Round.objects.filter(study=rnd.study, number__lt=rnd.number, reward_run__status="done",
                                    reward_run__kind=RunKind.REWARD)
               .exclude(status=RoundStatus.CANCELLED).select_related("reward_run").order_by("-number").first())
    return earlier.reward_run if earlier else None


def _groups(items: list[GeneratedImage], per_prompt: int) -> dict[int, list[GeneratedImage]]:
    groups: dict[int, list[GeneratedImage]] = {}
    for item in items:
        groups.setdefault(item.index // max(per_prompt, 1), []).append(item)
    return groups


def _normalise(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def select_generated(rnd: Round, *, budget: int, strategy: str, seed: int, uncertainty_weight: float = 0.5) -> dict:
    items = list(GeneratedImage.objects.filter(batch=rnd.generation_batch).order_by("index"))
    per_prompt = int((rnd.generation_batch.config or {}).get("images_per_prompt", 1) or 1)
    groups = _groups(items, per_prompt)
    keys = sorted(groups)
    wanted = min(len(keys), int(np.ceil(budget / per_prompt)))
    record: dict = {"strategy": strategy, "seed": seed, "candidates": len(items), "budget": budget}
    if wanted >= len(keys):
        order = keys
        record["note"] = "every generated image fits the reading budget"
    elif strategy == "random":
        order = sorted(int(k) for k in np.random.default_rng(seed).choice(keys, size=wanted, replace=False))
    else:
        order, extra = _active(rnd, items, groups, keys, wanted, uncertainty_weight, seed)
        record.update(extra)
    record["groups"] = [int(k) for k in order]
    record["chosen"] = sorted(item.index for k in order for item in groups[k])
    return record


def comparison_selection(rnd: Round, versions: list[str]) -> dict:
    """A comparison round reads every item of every compared version: the same prompts and seeds for each."""
    indexes = sorted(GeneratedImage.objects.filter(batch=rnd.generation_batch).values_list("index", flat=True))
    return {"strategy": "comparison", "versions": list(versions), "seed": rnd.generation_batch.seed,
            "candidates": len(indexes), "budget": len(indexes), "chosen": indexes,
            "note": "every version sampled the same prompts and seeds; all of their images are read"}


def _active(rnd: Round, items, groups, keys, wanted: int, weight: float, seed: int) -> tuple[list[int], dict]:
    from inference.ml.devices import pick_device  # torch: stages also runs round_simulate (default queue)

    pixels = {item.index: image_load(item.raw_key) for item in items}
    run = latest_reward_run(rnd)
    extra: dict = {"uncertainty_weight": weight, "reward_run": run.pk if run else None}
    if run is not None:
        scorer = reward_scorer(run, pick_device(settings.CXR_DEVICE))
        per_image = scorer.uncertainty([pixels[i.index] for i in items], [i.prompt for i in items],
                                       seed=seed)  # MC-dropout masks from the round's seed: reproducible
        uncertainty = {item.index: float(u) for item, u in zip(items, per_image, strict=True)}
    else:
        uncertainty = {item.index: 0.0 for item in items}
        extra["note"] = "no reward model yet (first round): diversity only"
    extra["uncertainty"] = {str(k): round(v, 6) for k, v in uncertainty.items()}

    def thumb(arr: np.ndarray) -> np.ndarray:
        from PIL import Image as PILImage

        small = np.asarray(PILImage.fromarray(arr).resize((THUMB, THUMB), PILImage.Resampling.BILINEAR), np.float32)
        return (small - small.mean()).ravel() / 255.0

    feats = np.stack([np.mean([thumb(pixels[i.index]) for i in groups[k]], axis=0) for k in keys])
    unc = _normalise(np.array([np.mean([uncertainty[i.index] for i in groups[k]]) for k in keys]))
    if run is None:
        weight = 0.0
    first = int(np.argmax(unc)) if unc.max() > 0 else int(np.argmax(np.linalg.norm(feats - feats.mean(0), axis=1)))
    chosen = [first]
    nearest = np.linalg.norm(feats - feats[first], axis=1)
    while len(chosen) < wanted:
        score = weight * unc + (1 - weight) * _normalise(nearest)
        score[chosen] = -np.inf
        pick = int(np.argmax(score))
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(feats - feats[pick], axis=1))
    return [int(keys[c]) for c in chosen], extra
