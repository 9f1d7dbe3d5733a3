"""Celery tasks: thin, keyed by ids, safe to run twice; one runs in a real worker process over Redis."""

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation.models import ReadingCase, ReadingTask
from annotation.reading import assignment
from annotation.tasks import claims_expire_stale_task


def _stale_claim(make_study, add_reader, stored_round):
    study = make_study(readers_per_image=1, task_kinds=["realism"])
    rnd = stored_round(study, real=1, synthetic=1)
    reader = add_reader(study)
    task = assignment.tasks_next_for_reader(queue=assignment.queue_for_reader(round=rnd, reader=reader))
    ReadingTask.objects.filter(pk=task.pk).update(claimed_at=timezone.now() - timedelta(days=1))
    return task


@pytest.mark.django_db
def test_expiry_task_run_twice_gives_the_same_state(make_study, add_reader, stored_round):
    task = _stale_claim(make_study, add_reader, stored_round)
    assert claims_expire_stale_task() == 1
    assert claims_expire_stale_task() == 0
    task.refresh_from_db()
    assert task.status == "expired" and ReadingCase.objects.get(pk=task.case_id).taken == 0


@pytest.mark.redis
@pytest.mark.postgres
def test_expiry_runs_in_a_real_worker_over_redis(celery_worker_process, make_study, add_reader, stored_round):
    task = _stale_claim(make_study, add_reader, stored_round)
    result = celery_worker_process.send_task("annotation.tasks.claims_expire_stale")
    assert result.get(timeout=60) == 1
    task.refresh_from_db()
    assert task.status == "expired"
