"""The evaluating stage of a round: what the round measured, and whether the new model version may become the one
the next round samples from.

The promotion check samples the parent and the new version on the same prompts and seeds and scores both with the
round's reward model; the new version is promoted (when the round says `promote: auto`) only if its mean reward is
no more than `promote_margin` below the parent's. The finetune's own guards (the real-data term, early stopping on
held-out real images) run before; this check is what keeps a finetune that made things worse from becoming the
default silently. The result, with the paired numbers, is stored on the round either way.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from django.conf import settings

from annotation.models import Round
from annotation.reading.simulated import reader_of, simulated_members
from annotation.rounds.config import round_config, round_seed
from annotation.rounds.messages import heartbeat
from annotation.stats.reports import round_report_compute
from inference.models import GeneratedImage
from inference.storage import image_load


def _value(stat) -> float | None:
    return stat.get("value") if isinstance(stat, dict) else None


def evaluation_compute(rnd: Round) -> tuple[dict, bool]:
    cfg = round_config(rnd)
    skipped: dict[str, str] = {}
    report = round_report_compute(round=rnd, with_images=cfg.image_metrics)
    heartbeat(rnd)
    pooled = ((report.get("reader") or {}).get("pooled") or {})
    accuracy = _value(pooled.get("accuracy"))
    if accuracy is None:
        skipped["reader_accuracy"] = "no real-vs-synthetic reads with both sources in this round"
    images = report.get("images") or {}
    fid = images.get("fid")
    if fid is None:
        skipped["fid"] = ((images.get("skipped") or {}).get("fid") or (images.get("skipped") or {}).get("all")
                          or "image metrics were not computed (image_metrics off)")
    auroc = (rnd.metrics.get("reward") or {}).get("auroc")
    if auroc is None:
        skipped["reward_auroc"] = ((rnd.metrics.get("reward") or {}).get("auroc_skipped")
                                   or "no reward model was trained in this round")
    profiles = _simulated_profiles(rnd)
    generated = _generated_pixels(rnd)
    preference = None
    if not profiles:
        skipped["simulated_preference_score"] = "the study has no simulated readers"
    elif not generated:
        skipped["simulated_preference_score"] = "the round generated no images"
    else:
        preference = float(np.mean([[p.score(img) for img in generated] for p in profiles]))
    heartbeat(rnd)
    promotion, promote = _promotion_check(rnd, cfg, profiles)
    if promotion.get("skipped"):
        skipped["promotion"] = promotion["skipped"]
    metrics = {
        "reader_accuracy": accuracy, "fid": fid, "reward_auroc": auroc,
        "simulated_preference_score": preference, "promotion": promotion, "skipped": skipped,
    }
    return metrics, promote


def _simulated_profiles(rnd: Round) -> list:
    return [reader_of(m) for m in simulated_members(rnd.study)]


def _generated_pixels(rnd: Round) -> list[np.ndarray]:
    if rnd.generation_batch_id is None:
        return []
    return [image_load(g.raw_key) for g in GeneratedImage.objects.filter(batch_id=rnd.generation_batch_id)]


def _promotion_check(rnd: Round, cfg, profiles: list) -> tuple[dict, bool]:
    child, parent = rnd.produced_version, rnd.model_version
    if child is None or parent is None:
        no_change = ((rnd.metrics or {}).get("finetune") or {}).get("no_change")
        return {"skipped": no_change or "the round produced no new version"}, False
    if rnd.reward_run is None or cfg.eval_samples < 1:
        return {"skipped": "no reward model or eval_samples = 0: an admin decides", "version": child.name}, False
    # torch and diffusers load here, in the worker only (web processes import this module too)
    from inference.ml.devices import pick_device
    from inference.ml.generation import GenerationConfig, generate, plan_requests
    from inference.services import version_pipeline
    from training.ml.reward import reward
    from training.runs.reward import reward_model_load

    device = pick_device(settings.CXR_DEVICE)
    batch = rnd.generation_batch
    gen = replace(GenerationConfig.from_dict(batch.config), images_per_prompt=1)
    requests = plan_requests(prompts=batch.prompts, count=cfg.eval_samples, images_per_prompt=1,
                             seed=round_seed(rnd) + 7_919)
    samples = {}
    for name, version in (("parent", parent), ("child", child)):
        pipe = version_pipeline(version, scheduler=gen.scheduler, device=device)
        samples[name] = [image for _, image in generate(pipe, requests, gen, device=device)]
        heartbeat(rnd)
    model = reward_model_load(rnd.reward_run, device)
    prompts = [r.prompt for r in requests]
    scores = {name: reward(model, imgs, prompts).float().cpu().numpy() for name, imgs in samples.items()}
    diff = scores["child"] - scores["parent"]
    result = {
        "parent": parent.name, "version": child.name, "samples": len(requests),
        "reward_parent": float(scores["parent"].mean()), "reward_child": float(scores["child"].mean()),
        "reward_diff": float(diff.mean()), "child_better_share": float((diff > 0).mean()),
        "margin": cfg.promote_margin, "mode": cfg.promote, **paired_promotion_test(diff, cfg.promote_margin),
    }
    if profiles:
        result["simulated_preference_parent"] = float(np.mean([[p.score(i) for i in samples["parent"]]
                                                               for p in profiles]))
        result["simulated_preference_child"] = float(np.mean([[p.score(i) for i in samples["child"]]
                                                              for p in profiles]))
    passed = result["reward_diff"] >= -cfg.promote_margin
    result["passed"] = passed
    promote = passed and cfg.promote == "auto"
    result["promoted"] = promote
    result["reason"] = (
        f"promoted: mean reward {result['reward_child']:.3f} vs parent {result['reward_parent']:.3f}" if promote
        else f"kept {parent.name}: mean reward {result['reward_child']:.3f} vs parent {result['reward_parent']:.3f} "
             f"(margin {cfg.promote_margin})" if not passed
        else "passed the check; promote is manual: an admin decides")
    return result, promote


def paired_promotion_test(diff: np.ndarray, margin: float) -> dict:
    """One-sided Wilcoxon signed-rank test that the new version scores no worse than `margin` below its parent
    (child − parent + margin > 0) over the paired samples, with its n. Recorded beside the mean rule that decides
    promotion today; fewer than 6 pairs cannot reach p < 0.05 and read "too few"."""
    from scipy.stats import wilcoxon

    shifted = np.asarray(diff, dtype=float) + margin
    out = {"p_value": None, "n_pairs": int(len(shifted)),
           "test": "Wilcoxon signed-rank, one-sided: child - parent + margin > 0"}
    if len(shifted) < 6:
        return {**out, "p_value_skipped": f"too few (n={len(shifted)})"}
    if not np.any(shifted):
        return {**out, "p_value_skipped": "every paired difference equals -margin"}
    return {**out, "p_value": float(wilcoxon(shifted, alternative="greater").pvalue)}
