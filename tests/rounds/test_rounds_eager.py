"""A whole round in one process (tasks eager): stages, jobs, promotion and the records they leave."""

import pytest

from annotation import rounds
from annotation.models import Image, Label, Round
from tests.rounds.preset import TINY_ROUND, tiny_study

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_round_runs_every_stage_and_registers_a_child_version():
    study = tiny_study()
    rnd = rounds.round_launch(study=study, config=TINY_ROUND)
    rnd.refresh_from_db()
    assert rnd.status == "done", (rnd.status, rnd.stage_error)
    assert Image.objects.filter(round=rnd, source="synthetic").count() == 4
    assert Image.objects.filter(round=rnd, source="real").count() == 4
    assert Label.objects.filter(task__round=rnd).count() == 8 * 2 * 2
    assert rnd.produced_version.parent == rnd.model_version
    assert rnd.metrics["promotion"]["samples"] == 4
