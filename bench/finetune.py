"""Training-step cost: our finetuning step against a bare diffusers LoRA step on the same model and batch.

Two arms on two copies of one base (each with its own fresh LoRA adapter and AdamW), run interleaved in blocks
(A B, then B A, …) so machine noise hits both alike:

- ours: one iteration of `training.ml.finetune.loop.run_finetune`'s loop with the reward-weighted objective: a batch
  drawn by `training.ml.finetune.data.BatchSampler` (half real, half synthetic with rewards), then `train_step`
  (accelerate's accumulate, `compute_loss`, backward, clipping, AdamW, LR scheduler, loss reduction);
- bare: the textbook step of diffusers' `train_text_to_image_lora.py`: pixels → VAE sample → tokenise and encode
  → noise and timesteps → UNet → MSE → backward → clip → AdamW, with autocast on accelerators.

Both see the same batch size and image size. Prints a table and writes JSON; the target is ≤ 10% overhead.

    python bench/finetune.py                                        # tiny model, 64 px, on CPU
    python bench/finetune.py --preset sd21-base --size 512          # SD v2-1-base sizes (random weights), on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bare_lora_step_factory(base: Path, device, images, prompts, *, rank: int, alpha: float, lr: float):
    """The textbook LoRA step on its own copy of the base; returns a no-argument step function."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from inference.ml.devices import precision_for
    from inference.ml.loading import PipelineSpec, load_pipeline

    pipe = load_pipeline(PipelineSpec(base=str(base)), device)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    cast_training_params(unet, dtype=torch.float32)
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    autocast = precision_for(device).autocast
    weight_dtype = vae.dtype
    pixels_u8 = torch.from_numpy(np.stack(images))

    def step() -> float:
        pixels = (pixels_u8.float() / 127.5 - 1.0).unsqueeze(1).repeat(1, 3, 1, 1).to(device, weight_dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(device)
            embeds = text_encoder(ids, return_dict=False)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            pred = unet(noisy, timesteps, embeds, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "sd21-base"], default="tiny")
    parser.add_argument("--size", type=int, default=64, help="image side, px")
    parser.add_argument("--batch", type=int, default=4, help="images per step (ours: half real, half synthetic)")
    parser.add_argument("--blocks", type=int, default=12, help="interleaved A/B blocks")
    parser.add_argument("--steps", type=int, default=5, help="training steps per block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm first")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on CPU, so CPU time is a clean cost measure on a shared "
                             "machine; untouched on accelerators)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/finetune.json")
    args = parser.parse_args()

    import numpy as np
    import torch

    from inference.ml.devices import pick_device, synchronize
    from inference.ml.phantoms import generate_phantoms
    from inference.ml.tiny import TinySDConfig, build_tiny_sd
    from training.ml.finetune.config import FinetuneConfig
    from training.ml.finetune.data import BatchSampler, FinetuneData
    from training.ml.finetune.loop import setup_training, train_step
    from training.ml.finetune.losses import normalise_rewards

    device = pick_device(os.environ.get("CXR_DEVICE", "auto"))
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="bench-ft-"))
    preset = TinySDConfig.sd21_base() if args.preset == "sd21-base" else TinySDConfig.tiny()
    started = time.perf_counter()
    base = build_tiny_sd(work / "sd", preset)
    build_s = time.perf_counter() - started

    phantoms = list(generate_phantoms(2 * args.batch, seed=11, size=args.size))
    real = [(p.image, p.report) for p in phantoms[: args.batch]]
    synthetic = [(p.image, p.report, float(i % 3) / 2) for i, p in enumerate(phantoms[args.batch :])]
    cfg = dataclasses.replace(FinetuneConfig(), objective="reward_weighted", batch_size=args.batch,
                              resolution=args.size, steps=10**6, seed=0)
    session = setup_training(base, cfg, device)
    data = FinetuneData(real=real, synthetic=synthetic)
    sampler = BatchSampler(cfg, data, normalise_rewards([s[2] for s in synthetic], cfg.reward_normalisation),
                           process=0, processes=1)
    n_real, n_synth = cfg.real_synthetic_split()
    bare_images = [x[0] for x in real[:n_real]] + [x[0] for x in synthetic[:n_synth]]
    bare_prompts = [x[1] for x in real[:n_real]] + [x[1] for x in synthetic[:n_synth]]
    bare = bare_lora_step_factory(base, device, bare_images, bare_prompts, rank=cfg.rank, alpha=cfg.alpha,
                                  lr=cfg.lr)
    step_no = 0

    def ours() -> float:
        nonlocal step_no
        loss, _ = train_step(session, [sampler.next_batch()], step=step_no)
        step_no += 1
        return loss

    arms = {"ours": ours, "bare": bare}
    for fn in arms.values():
        for _ in range(args.warmup):
            fn()
    synchronize(device)
    per_step: dict[str, list[float]] = {name: [] for name in arms}
    cpu_per_step: dict[str, list[float]] = {name: [] for name in arms}  # process CPU time: robust to other load
    for block in range(args.blocks):
        order = list(arms) if block % 2 == 0 else list(reversed(arms))
        for name in order:
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                loss = arms[name]()
            synchronize(device)
            per_step[name].append((time.perf_counter() - t0) / args.steps)
            cpu_per_step[name].append((time.process_time() - c0) / args.steps)
            assert np.isfinite(loss), f"{name} loss is not finite"

    stats = {name: {"median_s": statistics.median(v), "min_s": min(v), "mean_s": statistics.fmean(v),
                    "steps_per_s": 1.0 / statistics.median(v), "blocks_s": v,
                    "cpu_median_s": statistics.median(cpu_per_step[name]), "cpu_blocks_s": cpu_per_step[name]}
             for name, v in per_step.items()}
    overhead_median = stats["ours"]["median_s"] / stats["bare"]["median_s"] - 1.0
    overhead_min = stats["ours"]["min_s"] / stats["bare"]["min_s"] - 1.0
    # Paired blocks (same moment, same load): the median of per-pair ratios is the most noise-robust figure.
    overhead_paired = statistics.median(a / b for a, b in zip(per_step["ours"], per_step["bare"], strict=True)) - 1
    overhead_cpu = statistics.median(a / b for a, b in zip(cpu_per_step["ours"], cpu_per_step["bare"], strict=True)) - 1
    # On a CPU the process's CPU time is what the step costs, whatever else the machine runs; on an accelerator
    # the wall time (synchronised) is.
    headline = overhead_cpu if device.type == "cpu" else overhead_paired
    report = {
        "bench": "finetune", "device": str(device), "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda" else platform.processor() or platform.machine(),
        "preset": args.preset, "size": args.size, "batch": args.batch, "objective": "reward_weighted",
        "mixed_precision": session.accelerator.mixed_precision, "blocks": args.blocks, "steps_per_block": args.steps,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None, "build_s": build_s,
        "ours": stats["ours"], "bare": stats["bare"], "overhead_ratio_paired_median": overhead_paired,
        "overhead_ratio_median": overhead_median, "overhead_ratio_min": overhead_min,
        "overhead_ratio_cpu_time_paired_median": overhead_cpu, "overhead_ratio": headline,
        "overhead_basis": "process CPU time, paired blocks" if device.type == "cpu" else "wall time, paired blocks",
        "target_overhead": 0.10, "within_target": headline <= 0.10,
    }
    print(f"\nfinetune step, {args.preset} @ {args.size}px, batch {args.batch}, {device} "
          f"({report['mixed_precision']}), {args.blocks} blocks x {args.steps} steps")
    print(f"{'arm':<6} {'median s/step':>14} {'min s/step':>11} {'steps/s':>8} {'CPU s/step':>11}")
    for name in arms:
        s = stats[name]
        print(f"{name:<6} {s['median_s']:>14.4f} {s['min_s']:>11.4f} {s['steps_per_s']:>8.2f} "
              f"{s['cpu_median_s']:>11.4f}")
    print(f"overhead (ours / bare - 1), paired blocks: wall {overhead_paired:+.1%}, CPU time {overhead_cpu:+.1%}; "
          f"wall medians {overhead_median:+.1%}, minima {overhead_min:+.1%}")
    print(f"headline ({report['overhead_basis']}): {headline:+.1%}  (target <= +10%): "
          f"{'OK' if report['within_target'] else 'OVER'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
