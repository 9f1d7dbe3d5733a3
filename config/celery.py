"""The Celery app. Its embedded default broker and result store are SQLite files under CXR_VAR_DIR, whose folder
is made when Celery first reads its configuration (SQLite creates a file but not its folder, and the settings write
nothing when they load)."""

import os
from pathlib import Path

from celery import Celery

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
