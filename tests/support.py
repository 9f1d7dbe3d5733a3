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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def orthanc_start(workdir) -> tuple[str, object]:
    """A real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`, installed by scripts/test.sh) on 127.0.0.1 and a
    free port, storage under `workdir`, its DICOM listener off (fed over STOW-RS). Returns (DICOMweb root, process);
    under CI=true a missing Orthanc fails the test, elsewhere it skips."""
    import json
    import shutil
    import subprocess
    import time
    import urllib.request
    from pathlib import Path

    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    plugin = next((p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                               "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so") if Path(p).exists()), None)
    if binary is None or plugin is None:
        if CI:
            pytest.fail("Orthanc with its DICOMweb plugin is required under CI=true (scripts/test.sh installs it)")
        pytest.skip("needs Debian's orthanc and orthanc-dicomweb (scripts/test.sh installs them)")
    port = _free_port()
    workdir = Path(workdir)
    config = {
        "Name": "cxr-test-pacs", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "Plugins": [plugin], "HttpCompressionEnabled": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([binary, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}/dicom-web"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/system", timeout=2):
                return root, proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"Orthanc did not start: {(workdir / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)
