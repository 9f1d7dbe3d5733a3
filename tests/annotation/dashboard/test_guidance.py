"""Each state of a study and of a round says what happens next and what the admin can do: the study page from an
empty study to a finished round, the round page while readers read (who has how many cases left), while the worker
trains and evaluates (an evaluation progress bar), and when it is done (promoted or kept, with where to go)."""

import pytest
from django.test import Client

from annotation.dashboard.guidance import round_next_steps
from annotation.dashboard.selectors import round_progress
from annotation.images.storage import image_store
from annotation.models import Round, RoundStatus
from annotation.rounds.evaluation import EVALUATION_STEPS
from annotation.rounds.messages import progress_merge
from tests.conftest import random_pixels

pytestmark = pytest.mark.django_db


@pytest.fixture
def boss(make_user):
    user = make_user("boss", is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


def _next(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}</h2>")
    return page[start:page.index("</section>", start)]


def test_the_study_page_says_what_to_do_first_then_next(boss, make_study, add_reader, stored_round):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    url = f"/dashboard/studies/{study.pk}/"
    assert "Import real chest X-rays first" in _next(boss.get(url).content.decode(), "What to do next")
    image_store(study=study, source="real", pixels=random_pixels(1), prompt="report")
    assert "Invite readers" in _next(boss.get(url).content.decode(), "What to do next")
    add_reader(study, "dr-a")
    assert "Launch the first round" in _next(boss.get(url).content.decode(), "What to do next")
    rnd = stored_round(study, real=1, synthetic=1)
    text = _next(boss.get(url).content.decode(), "What to do next")
    assert f"Round {rnd.number} is running (labeling)" in text and f'href="/dashboard/rounds/{rnd.pk}/"' in text


def test_while_readers_read_the_round_page_says_who_has_how_many_cases_left(boss, make_study, add_reader,
                                                                             stored_round):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    add_reader(study, "dr-a")
    rnd = stored_round(study, real=2, synthetic=2)
    from annotation.reading import assignment

    for user in study.memberships.filter(role="reader"):
        assignment.queue_for_reader(round=rnd, reader=user.user)
    text = _next(boss.get(f"/dashboard/rounds/{rnd.pk}/").content.decode(), "What happens next")
    assert "0 of 4 planned answers are in" in text and "dr-a 4 cases" in text
    assert "close labeling now" in text


def test_training_and_evaluating_say_what_the_worker_does_with_an_evaluation_bar(boss, make_study, stored_round):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    rnd = stored_round(study, real=1, synthetic=1)
    Round.objects.filter(pk=rnd.pk).update(status=RoundStatus.EVALUATING)
    rnd.refresh_from_db()
    progress_merge(rnd, evaluation={"done": 1, "total": len(EVALUATION_STEPS), "now": EVALUATION_STEPS[1]})
    page = boss.get(f"/dashboard/rounds/{rnd.pk}/").content.decode()
    assert "deciding whether the new version is promoted" in _next(page, "What happens next")
    assert 'data-bar="evaluation"' in page and f"1 / {len(EVALUATION_STEPS)} · {EVALUATION_STEPS[1]}" in page
    rnd.refresh_from_db()
    assert round_progress(rnd)["evaluation"]["now"] == EVALUATION_STEPS[1]


def test_a_finished_round_says_where_to_go(make_study, stored_round):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    rnd = stored_round(study, real=1, synthetic=1)
    Round.objects.filter(pk=rnd.pk).update(status=RoundStatus.DONE, metrics={
        "finetune": {"blocked": "reward model does not rank synthetic images better than chance"}})
    rnd.refresh_from_db()
    steps = round_next_steps(rnd, round_progress(rnd))
    texts = " ".join(s["text"] for s in steps)
    assert "Read the round's report" in texts and "No new version was made (reward model does not rank" in texts
    assert steps[0]["link"]["url"] == f"/dashboard/rounds/{rnd.pk}/report/"


def test_the_report_shows_the_reward_model_with_its_check_and_one_n(boss, make_study, stored_round):
    study = make_study(task_kinds=["realism"], readers_per_image=1)
    rnd = stored_round(study, real=1, synthetic=1)
    Round.objects.filter(pk=rnd.pk).update(status=RoundStatus.DONE, metrics={
        "report": {"reader": {}, "images": None},
        "reward": {"auroc": 0.734, "mismatch": {"n": 3, "auroc": None, "auroc_skipped": "too few (n=3)"}},
        "reward_valid": {"valid": False, "reason": "ρ = 0.08 [−0.21, …], n = 32"}})
    page = boss.get(f"/dashboard/rounds/{rnd.pk}/report/").content.decode()
    section = page[page.index("<h2>Reward model</h2>"):page.index("<h2>Images</h2>")]
    assert "0.734" in section and "(held-out real images, n=3)" in section and "too few (n=3)" in section
    assert "failed: ρ = 0.08" in section


def test_a_skipped_auroc_counts_what_its_record_counts():
    import numpy as np

    from training.ml.reward.train import _auroc

    assert _auroc(np.r_[np.ones(3), np.zeros(3)], np.zeros(6), n=3) == (None, "too few (n=3)")
    assert _auroc(np.ones(4), np.zeros(4))[1] == "too few (n=4)"
