"""Claims under real concurrency: threads with their own connections on PostgreSQL, and on a SQLite file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.annotation.reading.stress import run_stress
from tests.support import require_postgres


def _assert_invariants(result, *, images, k):
    assert result["errors"] == []
    assert result["over_capacity_cases"] == 0
    assert result["max_labels_per_image"] == k
    assert result["duplicate_reads_by_one_reader"] == 0
    assert result["labels"] == result["expected_labels"] == images * k  # nothing lost, nothing duplicated
    assert result["images_fully_read"] == images
    assert result["open_claims"] == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_eight_readers_at_once_on_postgresql():
    require_postgres()
    _assert_invariants(run_stress(readers=8, images=40, k=2), images=40, k=2)


@pytest.mark.slow
def test_eight_readers_at_once_on_sqlite(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "CXR_VAR_DIR": str(tmp_path),
           "REDIS_URL": ""}
    script = Path(__file__).with_name("stress.py")
    done = subprocess.run([sys.executable, str(script), "8", "40", "2"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_invariants(json.loads(done.stdout.strip().splitlines()[-1]), images=40, k=2)
