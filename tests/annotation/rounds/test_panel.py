"""The evaluation panel through rounds (tasks eager): every version samples the same prompts and seeds once, is
scored by the simulated readers and by every reward model, and the new version's promotion is decided on it."""

import io
import json

import numpy as np
import pytest
from django.core.management import call_command
from django.utils.html import escape

from annotation.models import EvaluationPanel, PanelScore, Study
from annotation.reading.simulated import simulated_members
from annotation.rounds.feedback import feedback_permuted
from annotation.rounds.services import round_launch
from inference.models import GenerationBatch
from tests.annotation.rounds.preset import TINY_ROUND, tiny_study
from training.ml.snapshot import Snapshot, SnapshotItem, SnapshotPair

pytestmark = pytest.mark.django_db(transaction=True)


def _requests(version, panel):
    batch = PanelScore.objects.get(panel=panel, model_version=version).batch
    return list(batch.images.order_by("index").values_list("prompt", "seed"))


def test_versions_are_scored_on_the_same_panel_items_and_each_reward_model_rescores_every_version():
    study = tiny_study(real_pool=16)
    first = round_launch(study=study, config=TINY_ROUND)
    first.refresh_from_db()
    assert first.status == "done", first.stage_error
    panel = EvaluationPanel.objects.get(study=study, kind="evaluation")
    parent, child = first.model_version, first.produced_version
    assert panel.count == 4 and _requests(parent, panel) == _requests(child, panel)  # paired: same prompt, seed
    record = first.metrics["panel"]
    assert record["parent"]["version"] == parent.name and record["produced"]["version"] == child.name
    assert record["parent"]["preference"]["n"] == 4 and 0 <= record["produced"]["fooling_rate"]["mean"] <= 1
    assert record["parent"]["reward"]["n"] == record["produced"]["reward"]["n"] == 4  # the round's reward model
    assert record["p_value"] is None and record["skipped"]["p_value"] == "too few (n=4)"
    promotion = first.metrics["promotion"]
    assert promotion["samples"] == 4 and promotion["reward_run"] == first.reward_run_id
    assert "the paired test needs ≥ 6 items (too few (n=4))" in promotion["rule"]
    assert record["promotion_p_value"] is None

    second = round_launch(study=study, config=TINY_ROUND)
    second.refresh_from_db()
    assert second.status == "done", second.stage_error
    sampled = second.model_version
    # the version round 2 sampled from was sampled on each panel (evaluation, promotion) once, in round 1
    assert GenerationBatch.objects.filter(model_version=sampled, owner__startswith="panel:").count() == 2
    for row in PanelScore.objects.filter(panel=panel):
        made_in_round_1 = row.model_version in (parent, child)
        assert set(row.scores["reward"]) == ({str(first.reward_run_id)} if made_in_round_1 else set()) | {
            str(second.reward_run_id)}  # round 2's reward model rescored the versions round 1 had scored
        assert all(len(v) == 4 for v in row.scores["reward"].values()) and len(row.scores["preference"]) == 4


def test_promotion_is_decided_by_the_paired_test_once_the_panel_is_large_enough():
    study = tiny_study("big-panel", panel_size=6, promotion_panel_size=8)
    rnd = round_launch(study=study, config=TINY_ROUND)
    rnd.refresh_from_db()
    promotion = rnd.metrics["promotion"]
    assert promotion["samples"] == 8 and promotion["n_pairs"] == 8 and promotion["panel"] == "promotion panel (8 items)"
    assert promotion["p_value"] is not None and promotion["rule"].startswith("paired test on 8 panel items")
    # the items that decide are not the items that measure, and no simulated reader scores them
    decide, measure = (EvaluationPanel.objects.get(study=study, kind=k) for k in ("promotion", "evaluation"))
    assert not set(_requests(rnd.model_version, decide)) & set(_requests(rnd.model_version, measure))
    assert "preference" not in PanelScore.objects.get(panel=decide, model_version=rnd.model_version).scores
    assert promotion["judge"].startswith("the cross-fitted fold models")
    assert promotion["promoted"] == (promotion["p_value"] < 0.05)
    assert rnd.metrics["panel"]["promotion_p_value"] == promotion["p_value"]
    assert rnd.metrics["report"]["panel"] == rnd.metrics["panel"]  # the report computed in evaluation carries it
    study.refresh_from_db()
    assert study.current_version == (rnd.produced_version if promotion["promoted"] else rnd.model_version)


def test_a_study_without_a_panel_leaves_promotion_to_an_admin():
    study = tiny_study("no-panel", panel_size=0, promotion_panel_size=0)
    rnd = round_launch(study=study, config=TINY_ROUND)
    rnd.refresh_from_db()
    assert rnd.status == "done" and rnd.metrics["panel"] is None
    assert rnd.metrics["skipped"]["panel"] == "the study's panel_size is 0: no evaluation panel"
    assert rnd.metrics["promotion"]["skipped"].endswith("an admin decides")
    assert not EvaluationPanel.objects.filter(study=study).exists()


def test_permuted_feedback_keeps_the_answers_but_detaches_them_from_the_images():
    items = [SnapshotItem(image=i, key=f"k{i}", sha256="x", source="synthetic", prompt="p", realism=i / 10,
                          criteria={"style": i / 10}, reads=i + 1) for i in range(10)]
    items.append(SnapshotItem(image=99, key="k99", sha256="x", source="synthetic", prompt="p"))  # unlabelled
    pairs = [SnapshotPair(chosen=i, rejected=i + 1, chosen_key=f"k{i}", rejected_key=f"k{i + 1}", prompt="p",
                          source="preference")
             for i in range(9)]
    snapshot = Snapshot(items=items, pairs=pairs)
    permuted = feedback_permuted(snapshot, seed=3)
    assert sorted(i.realism for i in permuted.items[:10]) == [i.realism for i in items[:10]]
    assert [i.image for i in permuted.items] == [i.image for i in items]  # the images stay where they are
    assert sum(a.realism != b.realism for a, b in zip(items, permuted.items, strict=False)) >= 7
    assert all(i.criteria == {"style": i.realism} for i in permuted.items[:10])  # one image's answers move together
    assert not permuted.items[10].labelled
    flipped = [p.chosen == q.rejected and p.chosen_key == q.rejected_key for p, q in
               zip(pairs, permuted.pairs, strict=True)]
    assert 0 < sum(flipped) < 9
    assert feedback_permuted(snapshot, seed=3) == permuted


def _round_one(study):
    """{(reader index, kind, slot, case position): (image sha256, answer)} of the study's first round."""
    from annotation.models import Label
    from annotation.reading.assignment import reader_index

    out = {}
    for label in Label.objects.filter(task__round__study=study, task__round__number=1).select_related(
            "task__case__image", "reader"):
        case = label.task.case
        index = reader_index(study_id=study.pk, reader=label.reader)
        out[(index, case.kind, case.slot, case.idx, label.task.repeat_of_id is not None)] = (
            case.image.sha256, json.dumps(label.answer, sort_keys=True))
    return out


def test_run_loop_with_a_control_arm_shares_the_base_readers_and_panel_and_reports_both(settings):
    out = io.StringIO()
    call_command("run_loop", study="arms", rounds=1, simulated_readers=2, images=8, base="tiny", preset="tiny",
                 control="permuted", panel=4, promotion_panel=4, seed=5, config=json.dumps(TINY_ROUND), json=True, stdout=out)
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    feedback, control = Study.objects.get(name="arms"), Study.objects.get(name="arms-control")
    assert result["control"]["study"] == "arms-control" and feedback.seed == control.seed == 5
    readers = [[m.simulation for m in simulated_members(s)] for s in (feedback, control)]
    assert readers[0] == readers[1] and readers[0][0]["realism"]["n_base"] == 32  # one realism function, shared
    decide = [EvaluationPanel.objects.get(study=s, kind="promotion") for s in (feedback, control)]
    assert decide[0].seed == decide[1].seed and decide[0].count == 4  # the control's promotions on the same items
    panels = [EvaluationPanel.objects.get(study=s, kind="evaluation") for s in (feedback, control)]
    assert [(p.prompts, p.count, p.seed, p.config) for p in panels][0] == (
        panels[1].prompts, panels[1].count, panels[1].seed, panels[1].config)
    fb_round, ctl_round = result["rounds"][0], result["control"]["rounds"][0]
    assert fb_round["model_version"] == ctl_round["model_version"]  # the same first version
    # an exact permutation: round 1 of both arms shows the same images (real ones included) at the same positions,
    # and every reader answers each the same way; only the snapshot the reward model trains on is permuted
    fb_labels, ctl_labels = _round_one(feedback), _round_one(control)
    assert len(fb_labels) == fb_round["labels"] and fb_labels == ctl_labels
    assert {key[2] for key in fb_labels} == {"real", "synthetic"}
    assert control.rounds.get().metrics["snapshot"]["permuted"] is True
    assert feedback.rounds.get().metrics["snapshot"]["permuted"] is False
    for key in ("parent", "produced", "p_value", "effect_size", "promotion_p_value"):
        assert key in fb_round["panel"]
    assert set(fb_round["panel"]["parent"]["preference"]) >= {"mean", "ci_low", "ci_high"}
    assert "best_step" in fb_round and isinstance(fb_round["promoted"], bool)
    summary = result["summary"]
    assert set(summary) >= {"first_version", "last_version", "preference_gain", "fooling_rate_gain", "p_value"}
    assert summary["first_version"] == fb_round["model_version"]
    assert summary["p_value"] is None and summary["skipped"]["preference.p_value"] == "too few (n=4)"
    assert np.isfinite(summary["preference_gain"]["mean"]) and "feedback_vs_control" in result
    # the seed-level evidence's inputs: gains are always objects, "current" is what the study would ship
    assert summary["unit"] == result["feedback_vs_control"]["unit"] == "panel items"
    for stat in ("preference_gain", "fooling_rate_gain", "realism_only_fooling_rate_gain"):
        assert set(summary[stat]) == {"mean", "ci_low", "ci_high", "n"}
        assert set(result["feedback_vs_control"][stat]) == {"mean", "ci_low", "ci_high", "n"}
    feedback.refresh_from_db()
    assert summary["last_version"] == feedback.current_version.name
    if summary["last_version"] == summary["first_version"]:  # nothing promoted: gain 0, and why
        assert summary["preference_gain"]["mean"] == 0 and "nothing was promoted" in summary["skipped"]["summary"]


def test_a_reward_model_that_fails_its_check_blocks_the_feedback_arm_not_the_control(admin_client):
    """check_alpha 1e-9 cannot be reached by the out-of-fold ranking of a handful of images: every check fails."""
    out = io.StringIO()
    strict = {**TINY_ROUND, "reward_check": "block", "reward": {**TINY_ROUND["reward"], "check_alpha": 1e-9}}
    call_command("run_loop", study="checked", rounds=1, simulated_readers=2, images=8, base="tiny", preset="tiny",
                 control="permuted", panel=4, promotion_panel=4, seed=6, config=json.dumps(strict), json=True, stdout=out)
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    feedback, control = Study.objects.get(name="checked").rounds.get(), Study.objects.get(name="checked-control").rounds.get()
    assert feedback.status == control.status == "done"
    # the feedback arm: no finetune, no new version, the reason on the round and in --json
    assert feedback.finetune_run is None and feedback.produced_version is None
    verdict = result["rounds"][0]["reward_valid"]
    assert verdict["valid"] is False and verdict["folds"] == 2 and verdict["alpha"] == 1e-9
    assert feedback.metrics["finetune"]["blocked"] == verdict["reason"]
    assert feedback.metrics["promotion"]["skipped"] == f"no finetune: {verdict['reason']}"
    assert result["rounds"][0]["produced_version"] is None and not result["rounds"][0]["promoted"]
    assert feedback.metrics["panel"]["parent"]["preference"] is not None  # the round is still evaluated
    # the control arm runs its finetune and promotion whatever its check says, and records the verdict
    assert control.finetune_run is not None and control.produced_version is not None
    assert control.metrics["reward_valid"]["valid"] is False
    assert "promoted" in control.metrics["promotion"]
    # the round pages say so in sentences, with the figures; metrics and settings as tables, raw JSON folded away
    page = admin_client.get(f"/dashboard/rounds/{feedback.pk}/").content.decode()
    assert "Reward model check" in page and "No finetune ran and nothing was promoted." in page
    assert escape(verdict["reason"]) in page
    assert '<th scope="row">reward_valid.rho</th>' in page and "<summary>Raw metrics (JSON)</summary>" in page
    page = admin_client.get(f"/dashboard/rounds/{control.pk}/").content.decode()
    assert "Recorded only: the round went on" in page and "The finetune moved the reward on the promotion panel (4 items) by" in page
    assert "judged by the cross-fitted fold models" in page
