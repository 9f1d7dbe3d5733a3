"""Helpers shared by tests: whether PostgreSQL and Redis are there, and what to do when they are not."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def uses_postgres() -> bool:
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def require_postgres():
    if not uses_postgres():
        if CI:
            pytest.fail("PostgreSQL is required under CI=true")
        pytest.skip("needs DATABASE_URL pointing at PostgreSQL")


def require_redis() -> str:
    from django.conf import settings

    if settings.REDIS_URL and _reachable(settings.REDIS_URL, 6379):
        return settings.REDIS_URL
    if CI:
        pytest.fail("Redis is required under CI=true")
    pytest.skip("needs REDIS_URL pointing at a running Redis")
