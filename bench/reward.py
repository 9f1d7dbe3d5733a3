"""Reward-model training throughput: steps/s and images/s of `train_reward_model`, plus MC-dropout `predict`.

Arms (batch 16 unless --batch): the tiny preset (timm test_resnet, 64 px) and convnext_atto / resnet18 at 224 px,
all with prompt conditioning, three criteria and mismatched-report negatives, through the production loop.
Steps are timed from the loop's own progress callback (each callback reads the loss, which waits for the device),
after `--warmup` untimed steps; resizing the images and the validation pass are outside the timing.
`predict` is timed on 64 images with the arm's MC-dropout samples (the backbone runs once per image).

On a shared CPU, intra-op threads that spin-wait on a busy neighbour can make steps many times slower, so the
CPU run is repeated for each value of --threads and the load average is recorded beside each arm.

    python bench/reward.py --out bench/results/reward.json                 # CPU, threads 1 and 2
    python bench/reward.py --device cuda --steps 30 --out bench/results/reward_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.ml.phantoms import generate_phantom  # noqa: E402
from training.ml.reward.config import RewardConfig  # noqa: E402
from training.ml.reward.data import FeedbackItem  # noqa: E402
from training.ml.reward.model import predict  # noqa: E402
from training.ml.reward.train import train_reward_model  # noqa: E402

ARMS = {  # production defaults for the 224-px arms
    "tiny-64": RewardConfig.tiny(),
    "convnext_atto-224": RewardConfig(backbone="convnext_atto"),
    "resnet18-224": RewardConfig(backbone="resnet18"),
}


def feedback(n: int, size: int) -> list[FeedbackItem]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        p = generate_phantom(seed=i, size=size)
        items.append(
            FeedbackItem(
                image=p.image,
                prompt=p.report,
                is_real=i % 2 == 0,
                realism=1.0 if i % 2 == 0 else float(rng.uniform(0, 0.6)),
                criteria={k: float(rng.uniform()) for k in ("anatomy", "style", "artifacts")},
            )
        )
    return items


def run_arm(name: str, args: argparse.Namespace, items: list[FeedbackItem]) -> dict:
    cfg = replace(ARMS[name], batch_size=args.batch, steps=args.warmup + args.steps, val_fraction=0.05)
    stamps: list[float] = []
    model, _ = train_reward_model(
        items,
        cfg,
        device=args.device,
        precision=args.precision,
        on_progress=lambda step, loss: stamps.append(time.perf_counter()),
    )
    timed = np.diff(stamps[args.warmup - 1 :])  # stamps[k] is the end of step k + 1
    images = [it.image for it in items[:64]]
    prompts = [it.prompt for it in items[:64]]
    predict(model, images[:8], prompts[:8], mc_samples=cfg.mc_samples)  # warm-up
    t0 = time.perf_counter()
    predict(model, images, prompts, mc_samples=cfg.mc_samples)
    predict_s = time.perf_counter() - t0
    return {
        "arm": name,
        "backbone": cfg.backbone,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "steps_timed": len(timed),
        "step_s_median": round(float(np.median(timed)), 4),
        "step_s_mean": round(float(np.mean(timed)), 4),
        "steps_per_s": round(1 / float(np.mean(timed)), 3),
        "images_per_s": round(cfg.batch_size / float(np.mean(timed)), 2),
        "predict_mc_samples": cfg.mc_samples,
        "predict_images_per_s": round(len(images) / predict_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", default="auto", help="auto (bf16 autocast on accelerators), fp32 or bf16"
    )
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per arm, at least 1")
    parser.add_argument("--images", type=int, default=64, help="feedback items per arm")
    parser.add_argument("--threads", default="1,2", help="CPU intra-op threads to try, comma-separated")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step also builds the optimiser state)")
    threads = [int(t) for t in args.threads.split(",")] if args.device == "cpu" else [torch.get_num_threads()]
    rows = []
    for name in args.arms.split(","):
        items = feedback(args.images, 256 if ARMS[name].image_size > 64 else 64)
        for n in threads:
            torch.set_num_threads(n)
            rows.append(run_arm(name, args, items))
            print(json.dumps(rows[-1]), file=sys.stderr)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
    report = {
        "benchmark": "reward",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "device": args.device,
            "device_name": device_name,
            "precision": args.precision,
        },
        "versions": {"torch": torch.__version__, "timm": __import__("timm").__version__},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "arms": rows,
    }
    head = f"{'arm':<20}{'threads':>8}{'load':>6}{'params M':>10}{'step s':>9}{'steps/s':>9}{'img/s':>8}{'predict img/s':>15}"
    print(head)
    for r in rows:
        print(
            f"{r['arm']:<20}{r['torch_threads']:>8}{r['load_avg_1m']:>6}{r['params_m']:>10}{r['step_s_median']:>9}"
            f"{r['steps_per_s']:>9}{r['images_per_s']:>8}{r['predict_images_per_s']:>15}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
