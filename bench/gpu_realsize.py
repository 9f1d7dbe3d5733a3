"""Real-size GPU benchmark: SD 2.1-base generation, inpainting and LoRA finetuning.

Self-contained (torch, diffusers, transformers, peft; no Django, no model hub): every model is built
from the SD 2.1-base configs with random weights, so throughput and memory match the real checkpoints
while the images are noise. Prompts bypass the tokenizer: the text encoder runs on fixed random token
ids (length 77) once per batch and its output is passed as ``prompt_embeds``.

Measurements run most-important-first and the JSON is rewritten after each one, so a run cut short by
``--budget-s`` or a timeout still leaves every figure taken so far.

    python bench/gpu_realsize.py --out bench/results/gpu_realsize.json   # accelerator, ~4-6 min on an H100
    python bench/gpu_realsize.py --quick                                 # CPU smoke test, tiny configs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from realsize.device import device_info, free_memory, pick_device
from realsize.models import Models, Sizes
from realsize.stages import measure_finetune, measure_generation

# ----------------------------------------------------------------------------- driver


def plan(args: argparse.Namespace, sizes: Sizes) -> list[tuple[str, dict[str, Any], Callable[..., dict]]]:
    """Most-important-first; later entries are dropped once the time budget is spent."""
    g, i, ft = sizes.gen_steps, sizes.inpaint_steps, args.ft_steps
    return [
        ("gen_b1", dict(batch=1, steps=g, repeats=3), measure_generation),
        ("gen_b4", dict(batch=4, steps=g, repeats=2), measure_generation),
        ("lora_ft_b1", dict(batch=1, steps=ft), measure_finetune),
        ("lora_ft_b4", dict(batch=4, steps=ft), measure_finetune),
        ("lora_ft_b4_gradckpt", dict(batch=4, steps=ft, grad_checkpointing=True), measure_finetune),
        ("gen_b8", dict(batch=8, steps=g, repeats=2), measure_generation),
        ("lora_ft_b8", dict(batch=8, steps=ft), measure_finetune),
        ("inpaint_b1", dict(batch=1, steps=i, repeats=2, inpaint=True), measure_generation),
        ("inpaint_b4", dict(batch=4, steps=i, repeats=2, inpaint=True), measure_generation),
        ("gen_b4_fp16", dict(batch=4, steps=g, repeats=2, fp16=True), measure_generation),
    ]


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'name':<22}{'batch':>6}{'steps':>6}{'img/s':>9}{'s/img':>9}{'step/s':>9}{'peak GiB':>10}  status"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        step_rate = r.get("steps_per_s", r.get("unet_steps_per_s"))
        cells = [r.get("images_per_s"), r.get("s_per_image"), step_rate, r.get("peak_alloc_gib")]
        fmt = "".join(f"{c:>9.3f}" if isinstance(c, float) else f"{'-':>9}" for c in cells[:3])
        peak = cells[3]
        fmt += f"{peak:>10.2f}" if isinstance(peak, float) else f"{'-':>10}"
        print(f"{r['name']:<22}{r.get('batch', ''):>6}{r.get('steps', ''):>6}{fmt}  {r['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/gpu_realsize.json", help="JSON output path")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny models, 64 px, 2 steps")
    parser.add_argument("--budget-s", type=float, default=360.0, help="skip measurements started after this")
    parser.add_argument("--ft-steps", type=int, default=8, help="timed LoRA steps per measurement (>= 5)")
    parser.add_argument("--only", default="", help="comma-separated measurement names to run (default all)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    diffusers.utils.logging.set_verbosity_error()  # silences the per-build "keep in float32" notice

    device = pick_device()
    sizes = Sizes.tiny() if args.quick else Sizes.real()
    dtype = torch.bfloat16 if device.type != "cpu" else torch.float32
    if args.quick:
        args.ft_steps = min(args.ft_steps, 2)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    import accelerate
    import peft

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = dict(
        meta=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
            peft=peft.__version__,
            accelerate=accelerate.__version__,
            device=device_info(device),
            dtype=str(dtype),
            quick=args.quick,
            resolution=sizes.resolution,
            guidance_scale=4.0,
            scheduler="DDIM (SD2.1-base betas, scaled_linear 0.00085-0.012)",
            attention="diffusers default (torch SDPA)",
            notes="random weights; gen time = text encoder + all UNet CFG steps + VAE decode + PIL postprocess; "
            "finetune step = VAE encode + text encoder + UNet fwd/bwd (bf16 autocast, fp32 LoRA) + AdamW",
        ),
        results=[],
    )

    def save() -> None:
        report["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(report, indent=2))

    print(
        f"device={device} {report['meta']['device'].get('name')} dtype={dtype} torch={torch.__version__} "
        f"diffusers={diffusers.__version__}",
        flush=True,
    )
    build_start = time.perf_counter()
    models = Models(sizes, device, dtype)
    report["meta"]["build_vae_te_s"] = round(time.perf_counter() - build_start, 2)
    report["meta"]["params"] = models.params
    save()

    only = {s for s in args.only.split(",") if s}
    for name, kwargs, fn in plan(args, sizes):
        if only and name not in only:
            continue
        entry: dict[str, Any] = dict(name=name, batch=kwargs["batch"], steps=kwargs["steps"])
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            entry.update(status=f"skipped (budget {args.budget_s:.0f}s, elapsed {elapsed:.0f}s)")
        else:
            kwargs = dict(kwargs)
            fp16 = kwargs.pop("fp16", False)
            if fp16:
                if device.type == "cpu":
                    entry.update(status="skipped (fp16 on cpu)")
                    report["results"].append(entry)
                    continue
                models.dtype = torch.float16
                models.vae.to(torch.float16)
                models.text_encoder.to(torch.float16)
                models._unet, models._unet_kind = None, None
            entry["dtype"] = str(models.dtype)
            start = time.perf_counter()
            try:
                entry.update(fn(models, **kwargs))
                entry["status"] = "ok"
            except Exception as exc:  # OOM or API drift: record it and go on with the rest
                entry.update(status=f"error: {type(exc).__name__}: {exc}"[:500])
                traceback.print_exc()
                free_memory(device)
            entry["wall_s"] = round(time.perf_counter() - start, 2)
            report["meta"]["params"] = models.params
        report["results"].append(entry)
        save()
        print(
            f"[{time.perf_counter() - t0:7.1f}s] {name}: "
            + json.dumps({k: v for k, v in entry.items() if k not in ("name",)}),
            flush=True,
        )

    print_table(report["results"])
    save()
    print(f"\nwrote {out} in {report['meta']['elapsed_s']}s")


if __name__ == "__main__":
    main()
