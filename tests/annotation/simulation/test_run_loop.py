"""`run_loop`: N rounds through the real workflow on a real worker, per-round metrics as one JSON line (the panel
and control-arm keys: `test_panel`), a sentence on failure."""

import io
import json

import pytest
from django.core.management import CommandError, call_command

from annotation.models import Round, Study
from tests.annotation.rounds.preset import TINY_ROUND

pytestmark = pytest.mark.django_db(transaction=True)

KEYS = {"round", "model_version", "images", "labels", "reader_accuracy", "simulated_preference_score",
        "reward_auroc", "fid", "skipped"}


@pytest.mark.slow
def test_run_loop_runs_two_rounds_on_a_real_worker_and_ends_with_json(live_worker):
    out = io.StringIO()
    call_command("run_loop", study="cli", rounds=2, simulated_readers=2, images=8, base="tiny", preset="tiny",
                 panel=4, promotion_panel=4, config=json.dumps({**TINY_ROUND, "image_metrics": True}), json=True,
                 stdout=out,
                 reader_taste="sharpness:-1")
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("round 1: done, sampled from tiny-sd, 8 images, 32 labels")
    result = json.loads(lines[-1])
    first, second = result["rounds"]
    assert KEYS <= first.keys() and [first["round"], second["round"]] == [1, 2]
    assert first["labels"] == second["labels"] == 32 and first["images"] == 8
    assert 0 <= first["simulated_preference_score"] <= 1 and 0 <= first["reader_accuracy"] <= 1
    assert first["fid"] is None and first["skipped"]["fid"] == "no FID Inception weights configured"
    expected = first["produced_version"] if first["promoted"] else first["model_version"]
    assert second["model_version"] == expected  # round 2 samples from what round 1 left as current
    study = Study.objects.get(name="cli")
    assert study.memberships.filter(is_simulated=True).count() == 2
    tastes = [(m.simulation["property"], m.simulation["direction"], m.simulation["taste"])
              for m in study.memberships.filter(is_simulated=True)]
    assert tastes == [("sharpness", -1.0, "sharpness:-1")] * 2
    with pytest.raises(CommandError, match=r"already have the taste sharpness:-1; a taste is fixed when the study "
                                           r"is created: use a new study name for toward-real"):
        call_command("run_loop", study="cli", reader_taste="toward-real", stdout=io.StringIO())
    assert Round.objects.filter(study=study, status="done").count() == 2


def test_a_failing_stage_exits_non_zero_with_a_sentence():
    with pytest.raises(CommandError, match=r"Round 1 of bad-cli failed: training_reward: reward settings: "
                                           r"steps, batch_size"):
        call_command("run_loop", study="bad-cli", rounds=1, simulated_readers=2, images=8, base="tiny", preset="tiny",
                     config=json.dumps({**TINY_ROUND, "reward": {"steps": 0}}), stdout=io.StringIO())
    with pytest.raises(CommandError, match="--config is not valid JSON"):
        call_command("run_loop", study="x", config="{nope", stdout=io.StringIO())
    with pytest.raises(CommandError, match="Unknown round settings: stepz"):
        call_command("run_loop", study="y", base="tiny", simulated_readers=1, config='{"stepz": 1}',
                     stdout=io.StringIO())
    with pytest.raises(CommandError, match="--control needs simulated readers"):
        call_command("run_loop", study="z", simulated_readers=0, control="permuted", stdout=io.StringIO())
    with pytest.raises(CommandError, match=r"unknown reader taste 'glossiness': choose toward-real or one of "
                                           r"brightness, .*sharpness, entropy, vertical_gradient"):
        call_command("run_loop", study="z", reader_taste="glossiness", stdout=io.StringIO())
    with pytest.raises(CommandError, match="toward-real takes no sign"):
        call_command("run_loop", study="z", reader_taste="toward-real:-1", stdout=io.StringIO())
    with pytest.raises(CommandError, match="--study NAME is required"):
        call_command("run_loop", stdout=io.StringIO())
    with pytest.raises(CommandError, match="--panel and --promotion-panel at least 0"):
        call_command("run_loop", study="z", panel=-1, stdout=io.StringIO())
