"""Training runs as jobs: a reward run from a frozen feedback snapshot, its artifacts, progress and failures."""

import uuid

import numpy as np
import pytest
import torch

from annotation.reading import assignment
from annotation.rounds.feedback import feedback_snapshot_freeze
from training.ml.reward.config import RewardConfig
from training.ml.reward.model import predict
from training.models import TrainingRun
from training.runs.reward import reward_model_load
from training.runs.storage import Progress
from training.services import training_run_create
from training.tasks import training_run_execute_task

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
        run = training_run_create(kind="reward", owner="test:1", config=cfg.as_dict(), snapshot_key=key,
                                           snapshot_sha256=digest)
    run.refresh_from_db()
    assert run.status == "done", run.error_message
    assert run.progress == {"step": 12, "total": 12} and len(run.loss_curve) == 12
    assert all(np.isfinite(loss) for _, loss in run.loss_curve)
    assert "realism" in run.metrics or run.metrics  # validation metrics stored on the row
    assert training_run_execute_task(run_pk=run.pk) == "done"  # twice: nothing redone
    model = reward_model_load(run, torch.device("cpu"))
    mean, std = predict(model, [np.zeros((64, 64), np.uint8)], ["PA chest."], mc_samples=4)
    assert mean["realism"].shape == (1,)


def test_a_tampered_snapshot_fails_the_run_with_a_reason(snapshot):
    key, _, _ = snapshot
    run = TrainingRun.objects.create(kind="reward", config=RewardConfig.tiny(steps=2).as_dict(), snapshot_key=key,
                                     snapshot_sha256="0" * 64)
    assert training_run_execute_task(run_pk=run.pk) == "failed"
    run.refresh_from_db()
    assert "does not match its recorded sha256" in run.error_message


@pytest.fixture
def tiny_version(tmp_path_factory):
    from inference.ml.tiny import build_tiny_sd
    from inference.models import ModelVersion

    path = build_tiny_sd(tmp_path_factory.mktemp("base") / "sd")
    return ModelVersion.objects.create(name="tiny-base", base_path=str(path))


def _finetune_config(steps=4):
    from training.ml.finetune.config import FinetuneConfig

    return FinetuneConfig.tiny().__class__.from_dict({**FinetuneConfig.tiny().as_dict(), "steps": steps,
                                                      "checkpoint_every": 2, "val_every": 0,
                                                      "early_stopping_patience": 0})


def _run(kind, snapshot, version, reward_run=None, steps=4):
    key, digest, _ = snapshot
    return TrainingRun.objects.create(kind=kind, config=_finetune_config(steps).as_dict(), snapshot_key=key,
                                      snapshot_sha256=digest, base_version=version, reward_run=reward_run)


def test_reward_weighted_finetune_registers_a_child_version(snapshot, tiny_version):
    key, digest, _ = snapshot
    reward_run = TrainingRun.objects.create(kind="reward", config=RewardConfig.tiny(steps=4).as_dict(),
                                            snapshot_key=key, snapshot_sha256=digest)
    assert training_run_execute_task(run_pk=reward_run.pk) == "done"
    run = _run("finetune", snapshot, tiny_version, reward_run=reward_run)
    assert training_run_execute_task(run_pk=run.pk) == "done", TrainingRun.objects.get(pk=run.pk).error_message
    run.refresh_from_db()
    child = run.produced_version
    assert child.parent == tiny_version and child.lora_key and child.produced_by == f"training.run:{run.pk}"
    assert run.progress["step"] == 4 and len(run.loss_curve) == 4
    from inference.ml.loading import PipelineSpec, load_pipeline
    from inference.storage import local_copy

    load_pipeline(PipelineSpec(base=child.base_path, lora=str(local_copy(child.lora_key))), torch.device("cpu"))


def test_a_run_killed_mid_way_resumes_on_another_worker_exactly(snapshot, tiny_version, settings, tmp_path,
                                                                monkeypatch):
    from django.core.files.storage import default_storage

    from inference.storage import local_copy

    whole = _run("domain", snapshot, tiny_version)
    assert training_run_execute_task(run_pk=whole.pk) == "done"
    whole.refresh_from_db()
    from safetensors.torch import load_file

    expected = load_file(str(local_copy(whole.produced_version.lora_key)))

    crashed = _run("domain", snapshot, tiny_version)
    real_call = Progress.__call__

    def die_at_step_3(self, step, loss, *a, **k):
        if step == 3:
            raise RuntimeError("worker lost")
        return real_call(self, step, loss, *a, **k)

    monkeypatch.setattr(Progress, "__call__", die_at_step_3)
    assert training_run_execute_task(run_pk=crashed.pk) == "failed"
    monkeypatch.setattr(Progress, "__call__", real_call)
    assert default_storage.exists(f"runs/{crashed.pk}/checkpoints/checkpoint-2/state.json")
    settings.CXR_CACHE_DIR = str(tmp_path / "another-worker")  # nothing local: resume from storage
    assert training_run_execute_task(run_pk=crashed.pk) == "done"
    crashed.refresh_from_db()
    resumed = load_file(str(local_copy(crashed.produced_version.lora_key)))
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)  # same weights as the uninterrupted run
    assert crashed.progress["step"] == 4


def test_a_finetune_whose_best_step_is_0_registers_no_version_and_says_so(snapshot, tiny_version):
    """Early stopping kept the parent's adapter: that is not a new model, so nothing can be promoted as one."""
    key, digest, _ = snapshot
    config = {**_finetune_config(4).as_dict(), "val_every": 2, "restore_best": True,
              "early_stopping_min_delta": 1e9}  # no held-out loss after step 0 counts as an improvement
    run = TrainingRun.objects.create(kind="domain", config=config, snapshot_key=key, snapshot_sha256=digest,
                                     base_version=tiny_version)
    assert training_run_execute_task(run_pk=run.pk) == "done", TrainingRun.objects.get(pk=run.pk).error_message
    run.refresh_from_db()
    assert run.produced_version is None and run.metrics["best_step"] == 0
    assert run.metrics["no_change"].startswith("best step 0: no change")
    assert [step for step, _ in run.metrics["val_losses"]][:1] == [0]  # the held-out curve it decided on
