"""Faults: the broker restarts empty in the middle of a round; the database connection drops during a submit."""

import socket
import subprocess
import time
import uuid

import pytest

from annotation.models import Image, Label, Round
from annotation.rounds.driver import rounds_reconcile
from annotation.rounds.services import round_launch
from inference.models import ModelVersion
from tests.annotation.rounds.preset import TINY_ROUND, tiny_study
from tests.support import require_postgres
from tests.worker import WorkerHandle

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A throw-away redis-server on a free port, without persistence: a restart loses every message."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _reset_connections(app) -> None:
    """Forget the app's broker connection and producer pools (and kombu's shared ones), so the next send connects to
    the current broker_url."""
    import kombu.pools

    app._pool = None
    app.amqp._producer_pool = None
    kombu.pools.reset()


@pytest.fixture
def own_redis():
    redis = OwnRedis()
    redis.start()
    yield redis
    redis.stop()


def test_a_broker_that_restarts_empty_mid_round_loses_nothing(own_redis, tmp_path, settings):
    from django.db import connection

    from config.celery import app

    require_postgres()
    db = connection.settings_dict
    env = {"DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
           "REDIS_URL": own_redis.url, "CELERY_BROKER_URL": own_redis.url, "CELERY_RESULT_BACKEND": own_redis.url,
           "MEDIA_ROOT": str(tmp_path / "media"), "CXR_MODELS_DIR": str(settings.CXR_MODELS_DIR),
           "CELERY_TASK_ALWAYS_EAGER": "false"}
    import os

    worker = WorkerHandle({**os.environ, **env}, tmp_path)
    settings.MEDIA_ROOT = env["MEDIA_ROOT"]
    previous = (app.conf.broker_url, app.conf.result_backend)
    app.conf.broker_url = app.conf.result_backend = own_redis.url
    app.conf.task_always_eager = False
    _reset_connections(app)
    try:
        worker.start()
        study = tiny_study("broker-fault")
        rnd = round_launch(study=study, config={**TINY_ROUND, "reward": {"steps": 40}})
        deadline = time.monotonic() + 180
        while Round.objects.get(pk=rnd.pk).status not in ("labeling", "training_reward", "finetuning"):
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        own_redis.stop()  # every queued message, result and unacked delivery is gone
        time.sleep(3)
        own_redis.start()  # the test process's pooled connections reconnect on their own (kombu retries publish)
        deadline = time.monotonic() + 300
        while (status := Round.objects.get(pk=rnd.pk).status) not in ("done", "failed"):
            assert time.monotonic() < deadline, f"stuck in {status}\n{worker.log()}"
            rounds_reconcile(timeout_s=3)  # what beat does every CXR_RECONCILE_EVERY_S
            time.sleep(1)
        rnd.refresh_from_db()
        assert rnd.status == "done", rnd.stage_error
        assert Image.objects.filter(round=rnd, source="synthetic").count() == 4
        assert Label.objects.filter(task__round=rnd).count() == 32  # every answer, none twice
        assert ModelVersion.objects.filter(produced_by=f"training.run:{rnd.finetune_run_id}").count() == 1
    finally:
        worker.stop()
        app.conf.broker_url, app.conf.result_backend = previous
        app.conf.changes.pop("task_always_eager", None)
        _reset_connections(app)


def test_a_submit_whose_database_connection_drops_errors_and_its_retry_is_stored_once(make_study, stored_round,
                                                                                      add_reader, monkeypatch):
    from django.db import connection
    from django.test import Client

    from annotation.models import Label as LabelModel
    from annotation.reading import assignment

    require_postgres()  # a database server going away; SQLite's in-memory test database would go with the connection
    study = make_study(readers_per_image=1, task_kinds=["realism"])
    rnd = stored_round(study, real=2, synthetic=2)
    reader = add_reader(study, "dropped")
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    task = assignment.tasks_next_for_reader(queue=queue)
    client = Client(raise_request_exception=False)
    client.force_login(reader)
    body = {"task": task.token, "answer": {"call": "real", "confidence": 3}, "submission_id": str(uuid.uuid4())}
    real_create = LabelModel.objects.create

    def drop_then_create(**kwargs):
        connection.connection.close()  # the server went away under the open transaction
        return real_create(**kwargs)

    monkeypatch.setattr(LabelModel.objects, "create", drop_then_create)
    failed = client.post("/portal/api/submit", body, content_type="application/json")
    assert failed.status_code >= 500
    monkeypatch.undo()
    connection.close()  # the next request gets a fresh connection, as a new web request would
    assert LabelModel.objects.filter(task=task).count() == 0  # nothing half-stored
    first = client.post("/portal/api/submit", body, content_type="application/json")
    again = client.post("/portal/api/submit", body, content_type="application/json")  # the client retries again
    assert first.status_code == again.status_code == 200
    assert LabelModel.objects.filter(task=task).count() == 1
