"""Processes the benchmarks start and measure: the secret key they share, run code in a fresh process with Django
set up, pick a free local port, and read a process tree (and its resident memory) from /proc."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def secret_key_for_run() -> str:
    """DJANGO_SECRET_KEY of this run's Django processes: the caller's, else one made for the run (a bench's databases
    live for one run). Kept in os.environ so that every child (manage.py, gunicorn, django_script) signs sessions
    with the same key; the settings refuse to start without one when DEBUG is off."""
    return os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))


def django_script(env: dict, code: str, *argv: str) -> str:
    """Run `code` as a script in a fresh process with Django set up (module scope, so comprehensions work);
    exits with the child's error output when it fails. `sys.argv[1:]` is `argv` inside."""
    prelude = f"import sys, django; sys.path.insert(0, {str(ROOT)!r}); django.setup()\n"
    done = subprocess.run([sys.executable, "-c", prelude + code, *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"bench step failed:\n{done.stderr[-3000:]}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_tree(pid: int) -> list[int]:
    """The process and its live descendants."""
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


def rss_mb(pid: int) -> float:
    """Resident memory (MiB) of a process and its live descendants."""
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
