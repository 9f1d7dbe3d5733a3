"""The environment of a test run, set before pytest-django loads the settings (a plugin named in pyproject.toml's
`addopts`: conftest files load after the settings, too late).

The settings refuse to start without DJANGO_SECRET_KEY when DEBUG is off, as in production. A plain `pytest` gets a
fixed test-only key (keyed hashes such as patient pseudonyms stay the same from run to run), here in os.environ, so
the processes the tests start (manage.py, gunicorn, Celery workers) share it; CI or a caller may pass their own."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key-never-deployed-0123456789abcdefghijklmnop")
