"""Sample efficiency: how many labels buy how much improvement? Random against active selection, reward-weighted
finetuning against DPO (pairwise preference tasks), at several label budgets, on the same seeds.

Per seed, in a fresh var folder (its own SQLite database and media; the machine's cached tiny models), with the
round's jobs run inline (CELERY_TASK_ALWAYS_EAGER: one process, no broker, no worker), four studies, one per
objective × selection, on the same phantoms, the same tiny domain-adapted base version, the same simulated readers
and the same evaluation panel:

- `se-<seed>-rw-{random,active}`: task kinds realism + rubric; rounds finetune reward-weighted;
- `se-<seed>-dpo-{random,active}`: task kinds realism + rubric + preference (pairs of same-prompt images); rounds
  run DPO on the readers' preference pairs (and rubric-gap pairs).

(Separate studies per selection because random and active rounds of a budget share the round seed, hence the
generated candidates, and a study stores identical pixels once: in one study the second selection would silently
lose the images the first had read.) Each active study first runs one warm-up round (smallest budget, random
selection) so that it has a reward model: active selection ranks candidates by that model's uncertainty
(+ diversity). Every active round of a study uses the warm-up's reward model (pinned in the benchmark process:
otherwise each would use whichever cell ran before it).
Then for every budget B (synthetic images read per round; real = round(B/3); 3 readers per image) and selection
(random, active), one round from the base version: `oversample` 3 for both selections (same round seed, so random
and active pick from the same generated candidates), `feedback_rounds: this` (only the round's own labels train),
`promote: manual`, the loop preset's reward/finetune recipe (100 + 100 steps; reward-weighted on 128 fresh samples
of the base scored by the round's reward model; DPO on the readers' pairs: 4 pairs a batch, i.e. the same 8 images a
step as reward-weighted). The warm-up's finetune runs 4 steps: only its reward model is used. The reward model's
check (out-of-fold ranking of the synthetic images) applies as in the loop: a round whose model fails it trains
nothing and ships the base, which counts as a gain of 0 (the `blocked` column), not as a missing seed.

Measured per round: labels collected (every stored answer of the round) and the evaluation panel's gain of the
produced version over the base (simulated readers' preference; fooling rate), paired over the panel items, with
its bootstrap 95% CI and one-sided Wilcoxon p. Per (budget, selection, objective): the mean over seeds with a
t-interval over seeds (95%; with one seed: that seed's panel-bootstrap CI), and the gain per 100 labels.
Prints a table, writes JSON, an SVG plot and its own section of bench/RESULTS.md.

    python bench/sample_efficiency.py --jobs 2 --threads 1   # 5 seeds x budgets 16 32 64 x 2 selections x 2 objectives
    python bench/sample_efficiency.py --quick          # a pilot: 1 seed, budgets 16 32, fewer steps, panel 16
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

from common.processes import secret_key_for_run
from reports.sample_efficiency import (
    ROOT,
    contrast_lines,
    markdown,
    markdown_write,
    summarise,
    svg_plot,
    table_lines,
)

#: fixed before the first run of the seed-level design (2026-12-07): not the loop benchmark's, not the pilots'
SEEDS = (41, 43, 47, 53, 59)
PILOT_SEED = 7  # --quick: a pilot's seed is none of the benchmark's
BUDGETS = (16, 32, 64)
SELECTIONS = ("random", "active")
OBJECTIVES = ("reward_weighted", "dpo")
KINDS = {"reward_weighted": ["realism", "rubric"], "dpo": ["realism", "rubric", "preference"]}
MARK = "SAMPLE_EFFICIENCY_JSON "


# --- the child: one seed, every study and cell, in one Django process -------------------------------------------


def child(spec: dict) -> dict:
    """Run `_child` in a thread with a deep stack: with tasks eager, every case a simulated reader fills sends the
    round's driver message, which runs the reading stage again inside the current one (harmless: the stages are
    idempotent), so a round of n reading cases nests about n stages deep — past Python's default recursion limit
    from about 40 cases on."""
    import threading

    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    sys.setrecursionlimit(1_000_000)
    threading.stack_size(1024 * 1024 * 1024)  # virtual: only the pages the recursion touches are used
    out: dict = {}

    def body() -> None:
        try:
            out["result"] = _child(spec)
        except BaseException as exc:  # re-raised in the main thread
            out["error"] = exc

    thread = threading.Thread(target=body, name="sample-efficiency")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def _child(spec: dict) -> dict:
    import annotation.rounds.selection as selection
    from annotation.models import EvaluationPanel, Image, Label, Source, Study
    from annotation.reading.simulated import reader_of, simulated_members, simulated_readers_ensure
    from annotation.rounds.panel import panel_share
    from annotation.rounds.services import round_launch
    from annotation.rounds.versions import study_version_choose
    from annotation.simulation.arms import COPIED
    from annotation.simulation.loop import (
        loop_study_ensure,
        real_pool_ensure,
        round_settings,
        round_wait,
        worker_answers,
    )
    from annotation.stats.paired import paired_comparison
    from annotation.studies.services import study_create

    if not worker_answers():
        raise RuntimeError("tasks are not eager and no worker answers")
    if spec["threads"]:
        import torch

        torch.set_num_threads(spec["threads"])
    seed, budgets, readers = spec["seed"], spec["budgets"], spec["readers"]
    real_of = {b: max(1, round(b / 3)) for b in budgets}
    log = lambda msg: print(f"[seed {seed} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    # the warm-up's reward model for every active round of the study (study pk -> TrainingRun)
    pinned: dict[int, object] = {}
    latest = selection.latest_reward_run
    selection.latest_reward_run = lambda rnd: pinned.get(rnd.study_id) or latest(rnd)

    started = time.perf_counter()
    # one study per (objective, selection): random and active rounds of a budget share the round seed, so they
    # generate the same candidates, and a study stores identical pixels once (image_store): in one study the
    # second selection would lose the images the first already read
    short = {"reward_weighted": "rw", "dpo": "dpo"}
    cells = [(o, sel) for o in spec["objectives"] for sel in spec["selections"]]
    first = loop_study_ensure(name=f"se-{seed}-{short[cells[0][0]]}-{cells[0][1]}", readers=readers,
                              images=budgets[0] + real_of[budgets[0]], base="domain", panel_size=spec["panel"],
                              seed=seed)
    studies: dict[tuple[str, str], Study] = {cells[0]: first}
    for objective, sel in cells[1:]:
        name = f"se-{seed}-{short[objective]}-{sel}"
        twin = Study.objects.filter(name=name).first() or study_create(
            name=name, title=f"Sample efficiency {seed} ({objective}, {sel})", current_version=first.current_version,
            **{f: getattr(first, f) for f in COPIED if f != "task_kinds"}, task_kinds=KINDS[objective])
        real_pool_ensure(study=twin, unused=8)
        if not simulated_members(twin):
            members = simulated_members(first)
            simulated_readers_ensure(study=twin, count=len(members), readers=[reader_of(m) for m in members])
        panel_share(source=first, target=twin)
        studies[(objective, sel)] = twin
    base = first.current_version
    setup_s, setup_cpu = time.perf_counter() - started, time.process_time()
    log(f"studies ready in {setup_s:.0f} s (base {base.name})")

    def run_round(study: Study, cfg: dict):
        study_version_choose(study=study, version=base, actor=None, reason="sample-efficiency: every cell from the base")
        study.refresh_from_db()
        real_pool_ensure(study=study, unused=cfg["real"] + 4)
        t0, c0 = time.perf_counter(), time.process_time()  # eager: the whole round runs in this process
        rnd = round_wait(round_launch(study=study, config=cfg), timeout_s=spec["round_timeout"])
        rnd.cpu_s = time.process_time() - c0
        return rnd, time.perf_counter() - t0

    def stages(rnd) -> dict:
        def span(job):
            return round((job.finished_at - job.created_at).total_seconds(), 1) if job and job.finished_at else None

        ft = rnd.finetune_run
        return {"generate": span(rnd.generation_batch), "reward": span(rnd.reward_run), "finetune": span(ft),
                "evaluate": round((rnd.finished_at - ft.finished_at).total_seconds(), 1)
                if ft and ft.finished_at and rnd.finished_at else None}

    def scores(study: Study, version, key: str) -> list[float] | None:
        panel = EvaluationPanel.objects.filter(study=study).first()
        row = panel.scores.filter(model_version=version).first() if panel and version else None
        return row.scores.get(key) if row else None

    def record(rnd, seconds: float, **extra) -> dict:
        m = rnd.metrics or {}
        panel = m.get("panel") or {}
        out = {
            **extra, "seed": seed, "round": rnd.number, "status": rnd.status, "error": rnd.stage_error or None,
            "labels": Label.objects.filter(task__round=rnd).count(),
            "synthetic_read": Image.objects.filter(round=rnd, source=Source.SYNTHETIC).count(),
            "real_read": Image.objects.filter(round=rnd, source=Source.REAL).count(),
            "pairs": (m.get("snapshot") or {}).get("pairs"),
            "produced_version": rnd.produced_version.name if rnd.produced_version else None,
            # the reward model failed its check: no finetune, the study keeps the base (counted as gain 0)
            "blocked": (m.get("finetune") or {}).get("blocked"),
            "reward_valid": m.get("reward_valid"),
            "preference_gain": panel.get("preference_gain"), "p_value": panel.get("p_value"),
            "effect_size": panel.get("effect_size"), "fooling_rate_gain": panel.get("fooling_rate_gain"),
            "fooling_rate_p_value": panel.get("fooling_rate_p_value"),
            "base_preference": ((panel.get("parent") or {}).get("preference") or {}).get("mean"),
            "produced_preference": (((panel.get("produced") or {}).get("preference")) or {}).get("mean"),
            "reward_auroc": (m.get("reward") or {}).get("auroc"),
            "selection_reward_run": (rnd.selection or {}).get("reward_run"),
            "candidates": (rnd.selection or {}).get("candidates"), "seconds": round(seconds, 1),
            "cpu_s": round(rnd.cpu_s, 1), "stage_s": stages(rnd),
        }
        return out

    def config(budget: int, sel: str, objective: str, round_seed: int, finetune_steps: int) -> dict:
        return round_settings("loop", {
            "synthetic": budget, "real": real_of[budget], "oversample": spec["oversample"], "selection": sel,
            "objective": objective, "feedback_rounds": "this", "promote": "manual", "image_metrics": False,
            "seed": round_seed, "reward": {"steps": spec["reward_steps"]},
            # DPO: batch_size counts pairs; half the loop preset's 8 images, so both objectives train on 8 images a step
            # DPO learns from the labelled pairs, not from reward-scored fresh samples
            "finetune": {"steps": finetune_steps,
                         **({"batch_size": spec["dpo_batch"], "fresh_samples": 0} if objective == "dpo" else {})}})

    warmups, rows, versions = [], [], {}
    for objective, sel in cells:
        study = studies[(objective, sel)]
        if sel == "active":
            # warm-up: gives the study a reward model (its finetune only has to finish: a few steps)
            rnd, secs = run_round(study, config(budgets[0], "random", "reward_weighted", seed * 1000 + 999, 4))
            warmups.append(record(rnd, secs, objective=objective, kind="warm-up", budget=budgets[0]))
            log(f"{objective} warm-up: {rnd.status}, {warmups[-1]['labels']} labels, {secs:.0f} s, "
                f"CPU {warmups[-1]['cpu_s']:.0f} s, stages {warmups[-1]['stage_s']}")
            if rnd.status != "done" or rnd.reward_run is None:
                raise RuntimeError(f"warm-up round of {study.name} {rnd.status}: {rnd.stage_error}")
            pinned[study.pk] = rnd.reward_run
        for budget in budgets:
            cfg = config(budget, sel, objective, seed * 1000 + budget, spec["finetune_steps"])
            rnd, secs = run_round(study, cfg)
            row = record(rnd, secs, objective=objective, selection=sel, budget=budget)
            if sel == "active" and row["selection_reward_run"] != pinned[study.pk].pk:
                row["warning"] = "active selection did not use the warm-up's reward model"
            if row["synthetic_read"] != budget:
                row["warning"] = f"{row['synthetic_read']} of {budget} synthetic images read"
            rows.append(row)
            # a blocked round ships the base: its contrasts compare the base
            versions[(objective, budget, sel)] = (study, rnd.produced_version or (base if row["blocked"] else None))
            gain = (row["preference_gain"] or {}).get("mean")
            log(f"{objective} B={budget} {sel}: {rnd.status}, {row['labels']} labels, pairs {row['pairs']}, "
                f"gain {gain if gain is None else round(gain, 4)} (p {row['p_value']}), "
                f"{'blocked, ' if row['blocked'] else ''}{secs:.0f} s, "
                f"CPU {row['cpu_s']:.0f} s, stages {row['stage_s']}")

    # paired contrasts on the panel items (the same items for every version of every study: a shared panel)
    contrasts = []
    for (objective, budget, sel), (study, version) in versions.items():
        pairs = []
        if sel == "active" and (objective, budget, "random") in versions:
            pairs.append(("active − random", versions[(objective, budget, "random")], (study, version)))
        if objective == "dpo" and ("reward_weighted", budget, sel) in versions:
            pairs.append(("dpo − reward_weighted", versions[("reward_weighted", budget, sel)], (study, version)))
        for what, (sa, va), (sb, vb) in pairs:
            for key, name in (("preference", "preference_gain"), ("fooling", "fooling_rate_gain")):
                a, b = scores(sa, va, key), scores(sb, vb, key)
                if a is None or b is None:
                    continue
                cmp = paired_comparison(a, b)
                contrasts.append({"contrast": what, "score": name, "seed": seed, "budget": budget,
                                  "objective": objective if what.startswith("active") else None,
                                  "selection": sel if what.startswith("dpo") else None,
                                  "difference": cmp["gain"], "p_value": cmp["p_value"]})
    return {"seed": seed, "process_cpu_s": round(time.process_time(), 1), "setup_s": round(setup_s, 1), "setup_cpu_s": round(setup_cpu, 1), "wall_s": round(time.perf_counter() - started, 1),
            "base_version": base.name, "panel_items": spec["panel"], "warmups": warmups, "rows": rows,
            "contrasts": contrasts}


# --- the parent: one fresh var folder and child process per seed ------------------------------------------------


def run_seed(seed: int, args) -> dict:
    var = Path(tempfile.mkdtemp(prefix=f"cxr-sample-eff-{seed}-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                                                            "CELERY_RESULT_BACKEND")}
    env.update(CXR_VAR_DIR=str(var), CXR_MODELS_DIR=env.get("CXR_MODELS_DIR", str(ROOT / "var" / "models")),
               DJANGO_SETTINGS_MODULE="config.settings", DJANGO_SECRET_KEY=secret_key_for_run(), CELERY_TASK_ALWAYS_EAGER="1")
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=env, check=True,
                   cwd=ROOT)
    spec = {"seed": seed, "budgets": args.budgets, "readers": args.readers, "panel": args.panel,
            "oversample": args.oversample, "reward_steps": args.reward_steps, "finetune_steps": args.finetune_steps,
            "selections": args.selections, "objectives": args.objectives, "round_timeout": args.round_timeout,
            "threads": args.threads, "dpo_batch": args.dpo_batch}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)  # stderr (progress, errors) passes through
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"seed {seed} failed ({done.returncode}); its var folder: {var}")
    line = next(ln for ln in reversed(done.stdout.splitlines()) if ln.startswith(MARK))
    out = json.loads(line[len(MARK):])
    out["process_wall_s"] = round(wall, 1)
    out["cpu_s"] = out["process_cpu_s"]  # the child's own (user + system, all threads): seeds may run in parallel
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        out = child(json.loads(sys.argv[2]))
        print(MARK + json.dumps(out, default=str), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--budgets", type=int, nargs="+", default=None, help="Synthetic images read per round.")
    parser.add_argument("--quick", action="store_true", help="A pilot: 1 seed, budgets 16 32, fewer steps, panel 16.")
    parser.add_argument("--selections", nargs="+", choices=SELECTIONS, default=list(SELECTIONS))
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--panel", type=int, default=None, help="Evaluation panel items (default 32; quick 16).")
    parser.add_argument("--oversample", type=float, default=3.0)
    parser.add_argument("--reward-steps", type=int, default=None, help="Default 100, the loop preset's (quick 40).")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="Default 100, the loop preset's (quick 40).")
    parser.add_argument("--dpo-batch", type=int, default=4, help="DPO pairs per micro-batch (default 4 = 8 images).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the child (default: torch's).")
    parser.add_argument("--jobs", type=int, default=1, help="Seeds run in parallel (e.g. 2 with --threads 1).")
    parser.add_argument("--round-timeout", type=float, default=1800.0)
    parser.add_argument("--out", default=None, help="JSON (default bench/results/sample_efficiency.json; quick: "
                                                    "sample_efficiency_quick.json).")
    parser.add_argument("--plot", default=None, help="SVG (default docs/sample-efficiency.svg; quick: none).")
    parser.add_argument("--markdown", default=str(ROOT / "bench" / "RESULTS.md"),
                        help="Write this benchmark's section of this file ('' to skip).")
    parser.add_argument("--render", metavar="JSON", help="Run nothing: rewrite the RESULTS.md section (and --plot) "
                                                         "from a result file this script wrote.")
    args = parser.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        plot = Path(args.plot) if args.plot else (Path(result["settings"]["plot"]) if result["settings"].get("plot")
                                                  else None)
        if plot:
            svg_plot(result["rows"], plot, f"Sample efficiency: panel preference gain vs labels (mean over "
                                           f"{len(result['seeds'])} seed(s), 95% CI)")
        if args.markdown:
            markdown_write(Path(args.markdown), markdown(result, result["rows"], result["contrasts"], plot))
        return
    q = args.quick
    args.seeds = args.seeds or ([PILOT_SEED] if q else list(SEEDS))
    args.budgets = sorted(args.budgets or (list(BUDGETS[:2]) if q else list(BUDGETS)))
    args.panel = args.panel or (16 if q else 32)
    args.reward_steps = args.reward_steps or (40 if q else 100)
    args.finetune_steps = args.finetune_steps or (40 if q else 100)
    args.objectives = [o for o in OBJECTIVES if o in args.objectives]
    if "reward_weighted" not in args.objectives:
        args.objectives.insert(0, "reward_weighted")  # its study defines the base, readers and panel
    args.out = args.out or str(ROOT / "bench" / "results" / f"sample_efficiency{'_quick' if q else ''}.json")
    plot = Path(args.plot) if args.plot else (None if q else ROOT / "docs" / "sample-efficiency.svg")

    load = os.getloadavg()[0]
    started = time.perf_counter()
    seeds = []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # each seed is its own child process
        for out in pool.map(lambda seed: run_seed(seed, args), args.seeds):
            seeds.append(out)
            print(f"seed {out['seed']}: {out['process_wall_s']} s wall, {out['cpu_s']} s CPU", flush=True)
    wall = time.perf_counter() - started
    cells, contrasts = summarise(seeds, args)
    warmup = {}
    for s in seeds:
        for wu in s["warmups"]:
            warmup.setdefault(wu["objective"], []).append(wu["labels"])
    result = {
        "benchmark": "sample_efficiency", "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(["python", "bench/sample_efficiency.py", *sys.argv[1:]]),
        "settings": {**vars(args), "plot": str(plot) if plot else None}, "wall_s": round(wall, 1),
        "cpu_s": round(sum(s["cpu_s"] for s in seeds), 1), "load_avg_start": load,
        "warmup_labels": {k: sum(v) / len(v) for k, v in warmup.items()},
        "rows": [{k: v for k, v in c.items()} for c in cells], "contrasts": contrasts, "seeds": seeds,
        "note": "Embedded default (SQLite), CPU, tasks eager in one process per seed, the tiny domain-adapted model. "
                "Preference and fooling rate are the simulated readers' functions on the evaluation panel (the "
                "experiment's ground truth); training and selection saw only the labels and the reward models. "
                "CI over seeds: 95% t-interval (df = seeds − 1); per-seed CIs in `seeds[].rows` are percentile "
                "bootstraps over the panel items, p one-sided paired Wilcoxon.",
    }
    print("\n" + "\n".join(table_lines(cells)))
    print("\n" + "\n".join(contrast_lines(contrasts)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    if plot:
        svg_plot(cells, plot, f"Sample efficiency: panel preference gain vs labels (mean over {len(seeds)} "
                              f"seed{'s' if len(seeds) > 1 else ''}, 95% CI)")
    if args.markdown:
        markdown_write(Path(args.markdown), markdown(result, cells, contrasts, plot))
    print(f"\nwall {wall:.0f} s, child CPU {result['cpu_s']:.0f} s; wrote {args.out}"
          f"{f' and {plot}' if plot else ''}{f'; section in {args.markdown}' if args.markdown else ''}")


if __name__ == "__main__":
    main()
