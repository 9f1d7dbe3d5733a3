"""Simulated readers answer real tasks through the portal's services, as their profiles say."""

import numpy as np
import pytest
from django.core.exceptions import ValidationError

from annotation.models import Label, StudyMembership
from annotation.simulated import SimulatedProfile, round_simulate_readers, simulated_readers_ensure

pytestmark = pytest.mark.django_db


def _calls(rnd):
    labels = Label.objects.filter(task__round=rnd, task__kind="realism").select_related("task__image")
    return [(label.task.image.source, label.answer["call"]) for label in labels]


def test_a_perfect_reader_calls_every_image_right_and_a_biased_one_calls_everything_real(make_study,
                                                                                          stored_round):
    study = make_study(readers_per_image=1, task_kinds=["realism", "rubric"])
    rnd = stored_round(study, real=6, synthetic=6)
    simulated_readers_ensure(study=study, count=1, profiles=[SimulatedProfile(accuracy=1.0, preference_weight=0)])
    assert round_simulate_readers(round=rnd) == 24
    assert all(source == call for source, call in _calls(rnd))
    assert round_simulate_readers(round=rnd) == 0  # nothing left, nothing stored twice

    other = make_study("biased", readers_per_image=1, task_kinds=["realism"])
    rnd2 = stored_round(other, real=6, synthetic=6)
    # no pixel preference: it would pull p(real) for synthetic images below 1 and make the test depend on pixels
    simulated_readers_ensure(study=other, count=1, profiles=[SimulatedProfile(accuracy=0.5, bias_real=0.5,
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
    profile = SimulatedProfile(preference="brightness", centre=0.5, scale=0.05, noise=0.0)
    simulated_readers_ensure(study=study, count=1, profiles=[profile])
    round_simulate_readers(round=rnd)
    from annotation.simulated import _display

    pairs = [(profile.score(_display(label.task.image)), label.answer["scores"]["anatomy"])
             for label in Label.objects.filter(task__round=rnd).select_related("task__image")]
    liked, scores = np.array(sorted(pairs)).T
    assert np.all(np.diff(scores) >= 0) and scores[-1] > scores[0]  # noiseless: a monotone function of liking
    assert np.all(scores == np.round(1 + liked * 4))


def test_a_bad_profile_is_refused_with_a_sentence():
    with pytest.raises(ValidationError, match="accuracy must be within"):
        SimulatedProfile(accuracy=1.5)
    with pytest.raises(ValidationError, match="preference must be one of"):
        SimulatedProfile(preference="beauty")
    with pytest.raises(ValidationError, match="Unknown simulated-reader settings: speed"):
        SimulatedProfile.from_dict({"speed": 3})
