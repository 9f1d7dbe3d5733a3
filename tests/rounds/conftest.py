"""One Celery worker process over Redis for the round tests (started once per session, restarted by the test
that kills it), on the test database and a media folder the test process shares."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import require_postgres, require_redis


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


@pytest.fixture(scope="session")
def _round_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    from django.conf import settings
    from django.db import connection

    from config.celery import app

    redis_url = require_redis()
    require_postgres()
    root = tmp_path_factory.mktemp("round-worker")
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/"
                                         f"{db['NAME']}",
           "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url,
           "MEDIA_ROOT": str(root / "media"), "CXR_MODELS_DIR": str(settings.CXR_MODELS_DIR),
           "CELERY_TASK_ALWAYS_EAGER": "false"}
    previous = (app.conf.broker_url, app.conf.result_backend)
    app.conf.broker_url = app.conf.result_backend = redis_url
    with app.connection_for_write() as conn:  # messages a killed earlier run left behind must not leak in
        for queue in ("default", "gpu"):
            conn.default_channel.queue_purge(queue)
    handle = WorkerHandle(env, root)
    handle.start()
    yield handle
    handle.stop()
    app.conf.broker_url, app.conf.result_backend = previous


@pytest.fixture
def live_worker(_round_worker, transactional_db, settings):
    """The shared worker, running; the test process sends real messages to it and shares its media folder."""
    from config.celery import app

    if not _round_worker.alive():
        _round_worker.start()
    settings.MEDIA_ROOT = _round_worker.media_root
    settings.CELERY_TASK_ALWAYS_EAGER = False
    app.conf.task_always_eager = False
    yield _round_worker
    app.conf.changes.pop("task_always_eager", None)  # back to reading the Django setting


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
