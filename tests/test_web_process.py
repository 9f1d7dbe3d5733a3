"""How processes start from the settings: web processes stay light (loading every URL's views must not import torch
or diffusers; GPU workers do), a process without a secret key and with DEBUG off refuses to start with a sentence,
and loading the settings writes nothing: the SQLite database and the embedded broker make their folder on first
use."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with only PATH, the settings module and `env` in its environment."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"DJANGO_SETTINGS_MODULE": "config.settings", "PATH": "/usr/bin:/bin", **env})


def test_the_web_process_does_not_load_torch():
    code = ("import sys, django; django.setup(); import config.urls, config.wsgi; "
            "from django.urls import get_resolver; get_resolver().url_patterns; "
            "import annotation.api.urls, annotation.dashboard.views, annotation.reading.views; "
            "print(sorted(m for m in ('torch', 'diffusers', 'timm') if m in sys.modules))")
    done = python(code, DJANGO_SECRET_KEY=os.environ["DJANGO_SECRET_KEY"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("key", [None, ""], ids=["unset", "exported-but-empty"])
def test_without_a_secret_key_and_with_debug_off_a_process_refuses_to_start_with_a_sentence(key, tmp_path):
    env = {"DJANGO_DEBUG": "0", "CXR_VAR_DIR": str(tmp_path)}
    if key is not None:
        env["DJANGO_SECRET_KEY"] = key
    done = python("import django; django.setup()", **env)
    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY is not set and DEBUG is off: set DJANGO_SECRET_KEY to a long random value" in done.stderr
    assert "secrets.token_urlsafe(50)" in done.stderr
    assert python("import django; django.setup()", DJANGO_DEBUG="1", CXR_VAR_DIR=str(tmp_path)).returncode == 0
    # a command says it in one sentence, without a traceback
    command = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, env={"PATH": "/usr/bin:/bin", **env})
    assert command.returncode == 2 and "Traceback" not in command.stderr
    assert command.stderr.startswith("DJANGO_SECRET_KEY is not set and DEBUG is off")


def test_loading_the_settings_writes_nothing(tmp_path):
    var = tmp_path / "var"
    code = ("import django; django.setup(); from django.conf import settings; "
            "print(settings.VAR_DIR, settings.DATABASES['default']['NAME'], settings.CELERY_BROKER_URL)")
    done = python(code, DJANGO_SECRET_KEY="k" * 50, CXR_VAR_DIR=str(var))
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(var) in done.stdout
    assert not var.exists()


def test_the_database_and_the_embedded_broker_make_their_folder_on_first_use(tmp_path):
    db_var, broker_var = tmp_path / "db" / "var", tmp_path / "broker" / "var"
    migrate = python("import sys; from django.core.management import execute_from_command_line; "
                     "execute_from_command_line(['manage.py', 'migrate', '--noinput', '-v', '0'])",
                     DJANGO_SECRET_KEY="k" * 50, CXR_VAR_DIR=str(db_var))
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    assert (db_var / "db.sqlite3").is_file()
    # and the embedded broker's task queues exist before any web process sends its first message (were made by the
    # first message, under a per-process lock: web processes racing lost one)
    import sqlite3

    with sqlite3.connect(db_var / "broker.sqlite3") as broker:
        assert {n for (n,) in broker.execute("SELECT name FROM kombu_queue")} >= {"default", "gpu"}
    # the web's side of the broker: a task sent, with the database elsewhere (a broker folder nothing else made)
    send = python("import django; django.setup(); from config.celery import app; "
                  "app.send_task('annotation.tasks.claims_expire_stale')",
                  DJANGO_SECRET_KEY="k" * 50, CXR_VAR_DIR=str(broker_var),
                  DATABASE_URL=f"sqlite:///{db_var / 'db.sqlite3'}")
    assert send.returncode == 0, send.stderr[-2000:]
    assert (broker_var / "broker.sqlite3").is_file()
