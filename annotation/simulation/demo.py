"""The demo study the quick start opens: phantom chest radiographs with their reports, a demo admin and a demo
reader, the demo's tiny base (pretrained offline at 128 px, shipped in `weights/tiny-demo`) adapted to the phantoms
(the seed's domain-adaptation step), and a first round
generated from that adapted model, cleaned and waiting for the demo reader.

Run by `demo_setup` before the worker starts, so its jobs run in-process (tasks eager). Idempotent.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from annotation.models import Role, Round, RoundStatus, Study
from annotation.rounds.domain import demo_base, domain_adapt
from annotation.rounds.services import round_launch
from annotation.simulation.loop import real_pool_ensure
from annotation.studies.services import membership_add, study_create

DEMO_USERS = {"admin": "admin-demo-pw", "reader": "reader-demo-pw"}
#: The demo round stays small enough for a person to read in minutes; its finetune uses the loop recipe (no early
#: stopping on a held-out set of a few images, which would keep the parent's adapter) so the round changes the model.
DEMO_ROUND = {"finetune": {"steps": 40, "lr": 1e-3, "reward_normalisation": "standardise", "val_every": 0,
                           "restore_best": False}}


def demo_study_ensure(*, images: int = 12, size: int = 256, rounds_of_real: int = 3) -> Study:
    """Users, the study (reader K = 1, so the demo reader's answers complete a round and training starts on its
    own), `images` real + `images` synthetic per round, and round 1 open for labeling."""
    from celery import current_app as app  # the project's app (config.celery), set current when Django loads


    User = get_user_model()
    admin = User.objects.filter(username="admin").first() or User.objects.create_superuser(
        "admin", "admin@example.org", DEMO_USERS["admin"])
    reader = User.objects.filter(username="reader").first() or User.objects.create_user(
        "reader", password=DEMO_USERS["reader"])
    study = Study.objects.filter(name="demo").first()
    if study is None:
        study = study_create(
            name="demo", title="Demo: synthetic chest X-rays", actor=admin, task_kinds=["realism", "rubric"],
            readers_per_image=1, images_per_round=2 * images, display_size=256, prompt_source="reports",
            round_defaults=DEMO_ROUND)
        membership_add(study=study, user=reader, role=Role.READER, actor=admin)
        membership_add(study=study, user=admin, role=Role.ADMIN, actor=admin)
    real_pool_ensure(study=study, unused=images * rounds_of_real, size=size)
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True  # before the worker starts: run the jobs here
    try:
        if study.current_version_id is None:
            domain_adapt(study=study, base=demo_base(), actor=admin)
            study.refresh_from_db()
        if not Round.objects.filter(study=study).exclude(status=RoundStatus.CANCELLED).exists():
            round_launch(study=study, actor=admin)
    finally:
        app.conf.task_always_eager = eager
    return study
