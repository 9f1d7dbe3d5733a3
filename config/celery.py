"""The Celery app. Its embedded default broker and result store are SQLite files under CXR_VAR_DIR, whose folder
is made when Celery first reads its configuration (SQLite creates a file but not its folder, and the settings write
nothing when they load)."""

import os
from pathlib import Path

from celery import Celery
from django.db.models.signals import post_migrate

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("cxr")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def sqlite_file(url: str | None) -> Path | None:
    """The file of a SQLAlchemy SQLite URL (`sqla+sqlite:///…` broker, `db+sqlite:///…` results), else None."""
    _, sqlite, path = (url or "").partition("sqlite:///")
    path = path.split("?", 1)[0]
    return Path(path) if sqlite and path and path != ":memory:" else None


@app.on_after_configure.connect
def _sqlite_folders(sender: Celery, **kwargs) -> None:
    for url in (sender.conf.broker_url, sender.conf.result_backend):
        if (path := sqlite_file(url)) is not None:
            path.parent.mkdir(parents=True, exist_ok=True)


def embedded_queues_declare(app_config=None, **kwargs) -> None:
    """Make the embedded SQLite broker's task queues once, after `migrate` (post_migrate, for the annotation app,
    whose tasks send the web side's messages). kombu's
    SQLAlchemy transport creates a queue's row on its first message under a lock of its own process only, so web
    processes sending their first messages at once race to insert it ("UNIQUE constraint failed: kombu_queue.name")
    and the loser's message is lost. Redis needs nothing made."""
    if getattr(app_config, "label", None) != "annotation" or sqlite_file(app.conf.broker_url) is None:
        return
    names = {app.conf.task_default_queue, *(route["queue"] for route in (app.conf.task_routes or {}).values())}
    with app.connection_for_write() as conn:
        for name in sorted(names):
            conn.default_channel.queue_declare(queue=name)


post_migrate.connect(embedded_queues_declare, dispatch_uid="embedded-broker-queues")
