"""In-silico proof that the reward, not training as such, moves the generator toward what readers prefer.

No Django here. A `SimulatedReader` with a known, pixel-measurable preference labels images from a tiny generator;
the reward model (`training.reward`) learns those labels; one reward-weighted finetune (`training.finetune`) on its
rewards must move the measured property of freshly generated images toward the preference, and further than a
control finetune whose rewards are permuted across the same images (same seed, steps, noise, real-data term and
configuration). Both comparisons are paired over shared sampling seeds.

The generator and the settings are in `training.ml.insilico_base` (`build_insilico_base`, `InSilicoConfig`).

    python -m training.ml.insilico --out bench/results/insilico.json          # seeds 0, 1, 2 on the CPU
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.ml.generation import Request, generate
from inference.ml.generation_config import GenerationConfig
from inference.ml.loading import PipelineSpec, load_pipeline
from inference.ml.phantoms import generate_phantoms
from inference.ml.report_text import TEMPLATE_REPORTS
from training.ml.finetune.config import FinetuneConfig
from training.ml.finetune.data import FinetuneData
from training.ml.finetune.loop import run_finetune
from training.ml.finetune.losses import normalise_rewards
from training.ml.insilico_base import BASE_MARKER, InSilicoConfig, build_insilico_base
from training.ml.jsonable import json_safe
from training.ml.reward.config import RewardConfig
from training.ml.reward.model import reward
from training.ml.reward.train import train_reward_model

# Sampling-seed streams: the labelled set, the reward model's held-out check, the paired comparison.
_TRAIN, _HELD_OUT, _FRESH = 0, 1, 2


# --- one run ---------------------------------------------------------------------------------------------------------


def _requests(n: int, seed: int, stream: int) -> list:
    """`n` requests with sampling seeds unique to (seed, stream); prompts cycle through the template reports."""
    seeds = np.random.SeedSequence([seed, stream]).generate_state(n, dtype=np.uint32)
    return [Request(i, TEMPLATE_REPORTS[i % len(TEMPLATE_REPORTS)], int(s) >> 1) for i, s in enumerate(seeds)]


def _generate(pipe, requests: Sequence, cfg: InSilicoConfig, device: torch.device) -> list[np.ndarray]:
    gen = replace(GenerationConfig.tiny(), steps=cfg.generation_steps, guidance_scale=cfg.guidance_scale)
    return [image for _, image in generate(pipe, requests, gen, device=device)]


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """One-sided paired tests of "a is higher than b" over shared seeds: t-test and Wilcoxon signed-rank p-values,
    the mean difference, Cohen's d of the differences (d_z = mean / std) and the share of seeds where a > b."""
    from scipy.stats import ttest_rel, wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a - b
    sd = diff.std(ddof=1)
    if sd == 0:  # identical arms (or a constant shift): no test to run
        return {
            "mean_difference": float(diff.mean()),
            "cohens_d": None,
            "p_ttest": 1.0,
            "p_wilcoxon": 1.0,
            "share_higher": float((diff > 0).mean()),
        }
    return {
        "mean_difference": float(diff.mean()),
        "cohens_d": float(diff.mean() / sd),
        "p_ttest": float(ttest_rel(a, b, alternative="greater").pvalue),
        "p_wilcoxon": float(wilcoxon(a, b, alternative="greater").pvalue),
        "share_higher": float((diff > 0).mean()),
    }


def _finetune_arm(base: Path, cfg: InSilicoConfig, seed: int, data, out_dir: Path, device: torch.device):
    """One reward-weighted LoRA finetune; everything but the synthetic rewards is shared by the two arms."""
    ft = FinetuneConfig(
        objective="reward_weighted",
        beta=cfg.beta,
        reward_normalisation=cfg.reward_normalisation,
        real_fraction=cfg.real_fraction,
        lr=cfg.finetune_lr,
        steps=cfg.finetune_steps,
        batch_size=cfg.batch_size,
        rank=cfg.rank,
        alpha=float(cfg.rank),
        resolution=64,
        checkpoint_every=0,
        keep_last=1,
        val_every=0,
        early_stopping_patience=0,
        restore_best=False,
        seed=seed,
    )
    return run_finetune(base, ft, data, out_dir, device=device, resume=False)


def _weights_summary(rewards: np.ndarray, prop: np.ndarray, mode: str) -> dict[str, float]:
    """How an arm's finetune weights relate to the property over the training images: their Spearman correlation
    and, for non-negative weights, the weighted mean of the property (what a converged model would reproduce)."""
    from scipy.stats import spearmanr

    w = normalise_rewards(rewards, mode)
    out = {"spearman_with_property": float(spearmanr(w, prop).statistic)}
    if (w >= 0).all() and w.sum() > 0:
        out["weighted_mean_property"] = float((w * prop).sum() / w.sum())
    return out


def run_insilico(
    seed: int,
    *,
    base_dir: str | Path,
    cfg: InSilicoConfig | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> dict[str, Any]:
    """The whole proof for one seed; `overrides` are `InSilicoConfig` fields (e.g. `finetune_steps=...`).

    Returns a JSON-safe dict: the reward model's held-out Spearman with the reader's score, the property's mean on
    the fresh seeds for the base and both arms, the paired one-sided comparisons reward-vs-control, reward-vs-base
    and control-vs-base (p-values, mean difference, Cohen's d_z) on the preference-signed property, timings, and
    `passed` (reward beats control and base at `significance`). Runs with one torch thread (restored after)."""
    from scipy.stats import spearmanr

    cfg = replace(cfg or InSilicoConfig(), **overrides)
    device, base_dir = torch.device(device), Path(base_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = build_insilico_base(base_dir, cfg)
        pipe = load_pipeline(PipelineSpec(base=str(base)), device)
        lap("base")
        train_req, held_req, fresh_req = (
            _requests(n, seed, stream)
            for n, stream in ((cfg.n_samples, _TRAIN), (cfg.n_heldout, _HELD_OUT), (cfg.n_fresh, _FRESH))
        )
        images, held, fresh_base = (
            _generate(pipe, req, cfg, device) for req in (train_req, held_req, fresh_req)
        )
        del pipe
        lap("generate_base")

        reader = cfg.reader.calibrated(images, quantile=cfg.reader_quantile, spread=cfg.reader_spread)
        prompts = [r.prompt for r in train_req]
        items = reader.feedback(images, prompts, np.random.default_rng([seed, 11]))
        rcfg = RewardConfig.tiny(
            criteria=reader.criteria, steps=cfg.reward_steps, val_fraction=0.0, seed=seed
        )
        model, _ = train_reward_model(items, rcfg, device=device)
        held_reward = reward(model, held, [r.prompt for r in held_req]).cpu().numpy()
        rewards = reward(model, images, prompts).cpu().numpy().astype(np.float64)
        spearman = float(spearmanr(held_reward, [reader.score(im) for im in held]).statistic)
        train_spearman = float(spearmanr(rewards, [reader.score(im) for im in images]).statistic)
        lap("reward_model")

        real = [
            (p.image, p.report) for p in generate_phantoms(cfg.n_real, seed=100_000 + 1_000 * seed, size=64)
        ]
        permuted = rewards[np.random.default_rng([seed, 13]).permutation(len(rewards))]
        fresh, losses = {"base": fresh_base}, {}
        with tempfile.TemporaryDirectory(prefix=f"insilico-seed{seed}-", dir=base_dir) as work:
            for arm, arm_rewards in (("reward", rewards), ("control", permuted)):
                synthetic = [(im, p, float(r)) for im, p, r in zip(images, prompts, arm_rewards, strict=True)]
                result = _finetune_arm(
                    base, cfg, seed, FinetuneData(real=real, synthetic=synthetic), Path(work) / arm, device
                )
                losses[arm] = result.losses
                lap(f"finetune_{arm}")
                tuned = load_pipeline(PipelineSpec(base=str(base), lora=str(result.lora_path)), device)
                fresh[arm] = _generate(tuned, fresh_req, cfg, device)
                del tuned
                lap(f"generate_{arm}")
    finally:
        torch.set_num_threads(threads)
    timings["total"] = round(sum(timings.values()), 2)

    raw = {arm: np.array([reader.measure(im) for im in ims]) for arm, ims in fresh.items()}
    pref = {arm: math.copysign(1.0, reader.direction) * values for arm, values in raw.items()}
    base_sd = float(raw["base"].std(ddof=1))
    vs_control = paired_comparison(pref["reward"], pref["control"])
    vs_base = paired_comparison(pref["reward"], pref["base"])
    train_prop = np.array([reader.measure(im) for im in images])
    return json_safe(
        {
            "seed": seed,
            "property": reader.property,
            "direction": reader.direction,
            "reader": reader.as_dict(),
            "reward_model": {
                "heldout_spearman": spearman,
                "train_spearman": train_spearman,
                "heldout_images": cfg.n_heldout,
                "labelled_images": cfg.n_samples,
            },
            "training_set": {
                "images": cfg.n_samples,
                "mean_property": float(train_prop.mean()),
                "reward_weights": _weights_summary(rewards, train_prop, cfg.reward_normalisation),
                "control_weights": _weights_summary(permuted, train_prop, cfg.reward_normalisation),
            },
            "fresh_images": cfg.n_fresh,
            "means": {arm: float(values.mean()) for arm, values in raw.items()},
            "base_sd": base_sd,
            "shift_in_base_sd": {
                arm: float((raw[arm].mean() - raw["base"].mean()) / base_sd) for arm in ("reward", "control")
            },
            "reward_vs_control": vs_control,
            "reward_vs_base": vs_base,
            "control_vs_base": paired_comparison(pref["control"], pref["base"]),
            "passed": bool(
                vs_control["p_ttest"] < cfg.significance
                and vs_base["p_ttest"] < cfg.significance
                and spearman > 0.5
            ),
            "finetune_loss": {
                arm: {"first_10": float(np.mean(v[:10])), "last_10": float(np.mean(v[-10:]))}
                for arm, v in losses.items()
            },
            "timings_s": timings,
            "config": cfg.as_dict(),
        }
    )


# --- command line ----------------------------------------------------------------------------------------------------


def _setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description="In-silico proof: reward-weighted finetuning vs a permuted control."
    )
    parser.add_argument("--out", type=Path, help="JSON file to write the results to")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--base-dir", type=Path, help="where the tiny base is built/reused (default: a temp dir)"
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        type=_setting,
        metavar="KEY=VALUE",
        help="an InSilicoConfig field (JSON value), e.g. --set reward_normalisation=standardise",
    )
    args = parser.parse_args(argv)
    cfg = InSilicoConfig.from_dict({**InSilicoConfig().as_dict(), **dict(args.settings)})
    with tempfile.TemporaryDirectory(prefix="insilico-") as tmp:
        base_dir = args.base_dir or Path(tmp)
        started = time.perf_counter()
        base = build_insilico_base(base_dir, cfg)
        base_info = json.loads((base / BASE_MARKER).read_text())
        runs = [run_insilico(seed, base_dir=base_dir, cfg=cfg) for seed in args.seeds]
        total = time.perf_counter() - started
    for run in runs:
        run.pop("config")
        print(
            f"seed {run['seed']}: passed={run['passed']} spearman={run['reward_model']['heldout_spearman']:.3f} "
            f"reward-control d={run['reward_vs_control']['cohens_d']:.2f} p={run['reward_vs_control']['p_ttest']:.2g}"
            f" reward-base d={run['reward_vs_base']['cohens_d']:.2f} p={run['reward_vs_base']['p_ttest']:.2g}"
            f" means={ {k: round(v, 4) for k, v in run['means'].items()} } {run['timings_s']['total']:.0f}s"
        )
    out = {
        "what": "in-silico proof: simulated reader -> reward model -> reward-weighted LoRA finetune vs permuted-reward "
        "control, paired over fresh sampling seeds (training/insilico.py)",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": 1,
            "device": "cpu",
        },
        "config": cfg.as_dict(),
        "base": base_info,
        "runs": runs,
        "summary": {
            "all_passed": all(r["passed"] for r in runs),
            "max_p_reward_vs_control": max(r["reward_vs_control"]["p_ttest"] for r in runs),
            "max_p_reward_vs_base": max(r["reward_vs_base"]["p_ttest"] for r in runs),
            "min_heldout_spearman": min(r["reward_model"]["heldout_spearman"] for r in runs),
            "seconds_total_including_base": round(total, 1),
        },
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(json_safe(out), indent=1, allow_nan=False) + "\n")
    return out


if __name__ == "__main__":
    main()
