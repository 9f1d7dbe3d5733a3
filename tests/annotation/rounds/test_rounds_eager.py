"""Rounds in one process (tasks eager): the state machine, each stage run twice, admin actions, promotion,
active selection and simulated readers."""

import itertools
import uuid

import pytest
from django.core.exceptions import ValidationError

from annotation import tasks
from annotation.models import AuditEvent, Image, Label, ReadingTask, Round, RoundStatus
from annotation.reading import assignment
from annotation.rounds import stages
from annotation.rounds.driver import round_advance, rounds_reconcile
from annotation.rounds.services import (
    labeling_share,
    round_cancel,
    round_close_labeling,
    round_create,
    round_launch,
    round_retry,
)
from annotation.rounds.stages import round_clean_images
from annotation.rounds.transitions import ROUND_TRANSITIONS, IllegalTransition, round_transition
from annotation.rounds.versions import study_version, study_version_choose, study_version_rollback
from annotation.studies.services import membership_add
from inference.models import GeneratedImage, ModelVersion
from tests.annotation.rounds.preset import TINY_ROUND, tiny_study
from training.models import TrainingRun

pytestmark = pytest.mark.django_db(transaction=True)


def _counts():
    return {"images": Image.objects.count(), "labels": Label.objects.count(), "tasks": ReadingTask.objects.count(),
            "generated": GeneratedImage.objects.count(), "runs": TrainingRun.objects.count(),
            "versions": ModelVersion.objects.count()}


@pytest.mark.parametrize("source,target", list(itertools.product(RoundStatus.values, RoundStatus.values)))
def test_every_transition_is_legal_or_refused(make_study, source, target):
    rnd = round_create(study=make_study())
    Round.objects.filter(pk=rnd.pk).update(status=source)
    if source == target:
        assert round_transition(round=rnd, to=target).status == source  # a repeat is a no-op
    elif target in ROUND_TRANSITIONS[source]:
        assert round_transition(round=rnd, to=target).status == target
    else:
        with pytest.raises(IllegalTransition, match=f"from {source} to {target}"):
            round_transition(round=rnd, to=target)
        assert Round.objects.get(pk=rnd.pk).status == source


def test_a_round_runs_every_stage_and_each_stage_run_twice_changes_nothing():
    from inference.tasks import generation_batch_run_task
    from training.tasks import training_run_execute_task

    study = tiny_study()
    rnd = round_launch(study=study, config=TINY_ROUND)
    rnd.refresh_from_db()
    assert rnd.status == "done", (rnd.status, rnd.stage_error)
    assert Image.objects.filter(round=rnd, source="synthetic").count() == 4
    assert Image.objects.filter(round=rnd, source="real").count() == 4
    assert all(i.cleaned_from_id for i in Image.objects.filter(round=rnd))  # real and synthetic cleaned alike
    assert Label.objects.filter(task__round=rnd).count() == 8 * 2 * 2  # 8 images x 2 kinds x K=2
    assert rnd.metrics["labeling"] == {"answered": 32, "planned": 32, "share": 1.0}
    child = rnd.produced_version
    assert child.parent == rnd.model_version and child.produced_by == f"training.run:{rnd.finetune_run_id}"
    assert rnd.metrics["promotion"]["samples"] == 4 and rnd.metrics["reader_accuracy"] is not None
    study.refresh_from_db()
    assert study.current_version == (child if rnd.metrics["promotion"]["promoted"] else rnd.model_version)
    statuses = [e.action for e in AuditEvent.objects.filter(object_type="round", object_id=str(rnd.pk))
                .order_by("pk") if e.action.startswith("round.") and e.action.count(".") == 1]
    assert [s for s in statuses if s.split(".")[1] in RoundStatus.values] == [
        "round.generating", "round.cleaning", "round.labeling", "round.training_reward", "round.finetuning",
        "round.evaluating", "round.done"]

    before, metrics = _counts(), rnd.metrics
    for stage in (tasks.round_clean_task, tasks.round_simulate_task, tasks.round_evaluate_task, tasks.round_advance_task):
        stage(round_pk=rnd.pk)
    generation_batch_run_task(batch_pk=rnd.generation_batch_id)
    for run in (rnd.reward_run_id, rnd.finetune_run_id):
        assert training_run_execute_task(run_pk=run) == "done"
    assert rounds_reconcile(timeout_s=0) == []
    rnd.refresh_from_db()
    assert _counts() == before and rnd.status == "done" and rnd.metrics == metrics


def test_a_failed_stage_records_why_and_a_retry_finishes_the_round(monkeypatch):
    study = tiny_study()
    real_clean = round_clean_images
    monkeypatch.setattr(stages, "round_clean_images", lambda **kw: (_ for _ in ()).throw(OSError("disk full")))
    rnd = round_launch(study=study, config=TINY_ROUND)
    rnd.refresh_from_db()
    assert (rnd.status, rnd.failed_stage) == ("failed", "cleaning")
    assert rnd.stage_error == "cleaning: OSError: disk full"
    with pytest.raises(IllegalTransition):
        round_launch(study=study, round=rnd)
    monkeypatch.setattr(stages, "round_clean_images", real_clean)
    rnd = round_retry(round=rnd)
    assert rnd.status == "done", rnd.stage_error
    with pytest.raises(IllegalTransition, match="only a failed round"):
        round_retry(round=rnd)


def test_an_admin_closes_labeling_early_and_the_share_answered_is_kept(make_user):
    study = tiny_study(readers=1)
    study.readers_per_image = 2  # one simulated reader cannot complete K = 2
    study.save()
    rnd = round_launch(study=study, config={**TINY_ROUND, "train": False})
    rnd.refresh_from_db()
    assert rnd.status == "labeling"
    assert labeling_share(rnd) == {"answered": 16, "planned": 32, "share": 0.5}
    admin = make_user("boss", is_superuser=True)
    rnd = round_close_labeling(round=rnd, actor=admin)
    assert rnd.status == "done" and rnd.metrics["labeling"]["share"] == 0.5  # train: False ends here
    event = AuditEvent.objects.get(action="round.close_labeling")
    assert event.actor == admin and event.data["share"] == 0.5


def test_cancel_stops_handing_out_tasks_and_nothing_is_scheduled_after(make_user):
    study = tiny_study(readers=1)
    human = make_user("human")
    membership_add(study=study, user=human, role="reader")
    study.readers_per_image = 2
    study.save()
    rnd = round_launch(study=study, config=TINY_ROUND)
    rnd.refresh_from_db()
    queue = assignment.queue_for_reader(round=rnd, reader=human)
    task = assignment.tasks_next_for_reader(queue=queue)
    assert task is not None
    round_cancel(round=rnd)
    assert assignment.tasks_next_for_reader(queue=queue) is None
    with pytest.raises(ValidationError):
        assignment.label_submit(reader=human, task_token=task.token, answer={"call": "real", "confidence": 3},
                                submission_id=uuid.uuid4())
    assert round_advance(round=rnd).status == "cancelled" and rounds_reconcile(timeout_s=0) == []
    with pytest.raises(IllegalTransition):
        round_close_labeling(round=rnd)


def test_a_version_that_scores_worse_is_not_promoted_and_admins_choose_or_roll_back(make_user, make_study):
    study = tiny_study()
    rnd = round_launch(study=study, config={**TINY_ROUND, "promote_margin": -1.0})  # must gain 1.0: never
    rnd.refresh_from_db()
    promotion = rnd.metrics["promotion"]
    assert promotion["promoted"] is False and promotion["reason"].startswith("kept tiny-sd")
    study.refresh_from_db()
    assert study.current_version == rnd.model_version  # not silently replaced
    admin = make_user("boss", is_superuser=True)
    study_version_choose(study=study, version=rnd.produced_version, actor=admin)
    study.refresh_from_db()
    assert study.current_version == rnd.produced_version
    study_version_rollback(study=study, actor=admin)
    study.refresh_from_db()
    assert study.current_version == rnd.model_version
    foreign = ModelVersion.objects.create(name="elsewhere", base_path="/nowhere")
    with pytest.raises(ValidationError, match="does not belong"):
        study_version_choose(study=study, version=foreign, actor=admin)
    with pytest.raises(ValidationError, match="no parent"):
        study_version_rollback(study=study, actor=admin)


def test_active_selection_uses_the_last_reward_model_and_is_reproducible():
    from annotation.rounds.selection import select_generated

    study = tiny_study(real_pool=16)
    first = round_launch(study=study, config=TINY_ROUND)
    second = round_launch(study=study, config={**TINY_ROUND, "oversample": 3, "selection": "active"})
    first.refresh_from_db()
    second.refresh_from_db()
    assert second.status == "done", second.stage_error
    chosen = second.selection
    assert chosen["strategy"] == "active" and chosen["reward_run"] == first.reward_run_id
    assert chosen["candidates"] == 12 and len(chosen["chosen"]) == 4 and len(chosen["uncertainty"]) == 12
    assert select_generated(second, budget=4, strategy="active", seed=chosen["seed"])["chosen"] == chosen["chosen"]
    synthetic = Image.objects.filter(round=second, source="synthetic")
    assert sorted(i.meta["batch_index"] for i in synthetic) == chosen["chosen"]
    # the second round trained on both rounds' labels, and sampled from what the first one chose
    assert second.model_version == (first.produced_version if first.metrics["promotion"]["promoted"]
                                    else first.model_version)
    assert second.metrics["feedback"]["items"] > first.metrics["feedback"]["items"]


def test_bad_launch_settings_get_a_sentence_and_store_nothing():
    study = tiny_study()
    study_version(study)  # the study's default version is registered on first use
    before = (Round.objects.count(), _counts())
    for config, message in [({"selection": "clever"}, "selection must be one of"),
                            ({"stepz": 3}, "Unknown round settings: stepz"),
                            ({"synthetic": 0}, "at least one synthetic image"),
                            ({"oversample": 0.5}, "oversample must be"),
                            ({"generation": {"stepz": 3}}, "generation: Unknown generation settings")]:
        with pytest.raises(ValidationError, match=message):
            round_launch(study=study, config=config)
    assert (Round.objects.count(), _counts()) == before


def test_a_round_asking_for_another_lora_rank_is_refused_before_any_image_is_generated(make_study):
    from inference.models import GenerationBatch

    study = make_study("rank", readers_per_image=1, task_kinds=["realism"])
    adapted = ModelVersion.objects.create(name="adapted-r4", base_path="/nonexistent", lora_key="loras/x.safetensors",
                                          config={"rank": 4})
    study.current_version = adapted
    study.save(update_fields=["current_version"])
    with pytest.raises(ValidationError, match="rank 8 cannot continue adapted-r4, whose LoRA adapter has rank 4"):
        round_launch(study=study, config={"finetune": {"rank": 8}})
    assert not GenerationBatch.objects.filter(model_version=adapted).exists()
    assert not study.rounds.exists()


def test_the_promotion_check_carries_a_paired_test_with_its_n():
    import numpy as np

    from annotation.stats.paired import paired_promotion_test

    better = paired_promotion_test(np.linspace(0.01, 0.2, 32), 0.0)
    assert better["n_pairs"] == 32 and better["p_value"] < 1e-6
    worse = paired_promotion_test(-np.linspace(0.01, 0.2, 32), 0.0)
    assert worse["p_value"] > 0.99
    assert paired_promotion_test(-np.full(32, 0.05), 0.1)["p_value"] < 1e-6  # within the margin: no worse
    few = paired_promotion_test(np.ones(4), 0.0)
    assert few["p_value"] is None and few["p_value_skipped"] == "too few (n=4)"
