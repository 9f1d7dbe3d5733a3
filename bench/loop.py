"""Does every round help, over loop seeds? `run_loop --control permuted` for several seeds and reader tastes: a
feedback arm and its permuted-feedback control (same seeds, real images, simulated readers and their noise, realism
function and panels), R rounds each, through a real worker on the embedded default (SQLite, CPU, the tiny
domain-adapted model), with `run_loop`'s default loop preset.

The unit of replication is the loop seed. Per seed and taste: the feedback arm's first → current gain and
feedback − control after each round (the current version: the last promoted, or the first), and per round whether
the finetune improved the preference (child − parent > 0; a round blocked by the reward check did not). Over
seeds: means with 95 % t-CIs, sign tests, and the share of improved rounds per arm with Wilson CIs. Per-item CIs
(the panel's precision) stay in the JSON. Writes bench/results/loop-<taste>.json per taste, a plot, and prints
markdown tables for bench/RESULTS.md.

    python bench/loop.py                                   # 8 seeds x 4 rounds x 2 tastes, 2 seeds at a time
    python bench/loop.py --seeds 5 --rounds 2 --tastes toward-real   # a pilot

Each seed runs in a fresh var folder (its own SQLite database, broker and media) that reuses the machine's cached
tiny models, with one torch thread; the first run on a machine also builds the tiny domain-adapted base.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.processes import secret_key_for_run
from reports.loop import acceptance, markdown, over_seeds_report, seed_row, svg

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (101, 202, 303, 404, 505, 606, 707, 808)  # fixed before the first run (not 11/23/37, not the pilot's 5)
TASTES = ("toward-real", "contrast:-1")  # the default, and one that points against the real images


def _env(var: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                                                            "CELERY_RESULT_BACKEND")}
    env.update(CXR_VAR_DIR=str(var), CXR_MODELS_DIR=env.get("CXR_MODELS_DIR", str(ROOT / "var" / "models")),
               DJANGO_SETTINGS_MODULE="config.settings", DJANGO_SECRET_KEY=secret_key_for_run(), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    return env


def run_seed(seed: int, taste: str, args) -> dict:
    var = Path(tempfile.mkdtemp(prefix=f"cxr-loop-bench-{seed}-"))
    env = _env(var)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    started = time.perf_counter()
    cmd = [*manage, "run_loop", "--study", f"bench-{seed}", "--rounds", str(args.rounds), "--simulated-readers",
           str(args.readers), "--seed", str(seed), "--control", "permuted", "--config", args.config, "--json",
           "--reader-taste", taste]
    if args.panel:
        cmd += ["--panel", str(args.panel)]
    # time(1)-style CPU accounting of the whole seed (run_loop and its embedded worker)
    done = subprocess.run([sys.executable, "-c", _TIMED, *cmd], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"run_loop (seed {seed}, taste {taste}) failed ({done.returncode}): {done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    out = json.loads(lines[-2])
    out["seed"], out["wall_s"], out["cpu_s"] = seed, round(wall, 1), json.loads(lines[-1])["cpu_s"]
    return out


_TIMED = """import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(p.stderr); sys.stdout.write(p.stdout.rstrip() + "\\n")
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"cpu_s": round(u.ru_utime + u.ru_stime, 1)})); sys.exit(p.returncode)"""


def alignment() -> dict:
    """Each taste's direction relative to the real images (`run_loop --list-tastes`)."""
    var = Path(tempfile.mkdtemp(prefix="cxr-loop-tastes-"))
    env = _env(var)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    done = subprocess.run([*manage, "run_loop", "--list-tastes", "--json"], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return {row["taste"]: row for row in json.loads(done.stdout.strip().splitlines()[-1])["tastes"]}


def _alignment(taste: str, aligned: dict) -> dict | None:
    """+1: the taste points from the base's images toward the real ones; −1: away from them."""
    name, _, sign = taste.partition(":")
    row = aligned.get(name)
    if row is None:
        return None
    return {"toward_real": row["toward_real"] * (-1 if sign == "-1" else 1), "shift_sd": row["shift_sd"]}


def report_again(args) -> None:
    reports = {}
    for name in args.from_json:
        result = json.loads(Path(name).read_text())
        rounds = result["settings"]["rounds"]
        report = over_seeds_report(result["seeds"], rounds)
        result.update(over_seeds=report, acceptance=acceptance(report, rounds))
        reports[result["taste"]] = report
        print("\n" + markdown(result["taste"], result["alignment"], result["seeds"], report, result["acceptance"]))
        Path(name).write_text(json.dumps(result, indent=2))
    svg(reports, Path(args.plot))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--tastes", nargs="+", default=list(TASTES), help="run_loop --reader-taste values")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--panel", type=int, default=48, help="Evaluation panel items (default 48).")
    parser.add_argument("--jobs", type=int, default=2, help="Seeds run at once (one torch thread each).")
    parser.add_argument("--config", default="{}", help="RoundConfig overrides on the loop preset (JSON).")
    parser.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "loop-seeds.svg"))
    parser.add_argument("--from-json", nargs="+", default=None, metavar="FILE",
                        help="Re-compute the statistics, tables and plot from earlier loop-<taste>.json files "
                             "(their per-seed rows) instead of running.")
    args = parser.parse_args()
    if args.from_json:
        return report_again(args)

    started = time.perf_counter()
    aligned = alignment()
    jobs = [(taste, seed) for taste in args.tastes for seed in args.seeds]
    def attempt(job):
        try:
            out = run_seed(job[1], job[0], args)
            print(f"{job[0]} seed {job[1]}: {out['wall_s']} s wall, {out['cpu_s']} s CPU", flush=True)
            return out
        except Exception as exc:  # noqa: BLE001 - one failed seed is reported, the others still count
            print(f"{job[0]} seed {job[1]}: FAILED: {exc}", flush=True)
            return None

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outs = list(pool.map(attempt, jobs))
    failed = [f"{taste} seed {seed}" for (taste, seed), out in zip(jobs, outs, strict=True) if out is None]
    jobs, outs = [j for j, o in zip(jobs, outs, strict=True) if o is not None], [o for o in outs if o is not None]
    wall = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    reports, verdicts = {}, {}
    for taste in args.tastes:
        rows = [seed_row(seed, out) for (t, seed), out in zip(jobs, outs, strict=True) if t == taste]
        report = over_seeds_report(rows, args.rounds)
        verdict = acceptance(report, args.rounds)
        reports[taste], verdicts[taste] = report, verdict
        align = _alignment(taste, aligned)
        print("\n" + markdown(taste, align, rows, report, verdict))
        result = {
            "benchmark": "loop", "taste": taste, "alignment": align,
            "date": time.strftime("%Y-%m-%d"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "settings": vars(args), "wall_s_all_tastes": round(wall, 1),
            "cpu_s_all_tastes": round(cpu.ru_utime + cpu.ru_stime, 1), "over_seeds": report, "acceptance": verdict,
            "seeds": rows, "failed": failed, "unit": "loop seeds (per-item CIs inside each round's panel record: panel precision)",
            "note": "Embedded default (SQLite, kombu SQLAlchemy broker, one solo worker per seed), CPU, one torch "
                    "thread per seed, the tiny domain-adapted model, run_loop's loop preset. Preference and fooling "
                    "rate are the simulated readers' functions on the evaluation panel (the ground truth); training, "
                    "the reward check and promotion saw only the labels and the reward models.",
        }
        out_path = Path(args.out_dir) / f"loop-{taste.replace(':', '')}.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))
    svg(reports, Path(args.plot))
    print(f"\nwall {wall:.0f} s, CPU {cpu.ru_utime + cpu.ru_stime:.0f} s (all seeds and tastes); "
          + "; ".join(f"{t}: {'PASSED' if v['passed'] else 'NOT PASSED'}" for t, v in verdicts.items()))


if __name__ == "__main__":
    main()
