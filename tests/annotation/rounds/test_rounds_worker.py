"""Rounds through a real Celery worker process over Redis: a lost message, and a worker killed mid-finetune."""

import pytest

from annotation.models import Image, Label, Round
from annotation.rounds.driver import rounds_reconcile
from annotation.rounds.services import round_launch
from inference.models import GeneratedImage, ModelVersion
from tests.annotation.rounds.preset import TINY_ROUND, tiny_study
from tests.worker import wait_for
from training.models import TrainingRun

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _status(rnd):
    return Round.objects.values_list("status", flat=True).get(pk=rnd.pk)


def _finished(rnd):
    status = _status(rnd)
    return status if status in ("done", "failed", "cancelled") else None


def test_the_reconciler_recovers_a_round_whose_message_was_dropped(live_worker, monkeypatch):
    from inference import tasks as inference_tasks

    study = tiny_study("dropped")
    monkeypatch.setattr(inference_tasks.generation_batch_run_task, "delay", lambda **kw: None)  # the message is lost
    rnd = round_launch(study=study, config=TINY_ROUND)
    monkeypatch.undo()
    assert rounds_reconcile(timeout_s=60) == []  # heartbeat still fresh: nothing re-sent yet
    actions = rounds_reconcile(timeout_s=0)
    assert actions == [{"round": rnd.pk, "status": "generating", "action": "requeue",
                        "job": f"GenerationBatch:{rnd.generation_batch_id}"}]
    assert wait_for(lambda: _finished(rnd), timeout=240, worker=live_worker) == "done", \
        Round.objects.get(pk=rnd.pk).stage_error
    rnd.refresh_from_db()
    assert GeneratedImage.objects.filter(batch=rnd.generation_batch).count() == 4
    assert Label.objects.filter(task__round=rnd).count() == 32
    assert rnd.produced_version is not None and rnd.metrics["promotion"]["samples"] == 4


def test_a_worker_killed_during_finetuning_is_replaced_and_the_round_resumes_from_its_checkpoint(live_worker):
    from django.core.files.storage import default_storage

    study = tiny_study("killed")
    config = {**TINY_ROUND, "finetune": {"steps": 60, "checkpoint_every": 5, "val_every": 0}}
    rnd = round_launch(study=study, config=config)

    def checkpointed():
        rnd.refresh_from_db()
        run = rnd.finetune_run
        return (run is not None and run.progress.get("step", 0) < 50
                and default_storage.exists(f"runs/{run.pk}/checkpoints/checkpoint-10/state.json"))

    wait_for(checkpointed, timeout=240, worker=live_worker, every=0.05)
    live_worker.kill()
    run = TrainingRun.objects.get(pk=rnd.finetune_run_id)
    assert run.status == "running" and run.progress["step"] < 60
    live_worker.start()  # a new machine: empty local cache, resumes from storage
    assert wait_for(lambda: _finished(rnd), timeout=300, worker=live_worker, reconcile=True) == "done", \
        Round.objects.get(pk=rnd.pk).stage_error
    run.refresh_from_db()
    assert run.status == "done" and run.progress["step"] == 60
    assert run.metrics["resumed_from"].startswith("checkpoint-")
    assert int(run.metrics["resumed_from"].split("-")[1]) >= 10
    steps = [step for step, _ in run.loss_curve]
    assert steps[-1] == 60 and len(steps) == len(set(steps))  # no step counted twice
    # nothing duplicated by the second worker
    assert ModelVersion.objects.filter(produced_by=f"training.run:{run.pk}").count() == 1
    assert Image.objects.filter(round=rnd, source="synthetic").count() == 4
    assert Label.objects.filter(task__round=rnd).count() == 32
