"""Image-metric throughput at flat memory: feature extraction + FID statistics on streamed phantoms.

Each arm runs in its own process, so its peak RSS (ru_maxrss) is its own. Images come from a generator, one phantom
at a time, and are never all in memory; RSS is sampled at each quarter of the stream to show it stays flat.

- random: `random_features()` (the demo/test extractor), 2,000 images;
- inception: the FID InceptionV3 through the production builder `inception_fid`, with random weights in a local
  file (the real weights are not reachable here): same network, same 299 px resize, so the same speed; fewer
  images on a CPU (200 by default, about 2 minutes on 2 cores);
- report: the whole `image_metrics` report (FID, PRDC, MS-SSIM, memorisation, utility) on N real + N synthetic
  labelled phantoms with the random extractor.

FID is computed between the even and the odd images of the stream. Prints a table and writes JSON.

    python bench/metrics.py                                     # CPU defaults
    python bench/metrics.py --device cuda --inception-images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.processes import rss_mb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Phantoms:
    """A stream of phantom images that times its own generation, so extraction can be timed without it."""

    def __init__(self, n: int, size: int, start: int = 0, labelled: bool = False) -> None:
        self.n, self.size, self.start, self.labelled, self.seconds, self.findings = (
            n,
            size,
            start,
            labelled,
            0.0,
            [],
        )

    def __iter__(self):
        from inference.ml.phantoms import generate_phantom

        for i in range(self.n):
            t0 = time.perf_counter()
            p = generate_phantom(seed=self.start + i, size=self.size)
            self.findings.append(p.findings)  # tiny tuples; the report arm reads them back in order
            self.seconds += time.perf_counter() - t0
            yield p.image


def build(kind: str, device: str, work: Path):
    import torch
    import torchvision

    from training.ml.metrics.features import inception_fid, random_features

    if kind == "random":
        return random_features(device=device)
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=1008
    )
    torch.save(
        net.state_dict(), work / "inception-random.pth"
    )  # the FID network's tensor names, random values
    return inception_fid(work / "inception-random.pth", device=device)


def arm_stream(kind: str, n: int, size: int, batch: int, device: str) -> dict:
    import numpy as np
    import torch

    from training.ml.metrics.features import FeatureStats, batches, fid

    rss_start = rss_mb(os.getpid())
    t0 = time.perf_counter()
    net = build(kind, device, Path(tempfile.mkdtemp(prefix="bench-metrics-")))
    build_s, rss_built = time.perf_counter() - t0, rss_mb(os.getpid())
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    net(np.zeros((batch, size, size), np.uint8))  # warm-up: thread pools, allocator, kernels
    sync()
    halves = [FeatureStats(net.dim), FeatureStats(net.dim)]
    stream, seen, extract_s, stats_s = Phantoms(n, size), 0, 0.0, 0.0
    marks, rss_at = [n * q // 4 for q in (1, 2, 3, 4)], {}
    for b in batches(stream, batch):
        t0 = time.perf_counter()
        feats = net(b)  # returns on the CPU, so this includes the device sync
        extract_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for parity, stats in enumerate(halves):
            stats.update(feats[(parity - seen) % 2 :: 2])  # even / odd stream positions
        stats_s += time.perf_counter() - t0
        seen += len(b)
        while marks and seen >= marks[0]:
            rss_at[marks.pop(0)] = round(rss_mb(os.getpid()), 1)
    t0 = time.perf_counter()
    value = fid(halves[0], halves[1])
    fid_s = time.perf_counter() - t0
    return {
        "arm": kind,
        "extractor": net.name,
        "dim": net.dim,
        "images": seen,
        "size_px": size,
        "batch": batch,
        "build_s": round(build_s, 2),
        "generate_s": round(stream.seconds, 2),
        "extract_s": round(extract_s, 2),
        "stats_s": round(stats_s, 3),
        "fid_s": round(fid_s, 3),
        "fid_even_vs_odd": value,
        "images_per_s": round(seen / (extract_s + stats_s), 2),
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_after_build": round(rss_built, 1),
        "rss_mb_at_images": rss_at,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def arm_report(n: int, size: int, batch: int, device: str) -> dict:
    import sklearn.linear_model  # noqa: F401  imported lazily by the report: not part of its time
    import torchmetrics.functional.image  # noqa: F401

    from training.ml.metrics.features import random_features
    from training.ml.metrics.images import MetricsConfig, image_metrics

    cfg = MetricsConfig(batch_size=batch)
    real, fake = Phantoms(n, size, start=0), Phantoms(n, size, start=1_000_000)
    rss_start = rss_mb(os.getpid())
    t0 = time.perf_counter()
    # Labels are read lazily, in step with the images, so the stream stays one pass.
    report = image_metrics(
        real,
        fake,
        extractor=random_features(device=device),
        config=cfg,
        real_findings=_lazy(real),
        fake_findings=_lazy(fake),
    )
    total_s = time.perf_counter() - t0
    json.dumps(report, allow_nan=False)
    return {
        "arm": "report",
        "extractor": report["features"]["embedding"],
        "images": 2 * n,
        "size_px": size,
        "batch": batch,
        "generate_s": round(real.seconds + fake.seconds, 2),
        "metrics_s": round(total_s - real.seconds - fake.seconds, 2),
        "images_per_s": round(2 * n / (total_s - real.seconds - fake.seconds), 2),
        "rss_mb_start": round(rss_start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "summary": {
            "fid": report["fid"],
            "prdc": report["prdc"],
            "ms_ssim": report["ms_ssim"]["synthetic"],
            "memorisation_flagged": report["memorisation"]["flagged"],
            "utility_macro_auroc": {
                arm: report["utility"][arm]["macro_auroc"] for arm in ("synthetic", "real")
            },
            "skipped": report["skipped"],
        },
    }


def _lazy(stream: Phantoms):
    i = 0
    while i < stream.n:
        yield stream.findings[i]  # the image loop has always produced image i before its label is asked for
        i += 1


def child(args: argparse.Namespace) -> dict:
    if args.arm == "report":
        return arm_report(args.report_images, args.size, args.batch, args.device)
    n = args.random_images if args.arm == "random" else args.inception_images
    return arm_stream(args.arm, n, args.size, args.batch, args.device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arm", choices=["random", "inception", "report"], help="run one arm here (internal)"
    )
    parser.add_argument("--arms", default="random,inception,report")
    parser.add_argument("--random-images", type=int, default=2000)
    parser.add_argument("--inception-images", type=int, default=200)
    parser.add_argument("--report-images", type=int, default=1000, help="per set (real and synthetic)")
    parser.add_argument("--size", type=int, default=64, help="phantom side, px")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/metrics.json")
    args = parser.parse_args()
    if args.arm:
        print("RESULT " + json.dumps(child(args)))
        return

    rows = []
    for arm in args.arms.split(","):
        cmd = [sys.executable, __file__, "--arm", arm, *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not line:
            raise SystemExit(f"arm {arm} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(line[-1][len("RESULT ") :]))
        print(f"{arm}: done", flush=True)

    import torch

    result = {
        "benchmark": "metrics",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "device_name": torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else platform.processor(),
        },
        "versions": {
            "torch": torch.__version__,
            "torch_fidelity": __import__("torch_fidelity").__version__,
            "torchmetrics": __import__("torchmetrics").__version__,
        },
        "arms": rows,
    }
    print(
        f"\nImage metrics on {args.device}, phantoms {args.size} px streamed from a generator, batch {args.batch}"
    )
    print(
        "| arm | extractor | images | images/s (extract + stats) | FID s | RSS MB at 1/4, 2/4, 3/4, 4/4 | peak RSS MB |"
    )
    print("|---|---|---:|---:|---:|---|---:|")
    for r in rows:
        rss = ", ".join(f"{v:.0f}" for v in r.get("rss_mb_at_images", {}).values()) or "-"
        print(
            f"| {r['arm']} | {r['extractor']} | {r['images']} | {r['images_per_s']:.1f} | {r.get('fid_s', '-')} | "
            f"{rss} | {r['peak_rss_mb']:.0f} |"
        )
    report = next((r for r in rows if r["arm"] == "report"), None)
    if report:
        print(
            f"\nreport arm: whole image_metrics report in {report['metrics_s']} s beyond phantom generation "
            f"({report['generate_s']} s); {json.dumps(report['summary'])}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
