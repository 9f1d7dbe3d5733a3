"""The demo study the quick start opens: phantom chest radiographs, a demo admin and a demo reader.

Until generation lands, the demo's "synthetic" images are phantoms drawn with a different texture (smoothed
anatomy, film grain of another grain size), standing in for a generator's output.
"""

from __future__ import annotations

import numpy as np
from django.contrib.auth import get_user_model
from django.db import transaction

from inference.phantoms import generate_phantom

from . import services
from .models import Role, Study

DEMO_USERS = {"admin": "admin-demo-pw", "reader": "reader-demo-pw"}


def _synthetic_stand_in(seed: int, size: int) -> np.ndarray:
    phantom = generate_phantom(seed=seed, size=size, burn_in_text=seed % 3 == 0)
    rng = np.random.default_rng(seed)
    img = phantom.image.astype(np.float32) / 255.0
    k = np.ones(5, np.float32) / 5
    img = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, img)  # a generator's softness
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


@transaction.atomic
def demo_study_ensure(*, images: int = 12, size: int = 256) -> Study:
    User = get_user_model()
    admin = User.objects.filter(username="admin").first() or User.objects.create_superuser(
        "admin", "admin@example.org", DEMO_USERS["admin"])
    reader = User.objects.filter(username="reader").first() or User.objects.create_user(
        "reader", password=DEMO_USERS["reader"])
    study = Study.objects.filter(name="demo").first()
    if study is not None:
        return study
    study = services.study_create(name="demo", title="Demo: synthetic chest X-rays", actor=admin,
                                  task_kinds=["realism", "rubric"], readers_per_image=2, images_per_round=2 * images)
    services.membership_add(study=study, user=reader, role=Role.READER, actor=admin)
    services.membership_add(study=study, user=admin, role=Role.ADMIN, actor=admin)
    rnd = services.round_create(study=study, actor=admin)
    for i in range(images):
        real = generate_phantom(seed=1000 + i, size=size, burn_in_text=i % 4 == 0)
        services.image_store(study=study, round=rnd, source="real", pixels=real.image, prompt=real.report,
                             findings=list(real.findings), original_name=f"phantom-{1000 + i}.png")
        synth = generate_phantom(seed=5000 + i, size=size)
        services.image_store(study=study, round=rnd, source="synthetic", pixels=_synthetic_stand_in(5000 + i, size),
                             prompt=synth.report, seed=5000 + i, generator="phantom stand-in")
    services.round_open_labeling(round=rnd, actor=admin)
    return study
