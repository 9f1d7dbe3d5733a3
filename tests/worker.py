"""The round tests' Celery worker process over Redis (the `live_worker` fixture in tests/conftest.py starts it once
per session; the test that kills it restarts it), on the test database and a media folder the test process shares;
and `wait_for`, how a test waits on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class WorkerHandle:
    def __init__(self, env: dict, root: Path) -> None:
        self.env, self.root, self.proc, self.starts = env, root, None, 0

    @property
    def media_root(self) -> str:
        return self.env["MEDIA_ROOT"]

    def start(self) -> None:
        """A fresh worker process with its own local cache (what a new machine would have)."""
        from config.celery import app

        self.starts += 1
        var = self.root / f"worker-{self.starts}"
        var.mkdir(parents=True, exist_ok=True)
        self.log_path = var / "worker.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu", "--pool=solo",
             "--concurrency=1", "-n", f"rounds-{os.getpid()}-{self.starts}@%h", "--without-gossip",
             "--without-mingle", "--loglevel=INFO"],
            env={**self.env, "CXR_VAR_DIR": str(var)}, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        name = f"rounds-{os.getpid()}-{self.starts}@"
        while not any(name in next(iter(reply)) for reply in app.control.ping(timeout=1.0) or []):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Celery worker did not start:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.proc else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no message returned to the broker."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_for(predicate, *, timeout: float, worker: WorkerHandle | None = None, every: float = 0.2,
             reconcile: bool = False):
    """Poll until `predicate()` is truthy (returning it); with `reconcile`, run the reconciler at each poll."""
    from annotation.rounds.driver import rounds_reconcile

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reconcile:
            rounds_reconcile(timeout_s=3)
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s" + (f"; worker log:\n{worker.log()}" if worker else ""))
