"""Simulated readers answer real tasks through the portal's services, as their settings say."""

import numpy as np
import pytest

from annotation.models import Label, StudyMembership
from annotation.reading.simulated import reader_of, round_simulate_readers, simulated_readers_ensure
from inference.storage import image_load
from training.ml.simulated_reader import SimulatedReader

pytestmark = pytest.mark.django_db


def _calls(rnd):
    labels = Label.objects.filter(task__round=rnd, task__kind="realism").select_related("task__image")
    return [(label.task.image.source, label.answer["call"]) for label in labels]


def test_a_perfect_reader_calls_every_image_right_and_a_biased_one_calls_everything_real(make_study,
                                                                                          stored_round):
    study = make_study(readers_per_image=1, task_kinds=["realism", "rubric"])
    rnd = stored_round(study, real=6, synthetic=6)
    simulated_readers_ensure(study=study, count=1, readers=[SimulatedReader(accuracy=1.0, preference_weight=0)])
    assert round_simulate_readers(round=rnd) == 24
    assert all(source == call for source, call in _calls(rnd))
    assert round_simulate_readers(round=rnd) == 0  # nothing left, nothing stored twice

    other = make_study("biased", readers_per_image=1, task_kinds=["realism"])
    rnd2 = stored_round(other, real=6, synthetic=6)
    # no pixel preference: it would pull p(real) for synthetic images below 1 and make the test depend on pixels
    simulated_readers_ensure(study=other, count=1, readers=[SimulatedReader(accuracy=0.5, bias_real=0.5,
                                                                             preference_weight=0)])
    round_simulate_readers(round=rnd2)
    assert {call for _, call in _calls(rnd2)} == {"real"}
    member = StudyMembership.objects.get(study=other, is_simulated=True)
    assert member.user.has_usable_password() is False and member.simulation["bias_real"] == 0.5
    labels = Label.objects.filter(task__round=rnd2)
    assert all(label.time_spent_ms > 0 for label in labels)


def test_rubric_scores_follow_the_preference_function(make_study, stored_round):
    study = make_study(readers_per_image=1, task_kinds=["rubric"])
    rnd = stored_round(study, real=8, synthetic=8)
    profile = SimulatedReader(property="brightness", centre=0.5, scale=0.05, noise=0.0)
    simulated_readers_ensure(study=study, count=1, readers=[profile])
    round_simulate_readers(round=rnd)

    pairs = [(profile.score(image_load(label.task.image.display_key)), label.answer["scores"]["anatomy"])
             for label in Label.objects.filter(task__round=rnd).select_related("task__image")]
    liked, scores = np.array(sorted(pairs)).T
    assert np.all(np.diff(scores) >= 0) and scores[-1] > scores[0]  # noiseless: a monotone function of liking
    assert np.all(scores == np.round(1 + liked * 4))


def test_a_bad_reader_is_refused_with_a_sentence():
    with pytest.raises(ValueError, match="accuracy must be within"):
        SimulatedReader(accuracy=1.5)
    with pytest.raises(ValueError, match="property must be one of"):
        SimulatedReader(property="beauty")
    with pytest.raises(ValueError, match="Unknown simulated-reader settings: speed"):
        SimulatedReader.from_dict({"speed": 3})


def test_settings_stored_before_the_reader_models_merged_still_load(make_study):
    """Memberships written by the old profile model name the property `preference`."""
    study = make_study(readers_per_image=1, task_kinds=["realism"])
    member = simulated_readers_ensure(study=study, count=1)[0]
    member.simulation = {"accuracy": 0.8, "bias_real": 0.0, "noise": 0.1, "preference": "contrast", "direction": -1.0,
                         "centre": 0.2, "scale": 0.03, "preference_weight": 0.3, "answer_time_s": 4.0,
                         "sleep": False, "seed": 3}
    member.save()
    reader = reader_of(member)
    assert (reader.property, reader.direction, reader.accuracy, reader.seed) == ("contrast", -1.0, 0.8, 3)
