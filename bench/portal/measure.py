"""Measurement helpers of bench/portal.py (no Django): nearest-rank percentiles, CPU of a process tree and of the
machine from /proc, the machine description, and the progress log."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import time

from common.processes import proc_tree

from .server import PY, REPO


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


def cpu_times():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals), idle


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
