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
     per call of annotation.assignment.tasks_next_for_reader / label_submit (CaptureQueriesContext), and of
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
import glob
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
GUNICORN = str(VENV_BIN / "gunicorn")
LS_DIR = Path("/work/shared/peers/labelstudio")
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
PG_DB = "bench_portal"
CHILD_MARK = "@@BENCH-JSON@@"

N_READERS = 9  # reader 0: warm-up + sequential phase; readers 1..8: concurrent phase
PROBE_USER = "bench-probe"
ANSWER = {"call": "real", "confidence": 3}
TX_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


# ============================================================================ helpers (no Django)
def pct(values, p):
    """Nearest-rank percentile (p in 0..100), as bench_ls.py."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def summary_ms(samples_s):
    ms = [x * 1000.0 for x in samples_s]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50": round(pct(ms, 50), 2), "p95": round(pct(ms, 95), 2),
            "p99": round(pct(ms, 99), 2), "mean": round(statistics.fmean(ms), 2), "max": round(max(ms), 2)}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_times():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals), idle


def proc_tree(pid):
    children = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_s(pid):
    """utime+stime (s) of a process and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


class CpuMeter:
    """System CPU busy % over a phase, and how much of the machine's CPU went to our client and server.

    The rest (`other_pct`) is PostgreSQL plus anything else running on the box (other people's jobs)."""

    def __init__(self, server_pid):
        self.server_pid = server_pid

    def __enter__(self):
        self.sys0, self.srv0, self.cli0, self.t0 = cpu_times(), tree_cpu_s(self.server_pid), _self_cpu(), time.time()
        return self

    def __exit__(self, *exc):
        sys1, wall = cpu_times(), time.time() - self.t0
        ncpu = os.cpu_count() or 1
        busy = 1 - (sys1[1] - self.sys0[1]) / max(1, sys1[0] - self.sys0[0])
        srv = (tree_cpu_s(self.server_pid) - self.srv0) / max(1e-9, wall * ncpu)
        cli = (_self_cpu() - self.cli0) / max(1e-9, wall * ncpu)
        self.result = {"busy_pct": round(100 * busy, 1), "server_pct": round(100 * srv, 1),
                       "client_pct": round(100 * cli, 1), "other_pct": round(100 * (busy - srv - cli), 1),
                       "loadavg_1m": round(os.getloadavg()[0], 2)}


def _self_cpu():
    t = os.times()
    return t.user + t.system


def rss_mb(pid):
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def machine_info():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info = {"cpu_count": os.cpu_count(), "cpu_model": model, "mem_gib": mem_gb, "kernel": platform.release(),
            "python": platform.python_version()}
    try:
        out = subprocess.run([PY, "-c", (
            "import django, httpx, sqlite3, psycopg; from importlib.metadata import version;"
            "print(django.get_version(), httpx.__version__, sqlite3.sqlite_version, psycopg.__version__,"
            " version('gunicorn'))")], capture_output=True, text=True, timeout=60, cwd=REPO).stdout.split()
        info.update(django=out[0], httpx=out[1], sqlite=out[2], psycopg=out[3], gunicorn=out[4])
    except Exception as exc:  # noqa: BLE001 - informational only
        info["versions_error"] = repr(exc)
    return info


def pg_info():
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        rows = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'shared_buffers', "
            "'synchronous_commit', 'fsync', 'max_connections', 'work_mem', 'autovacuum')").fetchall())
    return rows


def pg_recreate():
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PG_DB}")


def pg_db_size_mb():
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        return round(conn.execute(f"SELECT pg_database_size('{PG_DB}')").fetchone()[0] / 1e6, 1)


def run_child(mode, env, spec, timeout):
    """Run this file in a child process with django.setup(); returns the JSON it prints last."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=env["CXR_VAR_DIR"]) as f:
        json.dump(spec, f)
        spec_path = f.name
    t0 = time.perf_counter()
    p = subprocess.run([PY, __file__, "_child", mode, spec_path], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"child {mode} failed rc={p.returncode}:\n{p.stderr[-4000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    if not lines:
        raise RuntimeError(f"child {mode} printed no result:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    out = json.loads(lines[-1][len(CHILD_MARK):])
    out["child_wall_s"] = round(time.perf_counter() - t0, 2)
    return out


# ============================================================================ HTTP client
class Reader:
    """One reader's browser: a keep-alive httpx client with the session and CSRF cookies."""

    QUEUE_LINK = re.compile(r'href="/portal/q/(?P<token>[^/"]+)/(?:next|done|review)/"')

    def __init__(self, base, username, password, timeout, titles):
        import httpx

        self.username, self.password, self.titles = username, password, titles
        self.client = httpx.Client(base_url=base, timeout=timeout,
                                   limits=httpx.Limits(max_keepalive_connections=1, max_connections=1))
        self.queues = {}  # study title -> queue token
        self.csrf = None

    def close(self):
        self.client.close()

    def login(self):
        r = self.client.get("/accounts/login/")
        r.raise_for_status()
        m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.text)
        token = m.group(1) if m else self.client.cookies.get("csrftoken")
        r = self.client.post("/accounts/login/", data={
            "username": self.username, "password": self.password, "csrfmiddlewaretoken": token, "next": ""})
        if r.status_code != 302:
            raise RuntimeError(f"login of {self.username} failed: HTTP {r.status_code} {r.text[:300]}")
        self.csrf = self.client.cookies.get("csrftoken")  # rotated on login
        r = self.client.get("/portal/")
        r.raise_for_status()
        self.queues = self.parse_home(r.text)
        missing = [t for t in self.titles if t not in self.queues]
        if missing:
            raise RuntimeError(f"no queue link for {missing} on /portal/ of {self.username}: {r.text[-1500:]}")

    def parse_home(self, html):
        """{study title: queue token}: one list item per queue, holding the study title and a /portal/q/<token>/ link."""
        import html as htmllib

        queues = {}
        for block in re.split(r"<li\b", html)[1:]:
            m = self.QUEUE_LINK.search(block)
            text = htmllib.unescape(block)
            for title in self.titles:
                if m and title in text:
                    queues[title] = m.group("token")
        return queues

    def next(self, queue):
        """-> (task token | None, status string)."""
        r = self.client.get("/portal/api/next", params={"queue": queue})
        if r.status_code != 200:
            return None, f"next_{r.status_code}"
        data = r.json()
        if data.get("done"):
            return None, "done"
        return data["task"], "ok"

    def submit(self, task):
        r = self.client.post("/portal/api/submit", headers={"X-CSRFToken": self.csrf}, json={
            "task": task, "answer": ANSWER, "submission_id": str(uuid.uuid4()), "time_spent_ms": 1000})
        if r.status_code != 200 or not r.json().get("saved"):
            return f"submit_{r.status_code}"
        return "ok"


def http_pairs(reader, queue, n, max_seconds, handed):
    """n sequential next+submit pairs; returns latencies and errors. `handed` collects task tokens."""
    import httpx

    nxt, sub, errors = [], [], Counter()
    deadline = time.perf_counter() + max_seconds
    for _ in range(n):
        if time.perf_counter() > deadline:
            errors["time_bound_hit"] += 1
            break
        try:
            t0 = time.perf_counter()
            task, st = reader.next(queue)
            nxt.append(time.perf_counter() - t0)
            if task is None:
                errors[st] += 1
                if st == "done":
                    break
                continue
            handed.append(task)
            t0 = time.perf_counter()
            st = reader.submit(task)
            sub.append(time.perf_counter() - t0)
            if st != "ok":
                errors[st] += 1
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
    return nxt, sub, errors


def http_floor(reader, n, max_seconds, path="/static/portal/portal.css"):
    """Round trip of the cheapest request the server answers: gunicorn + WSGI + client, no Django view/DB."""
    lat, status = [], Counter()
    deadline = time.perf_counter() + max_seconds
    for _ in range(n):
        if time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        resp = reader.client.get(path)
        lat.append(time.perf_counter() - t0)
        status[resp.status_code] += 1
    return {"path": path, "ms": summary_ms(lat), "status": dict(status)}


def conc_phase(readers, queue_title, iters, max_seconds):
    import httpx

    lock = threading.Lock()
    nxt, sub, errors = [], [], Counter()
    handed = {}  # reader username -> [task tokens]
    ok = [0]
    start = threading.Event()
    deadline = [0.0]

    def worker(rd):
        queue = rd.queues[queue_title]
        ln, ls, le, mine = [], [], Counter(), []
        start.wait()
        for _ in range(iters):
            if time.perf_counter() > deadline[0]:
                le["time_bound_hit"] += 1
                break
            try:
                t0 = time.perf_counter()
                task, st = rd.next(queue)
                ln.append(time.perf_counter() - t0)
                if task is None:
                    le[st] += 1
                    if st == "done":
                        break
                    continue
                mine.append(task)
                t0 = time.perf_counter()
                st = rd.submit(task)
                ls.append(time.perf_counter() - t0)
                if st == "ok":
                    with lock:
                        ok[0] += 1
                else:
                    le[st] += 1
            except httpx.HTTPError as exc:
                le[type(exc).__name__] += 1
        with lock:
            nxt.extend(ln)
            sub.extend(ls)
            errors.update(le)
            handed[rd.username] = mine

    threads = [threading.Thread(target=worker, args=(rd,), daemon=True) for rd in readers]
    for t in threads:
        t.start()
    time.sleep(0.2)
    c0 = cpu_times()
    t0 = time.perf_counter()
    deadline[0] = t0 + max_seconds
    start.set()
    for t in threads:
        t.join(max_seconds + 120)
    wall = time.perf_counter() - t0
    c1 = cpu_times()
    busy = 1 - (c1[1] - c0[1]) / max(1, c1[0] - c0[0])
    # duplicate hand-outs visible in the responses alone: one task token given to two readers
    owners = defaultdict(set)
    for user, toks in handed.items():
        for tok in toks:
            owners[tok].add(user)
    return {
        "threads": len(readers), "iters_per_thread": iters, "wall_s": round(wall, 2),
        "labels_ok": ok[0], "labels_per_s": round(ok[0] / wall, 2), "pairs_per_s": round(len(sub) / wall, 2),
        "next_ms": summary_ms(nxt), "submit_ms": summary_ms(sub), "errors": dict(errors),
        "same_token_to_two_readers": sum(1 for v in owners.values() if len(v) > 1),
        "cpu_busy_pct": round(100 * busy, 1), "handed_per_reader": {u: len(t) for u, t in handed.items()},
    }, handed


# ============================================================================ server
class Gunicorn:
    def __init__(self, env, workers, threads, logpath, keepalive):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cmd = [GUNICORN, "config.wsgi", "-b", f"127.0.0.1:{self.port}", "-w", str(workers),
                    "--threads", str(threads), "-k", "gthread", "--keep-alive", str(keepalive)]
        self.env, self.logpath, self.proc = env, logpath, None

    def start(self, timeout=60):
        import httpx

        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=REPO, stdout=self.logf, stderr=self.logf,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited rc={self.proc.returncode}; see {self.logpath}")
            try:
                if httpx.get(self.base + "/accounts/login/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"gunicorn did not come up in {timeout}s; see {self.logpath}")

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: master + its workers
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        self.logf.close()
        self.proc = None

    def log_problems(self):
        try:
            text = Path(self.logpath).read_text(errors="replace")
        except OSError:
            return {}
        return {"tracebacks": text.count("Traceback"), "errors": len(re.findall(r"\[ERROR\]|ERROR", text)),
                "worker_timeouts": text.count("WORKER TIMEOUT"), "tail": text[-1500:] if "Traceback" in text else ""}


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
               LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
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


# ============================================================================ report
def load_ls():
    """Label Studio figures from the peer's results-*.json: {db: [(label, {size: result})]}."""
    runs = defaultdict(list)
    for path in sorted(glob.glob(str(LS_DIR / "results-*.json"))):
        name = Path(path).stem[len("results-"):]
        db = name.split("-")[0]
        server = "gunicorn-4" if "gunicorn" in name else "runserver"
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        runs[db].append((f"LS {db}/{server}", {int(k): v for k, v in data.get("sizes", {}).items()}))
    return runs


def f(x, nd=0):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def trio(s, keys=("p50", "p95", "p99"), nd=1):
    return " / ".join(f(s.get(k), nd) for k in keys)


def cpu_cell(c):
    if not c:
        return "-"
    return f"{f(c['busy_pct'])} ({f(c['server_pct'])} / {f(c['client_pct'])} / {f(c['other_pct'])})"


def rng(values):
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def render(results, target_ms):
    ls = load_ls()
    runs = results["runs"]
    label = f"ours {{db}}/gunicorn {results['settings']['server']}"
    if results["settings"].get("analyze_after_setup"):
        label += " +ANALYZE"
    if results["settings"].get("sqlite_hold_connection"):
        label = label.replace("{db}/", "{db}{held}/")

    def ours_label(r):
        return label.format(db=r["db"], held=" (+held conn)" if r["db"] == "sqlite" else "")
    sizes = sorted({r["cases"] for r in runs})
    order = []
    for size in sizes:
        for r in runs:
            if r["cases"] == size and "error" not in r:
                order.append(("ours", r))
                for lab, data in ls.get(r["db"], []):
                    if size in data:
                        order.append((lab, {"db": r["db"], "cases": size, "ls": data[size]}))
    out = []
    w = out.append
    w(f"### Sequential next + submit (1 reader, keep-alive; target p99 < {target_ms} ms)\n")
    w("| run | cases | setup s: images + open (LS: import) | next p50/p95/p99 ms | submit p50/p95/p99 ms "
      "| p99 target met | errors | CPU % busy (server / client / other) |")
    w("|---|---:|---:|---:|---:|---|---|---:|")
    for kind, r in order:
        if kind == "ours":
            s, t = r["seq"], r["setup"]["timings_s"]
            met = all((s[k].get("p99") or 1e9) < target_ms for k in ("next_ms", "submit_ms"))
            w(f"| {ours_label(r)} | {r['cases']} | {f(t['images'], 1)} + {f(t['open_labeling'], 1)} | "
              f"{trio(s['next_ms'])} | {trio(s['submit_ms'])} | {'yes' if met else 'NO'} | {s['errors'] or 0} | "
              f"{cpu_cell(s.get('cpu'))} |")
        else:
            x = r["ls"]
            s, im = x["seq"], x.get("import", {})
            w(f"| {kind} | {r['cases']} | {f(im.get('import_total_s'), 1)} | {trio(s['next_ms'])} | "
              f"{trio(s['submit_ms'])} | - | {s['errors'] or 0} | - |")

    w("\n### Concurrent readers (each thread its own reader, next + submit loop)\n")
    w("| run | cases | clients x iters | wall s | labels/s | next p50/p99 ms | submit p50/p99 ms | HTTP errors "
      "| duplicate hand-outs | DB: cases taken>cap / images >K labels / cases >K readers "
      "| CPU % busy (server / client / other) |")
    w("|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|")
    for kind, r in order:
        if kind == "ours":
            c, d = r["conc"], r["check"]["db"]
            w(f"| {ours_label(r)} | {r['cases']} | {c['threads']}x{c['iters_per_thread']} | "
              f"{f(c['wall_s'], 1)} | {f(c['labels_per_s'], 1)} | {trio(c['next_ms'], ('p50', 'p99'))} | "
              f"{trio(c['submit_ms'], ('p50', 'p99'))} | {c['errors'] or 0} | {c['duplicate_handouts']} | "
              f"{d['cases_taken_over_capacity']} / {d['images_more_than_k_labels']} / "
              f"{d['cases_more_than_k_readers']} | {cpu_cell(c.get('cpu'))} |")
        else:
            c = r["ls"]["conc"]
            locked = (c.get("server_log") or {}).get("db_locked_exceptions")
            err = c["errors"] or 0
            if locked:
                err = f"{err} (server db-locked retries: {locked})"
            w(f"| {kind} | {r['cases']} | {c['threads']}x{c['iters_per_thread']} | {f(c['wall_s'], 1)} | "
              f"{f(c['annotations_per_s'], 1)} | {trio(c['next_ms'], ('p50', 'p99'))} | "
              f"{trio(c['submit_ms'], ('p50', 'p99'))} | {err} | {c['duplicate_handouts']} | - | - |")

    w("\n### SQL statements and in-process time per call (probe account, same database, before HTTP)\n")
    w("Statements = data statements (BEGIN/COMMIT/SAVEPOINT/RELEASE counted separately in the JSON); "
      "service = annotation.assignment function alone; view = whole Django request via django.test.Client "
      "(session + auth middleware included); HTTP = client-side p50 of the sequential phase; HTTP floor = "
      "client-side p50 of GET of a static file served by WhiteNoise through the same gunicorn (no view, no DB).\n")
    w("| run | cases | next stmts: service / view | submit stmts: service / view | next p50 ms: "
      "service / view / HTTP | submit p50 ms: service / view / HTTP | HTTP floor p50 ms | new DB connection ms |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        if "error" in r or "probe" not in r:
            continue
        pr = r["probe"]
        sv, vw = pr["service"], pr["view"]
        w(f"| ours {r['db']} | {r['cases']} | {rng(sv['next_queries'])} / {rng(vw['next_queries'])} | "
          f"{rng(sv['submit_queries'])} / {rng(vw['submit_queries'])} | "
          f"{f(sv['next_ms']['p50'], 2)} / {f(vw['next_ms']['p50'], 2)} / {f(r['seq']['next_ms'].get('p50'), 2)} | "
          f"{f(sv['submit_ms']['p50'], 2)} / {f(vw['submit_ms']['p50'], 2)} / "
          f"{f(r['seq']['submit_ms'].get('p50'), 2)} | {f((r.get('http_floor') or {}).get('ms', {}).get('p50'), 2)} | "
          f"{f(pr['new_connection_ms'].get('p50'), 2)} (CONN_MAX_AGE={pr.get('conn_max_age')}) |")

    w("\n### Setup and storage\n")
    w("| run | cases | migrate s | users + memberships s | images bulk_create s | round_open_labeling s "
      "| 9 logins s | server RSS start -> end MB | DB size MB |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        if "error" in r:
            w(f"| ours {r['db']} | {r['cases']} | FAILED: {r['error'][:200]} | | | | | | |")
            continue
        t = r["setup"]["timings_s"]
        w(f"| ours {r['db']} | {r['cases']} | {f(r['migrate_s'], 1)} | {f(t['users'], 1)} | {f(t['images'], 1)} | "
          f"{f(t['open_labeling'], 1)} | {f(r.get('login_s'), 1)} | {f(r.get('rss_start_mb'))} -> "
          f"{f(r.get('rss_end_mb'))} | {f(r.get('db_file_mb'), 1)} |")
    return "\n".join(out) + "\n"


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
    try:
        for db in dbs:
            for size in sizes:
                log(f"== {db} {size}")
                t0 = time.perf_counter()
                try:
                    r = run_one(args, db, size, tmp_root, passwords)
                except Exception as exc:  # record and go on with the next size
                    log(f"{db}/{size} FAILED: {exc}")
                    r = {"db": db, "cases": size, "error": str(exc)[-3000:]}
                r["total_s"] = round(time.perf_counter() - t0, 1)
                results["runs"].append(r)
                with open(args.out, "w") as fh:
                    json.dump(results, fh, indent=1)
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp_root, ignore_errors=True)
    md = render(results, args.target_ms)
    results["markdown"] = md
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    with open(md_path, "w") as fh:
        fh.write(f"<!-- generated by bench/portal.py on {results['date']} -->\n\n" + md)
    print(md)
    log(f"wrote {args.out} and {md_path}")


# ============================================================================ child processes (Django)
def child_main(mode, spec_path):
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    with open(spec_path) as fh:
        spec = json.load(fh)
    out = {"setup": child_setup, "probe": child_probe, "check": child_check}[mode](spec)
    print(CHILD_MARK + json.dumps(out), flush=True)


def child_setup(spec):
    from django.contrib.auth import get_user_model

    from annotation.models import Image, ReadingCase, Role
    from annotation.rounds.services import round_create, round_open_labeling
    from annotation.studies.services import membership_add, study_create

    User = get_user_model()
    t = {}
    t0 = time.perf_counter()
    study = study_create(name="bench", title="Bench study", task_kinds=["realism"], readers_per_image=1)
    warm = study_create(name="bench-warmup", title="Bench warm-up", task_kinds=["realism"],
                                 readers_per_image=1)
    users = [User.objects.create_user(username=f"bench-r{i}", password=pw) for i, pw in enumerate(spec["passwords"])]
    users.append(User.objects.create_user(username=PROBE_USER, password=uuid.uuid4().hex))
    for u in users:
        membership_add(study=study, user=u, role=Role.READER)
        membership_add(study=warm, user=u, role=Role.READER)
    t["users"] = round(time.perf_counter() - t0, 2)

    def bulk_round(st, n):
        rnd = round_create(study=st)
        t1 = time.perf_counter()
        Image.objects.bulk_create(
            [Image(study=st, round=rnd, source="real" if i % 2 else "synthetic", storage_key=f"k{i}",
                   display_key=f"d{i}", sha256=f"{rnd.pk}-{i}", width=64, height=64) for i in range(n)],
            batch_size=5000,
        )
        t2 = time.perf_counter()
        rnd = round_open_labeling(round=rnd)
        return rnd, t2 - t1, time.perf_counter() - t2

    wrnd, _, _ = bulk_round(warm, spec["warmup_size"])
    rnd, t_img, t_open = bulk_round(study, spec["size"])
    t["images"], t["open_labeling"] = round(t_img, 2), round(t_open, 2)
    if spec.get("analyze"):
        from django.db import connection

        t1 = time.perf_counter()
        with connection.cursor() as c:
            c.execute("ANALYZE")
        t["analyze"] = round(time.perf_counter() - t1, 2)
    t["total"] = round(time.perf_counter() - t0, 2)
    return {"study": study.pk, "study_title": study.title, "round": rnd.pk, "warmup_round": wrnd.pk,
            "warmup_title": warm.title, "pools": rnd.pools, "cases": ReadingCase.objects.filter(round=rnd).count(),
            "timings_s": t}


def _split(queries):
    sql = [q["sql"] for q in queries]
    tx = [s for s in sql if s.lstrip().upper().startswith(TX_CONTROL)]
    return len(sql) - len(tx), len(tx), sql


def child_probe(spec):
    """Statements and in-process time per call; the probe's work is undone afterwards (checked)."""
    import cProfile
    import io
    import pstats

    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.db.models import F, Sum
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Label, ReaderQueue, ReadingCase, ReadingTask, Round
    from annotation.reading.assignment import label_submit, queue_for_reader, tasks_next_for_reader

    n = spec["n"]
    user = get_user_model().objects.get(username=PROBE_USER)
    rnd = Round.objects.get(pk=spec["round"])
    queue = queue_for_reader(round=rnd, reader=user)
    out = {"n": n}

    # --- service functions -------------------------------------------------------------------------------------
    nq, sq, ntx, stx, nt, st, sample = [], [], [], [], [], [], {}
    for i in range(n):
        with CaptureQueriesContext(connection) as cq:
            task = tasks_next_for_reader(queue=queue)
        data, tx, sql = _split(cq.captured_queries)
        nq.append(data), ntx.append(tx)
        if i == 1:
            sample["next"] = sql
        with CaptureQueriesContext(connection) as cq:
            label_submit(reader=user, task_token=task.token, answer=ANSWER, submission_id=uuid.uuid4(),
                         time_spent_ms=1000)
        data, tx, sql = _split(cq.captured_queries)
        sq.append(data), stx.append(tx)
        if i == 1:
            sample["submit"] = sql
    for _ in range(n):  # timing without the capture overhead
        t0 = time.perf_counter()
        task = tasks_next_for_reader(queue=queue)
        nt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        label_submit(reader=user, task_token=task.token, answer=ANSWER, submission_id=uuid.uuid4(),
                     time_spent_ms=1000)
        st.append(time.perf_counter() - t0)
    out["service"] = {"next_queries": nq, "next_tx_statements": ntx, "submit_queries": sq,
                      "submit_tx_statements": stx, "next_ms": summary_ms(nt), "submit_ms": summary_ms(st),
                      "sample_sql": sample}

    # --- whole views through the test client (session + auth middleware, JSON encoding) -------------------------
    client = Client()
    client.force_login(user)

    def view_pair():
        t0 = time.perf_counter()
        resp = client.get("/portal/api/next", {"queue": queue.token})
        t1 = time.perf_counter()
        assert resp.status_code == 200 and not resp.json().get("done"), resp.content[:300]
        token = resp.json()["task"]
        t2 = time.perf_counter()
        resp = client.post("/portal/api/submit", data=json.dumps({
            "task": token, "answer": ANSWER, "submission_id": str(uuid.uuid4()), "time_spent_ms": 1000}),
            content_type="application/json")
        t3 = time.perf_counter()
        assert resp.status_code == 200, resp.content[:300]
        return t1 - t0, t3 - t2

    nq, sq, nt, st, sample = [], [], [], [], {}
    for i in range(n):
        with CaptureQueriesContext(connection) as cq:
            resp = client.get("/portal/api/next", {"queue": queue.token})
        data, _, sql = _split(cq.captured_queries)
        nq.append(data)
        if i == 1:
            sample["next"] = sql
        token = resp.json()["task"]
        with CaptureQueriesContext(connection) as cq:
            client.post("/portal/api/submit", data=json.dumps({
                "task": token, "answer": ANSWER, "submission_id": str(uuid.uuid4()), "time_spent_ms": 1000}),
                content_type="application/json")
        data, _, sql = _split(cq.captured_queries)
        sq.append(data)
        if i == 1:
            sample["submit"] = sql
    for _ in range(n):
        a, b = view_pair()
        nt.append(a), st.append(b)
    out["view"] = {"next_queries": nq, "submit_queries": sq, "next_ms": summary_ms(nt),
                   "submit_ms": summary_ms(st), "sample_sql": sample}

    # --- new-connection cost (SQLite runs with CONN_MAX_AGE=0: one new connection per request) -------------------
    ct = []
    for _ in range(min(n, 20)):
        connection.close()
        t0 = time.perf_counter()
        connection.ensure_connection()
        ct.append(time.perf_counter() - t0)
    out["new_connection_ms"] = summary_ms(ct)
    out["conn_max_age"] = connection.settings_dict.get("CONN_MAX_AGE")

    if spec.get("profile"):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            view_pair()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(45)
        out["profile_view_cumulative"] = buf.getvalue()[-12000:]
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        out["profile_view_tottime"] = buf.getvalue()[-9000:]

    # --- undo the probe's work so the HTTP phases see an untouched round -----------------------------------------
    with transaction.atomic():
        tasks = list(ReadingTask.objects.filter(round=rnd, reader=user).values("pk", "case_id", "status"))
        pks = [t["pk"] for t in tasks]
        Label.objects.filter(task_id__in=pks).delete()
        ReadingTask.objects.filter(pk__in=pks).delete()
        taken = Counter(t["case_id"] for t in tasks if t["status"] != "expired")
        done = Counter(t["case_id"] for t in tasks if t["status"] == "done")
        for case_id, k in taken.items():
            ReadingCase.objects.filter(pk=case_id).update(taken=F("taken") - k, done=F("done") - done[case_id])
        ReaderQueue.objects.filter(round=rnd, reader=user).delete()
    agg = ReadingCase.objects.filter(round=rnd).aggregate(t=Sum("taken"), d=Sum("done"))
    out["undone_tasks"] = len(tasks)
    out["restored"] = (agg["t"] or 0) == 0 and (agg["d"] or 0) == 0 and not ReadingTask.objects.filter(
        round=rnd).exists()
    if not out["restored"]:
        raise RuntimeError(f"probe clean-up incomplete: {agg}")
    return out


def child_check(spec):
    from django.db.models import Count, F, Sum

    from annotation.models import Label, ReadingCase, ReadingTask, Round

    rnd = Round.objects.select_related("study").get(pk=spec["round"])
    k = rnd.study.readers_per_image
    cases = ReadingCase.objects.filter(round=rnd)
    live = ReadingTask.objects.filter(round=rnd).exclude(status="expired")
    labels = Label.objects.filter(task__round=rnd)
    agg = cases.aggregate(taken=Sum("taken"), done=Sum("done"))
    db = {
        "k": k,
        "cases": cases.count(),
        "cases_taken_over_capacity": cases.filter(taken__gt=F("capacity")).count(),
        "cases_done_over_capacity": cases.filter(done__gt=F("capacity")).count(),
        "cases_more_than_k_readers": live.values("case_id").annotate(r=Count("reader_id", distinct=True))
        .filter(r__gt=k).count(),
        "images_more_than_k_labels": labels.values("task__image_id").annotate(c=Count("id")).filter(c__gt=k).count(),
        "tasks": ReadingTask.objects.filter(round=rnd).count(),
        "tasks_done": ReadingTask.objects.filter(round=rnd, status="done").count(),
        "tasks_claimed_open": ReadingTask.objects.filter(round=rnd, status="claimed").count(),
        "labels": labels.count(),
        "sum_taken": agg["taken"] or 0,
        "sum_done": agg["done"] or 0,
    }
    # hand-outs seen by the HTTP clients, resolved to cases/images
    token_reader = {tok: user for user, toks in spec["handed"].items() for tok in toks}
    toks = list(token_reader)
    rows = []
    for i in range(0, len(toks), 2000):
        rows += list(ReadingTask.objects.filter(token__in=toks[i:i + 2000])
                     .values_list("token", "case_id", "image_id", "reader__username"))
    by_image, by_image_conc = defaultdict(set), defaultdict(set)
    conc = set(spec.get("conc_readers") or [])
    wrong_owner = 0
    for tok, _case_id, image_id, owner in rows:
        if owner != token_reader[tok]:
            wrong_owner += 1
        by_image[image_id].add(token_reader[tok])
        if token_reader[tok] in conc:
            by_image_conc[image_id].add(token_reader[tok])
    responses = {
        "tokens_handed": len(toks),
        "tokens_resolved": len(rows),
        "tokens_not_found": len(toks) - len(rows),
        "token_owner_mismatch": wrong_owner,
        "images_to_2plus_readers": sum(1 for v in by_image.values() if len(v) > 1),
        "conc_images_to_2plus_readers": sum(1 for v in by_image_conc.values() if len(v) > 1),
    }
    return {"db": db, "responses": responses}


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "_child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()
