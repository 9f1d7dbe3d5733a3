"""The embedded default: a real worker process over kombu's SQLAlchemy transport on a SQLite file, no servers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_worker_runs_a_task_on_the_embedded_broker(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                                                            "CELERY_RESULT_BACKEND")}
    env.update(CXR_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=ROOT, timeout=120)
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu",
                               "--pool=solo", "--loglevel=INFO"], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        code = ("from config.celery import app; "
                "print('RESULT', app.send_task('annotation.tasks.claims_expire_stale').get(timeout=90))")
        done = subprocess.run([*manage, "shell", "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert "RESULT 0" in done.stdout, done.stderr[-2000:] + (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
