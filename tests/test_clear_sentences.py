"""The sentences a new user meets instead of tracebacks: an unmigrated database for any command that needs it
(reader_stats on a CSV needs none), an exported-but-empty DATABASE_URL, and an export with no matching label."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, var: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    environ.update({"CXR_VAR_DIR": str(var), "DATABASE_URL": "", **(env or {})})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("command", [
    ["study_create", "fresh"],
    ["import_images", "fresh", "."],
    ["export_dataset", "--study", "fresh", "--format", "jsonl", "--out", "x.jsonl"],
    ["createsuperuser", "--noinput", "--username", "a", "--email", "a@b.c"],
])
def test_a_command_on_an_unmigrated_database_says_to_migrate(command, tmp_path):
    done = manage(*command, var=tmp_path)  # DATABASE_URL= (exported, empty): SQLite under CXR_VAR_DIR, as unset
    assert done.returncode == 1, done.stderr
    assert "is not migrated" in done.stderr and "run `python manage.py migrate` first." in done.stderr
    assert str(tmp_path / "db.sqlite3") in done.stderr and "Traceback" not in done.stderr


def test_reader_stats_on_a_csv_needs_no_database(tmp_path):
    done = manage("reader_stats", str(ROOT / "tests/data/vandyke_mrmc.csv"), "--mrmc", var=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "AUC" in done.stdout or "auc" in done.stdout.lower()


@pytest.mark.django_db
def test_an_export_of_simulated_labels_only_says_why_it_is_empty(make_study, stored_round, add_admin, tmp_path):
    from rest_framework.test import APIClient

    from annotation.api.auth import token_issue
    from annotation.reading.simulated import round_simulate_readers, simulated_readers_ensure
    from training.ml.simulated_reader import SimulatedReader

    study = make_study("simonly", readers_per_image=1, task_kinds=["realism"])
    rnd = stored_round(study, real=2, synthetic=2)
    simulated_readers_ensure(study=study, count=1, readers=[SimulatedReader(accuracy=1.0)])
    round_simulate_readers(round=rnd)
    out = tmp_path / "out" / "x.zip"
    with pytest.raises(CommandError, match="simulated readers are left out unless include_simulated"):
        call_command("export_dataset", "--study", study.name, "--format", "imagefolder", "--out", str(out),
                     stdout=io.StringIO())
    assert not out.parent.exists()  # nothing written
    call_command("export_dataset", "--study", study.name, "--format", "imagefolder", "--out", str(out),
                 "--include-simulated", stdout=io.StringIO())
    assert out.exists()
    admin = add_admin(study, "simadmin")
    _, key = token_issue(user=admin, name="t", scope="admin")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    streamed = api.get(f"/api/v1/studies/{study.pk}/export/?format=jsonl")
    assert streamed.status_code == 400 and "include_simulated" in str(streamed.json())
    job = api.post("/api/v1/exports/", {"study": study.pk, "format": "imagefolder"}, format="json")
    assert job.status_code == 400 and "include_simulated" in str(job.json())
    polled = api.get(f"/api/v1/studies/{study.pk}/export/?format=jsonl&since_round=0")  # a poller: nothing new
    assert polled.status_code == 200
