"""The one tiny-round preset the round tests share: a small study on phantoms, simulated readers, tiny models."""

from __future__ import annotations

TINY_ROUND = {
    "reward": {"steps": 12},
    "reward_check": "record",  # a 12-step reward model on 6 images: its check's verdict is recorded, not obeyed
    "finetune": {"steps": 6, "checkpoint_every": 2, "val_every": 0},
    "image_metrics": False,
}


def tiny_study(name: str = "loop", *, readers: int = 2, real_pool: int = 8, images: int = 8, simulated: bool = True,
               **kw):
    from annotation.images.storage import image_store
    from annotation.reading.simulated import simulated_readers_ensure
    from annotation.studies.services import study_create
    from inference.ml.phantoms import generate_phantom

    kw.setdefault("display_size", 64)
    kw.setdefault("task_kinds", ["realism", "rubric"])
    kw.setdefault("panel_size", 4)
    kw.setdefault("promotion_panel_size", 4)
    study = study_create(name=name, title=f"Study {name}", images_per_round=images,
                                  readers_per_image=readers, **kw)
    for i in range(real_pool):
        phantom = generate_phantom(seed=500 + i, size=64)
        image_store(study=study, source="real", pixels=phantom.image, prompt=phantom.report,
                             findings=list(phantom.findings))
    if simulated:  # else people read (a browser test)
        simulated_readers_ensure(study=study, count=readers)
    return study
