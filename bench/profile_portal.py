"""CPU profile of the reader portal's hot path: GET /portal/api/next and POST /portal/api/submit, in process.

Sets up a study the way bench/load.py does (realism cases, K readers per image, readers with a database session
made by SessionStore), then drives next+submit pairs through django.test.Client with CSRF checks enforced (the
session and CSRF cookies and the X-CSRFToken header that bench/load.py's readers send, a client-generated
submission id). Readers take turns, one pair each, so cases fill (K-th read) as they do under load. Three passes,
each on fresh cases: statements per request (CaptureQueriesContext), CPU per pair without any instrumentation
(time.process_time, whole request through the test client, and inside the handler: middleware + view; repeated,
median reported), and cProfile (wall-clock timer unless --cpu-timer; waits on the database are listed apart).
Each database runs in its own child process (fresh settings); the Celery broker is the default local one (no
REDIS_URL / CELERY_BROKER_URL), as in bench/load.py. Single process, single thread.

    python bench/profile_portal.py                          # SQLite and PostgreSQL, 300 labels each
    python bench/profile_portal.py --db sqlite --labels 500 --top 40
    python bench/profile_portal.py --db postgres --readers 8 --k 1
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

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
PG_DB = "cxr_bench_profile"
CSRF = "profiler" * 4  # a 32-character CSRF secret, sent as cookie and header (as bench/load.py)
MARK = "PROFILE_JSON "
ANSWER = {"call": "real", "confidence": 3}
TX_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")

#: What the profile's rows are grouped into: (name, substrings of "file:function"), first match wins, by cumulative
#: time of the outermost matching frame.
CATEGORIES = [
    ("session load/save", ("sessions/backends", "sessions/middleware.py")),
    ("auth (user from session)", ("contrib/auth/__init__.py:get_user", "contrib/auth/middleware.py")),
    ("csrf", ("middleware/csrf.py",)),
    ("messages", ("contrib/messages",)),
    ("celery publish (case_filled)", ("celery/", "kombu/")),
    ("url reverse/resolve", ("urls/resolvers.py", "urls/base.py")),
    ("json encode/decode", ("json/encoder.py", "json/decoder.py", "http/response.py:JsonResponse")),
]


# --- child: runs with Django set up --------------------------------------------------------------------------------


def _setup(readers: int, images: int, k: int) -> list[dict]:
    from common.reading_study import reading_study  # bench/ is the script's folder, first on sys.path

    return reading_study("profile", readers, images, k)


class _Reader:
    """One reader's browser: a test client with the session and CSRF cookies, CSRF checks enforced."""

    def __init__(self, spec: dict):
        from django.test import Client

        self.queue = spec["queue"]
        self.client = Client(enforce_csrf_checks=True, HTTP_X_CSRFTOKEN=CSRF, HTTP_REFERER="http://testserver/portal/")
        self.client.cookies["sessionid"] = spec["session"]
        self.client.cookies["csrftoken"] = CSRF
        self.handler_s = [0.0, 0.0]  # CPU seconds inside the handler (middleware + view): next, submit
        handler = self.client.handler
        inner = handler.get_response
        self._which = 0

        def timed(request):
            t0 = time.process_time()
            try:
                return inner(request)
            finally:
                self.handler_s[self._which] += time.process_time() - t0

        handler.get_response = timed

    def next(self) -> str | None:
        self._which = 0
        resp = self.client.get("/portal/api/next", {"queue": self.queue})
        if resp.status_code != 200:
            raise RuntimeError(f"next: HTTP {resp.status_code} {resp.content[:300]!r}")
        data = json.loads(resp.content)
        return None if data.get("done") else data["task"]

    def submit(self, task: str) -> None:
        import uuid

        self._which = 1
        resp = self.client.post("/portal/api/submit", data=json.dumps({
            "task": task, "answer": ANSWER, "submission_id": str(uuid.uuid4()), "time_spent_ms": 1000}),
            content_type="application/json")
        if resp.status_code != 200 or not json.loads(resp.content).get("saved"):
            raise RuntimeError(f"submit: HTTP {resp.status_code} {resp.content[:300]!r}")


def _pairs(readers: list[_Reader], n: int, on_next=None, on_submit=None) -> int:
    """n next+submit pairs, readers taking turns; returns the pairs done."""
    done = 0
    while done < n:
        progressed = False
        for r in readers:
            if done >= n:
                break
            with on_next() if on_next else _null():
                task = r.next()
            if task is None:
                continue
            with on_submit() if on_submit else _null():
                r.submit(task)
            done += 1
            progressed = True
        if not progressed:
            break
    return done


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _project_or_django(filename: str) -> bool:
    return filename.startswith(str(ROOT)) and "/.venv/" not in filename or "/django/" in filename


def _short(filename: str) -> str:
    if "/django/" in filename:
        return "django/" + filename.rsplit("/django/", 1)[1]
    if filename.startswith(str(ROOT)):
        return filename[len(str(ROOT)) + 1:]
    return filename


def _profile_rows(stats, n_pairs: int, key: str, top: int) -> list[dict]:
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        if not _project_or_django(filename):
            continue
        rows.append({"where": f"{_short(filename)}:{line}({func})", "calls_per_pair": round(nc / n_pairs, 2),
                     "tottime_ms_per_pair": round(1000 * tt / n_pairs, 3),
                     "cumtime_ms_per_pair": round(1000 * ct / n_pairs, 3)})
    rows.sort(key=lambda r: -r[key])
    return rows[:top]


def _categories(stats, n_pairs: int) -> dict:
    """Cumulative ms per pair of each category: the largest cumulative time of a frame in it (outermost frame)."""
    out = {}
    for name, needles in CATEGORIES:
        best = 0.0
        total_tt = 0.0
        for (filename, _line, func), (_cc, _nc, tt, ct, _c) in stats.stats.items():
            where = f"{filename}:{func}"
            if any(s in where for s in needles):
                best = max(best, ct)
                total_tt += tt
        out[name] = {"cum_ms_per_pair": round(1000 * best / n_pairs, 3),
                     "own_ms_per_pair": round(1000 * total_tt / n_pairs, 3)}
    sql = 0.0
    for (filename, _line, func), (_cc, _nc, _tt, ct, _c) in stats.stats.items():
        if filename.endswith("django/db/backends/utils.py") and func == "_execute":
            sql = max(sql, ct)
    out["SQL execute (driver + DB round trip)"] = {"cum_ms_per_pair": round(1000 * sql / n_pairs, 3)}
    wait = sum(v[2] for (f, _l, fn), v in stats.stats.items()
               if (f.endswith("psycopg/connection.py") and fn == "wait") or "method 'commit' of 'sqlite3" in fn)
    out["waiting on the database (psycopg wait, sqlite commit)"] = {"cum_ms_per_pair": round(1000 * wait / n_pairs, 3)}
    return out


def child(args) -> dict:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import cProfile
    import pstats

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    call_command("migrate", "--noinput", verbosity=0)
    specs = _setup(args.readers, args.images, args.k)
    readers = [_Reader(s) for s in specs]
    out = {"db": connection.vendor, "readers": args.readers, "images": args.images, "k": args.k}

    _pairs(readers, args.warmup)  # first-request costs (URL resolver, imports, connection)

    # --- statements per request -----------------------------------------------------------------------------------
    counts = {"next": [], "submit": []}
    samples = {}
    cap = [None]

    def capture(kind):
        class Ctx:
            def __enter__(self):
                cap[0] = CaptureQueriesContext(connection)
                cap[0].__enter__()

            def __exit__(self, *exc):
                cap[0].__exit__(*exc)
                sql = [q["sql"] for q in cap[0].captured_queries]
                tx = sum(1 for s in sql if s.lstrip().upper().startswith(TX_CONTROL))
                counts[kind].append((len(sql) - tx, tx))
                if len(counts[kind]) == 3:  # one ordinary request of each kind, as an example
                    samples[kind] = sql
                return False
        return Ctx
    _pairs(readers, args.count_pairs, capture("next"), capture("submit"))

    def summary(pairs):
        data = [d for d, _ in pairs]
        tx = [t for _, t in pairs]
        return {"statements_mean": round(sum(data) / len(data), 2), "statements_min": min(data),
                "statements_max": max(data), "tx_control_mean": round(sum(tx) / len(tx), 2)}
    out["statements"] = {k: summary(v) for k, v in counts.items()}
    out["sample_sql"] = {k: [s[:300] for s in v] for k, v in samples.items()}

    # --- CPU per pair, no instrumentation (repeated; the median pass is reported, and the spread) ------------------
    passes = []
    for _ in range(args.repeat):
        for r in readers:
            r.handler_s = [0.0, 0.0]
        t0, w0 = time.process_time(), time.perf_counter()
        n = _pairs(readers, args.labels)
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        h_next = sum(r.handler_s[0] for r in readers)
        h_submit = sum(r.handler_s[1] for r in readers)
        passes.append({"pairs": n, "cpu_ms_per_pair": round(1000 * cpu / n, 2),
                       "wall_ms_per_pair": round(1000 * wall / n, 2),
                       "handler_cpu_ms_per_pair": round(1000 * (h_next + h_submit) / n, 2),
                       "handler_cpu_ms_next": round(1000 * h_next / n, 2),
                       "handler_cpu_ms_submit": round(1000 * h_submit / n, 2)})
    ordered = sorted(passes, key=lambda p: p["handler_cpu_ms_per_pair"])
    out["timed"] = {**ordered[len(ordered) // 2], "passes": len(passes),
                    "handler_cpu_ms_per_pair_min": ordered[0]["handler_cpu_ms_per_pair"],
                    "handler_cpu_ms_per_pair_all": [p["handler_cpu_ms_per_pair"] for p in passes]}

    # --- cProfile -------------------------------------------------------------------------------------------------
    if not args.labels_profiled:
        return out
    # wall-clock timer by default (cheap; a PostgreSQL round trip shows as psycopg's wait); --cpu-timer counts CPU
    # only, at a cost (a system call per event inflates the many small calls)
    prof = cProfile.Profile(time.process_time) if args.cpu_timer else cProfile.Profile()
    prof.enable()
    n = _pairs(readers, args.labels_profiled)
    prof.disable()
    stats = pstats.Stats(prof)
    out["profile"] = {"pairs": n, "timer": "cpu" if args.cpu_timer else "wall", "total_ms_per_pair": round(1000 * stats.total_tt / n, 2),
                      "categories": _categories(stats, n),
                      "top_cumulative": _profile_rows(stats, n, "cumtime_ms_per_pair", args.top),
                      "top_tottime": _profile_rows(stats, n, "tottime_ms_per_pair", args.top)}
    if args.pstats:
        stats.dump_stats(args.pstats)
    return out


# --- parent ----------------------------------------------------------------------------------------------------------


def run_child(db: str, args) -> dict:
    work = tempfile.mkdtemp(prefix="cxr-profile-")
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", DJANGO_SECRET_KEY=secret_key_for_run(), CXR_VAR_DIR=work,
               CXR_CLAIM_TIMEOUT_S="3600")
    if db == "postgres":
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DB}")
            conn.execute(f"CREATE DATABASE {PG_DB}")
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{PG_DB}"
    argv = [sys.executable, __file__, "--_child", "--readers", str(args.readers), "--images", str(args.images),
            "--k", str(args.k), "--labels", str(args.labels), "--warmup", str(args.warmup), "--repeat", str(args.repeat),
            "--labels-profiled", str(args.labels_profiled), *(["--cpu-timer"] if args.cpu_timer else []),
            "--count-pairs", str(args.count_pairs), "--top", str(args.top)]
    if args.pstats:
        argv += ["--pstats", f"{args.pstats}.{db}"]
    try:
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    finally:
        if db == "postgres":
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
    if done.returncode != 0:
        sys.exit(f"profile child ({db}) failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.split(MARK, 1)[1])


def print_table(res: dict) -> None:
    t, s = res["timed"], res["statements"]
    print(f"\n== {res['db']}: {res['readers']} readers, {res['images']} images, K={res['k']}, {t['pairs']} pairs")
    print(f"CPU per pair: {t['cpu_ms_per_pair']} ms whole (test client included), {t['handler_cpu_ms_per_pair']} ms "
          f"in the handler (next {t['handler_cpu_ms_next']}, submit {t['handler_cpu_ms_submit']}); wall "
          f"{t['wall_ms_per_pair']} ms; median of {t['passes']} passes, in the handler: min "
          f"{t['handler_cpu_ms_per_pair_min']}, all {t['handler_cpu_ms_per_pair_all']}")
    for kind in ("next", "submit"):
        v = s[kind]
        print(f"statements per {kind}: {v['statements_mean']} (min {v['statements_min']}, max {v['statements_max']}) "
              f"+ {v['tx_control_mean']} transaction control")
    if "profile" not in res:
        return
    print(f"profile ({res['profile']['total_ms_per_pair']} ms/pair under cProfile, {res['profile']['timer']} timer), by category (cumulative ms/pair):")
    for name, v in res["profile"]["categories"].items():
        print(f"  {name:40s} {v['cum_ms_per_pair']:8.3f}")
    for key, title in (("top_cumulative", "cumulative"), ("top_tottime", "own time")):
        print(f"top by {title} (project + Django, ms per pair):")
        print(f"  {'cum':>8s} {'own':>8s} {'calls':>6s}  where")
        for row in res["profile"][key]:
            print(f"  {row['cumtime_ms_per_pair']:8.3f} {row['tottime_ms_per_pair']:8.3f} {row['calls_per_pair']:6.1f}"
                  f"  {row['where']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--k", type=int, default=2, help="readers per image")
    parser.add_argument("--labels", type=int, default=200, help="pairs in each timed pass")
    parser.add_argument("--labels-profiled", type=int, default=300, help="pairs under cProfile (0: no profile)")
    parser.add_argument("--cpu-timer", action="store_true", help="cProfile with a CPU-time timer (slow)")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes of --labels pairs (median reported)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--count-pairs", type=int, default=40, help="pairs whose statements are counted")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--pstats", default="", help="also dump the raw cProfile stats to PATH.<db>")
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before / after)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile_portal.json"))
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(MARK + json.dumps(child(args)))
        return
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    rows = []
    for db in dbs:
        res = run_child(db, args)
        print_table(res)
        rows.append(res)
    result = {"benchmark": "profile_portal", "date": time.strftime("%Y-%m-%d"), "label": args.label,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
