"""Training runs as jobs: a reward run from a frozen feedback snapshot, its artifacts, progress and failures."""

import uuid

import numpy as np
import pytest
import torch

from annotation import assignment
from annotation.feedback import feedback_snapshot_freeze
from training import services
from training.models import TrainingRun
from training.reward import RewardConfig, predict
from training.tasks import training_run_execute

pytestmark = pytest.mark.django_db


@pytest.fixture
def snapshot(make_study, add_reader, stored_round):
    study = make_study(readers_per_image=2, task_kinds=["realism", "rubric"])
    rnd = stored_round(study, real=6, synthetic=6)
    for name in ("a", "b"):
        reader = add_reader(study, name)
        queue = assignment.queue_for_reader(round=rnd, reader=reader)
        while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
            real = task.image.source == "real"
            answer = ({"call": "real" if real else "synthetic", "confidence": 4} if task.kind == "realism" else
                      {"scores": {"anatomy": 4 if real else 2, "style": 3, "artifacts": 3}})
            assignment.label_submit(reader=reader, task_token=task.token, answer=answer, submission_id=uuid.uuid4())
    return feedback_snapshot_freeze(rounds=[rnd])


def test_reward_run_trains_stores_and_reloads(snapshot, django_capture_on_commit_callbacks):
    key, digest, _ = snapshot
    cfg = RewardConfig.tiny(steps=12)
    with django_capture_on_commit_callbacks(execute=True):
        run = services.training_run_create(kind="reward", owner="test:1", config=cfg.to_dict(), snapshot_key=key,
                                           snapshot_sha256=digest)
    run.refresh_from_db()
    assert run.status == "done", run.error_message
    assert run.progress == {"step": 12, "total": 12} and len(run.loss_curve) == 12
    assert all(np.isfinite(loss) for _, loss in run.loss_curve)
    assert "realism" in run.metrics or run.metrics  # validation metrics stored on the row
    assert training_run_execute(run_pk=run.pk) == "done"  # twice: nothing redone
    model = services.reward_model_load(run, torch.device("cpu"))
    mean, std = predict(model, [np.zeros((64, 64), np.uint8)], ["PA chest."], mc_samples=4)
    assert mean["realism"].shape == (1,)


def test_a_tampered_snapshot_fails_the_run_with_a_reason(snapshot):
    key, _, _ = snapshot
    run = TrainingRun.objects.create(kind="reward", config=RewardConfig.tiny(steps=2).to_dict(), snapshot_key=key,
                                     snapshot_sha256="0" * 64)
    assert training_run_execute(run_pk=run.pk) == "failed"
    run.refresh_from_db()
    assert "does not match its recorded sha256" in run.error_message
