"""Processes bench/portal.py starts: the PostgreSQL database, the child processes with Django set up (data, probe,
check; see child.py), and gunicorn."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.processes import ROOT as REPO
from common.processes import free_port

VENV_BIN = REPO / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
GUNICORN = str(VENV_BIN / "gunicorn")
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
PG_DB = "bench_portal"
CHILD_MARK = "@@BENCH-JSON@@"
PORTAL = REPO / "bench" / "portal.py"  # the children run `portal.py _child MODE SPEC`


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
    """Run bench/portal.py (`_child MODE SPEC`) in a child process with django.setup(); returns the JSON it prints
    last."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=env["CXR_VAR_DIR"]) as f:
        json.dump(spec, f)
        spec_path = f.name
    t0 = time.perf_counter()
    p = subprocess.run([PY, str(PORTAL), "_child", mode, spec_path], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"child {mode} failed rc={p.returncode}:\n{p.stderr[-4000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    if not lines:
        raise RuntimeError(f"child {mode} printed no result:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    out = json.loads(lines[-1][len(CHILD_MARK):])
    out["child_wall_s"] = round(time.perf_counter() - t0, 2)
    return out



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

