"""Export throughput and memory: labels as JSONL and CSV at 10k, 100k and 1M labels, on SQLite and PostgreSQL.

For each database the labels are bulk-inserted (two revisions per reading task, realism and rubric answers), then
each export runs in a fresh process that reports rows/s and its peak RSS (`ru_maxrss`), next to the RSS of the same
process before exporting (Django and the app imported), so growth with size is visible. Target: flat RSS and
≥ 100,000 rows/s for JSONL on this machine. For scale, Label Studio 1.23 measured here exports 100k annotated tasks
as JSON in 162 s on SQLite (≈620 tasks/s) and 324 s on PostgreSQL, its server's peak RSS 1.2–1.3 GB.

    python bench/export.py                                  # 10k, 100k, 1M on SQLite and PostgreSQL (~10 min)
    python bench/export.py --sizes 10000,100000 --db sqlite
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

from common.processes import django_script, secret_key_for_run

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
PG_DB = "cxr_bench_export"

POPULATE = r"""
import json, sys, uuid, random
from datetime import timedelta
from django.db import connection, transaction
from django.utils import timezone
from django.contrib.auth import get_user_model
from annotation.studies import services
from annotation.models import Image, ReadingCase, ReaderQueue, ReadingTask, Label, Round, Study, StudyMembership

target = int(sys.argv[1])  # python -c CODE ARG: sys.argv[1] is ARG
study = Study.objects.filter(name="bench").first()
if study is None:
    study = services.study_create(name="bench", title="bench", display_size=64)
    User = get_user_model()
    readers = [User.objects.create_user(f"bench-reader-{i}") for i in range(50)]
    for r in readers:
        services.membership_add(study=study, user=r, role="reader")
    rnd = Round.objects.create(study=study, number=1, status="labeling")
    Image.objects.bulk_create([Image(study=study, round=rnd, source="real" if i % 2 else "synthetic",
                                     storage_key=f"k{i}", display_key=f"d{i}", sha256=f"s{i}", width=64, height=64,
                                     prompt=f"PA chest radiograph {i}. Heart size normal.", seed=i)
                               for i in range(10000)])  # (reader, image, kind) is unique: 50 x 10k x 2 tasks
rnd = Round.objects.get(study=study, number=1)
readers = list(get_user_model().objects.filter(username__startswith="bench-reader-").order_by("pk"))
images = list(Image.objects.filter(study=study).order_by("pk").values_list("pk", flat=True))
have = Label.objects.filter(task__round=rnd).count()
now = timezone.now()
rng = random.Random(have)
queues = {r.pk: ReaderQueue.objects.get_or_create(round=rnd, reader=r, defaults={"seed": r.pk})[0] for r in readers}
batch = 20000
while have < target:
    n_tasks = min(batch, (target - have) // 2)
    if n_tasks <= 0:
        break
    start = ReadingTask.objects.count()
    cases, tasks = [], []
    R = len(readers)
    for j in range(n_tasks):
        k = start + j  # task k: reader k % R, kind (k // R) % 2, image k // 2R -- a bijection, so never a duplicate
        cases.append(ReadingCase(round=rnd, kind="realism" if (k // R) % 2 else "rubric", slot="b", idx=k,
                                 image_id=images[k // (2 * R)], capacity=1000, taken=1, done=1))
    ReadingCase.objects.bulk_create(cases, batch_size=5000)
    for j, case in enumerate(cases):
        reader = readers[(start + j) % R]
        tasks.append(ReadingTask(round=rnd, queue=queues[reader.pk], reader=reader, case=case, kind=case.kind,
                                 slot=case.slot, image_id=case.image_id, position=start + j, status="done",
                                 token=uuid.uuid4().hex, claimed_at=now, answered_at=now, revisions=2))
    ReadingTask.objects.bulk_create(tasks, batch_size=5000)
    labels = []
    for task in tasks:
        for revision in (1, 2):
            if task.kind == "realism":
                answer = {"call": rng.choice(["real", "synthetic"]), "confidence": rng.randint(1, 5)}
            else:
                answer = {"scores": {"anatomy": rng.randint(1, 5), "style": rng.randint(1, 5),
                                     "artifacts": rng.randint(1, 5)}, "comment": "", "boxes": []}
            labels.append(Label(task=task, reader_id=task.reader_id, revision=revision, answer=answer,
                                time_spent_ms=rng.randint(500, 20000), submission_id=uuid.uuid4()))
    Label.objects.bulk_create(labels, batch_size=5000)
    last = {l.task_id: l.pk for l in labels if l.revision == 2}
    with connection.cursor() as cur:
        cur.executemany("UPDATE annotation_readingtask SET current_label_id = %s WHERE id = %s",
                        [(pk, task) for task, pk in last.items()])
    have += 2 * n_tasks
if connection.vendor == "sqlite":
    with connection.cursor() as cur:
        cur.execute("ANALYZE")
else:
    with connection.cursor() as cur:
        cur.execute("ANALYZE")
print("LABELS", Label.objects.filter(task__round=rnd).count())
"""

EXPORT = r"""
import resource, sys, time, json
from pathlib import Path
from annotation.exports.formats import write_export
from annotation.exports.selection import Selection
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fmt, out = sys.argv[1], sys.argv[2]
started = time.perf_counter()
manifest = write_export(Selection(study="bench", include_simulated=True), fmt, Path(out))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT " + json.dumps({"rows": manifest["counts"]["rows"], "seconds": seconds,
                              "rss_before_mb": before / 1024, "rss_peak_mb": peak / 1024,
                              "bytes": Path(out).stat().st_size}))
"""


def _manage(env: dict, *args: str, capture: bool = False) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, check=True,
                          capture_output=capture, text=True)
    return done.stdout if capture else ""


def _pg_reset() -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB}")
        conn.execute(f"CREATE DATABASE {PG_DB}")


def run_db(db: str, sizes: list[int], work: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", DJANGO_SECRET_KEY=secret_key_for_run(),
               CXR_VAR_DIR=str(work / db))
    if db == "postgres":
        _pg_reset()
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{PG_DB}"
    else:
        env.pop("DATABASE_URL", None)
    _manage(env, "migrate", "--noinput", "-v", "0")
    rows = []
    for size in sizes:
        started = time.perf_counter()
        out = django_script(env, POPULATE, str(size))
        populated = time.perf_counter() - started
        labels = int(out.split("LABELS ", 1)[1].split()[0])
        for fmt in ("jsonl", "csv"):
            target = work / db / f"export-{size}.{fmt}"
            res = django_script(env, EXPORT, fmt, str(target))
            result = json.loads(res.split("RESULT ", 1)[1].splitlines()[0])
            target.unlink()
            row = {"db": db, "labels": labels, "format": fmt, **result,
                   "rows_per_s": result["rows"] / result["seconds"], "populate_s": round(populated, 1)}
            rows.append(row)
            print(f"{db:9} {labels:>9,} {fmt:5} {row['rows_per_s']:>10,.0f} rows/s  {result['seconds']:7.2f} s  "
                  f"RSS {result['rss_before_mb']:6.0f} → {result['rss_peak_mb']:6.0f} MB  "
                  f"{result['bytes'] / 1e6:8.1f} MB file", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "export.json"))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    print(f"{'db':9} {'labels':>9} {'fmt':5} {'throughput':>17}  {'time':>9}  {'RSS before → peak':>22}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-export-bench-") as tmp:
        for db in (["sqlite", "postgres"] if args.db == "both" else [args.db]):
            rows += run_db(db, sizes, Path(tmp))
    result = {"benchmark": "export", "date": time.strftime("%Y-%m-%d"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()},
              "rows": rows,
              "reference": "Label Studio 1.23 on this machine: 100k annotated tasks as JSON in 162 s (SQLite) and "
                           "324 s (PostgreSQL), server peak RSS 1.2-1.3 GB growing with project size."}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
