"""The environment of a test run, set before pytest-django loads the settings (a plugin named in pyproject.toml's
`addopts`: conftest files load after the settings, too late).

The settings refuse to start without DJANGO_SECRET_KEY when DEBUG is off, as in production. A plain `pytest` gets a
key made for the run, here in os.environ, so the processes the tests start (manage.py, gunicorn, Celery workers)
share it; `scripts/test.sh` and CI may pass their own."""

from __future__ import annotations

import os
import secrets

os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
