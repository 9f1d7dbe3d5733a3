"""Text-cleaning benchmark on phantoms: per-stage latency and mask / inpainting quality against ground truth.

Each phantom (512 px, JPEG quality 75, burned-in text, markers and ECG leads) is cleaned with the production
code (`inference.ml.cleaning`): the classical detector, SAM box refinement with a random tiny SAM (latency only:
random weights cannot refine), OpenCV Telea inpainting, and, on the first few, SD2-inpainting through a tiny
random pipeline (latency of the plumbing only). The same seeds without text measure false alarms.

    python bench/cleaning.py --out bench/results/cleaning.json   # 200 phantoms, ~1 min on 2 CPU cores
    python bench/cleaning.py --quick                             # 20 phantoms, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.ml.cleaning import CleaningConfig, detect_text  # noqa: E402
from inference.ml.phantoms import generate_phantom  # noqa: E402
from inference.ml.text_removal import clean_image, refine_with_sam  # noqa: E402


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    mse = float(np.mean((a[where].astype(np.float64) - b[where]) ** 2))
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def _summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "p95": float(np.percentile(v, 95)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _tiny_sd_pipe(device: str):
    from diffusers import StableDiffusionInpaintPipeline

    from inference.ml.tiny import build_tiny_sd

    path = build_tiny_sd(Path(tempfile.mkdtemp(prefix="cleaning-bench-")) / "sd-inpaint", inpaint=True)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(path), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run(
    n: int,
    *,
    first_seed: int,
    size: int,
    jpeg: int,
    sd_n: int,
    sd_resolution: int | None,
    device: str,
    threads: int | None,
) -> dict:
    import torch
    from segment_anything import SamPredictor

    from inference.ml.sam import build_tiny_sam

    if threads:  # on a shared CPU, more intra-op threads than free cores make latency erratic
        torch.set_num_threads(threads)
    cfg = CleaningConfig()
    predictor = SamPredictor(build_tiny_sam(seed=0, device=device))
    per_image, inter, union, se_in, se_out, in_px = [], 0, 0, 0.0, 0.0, 0
    warm = generate_phantom(seed=first_seed, size=size, burn_in_text=True, jpeg_quality=jpeg)
    clean_image(warm.image, cfg)  # first-call costs (OpenCV, numpy) stay out of the figures
    refine_with_sam(warm.image, detect_text(warm.image, cfg).boxes, predictor)

    for seed in range(first_seed, first_seed + n):
        p = generate_phantom(seed=seed, size=size, burn_in_text=True, jpeg_quality=jpeg)
        result = clean_image(p.image, cfg)
        t = time.perf_counter()
        sam_mask = refine_with_sam(p.image, result.boxes, predictor, batch=cfg.sam_batch)
        sam_ms = (time.perf_counter() - t) * 1e3
        inside = np.zeros(sam_mask.shape, bool)
        for b in result.boxes:
            inside[b.y0 : b.y1, b.x0 : b.x1] = True
        truth, mask = p.text_mask, result.mask
        i, u = int((mask & truth).sum()), int((mask | truth).sum())
        inter, union = inter + i, union + u
        se_in += float(((p.image[truth].astype(np.float64) - p.clean[truth]) ** 2).sum())
        se_out += float(((result.cleaned[truth].astype(np.float64) - p.clean[truth]) ** 2).sum())
        in_px += int(truth.sum())
        no_text = generate_phantom(seed=seed, size=size, burn_in_text=False, jpeg_quality=jpeg)
        per_image.append(
            {
                "seed": seed,
                "iou": i / u if u else 1.0,
                "outside_truth_pct": 100 * float((mask & ~truth).mean()),
                "psnr_gain_db": _psnr(result.cleaned, p.clean, truth) - _psnr(p.image, p.clean, truth),
                "no_text_flagged_pct": 100 * float(detect_text(no_text.image, cfg).mask.mean()),
                "boxes": len(result.boxes),
                "sam_pixels_outside_boxes": int((sam_mask & ~inside).sum()),
                "ms": {
                    "detect": result.timings_ms["detect"],
                    "sam_refine_tiny": sam_ms,
                    "telea_inpaint": result.timings_ms["inpaint"],
                },
            }
        )

    sd = {}
    if sd_n:
        pipe = _tiny_sd_pipe(device)
        sd_cfg = CleaningConfig(sd_steps=CleaningConfig.tiny().sd_steps, sd_resolution=sd_resolution)
        times, unchanged = [], True
        for seed in range(first_seed, first_seed + sd_n):
            p = generate_phantom(seed=seed, size=size, burn_in_text=True, jpeg_quality=jpeg)
            result = clean_image(p.image, sd_cfg, sd_inpaint_pipe=pipe)
            times.append(result.timings_ms["inpaint"])
            unchanged &= bool(
                np.array_equal(result.cleaned[~result.inpaint_mask], p.image[~result.inpaint_mask])
            )
        sd = {
            "images": sd_n,
            "steps": sd_cfg.sd_steps,
            "image_px": size,
            "sd_resolution_px": sd_resolution or size,
            "inpaint_ms": _summary(times),
            "outside_mask_unchanged": unchanged,
            "note": "tiny random SD2-inpainting pipeline: plumbing latency only, not image quality",
        }

    ious = [r["iou"] for r in per_image]
    return {
        "benchmark": "cleaning",
        "phantoms": {
            "n": n,
            "first_seed": first_seed,
            "size_px": size,
            "jpeg_quality": jpeg,
            "burn_in_text": True,
        },
        "quality": {
            "iou_pooled": inter / union,
            "iou_per_image": _summary(ious),
            "iou_per_image_p5": float(np.percentile(ious, 5)),
            "images_iou_below_0.5": int(sum(v < 0.5 for v in ious)),
            "outside_truth_pct": _summary([r["outside_truth_pct"] for r in per_image]),
            "psnr_gain_db_pooled": 10 * np.log10(se_in / max(se_out, 1e-12)),
            "psnr_gain_db_per_image": _summary([r["psnr_gain_db"] for r in per_image]),
            "no_text_flagged_pct": _summary([r["no_text_flagged_pct"] for r in per_image]),
            "sam_pixels_outside_boxes_total": sum(r["sam_pixels_outside_boxes"] for r in per_image),
            "truth_pixels": in_px,
        },
        "latency_ms": {
            stage: _summary([r["ms"][stage] for r in per_image])
            for stage in ("detect", "sam_refine_tiny", "telea_inpaint")
        },
        "sd_inpaint_tiny": sd,
        "config": asdict(cfg),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": device,
            "opencv": __import__("cv2").__version__,
        },
        "per_image": per_image,
    }


def _table(report: dict) -> str:
    q, lat = report["quality"], report["latency_ms"]
    lines = [
        f"phantoms: {report['phantoms']['n']} x {report['phantoms']['size_px']} px, "
        f"JPEG {report['phantoms']['jpeg_quality']}",
        f"{'metric':34s} {'value':>10s}",
        f"{'IoU pooled':34s} {q['iou_pooled']:10.3f}",
        f"{'IoU per image mean / p5 / min':34s} {q['iou_per_image']['mean']:.3f} / {q['iou_per_image_p5']:.3f} / "
        f"{q['iou_per_image']['min']:.3f}",
        f"{'outside truth % mean / max':34s} {q['outside_truth_pct']['mean']:.3f} / {q['outside_truth_pct']['max']:.3f}",
        f"{'PSNR gain dB pooled / mean / min':34s} {q['psnr_gain_db_pooled']:.1f} / "
        f"{q['psnr_gain_db_per_image']['mean']:.1f} / {q['psnr_gain_db_per_image']['min']:.1f}",
        f"{'no-text flagged % mean / max':34s} {q['no_text_flagged_pct']['mean']:.4f} / "
        f"{q['no_text_flagged_pct']['max']:.4f}",
        f"{'SAM pixels outside boxes':34s} {q['sam_pixels_outside_boxes_total']:10d}",
        "",
        f"{'stage (ms per image)':34s} {'mean':>8s} {'median':>8s} {'p95':>8s}",
    ]
    for stage, s in lat.items():
        lines.append(f"{stage:34s} {s['mean']:8.1f} {s['median']:8.1f} {s['p95']:8.1f}")
    if report["sd_inpaint_tiny"]:
        sd = report["sd_inpaint_tiny"]
        label, s = f"sd_inpaint_tiny ({sd['steps']} steps, {sd['sd_resolution_px']} px)", sd["inpaint_ms"]
        lines.append(f"{label:34s} {s['mean']:8.1f} {s['median']:8.1f} {s['p95']:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="phantoms with burned-in text")
    parser.add_argument("--seed", type=int, default=0, help="first phantom seed")
    parser.add_argument("--size", type=int, default=512, help="phantom size, px")
    parser.add_argument("--jpeg", type=int, default=75, help="JPEG quality of the phantoms")
    parser.add_argument(
        "--sd-n", type=int, default=4, help="phantoms also inpainted by a tiny SD pipeline (0: none)"
    )
    parser.add_argument(
        "--sd-resolution",
        type=int,
        default=64,
        help="long side the tiny SD runs at, px (0: the image size; slow on a CPU)",
    )
    parser.add_argument("--device", default="cpu", help="device for SAM and SD (torch device string)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="20 phantoms and 1 SD image: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    n, sd_n = (min(args.n, 20), min(args.sd_n, 1)) if args.quick else (args.n, args.sd_n)
    report = run(
        n,
        first_seed=args.seed,
        size=args.size,
        jpeg=args.jpeg,
        sd_n=sd_n,
        sd_resolution=args.sd_resolution or None,
        device=args.device,
        threads=args.threads or None,
    )
    print(_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
