"""The loop learns, through the product's own code path on a real worker: `run_loop --control permuted` runs two
rounds in a feedback study and in its permuted-feedback twin, and the feedback arm's current version (what the study
would ship) beats the control's on the shared evaluation panel (the simulated readers' preference)."""

import io
import json

import pytest
from django.core.management import call_command

from annotation.models import Round, Study

pytestmark = pytest.mark.django_db(transaction=True)

#: the loop preset, smaller: fewer images, fresh samples, steps and panel items (about half the CPU of a default round)
CI_LOOP = {"synthetic": 24, "real": 8, "reward": {"steps": 80}, "finetune": {"steps": 80, "fresh_samples": 96}}
KEYS = {"round", "model_version", "produced_version", "images", "labels", "reader_accuracy", "reward_auroc", "fid",
        "panel", "promotion", "reward_valid", "best_step", "promoted", "skipped"}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [71, 72])  # fixed before this test's first run
def test_feedback_beats_its_permuted_control_on_the_panel(live_worker, seed):
    out = io.StringIO()
    call_command("run_loop", study=f"learns-{seed}", rounds=2, simulated_readers=3, control="permuted", seed=seed,
                 panel=32, promotion_panel=24, config=json.dumps(CI_LOOP), json=True, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith("feedback round 1: done, sampled from tiny-domain+domain")
    result = json.loads(lines[-1])
    assert [r["round"] for r in result["rounds"]] == [1, 2] and KEYS <= result["rounds"][0].keys()
    assert all(r["labels"] == 32 * 2 * 3 for r in result["rounds"] + result["control"]["rounds"])
    # the study's current version after two rounds (what it would ship) against the control's, on the same items
    vs = result["feedback_vs_control"]
    assert vs["n"] == 32 and vs["unit"] == "panel items"
    assert vs["preference_gain"]["mean"] > 0, vs
    # the arm's own first → current gain is reported with its panel-precision CI; whether the loop learns is a claim
    # over loop seeds (bench/loop.py: 8 seeds, t-CI and sign test), not over one seed's panel items, so it is not
    # asserted here (seed 71's round 2 raised realism +0.14 and lowered the taste −0.10: see issue 27's note)
    summary = result["summary"]
    assert summary["unit"] == "panel items" and summary["n"] == 32
    assert summary["last_version"] == Study.objects.get(name=f"learns-{seed}").current_version.name
    gain = summary["preference_gain"]
    assert gain["n"] == 32 and gain["ci_low"] <= gain["mean"] <= gain["ci_high"]
    for name in (f"learns-{seed}", f"learns-{seed}-control"):
        assert Round.objects.filter(study__name=name, status="done").count() == 2
        assert Study.objects.get(name=name).memberships.filter(is_simulated=True).count() == 3
