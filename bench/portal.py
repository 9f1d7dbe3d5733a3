#!/usr/bin/env python3
"""Reader-portal API benchmark: the Label Studio harness's method, applied to our portal over HTTP.

For each database (--dbs) and round size (--sizes, reading cases of one "realism" round, K=1):

  1. fresh database (SQLite file in a temp dir / PostgreSQL database `bench_portal` dropped + recreated),
     `manage.py migrate` in a subprocess;
  2. data, in a child process with django.setup(): a study (task_kinds=["realism"], readers_per_image=1),
     a round of N images bulk-created without files (as the `bulk_round` test fixture does), opened with
     round_open_labeling; a 200-case warm-up study; 9 reader accounts (+1 in-process probe account)
     with passwords and memberships added through membership_add;
  3. in-process probe (child process, same database, before any HTTP traffic): SQL statements and wall time
     per call of annotation.reading.assignment.tasks_next_for_reader / label_submit (CaptureQueriesContext), and of
     the whole views (django.test.Client, middleware included). The probe's tasks/labels are deleted again and
     the case counters restored (checked), so the HTTP phases start on an untouched round;
  4. gunicorn (gthread) on 127.0.0.1:<free port>, DJANGO_DEBUG=0; httpx clients with keep-alive log in
     through the real login form and read their queue token from the /portal/ page;
  5. warm-up (20 pairs by reader 0 on the warm-up round, not counted) -> N sequential next+submit pairs by
     reader 0 -> T threads x I iterations, each thread its own reader;
  6. duplicate check: every task token a client received is resolved to its case/image in the database
     (a case handed to >= 2 readers is a duplicate), plus database invariants (taken/done > capacity,
     images with more than K labels, cases with more than K distinct readers).

Latencies are client-side wall times per HTTP request; percentiles are nearest-rank (as bench_ls.py).
Every loop is bounded by a count AND --max-seconds; only loopback is used; gunicorn is killed in `finally`.

usage: .venv/bin/python bench/portal.py [--quick] [--dbs sqlite,postgresql] [--sizes 1000,10000,100000]
                                        [--server 2x4] [--out bench/results/portal.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common.processes import rss_mb, secret_key_for_run

# `portal` is the package bench/portal/ (its harness): this script runs as __main__, never as `portal`
from portal import labelstudio
from portal.child import child_main
from portal.clients import ANSWER, Reader, conc_phase, http_floor, http_pairs
from portal.measure import CpuMeter, log, machine_info, summary_ms
from portal.report import render, side_by_side_write
from portal.server import (
    PG_ADMIN_URL,
    PG_DB,
    PY,
    REPO,
    Gunicorn,
    pg_db_size_mb,
    pg_info,
    pg_recreate,
    run_child,
)

N_READERS = 9  # reader 0: warm-up + sequential phase; readers 1..8: concurrent phase


# ============================================================================ one (db, size) run
def run_one(args, db, size, tmp_root, passwords):
    r = {"db": db, "cases": size, "loadavg_start": os.getloadavg()}
    var = Path(tempfile.mkdtemp(prefix=f"{db}-{size}-", dir=tmp_root))
    if db == "sqlite":
        db_file = var / "db.sqlite3"
        url = f"sqlite:///{db_file}"  # var is absolute -> sqlite:////tmp/...
    else:
        pg_recreate()
        url = f"postgres://postgres@127.0.0.1:5432/{PG_DB}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "REDIS_URL", "CELERY_", "DJANGO_", "CXR_", "DB_CONN"))}
    env.update(DATABASE_URL=url, CXR_VAR_DIR=str(var), DJANGO_DEBUG="0", DJANGO_SETTINGS_MODULE="config.settings",
               DJANGO_SECRET_KEY=secret_key_for_run(), LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    r["database_url"] = url

    t0 = time.perf_counter()
    p = subprocess.run([PY, "manage.py", "migrate", "-v0", "--no-input"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=args.max_setup_seconds)
    if p.returncode:
        raise RuntimeError(f"migrate failed: {p.stderr[-3000:]}")
    r["migrate_s"] = round(time.perf_counter() - t0, 2)
    log(f"{db}/{size}: migrated in {r['migrate_s']} s; creating data")

    r["setup"] = run_child("setup", env, {"size": size, "warmup_size": args.warmup_cases,
                                          "passwords": passwords, "analyze": args.analyze}, args.max_setup_seconds)
    log(f"{db}/{size}: setup {r['setup']['timings_s']}")
    if args.probe_n:
        r["probe"] = run_child("probe", env, {"round": r["setup"]["round"], "n": args.probe_n,
                                              "profile": args.profile}, args.max_seconds + 300)
        log(f"{db}/{size}: probe queries next={r['probe']['service']['next_queries']} "
            f"submit={r['probe']['service']['submit_queries']}")

    server = Gunicorn(env, args.workers, args.threads, str(var / "gunicorn.log"), args.keepalive)
    r["server_cmd"] = " ".join(server.cmd[1:])
    readers = []
    handed_all = {}
    held = None
    try:
        if db == "sqlite" and args.sqlite_hold_connection:
            # Emulates persistent connections (CONN_MAX_AGE > 0): with CONN_MAX_AGE=0 every request closes the last
            # connection to the WAL database, and SQLite then checkpoints and deletes the -wal file on each close.
            import sqlite3

            held = sqlite3.connect(str(db_file))
            held.execute("SELECT count(*) FROM sqlite_master").fetchall()
        server.start()
        r["rss_start_mb"] = rss_mb(server.proc.pid)
        title, wtitle = r["setup"]["study_title"], r["setup"]["warmup_title"]
        t0 = time.perf_counter()
        for i in range(N_READERS):
            rd = Reader(server.base, f"bench-r{i}", passwords[i], timeout=args.max_seconds, titles=(title, wtitle))
            rd.login()
            readers.append(rd)
        r["login_s"] = round(time.perf_counter() - t0, 2)

        # warm-up (not counted), on the throw-away warm-up round
        warm = []
        if args.warmup:
            http_pairs(readers[0], readers[0].queues[wtitle], args.warmup, args.max_seconds, warm)
        # HTTP floor: a static file served by WhiteNoise (no view, no session, no database), same client
        r["http_floor"] = http_floor(readers[0], args.seq_n, args.max_seconds)
        # sequential
        log(f"{db}/{size}: sequential {args.seq_n} pairs")
        handed0 = []
        with CpuMeter(server.proc.pid) as cpu:
            nxt, sub, errs = http_pairs(readers[0], readers[0].queues[title], args.seq_n, args.max_seconds, handed0)
        r["seq"] = {"next_ms": summary_ms(nxt), "submit_ms": summary_ms(sub), "errors": dict(errs),
                    "cpu": cpu.result}
        handed_all[readers[0].username] = handed0
        # concurrent
        log(f"{db}/{size}: concurrent {args.threads_clients}x{args.iters}")
        with CpuMeter(server.proc.pid) as cpu:
            conc, handed = conc_phase(readers[1:1 + args.threads_clients], title, args.iters, args.max_seconds)
        r["conc"] = conc
        r["conc"]["cpu"] = cpu.result
        for u, toks in handed.items():
            handed_all.setdefault(u, []).extend(toks)
        r["rss_end_mb"] = rss_mb(server.proc.pid)
        r["loadavg_end"] = os.getloadavg()
    finally:
        for rd in readers:
            rd.close()
        server.stop()
        if held is not None:
            held.close()
        r["server_log"] = server.log_problems()

    # duplicate hand-outs and invariants, from the database
    r["check"] = run_child("check", env, {"round": r["setup"]["round"], "handed": handed_all,
                                          "conc_readers": list(handed)}, args.max_setup_seconds)
    r["conc"]["duplicate_handouts"] = r["check"]["responses"]["conc_images_to_2plus_readers"]
    if db == "sqlite":
        r["db_file_mb"] = round(sum(f.stat().st_size for f in var.glob("db.sqlite3*")) / 1e6, 1)
    else:
        r["db_file_mb"] = pg_db_size_mb()
    if not args.keep_tmp:
        shutil.rmtree(var, ignore_errors=True)
    return r


# ============================================================================ main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dbs", default="sqlite,postgresql")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--server", default="2x4", help="gunicorn WORKERSxTHREADS (gthread), e.g. 2x4 or 1x8")
    ap.add_argument("--keepalive", type=int, default=30, help="gunicorn --keep-alive seconds")
    ap.add_argument("--seq-n", type=int, default=200)
    ap.add_argument("--threads", dest="threads_clients", type=int, default=8)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20, help="next+submit pairs on the warm-up round, not counted")
    ap.add_argument("--warmup-cases", type=int, default=200)
    ap.add_argument("--probe-n", type=int, default=30, help="in-process calls per probe loop (0 = skip)")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process view calls (top functions)")
    ap.add_argument("--max-seconds", type=float, default=600, help="time bound per measurement phase")
    ap.add_argument("--max-setup-seconds", type=float, default=1800, help="bound for migrate / data creation")
    ap.add_argument("--target-ms", type=float, default=30)
    ap.add_argument("--analyze", action="store_true",
                    help="run ANALYZE after creating the data (the platform does not; autovacuum may be off)")
    ap.add_argument("--sqlite-hold-connection", action="store_true",
                    help="experiment: keep one idle SQLite connection open in the benchmark process while the "
                         "server runs (what persistent connections would give)")
    ap.add_argument("--redis-url", default="", help="set REDIS_URL for the server (default: none, LocMemCache)")
    ap.add_argument("--with-labelstudio", action="store_true",
                    help=f"run Label Studio {labelstudio.VERSION} beside us, interleaved by size, with "
                         "the peer harness's client (its venv cached under var/labelstudio); ratios ours / theirs")
    ap.add_argument("--quick", action="store_true", help="smoke: sqlite, 1000 cases, 50 pairs, 4x20")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--render", metavar="JSON", help="only re-render the Markdown of an existing results file")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "portal.json"))
    ap.add_argument("--md", default=None, help="Markdown output (default: --out with .md)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as fh:
            results = json.load(fh)
        md = render(results, args.target_ms)
        side_by_side_write(REPO / "bench" / "RESULTS.md", results)
        with open(args.md or str(Path(args.render).with_suffix(".md")), "w") as fh:
            fh.write(f"<!-- generated by bench/portal.py on {results['date']} -->\n\n" + md)
        print(md)
        return
    if args.quick:
        args.dbs, args.sizes, args.seq_n, args.threads_clients, args.iters = "sqlite", "1000", 50, 4, 20
        args.max_seconds = min(args.max_seconds, 120)
        args.probe_n = min(args.probe_n, 10)
    args.workers, args.threads = (int(x) for x in args.server.lower().split("x"))
    if args.threads_clients > N_READERS - 1:
        sys.exit(f"at most {N_READERS - 1} concurrent clients")
    md_path = args.md or str(Path(args.out).with_suffix(".md"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    dbs = [d for d in args.dbs.split(",") if d]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = {
        "benchmark": "bench/portal.py", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(),
        "settings": {
            "server": args.server, "gunicorn": f"-w {args.workers} --threads {args.threads} -k gthread "
                                               f"--keep-alive {args.keepalive}",
            "dbs": dbs, "sizes": sizes, "seq_n": args.seq_n, "threads": args.threads_clients, "iters": args.iters,
            "warmup_pairs": args.warmup, "warmup_cases": args.warmup_cases, "probe_n": args.probe_n,
            "max_seconds": args.max_seconds, "quick": args.quick, "task_kinds": ["realism"], "readers_per_image": 1,
            "answer": ANSWER, "percentiles": "nearest-rank, client-side wall time per HTTP request",
            "django_debug": False, "redis_url": args.redis_url or None, "analyze_after_setup": args.analyze,
            "sqlite_hold_connection": args.sqlite_hold_connection,
        },
        "runs": [],
    }
    if "postgresql" in dbs:
        try:
            results["machine"]["postgresql"] = pg_info()
        except Exception as exc:  # noqa: BLE001
            sys.exit(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    passwords = [f"pw-bench-r{i}-{uuid.uuid4().hex[:10]}" for i in range(N_READERS)]
    tmp_root = tempfile.mkdtemp(prefix="bench-portal-")
    peer_python = labelstudio.venv_ensure() if args.with_labelstudio else None
    if peer_python:
        results["settings"]["labelstudio"] = {"version": labelstudio.VERSION, "harness": str(labelstudio.HARNESS),
                                              "client": "bench_ls.py suite (the peer harness's)", "server":
                                              "label-studio start (runserver, one process)", "exports": "none"}
    try:
        for db in dbs:
            peer = None
            if peer_python:  # one Label Studio server per database, its sizes interleaved with ours
                peer = labelstudio.LabelStudio(db, peer_python, seq_n=args.seq_n, threads=args.threads_clients,
                                               iters=args.iters, warmup=args.warmup, max_seconds=args.max_seconds)
                peer.start()
            try:
                for size in sizes:
                    log(f"== {db} {size}")
                    t0 = time.perf_counter()
                    try:
                        r = run_one(args, db, size, tmp_root, passwords)
                    except Exception as exc:  # record and go on with the next size
                        log(f"{db}/{size} FAILED: {exc}")
                        r = {"db": db, "cases": size, "error": str(exc)[-3000:]}
                    r["total_s"] = round(time.perf_counter() - t0, 1)
                    if peer is not None:
                        log(f"== {db} {size}: Label Studio")
                        try:
                            r["labelstudio"] = peer.suite(size)
                            r["side_by_side"] = labelstudio.side_by_side(r, r["labelstudio"])
                        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                            log(f"{db}/{size} Label Studio FAILED: {exc}")
                            r["labelstudio"] = {"error": str(exc)[-3000:]}
                    results["runs"].append(r)
                    with open(args.out, "w") as fh:
                        json.dump(results, fh, indent=1)
            finally:
                if peer is not None:
                    peer.stop()
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp_root, ignore_errors=True)
    md = render(results, args.target_ms)
    results["markdown"] = md
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    with open(md_path, "w") as fh:
        fh.write(f"<!-- generated by bench/portal.py on {results['date']} -->\n\n" + md)
    side_by_side_write(REPO / "bench" / "RESULTS.md", results)
    print(md)
    log(f"wrote {args.out} and {md_path}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "_child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
