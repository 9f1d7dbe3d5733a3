"""The structure the import-linter contracts cannot see: Celery task modules import their services only when a
task runs (the one exception the acyclic contract allows), and the registered task names that routing, beat and
in-flight messages refer to are all still there."""

import ast
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[1]
APPS = ("annotation", "training", "inference")

#: The names in routing, beat and messages that may be in flight: they never change.
REGISTERED = {
    "annotation.tasks.claims_expire_stale", "annotation.tasks.round_report_build", "annotation.tasks.round_advance",
    "annotation.tasks.round_clean", "annotation.tasks.round_evaluate", "annotation.tasks.round_simulate",
    "annotation.tasks.rounds_reconcile", "annotation.tasks.ping", "annotation.tasks.export_job_run",
    "annotation.tasks.webhook_deliver", "annotation.tasks.round_snapshot_freeze",
    "training.tasks.training_run_execute", "inference.tasks.generation_batch_run",
}


@pytest.mark.parametrize("app", APPS)
def test_task_modules_import_their_services_only_inside_the_tasks(app):
    tree = ast.parse((ROOT / app / "tasks.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] in APPS], f"{app}/tasks.py imports the app at module level"


def test_every_registered_task_name_is_discovered_and_routing_and_beat_name_real_tasks():
    from config.celery import app

    app.loader.import_default_modules()
    discovered = {name for name in app.tasks if not name.startswith("celery.")}
    assert REGISTERED <= discovered
    routed = set(settings.CELERY_TASK_ROUTES) | set(settings.CELERY_TASK_ANNOTATIONS)
    beat = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert routed | beat <= discovered
    assert {n for n, r in settings.CELERY_TASK_ROUTES.items() if r["queue"] == "gpu"} == set(settings.CXR_GPU_TASKS)


def test_no_module_is_longer_than_one_sitting():
    """A module you cannot read in one sitting (> 400 lines) is two modules; migrations and tests aside."""
    long = []
    for folder in (*APPS, "config", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            if "migrations" not in path.parts and len(path.read_text().splitlines()) > 400:
                long.append(str(path.relative_to(ROOT)))
    assert long == []


def test_the_web_side_loads_no_torch():
    """A web process (URLs, views, round services, the API) starts without the ML stack: the settings it reads live
    in torch-free modules (`*_config.py`, `inference.services`), and torch loads only on a worker."""
    import os
    import subprocess
    import sys

    code = ("import sys, django; django.setup(); import config.urls, annotation.rounds.services, "
            "annotation.rounds.driver, annotation.dashboard.views, annotation.api.urls, annotation.reading.views; "
            "from django.urls import get_resolver; get_resolver().url_patterns; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"})
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
