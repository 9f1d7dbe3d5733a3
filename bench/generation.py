"""Generation throughput: the worker's path against a bare `pipe(...)` call on the same model and batch.

Two arms run interleaved (A B A B …) on one warm pipeline, so machine noise hits both alike:

- bare: `pipe(prompt=[...], generator=[...], output_type="np")` per chunk, nothing else;
- worker: with `--django` (default on CPU) the whole job service `inference.jobs.generation_batch_run` —
  database rows, heartbeats, PNG files through the storage API — else the ML-level path the worker calls
  (`inference.ml.generation.generate`: per-image seeds, grayscale conversion).

Also checks that a second batch on a warm worker loads no weights. Prints a table and writes JSON.

    python bench/generation.py                                   # tiny model on CPU, worker path with Django
    python bench/generation.py --preset sd21-base --no-django --steps 75 --size 512 --batch 4   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common.processes import secret_key_for_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django(var_dir: Path) -> None:
    os.environ.update(CXR_VAR_DIR=str(var_dir), DATABASE_URL=f"sqlite:///{var_dir / 'bench.sqlite3'}",
                      DJANGO_SETTINGS_MODULE="config.settings", CELERY_TASK_ALWAYS_EAGER="1")
    os.environ.pop("REDIS_URL", None)
    secret_key_for_run()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "sd21-base"], default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=16, help="images per measured batch")
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs")
    parser.add_argument("--django", dest="django", action="store_true", default=None)
    parser.add_argument("--no-django", dest="django", action="store_false")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/generation.json")
    args = parser.parse_args()

    import torch

    from inference.ml.devices import pick_device, synchronize
    from inference.ml.generation import generate, plan_requests
    from inference.ml.generation_config import GenerationConfig
    from inference.ml.loading import PIPELINES, PipelineSpec
    from inference.ml.tiny import TinySDConfig, build_tiny_sd

    device = pick_device(os.environ.get("CXR_DEVICE", "auto"))
    use_django = args.django if args.django is not None else device.type == "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    if use_django:
        setup_django(work)
    preset = TinySDConfig.sd21_base() if args.preset == "sd21-base" else TinySDConfig.tiny()
    started = time.perf_counter()
    model_dir = build_tiny_sd(work / "sd", preset)
    build_s = time.perf_counter() - started
    cfg = GenerationConfig(steps=args.steps, height=args.size, width=args.size, batch_size=args.batch)
    spec = PipelineSpec(base=str(model_dir))
    started = time.perf_counter()
    pipe = PIPELINES.get(("bench", str(model_dir), ""), spec, device)
    load_s = time.perf_counter() - started
    requests = plan_requests(prompts=[], count=args.images, images_per_prompt=1, seed=1)

    def bare() -> None:
        for start in range(0, len(requests), cfg.batch_size):
            chunk = requests[start : start + cfg.batch_size]
            gens = [torch.Generator(device).manual_seed(r.seed) for r in chunk]
            with torch.inference_mode():
                pipe(prompt=[r.prompt for r in chunk], num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                     height=cfg.height, width=cfg.width, generator=gens, output_type="np")

    version = None
    if use_django:
        from inference.models import GenerationBatch, ModelVersion

        version = ModelVersion.objects.create(name="bench", base_path=str(model_dir))

    def worker(seed: int) -> None:
        if use_django:
            from inference.jobs import generation_batch_run

            batch = GenerationBatch.objects.create(model_version=version, count=args.images, prompts=[], seed=1,
                                                   config=cfg.as_dict(), clean=False)
            assert generation_batch_run(batch=batch).status == "done"
        else:
            for _ in generate(pipe, requests, cfg, device=device):
                pass

    if use_django:  # the service keys its cache by model version: warm that entry too
        from inference.jobs import version_pipeline

        version_pipeline(version, scheduler=cfg.scheduler, device=device)
    bare()  # warm-up (kernels, allocator)
    worker(0)
    synchronize(device)
    times: dict[str, list[float]] = {"bare": [], "worker": []}
    loads_before = PIPELINES.loads
    for i in range(args.repeats):
        for arm, fn in (("bare", bare), ("worker", lambda i=i: worker(i + 1))):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[arm].append(time.perf_counter() - t0)
    loads_during = PIPELINES.loads - loads_before

    rows = {arm: {"median_s": statistics.median(ts), "images_per_s": args.images / statistics.median(ts),
                  "runs_s": [round(t, 4) for t in ts]} for arm, ts in times.items()}
    overhead = rows["worker"]["median_s"] / rows["bare"]["median_s"] - 1
    result = {
        "benchmark": "generation", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()},
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        "settings": {"preset": args.preset, "steps": cfg.steps, "size": cfg.height, "batch": cfg.batch_size,
                     "images": args.images, "repeats": args.repeats, "guidance_scale": cfg.guidance_scale,
                     "worker_path": "django service (db + storage)" if use_django else "inference.ml.generation.generate"},
        "build_s": round(build_s, 2), "first_load_s": round(load_s, 2),
        "arms": rows, "worker_overhead": round(overhead, 4), "weight_loads_on_warm_batches": loads_during,
    }
    print(f"\nGeneration, {args.preset} {cfg.height} px, {cfg.steps} steps, CFG {cfg.guidance_scale}, batch "
          f"{cfg.batch_size}, {args.images} images x {args.repeats} interleaved repeats on {device}")
    print("| arm | median s | images/s | runs s |\n|---|---:|---:|---|")
    for arm, row in rows.items():
        print(f"| {arm} | {row['median_s']:.3f} | {row['images_per_s']:.2f} | {row['runs_s']} |")
    print(f"\nworker overhead vs bare: {overhead * 100:+.1f} % (target <= 5 %); "
          f"weight loads during warm batches: {loads_during} (target 0)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
