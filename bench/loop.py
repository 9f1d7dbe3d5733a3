"""Does the loop learn? `run_loop --control permuted` for several seeds: a feedback arm and its permuted-feedback
control (same seeds, real images, simulated readers, realism function and evaluation panel), N rounds each, through
a real worker on the embedded default (SQLite, CPU, the tiny domain-adapted model), with the default loop preset.

Per seed and arm: every version's panel preference and fooling rate (simulated readers; bootstrap 95% CIs over the
panel's items), the last produced version against the first (paired Wilcoxon p), and the feedback arm's last version
against the control's. Passes when, in every seed, both p < 0.01. Prints a table, writes JSON and an SVG plot.

    python bench/loop.py                       # 4 rounds x 3 seeds (the seeds below), about 25 CPU minutes
    python bench/loop.py --seeds 11 --rounds 2  # a pilot

Each seed runs in a fresh var folder (its own SQLite database, broker and media) that reuses the machine's cached
tiny models; the first run on a machine also builds the tiny domain-adapted base (about 2.5 CPU minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (11, 23, 37)  # fixed before the first run of this benchmark
ALPHA = 0.01


def run_seed(seed: int, args) -> dict:
    var = Path(tempfile.mkdtemp(prefix=f"cxr-loop-bench-{seed}-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                                                            "CELERY_RESULT_BACKEND")}
    env.update(CXR_VAR_DIR=str(var), CXR_MODELS_DIR=env.get("CXR_MODELS_DIR", str(ROOT / "var" / "models")),
               DJANGO_SETTINGS_MODULE="config.settings")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    started = time.perf_counter()
    cmd = [*manage, "run_loop", "--study", f"bench-{seed}", "--rounds", str(args.rounds), "--simulated-readers",
           str(args.readers), "--seed", str(seed), "--control", "permuted", "--config", args.config, "--json"]
    if args.panel:
        cmd += ["--panel", str(args.panel)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run_loop (seed {seed}) failed ({done.returncode}): {done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["seed"], out["wall_s"] = seed, round(wall, 1)
    return out


def _curve(arm_rounds: list[dict]) -> list[dict]:
    """The arm's base, then each round's produced version (or its parent again when it produced none)."""
    points = [{"round": 0, "version": arm_rounds[0]["model_version"], **_scores(arm_rounds[0]["panel"]["parent"])}]
    for r in arm_rounds:
        side = (r["panel"] or {}).get("produced") or (r["panel"] or {}).get("parent")
        points.append({"round": r["round"], "version": side["version"], "promoted": r["promoted"], **_scores(side)})
    return points


def _scores(side: dict) -> dict:
    return {"preference": side.get("preference"), "fooling_rate": side.get("fooling_rate")}


def _ci(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def _p(value) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def svg_plot(results: list[dict], path: Path) -> None:
    """Panel preference per round, feedback (solid) and control (dashed) per seed, with 95% CI bars."""
    w, h, left, right, top, bottom = 640, 300, 56, 130, 30, 40
    rounds = max(len(r["curves"]["feedback"]) for r in results) - 1
    values = [p["preference"][k] for r in results for arm in r["curves"].values() for p in arm
              for k in ("ci_low", "ci_high") if p["preference"] and p["preference"].get(k) is not None]
    lo, hi = min(values) - 0.02, max(values) + 0.02

    def x(i):
        return left + (w - left - right) * i / max(rounds, 1)

    def y(v):
        return top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))

    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" font-family="sans-serif" '
             f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="18" font-size="13">Simulated readers\' preference of each round\'s new version on the panel '
             f'(mean, 95% CI; n = {results[0]["panel_items"]} items)</text>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for i in range(rounds + 1):
        parts.append(f'<text x="{x(i):.1f}" y="{h - bottom + 16}" text-anchor="middle">'
                     f'{"base" if i == 0 else f"round {i}"}</text>')
    for s, result in enumerate(results):
        colour = colours[s % len(colours)]
        for arm, dash in (("feedback", ""), ("control", ' stroke-dasharray="5,4"')):
            pts = [(x(p["round"]), p["preference"]) for p in result["curves"][arm] if p["preference"]]
            line = " ".join(f"{px:.1f},{y(st['mean']):.1f}" for px, st in pts)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
            for px, st in pts:
                if st.get("ci_low") is not None:
                    parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y(st["ci_low"]):.1f}" '
                                 f'y2="{y(st["ci_high"]):.1f}" stroke="{colour}"/>')
        ly = top + 16 * s
        parts.append(f'<text x="{w - right + 10}" y="{ly + 12}" fill="{colour}">seed {result["seed"]}</text>')
    ly = top + 16 * len(results) + 10
    parts.append(f'<line x1="{w - right + 10}" x2="{w - right + 40}" y1="{ly}" y2="{ly}" stroke="#333" '
                 f'stroke-width="2"/><text x="{w - right + 44}" y="{ly + 4}">feedback</text>'
                 f'<line x1="{w - right + 10}" x2="{w - right + 40}" y1="{ly + 16}" y2="{ly + 16}" stroke="#333" '
                 f'stroke-width="2" stroke-dasharray="5,4"/><text x="{w - right + 44}" y="{ly + 20}">control</text>')
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--panel", type=int, default=0, help="Panel items (default: the study default, 64).")
    parser.add_argument("--config", default="{}", help="RoundConfig overrides on the loop preset (JSON).")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "loop.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "loop-panel.svg"))
    args = parser.parse_args()

    started = time.perf_counter()
    results = []
    for seed in args.seeds:
        out = run_seed(seed, args)
        fb, ctl = out["rounds"], out["control"]["rounds"]
        vs = out["feedback_vs_control"]
        results.append({
            "seed": seed, "wall_s": out["wall_s"], "panel_items": fb[0]["panel"]["items"],
            "curves": {"feedback": _curve(fb), "control": _curve(ctl)},
            "feedback_summary": out["summary"], "control_summary": out["control"]["summary"],
            "feedback_vs_control": vs,
            "rounds": {"feedback": fb, "control": ctl},
            "passed": (out["summary"].get("p_value") is not None and out["summary"]["p_value"] < ALPHA
                       and vs.get("p_value") is not None and vs["p_value"] < ALPHA),
        })
        print(f"seed {seed}: {out['wall_s']} s", flush=True)
    wall = time.perf_counter() - started

    print("\nseed | arm | round | version | promoted | panel preference [95% CI] | fooling rate [95% CI]")
    for r in results:
        for arm in ("feedback", "control"):
            for p in r["curves"][arm]:
                print(f"{r['seed']} | {arm} | {p['round']} | {p['version']} | {p.get('promoted', '')} | "
                      f"{_ci(p['preference'])} | {_ci(p['fooling_rate'])}")
    print("\nseed | feedback gain (last − first) | p | control gain | p | feedback − control (last) | p | "
          "fooling-rate gain (feedback) | passed")
    for r in results:
        fs, cs, vs = r["feedback_summary"], r["control_summary"], r["feedback_vs_control"]
        print(f"{r['seed']} | {_ci(fs.get('preference_gain'))} | {_p(fs.get('p_value'))} | "
              f"{_ci(cs.get('preference_gain'))} | {_p(cs.get('p_value'))} | {_ci(vs.get('preference_gain'))} | "
              f"{_p(vs.get('p_value'))} | {_ci(fs.get('fooling_rate_gain'))} | {r['passed']}")
    result = {
        "benchmark": "loop", "date": time.strftime("%Y-%m-%d"), "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {**vars(args), "alpha": ALPHA}, "wall_s": round(wall, 1),
        "passed": all(r["passed"] for r in results), "seeds": results,
        "note": "Embedded default (SQLite, kombu SQLAlchemy broker, one solo worker), CPU, the tiny domain-adapted "
                "model, run_loop's loop preset. Preference and fooling rate are the simulated readers' functions on "
                "the panel (the experiment's ground truth); training, selection and promotion saw only the labels "
                "and the reward model. p: one-sided paired Wilcoxon signed-rank over the panel items.",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    svg_plot(results, Path(args.plot))
    print(f"\nwall {wall:.0f} s; {'PASSED' if result['passed'] else 'NOT PASSED'} (p < {ALPHA} in every seed); "
          f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
