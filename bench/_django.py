"""Helpers the benchmarks share: run code in a fresh process with Django set up, and pick a free local port."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
