"""`run_loop`: a sentence on failure (rounds on a real worker: `test_loop_learns`; the JSON: `test_panel`)."""

import io
import json

import pytest
from django.core.management import CommandError, call_command

from tests.rounds.preset import TINY_ROUND

pytestmark = pytest.mark.django_db(transaction=True)


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
    with pytest.raises(CommandError, match="--panel at least 0"):
        call_command("run_loop", study="z", panel=-1, stdout=io.StringIO())
