"""Shared fixtures. Under CI=true the suite runs on PostgreSQL with Redis and refuses to start without them."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.support import CI, _reachable, require_postgres, require_redis
from tests.worker import WorkerHandle


def pytest_sessionstart(session):
    if not CI:
        return
    from django.conf import settings

    problems = []
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        problems.append("CI=true but DATABASE_URL does not point at PostgreSQL")
    elif not _reachable(os.environ.get("DATABASE_URL", ""), 5432):
        problems.append("CI=true but PostgreSQL is not reachable at DATABASE_URL")
    if not settings.REDIS_URL or not _reachable(settings.REDIS_URL, 6379):
        problems.append("CI=true but Redis is not reachable at REDIS_URL")
    if problems:
        pytest.exit("; ".join(problems), returncode=3)


@pytest.fixture(autouse=True, scope="session")
def _no_persistent_connections(django_db_setup, django_db_blocker):
    """Threads the tests start (live server, simulated readers) must not hold connections past the session, or the
    test database cannot be dropped: don't persist them, and end any stragglers before the drop."""
    from django.db import connections

    for conn in connections.all():
        conn.settings_dict["CONN_MAX_AGE"] = 0
    yield
    conn = connections["default"]
    if conn.vendor == "postgresql":
        with django_db_blocker.unblock(), conn.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    from django.core.cache import cache

    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.CXR_CACHE_DIR = str(tmp_path / "cache")
    cache.clear()  # under CI the cache is Redis: login-throttle counters must not leak between tests or runs
    settings.CELERY_TASK_ALWAYS_EAGER = True
    yield
    # An eager task sets Celery's process-global "a join would block" flag while it runs and restores it after;
    # eager tasks on several threads at once (readers submitting in parallel, each last answer driving its round)
    # can restore it in the wrong order and leave it set, which would refuse every later result.get().
    from celery.result import _set_task_join_will_block

    _set_task_join_will_block(False)


@pytest.fixture
def make_user(django_user_model):
    counter = iter(range(1, 10_000))

    def make(username: str | None = None, **extra):
        name = username or f"user{next(counter)}"
        return django_user_model.objects.create_user(username=name, password="pw-" + name, **extra)

    return make


@pytest.fixture
def make_study(make_user):
    from annotation.studies.services import study_create

    def make(name: str = "cxr", **kw):
        kw.setdefault("display_size", 64)
        return study_create(name=name, title=f"Study {name}", **kw)

    return make


@pytest.fixture
def add_reader(make_user):
    from annotation.models import Role
    from annotation.studies.services import membership_add

    def add(study, username: str | None = None):
        user = make_user(username)
        membership_add(study=study, user=user, role=Role.READER)
        return user

    return add


@pytest.fixture
def add_admin(make_user):
    """A new user (`make_user`'s, `extra` its fields) made an admin of `study`."""
    from annotation.models import Role
    from annotation.studies.services import membership_add

    def add(study, username: str | None = None, **extra):
        user = make_user(username, **extra)
        membership_add(study=study, user=user, role=Role.ADMIN)
        return user

    return add


def random_pixels(seed: int, shape=(48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture
def stored_round():
    """A round with real and synthetic images stored through the real path, opened for labeling."""
    from annotation.images.storage import image_store
    from annotation.rounds.services import round_create, round_open_labeling

    def make(study, *, real: int = 10, synthetic: int = 10, catch: int = 0, open_: bool = True, shape=None):
        rnd = round_create(study=study)
        seed = rnd.pk * 100_000
        for i in range(real):
            image_store(study=study, round=rnd, source="real", pixels=random_pixels(seed + i, shape or (60, 48)),
                        prompt=f"report {i}")
        for i in range(synthetic):
            image_store(study=study, round=rnd, source="synthetic",
                        pixels=random_pixels(seed + 50_000 + i, (64, 64)), prompt=f"prompt {i // 2}", seed=i,
                        generator="test")
        for i in range(catch):
            image_store(study=study, round=rnd, source="synthetic", is_catch=True,
                        pixels=np.zeros((64, 64), np.float32) + (i + 1) / (catch + 2))
        return round_open_labeling(round=rnd) if open_ else rnd

    return make


@pytest.fixture
def bulk_round():
    """A labeling round with `n` cases per kind, rows only (no files): for size-independence checks."""
    from annotation.models import Image
    from annotation.rounds.services import round_create, round_open_labeling

    def make(study, n: int):
        rnd = round_create(study=study)
        Image.objects.bulk_create(
            [Image(study=study, round=rnd, source="real" if i % 2 else "synthetic", storage_key=f"k{i}",
                   display_key=f"d{i}", sha256=f"{rnd.pk}-{i}", width=64, height=64) for i in range(n)],
            batch_size=5000,
        )
        return round_open_labeling(round=rnd)

    return make


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny random SD pipeline on disk, built once per test session through the production builder."""
    from inference.ml.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "sd")


@pytest.fixture
def celery_worker_process(transactional_db, tmp_path, settings):
    """A real Celery worker process over Redis, on the test database; yields the app to send tasks with."""
    import subprocess
    import sys
    import time

    from django.db import connection

    from config.celery import app

    redis_url = require_redis()
    require_postgres()
    db = connection.settings_dict
    database_url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
           "CELERY_RESULT_BACKEND": redis_url, "MEDIA_ROOT": settings.MEDIA_ROOT, "CXR_VAR_DIR": str(tmp_path)}
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu", "--pool=solo",
         "--concurrency=1", "-n", f"test-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
         "--loglevel=INFO"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    previous = (app.conf.broker_url, app.conf.result_backend)
    app.conf.broker_url = app.conf.result_backend = redis_url
    app.conf.task_always_eager = False
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=1.0):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Celery worker did not start:\n" + (tmp_path / "worker.log").read_text()[-3000:])
        yield app
    finally:
        app.conf.broker_url, app.conf.result_backend = previous
        app.conf.changes.pop("task_always_eager", None)  # back to reading the Django setting
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()


@pytest.fixture(scope="session")
def _round_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """One Celery worker process over Redis for the round tests (rounds, simulation, the browser walkthrough)."""
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


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc PACS with DICOMweb, started once per run: its DICOMweb root URL."""
    from tests.support import orthanc_start

    root, proc = orthanc_start(tmp_path_factory.mktemp("orthanc"))
    yield root
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except Exception:
        proc.kill()
