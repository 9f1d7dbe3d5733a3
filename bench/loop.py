"""The closed loop end to end: N rounds of `run_loop` (generate → clean → simulated reading → reward model →
finetune → evaluate) through a real worker on the embedded default, with where the time goes per stage.

Runs in a fresh var folder (its own SQLite database, broker and media) that reuses the machine's cached tiny models.
Stage times come from the rounds' audit trail (the time of each status change). Prints a table, writes JSON.

    python bench/loop.py --rounds 3 --readers 3 --images 12       # the tiny domain-adapted model on the CPU
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
STAGES = ["generating", "cleaning", "labeling", "training_reward", "finetuning", "evaluating"]

REPORT = """
import json
from annotation.models import AuditEvent, Round
out = []
for rnd in Round.objects.order_by("number"):
    events = {e.action.split(".", 1)[1]: e.created_at for e in AuditEvent.objects.filter(
        object_type="round", object_id=str(rnd.pk), action__startswith="round.")}
    order = %r + ["done"]
    stages = {s: round((events[n] - events[s]).total_seconds(), 2) for s, n in zip(order, order[1:])
              if s in events and n in events}
    out.append({"round": rnd.number, "stages_s": stages})
print("STAGES " + json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--base", choices=["domain", "tiny"], default="domain")
    parser.add_argument("--config", default="{}", help="RoundConfig overrides (JSON)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "loop.json"))
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="cxr-loop-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                                                            "CELERY_RESULT_BACKEND")}
    env.update(CXR_VAR_DIR=str(var), CXR_MODELS_DIR=env.get("CXR_MODELS_DIR", str(ROOT / "var" / "models")),
               DJANGO_SETTINGS_MODULE="config.settings")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT)
    started = time.perf_counter()
    done = subprocess.run([*manage, "run_loop", "--study", "bench", "--rounds", str(args.rounds),
                           "--simulated-readers", str(args.readers), "--images", str(args.images), "--base",
                           args.base, "--config", args.config, "--json"], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run_loop failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])["rounds"]
    stages = subprocess.run([*manage, "shell", "-c", REPORT % STAGES], env=env, cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    per_round = json.loads(stages.split("STAGES ", 1)[1].splitlines()[0])
    for row, timing in zip(summary, per_round, strict=True):
        row["stages_s"] = timing["stages_s"]

    header = ["round", "version", *STAGES, "total s", "accuracy", "sim. pref.", "reward AUROC", "promoted"]
    print(" | ".join(header))
    for row in summary:
        cells = [row["round"], row["model_version"], *(row["stages_s"].get(s, "") for s in STAGES), row["seconds"],
                 _f(row["reader_accuracy"]), _f(row["simulated_preference_score"]), _f(row["reward_auroc"]),
                 row["promoted"]]
        print(" | ".join(str(c) for c in cells))
    result = {
        "benchmark": "loop", "date": time.strftime("%Y-%m-%d"), "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": vars(args), "wall_s": round(wall, 1), "rounds": summary,
        "note": "Embedded default: SQLite, kombu SQLAlchemy broker, one worker (solo pool), CPU, tiny models. "
                "Includes the worker's start and model loading; the first run on a machine also builds the tiny "
                "domain-adapted base (about 2.5 CPU minutes, cached afterwards).",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wall {wall:.1f} s; wrote {args.out}")


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
