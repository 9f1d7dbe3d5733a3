"""Can a simple classifier tell the demo's synthetic images from its real ones at a glance? The question a
radiologist trying the demo asks first: if the synthetic images are blurry blobs next to sharp phantoms, blind
reading teaches nothing.

In a fresh var folder (its own SQLite database and media; the machine's cached tiny models), `demo_setup` builds
the demo exactly as `scripts/demo.sh` does — the tiny base, its adaptation to the phantoms, round 1 generated and
cleaned — then every image of round 1 is read back as readers see it (the display rendition). A logistic regression
on the realism function's image statistics (`training.ml.realism.image_features`: grey-level mean, spread and
quantiles, centre contrast, edge energy, dark/bright shares) separates real from synthetic; its AUROC is
cross-validated (stratified k-fold, repeated over shuffles), with a percentile bootstrap 95% CI over images of the
pooled out-of-fold scores. 0.5 = cannot tell; 1.0 = tells every image. Also the per-feature real − synthetic gap in
real-image standard deviations (which statistic gives the synthetic images away).

    python bench/demo_realism.py                       # --images 32: 32 real + 32 synthetic in round 1
    python bench/demo_realism.py --images 12           # the demo's own size (12 + 12)
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

import numpy as np
from common.processes import secret_key_for_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MD_BEGIN, MD_END = "<!-- demo_realism:begin -->", "<!-- demo_realism:end -->"

CHILD = r"""
import json, sys, django
sys.path.insert(0, sys.argv[1]); django.setup()
from django.core.management import call_command
from annotation.models import Image, Round
from inference.storage import image_load
from training.ml.realism import image_features
call_command("demo_setup", images=int(sys.argv[2]), stdout=open("/dev/null", "w"))
rnd = Round.objects.get(study__name="demo", number=1)
rows = []
for image in Image.objects.filter(round=rnd, is_catch=False).order_by("pk"):
    rows.append({"source": image.source, "features": image_features(image_load(image.display_key)).tolist()})
print("ROWS " + json.dumps({"version": str(rnd.model_version), "rows": rows}))
"""


def cv_auroc(x: np.ndarray, y: np.ndarray, *, folds: int, repeats: int, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    aucs, pooled = [], np.zeros(len(y))
    for r in range(repeats):
        scores = np.zeros(len(y))
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(x, y):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
            model.fit(x[train], y[train])
            scores[test] = model.predict_proba(x[test])[:, 1]
        aucs.append(roc_auc_score(y, scores))
        pooled += scores / repeats
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(2000):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) == 2:
            boot.append(roc_auc_score(y[idx], pooled[idx]))
    return {"auroc": float(np.mean(aucs)), "ci_low": float(np.percentile(boot, 2.5)),
            "ci_high": float(np.percentile(boot, 97.5)), "per_repeat": [round(a, 4) for a in aucs],
            "n_real": int(y.sum()), "n_synthetic": int(len(y) - y.sum()), "folds": folds, "repeats": repeats}


def main() -> None:
    from training.ml.realism import FEATURES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32, help="Real and synthetic images in round 1, each.")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--label", default="current tiny base", help="What this run measures (e.g. before/after).")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_realism.json"))
    parser.add_argument("--markdown", default=str(ROOT / "bench" / "RESULTS.md"), help="'' to skip.")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="cxr-demo-realism-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(CXR_VAR_DIR=str(var), CXR_MODELS_DIR=env.get("CXR_MODELS_DIR", str(ROOT / "var" / "models")),
               DJANGO_SETTINGS_MODULE="config.settings", DJANGO_SECRET_KEY=secret_key_for_run())
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=env, check=True,
                   cwd=ROOT)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(args.images)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"demo_setup failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - started
    data = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("ROWS "))[5:])
    x = np.array([r["features"] for r in data["rows"]])
    y = np.array([1 if r["source"] == "real" else 0 for r in data["rows"]])
    result = cv_auroc(x, y, folds=args.folds, repeats=args.repeats, seed=0)
    sd = x[y == 1].std(axis=0) + 1e-9
    gaps = {name: float((x[y == 1, i].mean() - x[y == 0, i].mean()) / sd[i]) for i, name in enumerate(FEATURES)}
    out = {"benchmark": "demo_realism", "date": time.strftime("%Y-%m-%d"), "label": args.label,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "command": " ".join(["python", "bench/demo_realism.py", *sys.argv[1:]]),
           "version": data["version"], "demo_setup_wall_s": round(wall, 1), **result,
           "feature_gap_real_minus_synthetic_in_real_sd": gaps}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    top = sorted(gaps.items(), key=lambda kv: -abs(kv[1]))[:4]
    line = (f"| {args.label} | {data['version']} | {result['n_real']} + {result['n_synthetic']} | "
            f"{result['auroc']:.3f} [{result['ci_low']:.3f}, {result['ci_high']:.3f}] | "
            + ", ".join(f"{k} {v:+.1f}" for k, v in top) + f" | {wall:.0f} s |")
    print("| run | round 1 sampled from | real + synthetic | CV AUROC [95% CI] | largest gaps (real − synthetic, "
          "in real SDs) | demo_setup wall |")
    print(line)
    if args.markdown:
        path = Path(args.markdown)
        text = path.read_text() if path.exists() else ""
        head = ["## Demo realism (`bench/demo_realism.py`)", "",
                "Can a logistic regression on the realism function's image statistics tell the demo's round-1 "
                "synthetic images from its real phantoms (display renditions, as readers see them)? AUROC "
                f"cross-validated ({args.folds}-fold × {args.repeats} shuffles), percentile-bootstrap 95% CI over "
                "images; 0.5 = cannot tell. One row per run (a new run replaces the row with the same label).", "",
                "| run | round 1 sampled from | real + synthetic | CV AUROC [95% CI] | largest gaps (real − synthetic, "
                "in real SDs) | demo_setup wall |", "| --- | --- | --- | --- | --- | --- |"]
        rows = []
        if MD_BEGIN in text:
            old = text.split(MD_BEGIN, 1)[1].split(MD_END, 1)[0]
            rows = [ln for ln in old.splitlines() if ln.startswith("| ") and not ln.startswith("| run")
                    and not ln.startswith("| ---") and not ln.startswith(f"| {args.label} |")]
        block = "\n".join([MD_BEGIN, "", *head, *rows, line, "", MD_END])
        if MD_BEGIN in text:
            before, rest = text.split(MD_BEGIN, 1)
            text = before + block + rest.split(MD_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        path.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
