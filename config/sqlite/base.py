"""Django's SQLite backend with a fair write lock, the embedded default's database engine.

SQLite lets one writer in at a time. A transaction that finds the write lock taken waits in SQLite's busy handler,
which sleeps in growing steps (up to 100 ms) and re-tries: under eight readers submitting at once a waiter can lose
the race again and again, and the slowest answers took over a second (bench/load.py: p50 25 ms, p99 1.1 s).
Here every transaction first takes an exclusive `flock` on a file beside the database: the kernel queues the waiting
threads and processes (web workers and the Celery worker alike) and wakes the next one the moment the lock is
released, so a write waits for the writes ahead of it and no longer. Reads outside transactions take no lock (WAL
readers never block). In-memory databases (the test database) have nothing to share and take no lock. The wait has
no timeout of its own: a lock is held only for one transaction of a live process, and the kernel drops it when the
process dies (gunicorn's worker timeout, Celery's time limit), so a stuck holder cannot outlive its process.

SQLite creates a missing database file but not its folder; the settings write nothing when they load, so the
first connection makes the folder (CXR_VAR_DIR on a first run).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    _lock_fd: int | None = None
    _locked = False

    def _lock_path(self) -> str | None:
        name = str(self.settings_dict["NAME"])
        if not name or name == ":memory:" or "mode=memory" in name:
            return None
        return f"{name}.writelock"

    def get_new_connection(self, conn_params):
        name = str(conn_params["database"])
        if self._lock_path() is not None and not name.startswith("file:"):  # a file, named by its path
            Path(name).parent.mkdir(parents=True, exist_ok=True)
        return super().get_new_connection(conn_params)

    def _start_transaction_under_autocommit(self):
        path = self._lock_path()
        if path is not None:
            if self._lock_fd is None:
                self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._locked = True
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._unlock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._unlock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._unlock()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
