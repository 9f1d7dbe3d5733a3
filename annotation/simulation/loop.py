"""The headless feedback loop: a study on phantoms with simulated readers, run for N rounds through the real
Celery workflow (`python manage.py run_loop`), and the per-round summary it prints."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from annotation.images.storage import image_store
from annotation.models import Image, Label, Round, RoundStatus, Source, Study
from annotation.reading.simulated import simulated_readers_ensure
from annotation.rounds.domain import domain_adapt, on_domain_finished
from annotation.rounds.driver import rounds_reconcile
from annotation.rounds.versions import study_version
from annotation.studies.services import study_create
from inference.storage import image_load
from training.ml.readers import SimulatedReader

log = logging.getLogger("cxr.loop")
TERMINAL = (RoundStatus.DONE, RoundStatus.FAILED, RoundStatus.CANCELLED)

#: `run_loop`'s default round: sized so that one round moves the tiny domain-adapted model by more than the noise
#: on a CPU (the in-silico harness's recipe: 150 reward and 150 finetune steps, standardised rewards, lr 1e-3, no
#: early stopping on a held-out set too small to decide; rank 4, the parent adapter's). About half a CPU minute a
#: round. `--preset tiny` runs the product's tiny defaults instead (8 finetune steps: a smoke test, not learning).
LOOP_ROUND = {
    "synthetic": 48, "real": 16, "eval_samples": 32,
    "reward": {"steps": 150},
    "finetune": {"steps": 150, "lr": 1e-3, "reward_normalisation": "standardise", "val_every": 0,
                 "restore_best": False, "checkpoint_every": 0},
}
PRESETS = {"loop": LOOP_ROUND, "tiny": {}}


def round_settings(preset: str, overrides: dict) -> dict:
    """The preset with `overrides` on top; the nested settings (generation, reward, finetune) merge key by key."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[preset].items()}
    for key, value in overrides.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def real_pool_ensure(*, study: Study, unused: int, size: int = 64) -> int:
    """At least `unused` real phantoms (with their reports) not yet read in any round; returns how many it added."""
    from inference.ml.phantoms import generate_phantom

    used = Image.objects.filter(study=study, cleaned_from__isnull=False).values("cleaned_from")
    have = (Image.objects.filter(study=study, source=Source.REAL, round__isnull=True, cleaned_from__isnull=True,
                                 is_catch=False).exclude(pk__in=used).count())
    seed = 100_000 + Image.objects.filter(study=study, source=Source.REAL).count()
    added = 0
    while have + added < unused:
        # burned-in text only where the cleaning stage can find it again (it is tuned from 256 px up)
        phantom = generate_phantom(seed=seed, size=size, burn_in_text=size >= 256 and seed % 4 == 0)
        stored = image_store(study=study, source=Source.REAL, pixels=phantom.image, prompt=phantom.report,
                                      findings=list(phantom.findings), original_name=f"phantom-{seed}.png")
        added += stored.created
        seed += 1
    return added


def loop_study_ensure(*, name: str, readers: int, images: int = 8, base: str = "domain") -> Study:
    """The study `name`, created when missing: phantom real images, `readers` simulated readers calibrated on
    them (readers_per_image = readers, so every task gets answered), the chosen base version."""
    study = Study.objects.filter(name=name).first()
    if study is None:
        study = study_create(name=name, title=f"Headless loop {name}", display_size=64,
                                      images_per_round=images, readers_per_image=max(1, readers),
                                      task_kinds=["realism", "rubric"], prompt_source="reports")
    real_pool_ensure(study=study, unused=max(4, images))
    if readers:
        sample = [image_load(i.display_key) for i in Image.objects.filter(study=study, source=Source.REAL)[:32]]
        profiles = [SimulatedReader(accuracy=round(0.6 + 0.3 * i / max(readers - 1, 1), 3), seed=i + 1)
                    .calibrated(sample) for i in range(readers)]
        simulated_readers_ensure(study=study, count=readers, readers=profiles)
    if study.current_version_id is None:
        if base == "domain":
            run = domain_adapt(study=study)
            deadline = time.monotonic() + 3600
            while run.status not in ("done", "failed"):  # on the worker (inline when tasks are eager)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Domain adaptation run {run.pk} did not finish within an hour.")
                time.sleep(0.5)
                run.refresh_from_db()
            if run.status == "failed":
                raise RuntimeError(f"Domain adaptation run {run.pk} failed: {run.error_message}")
            on_domain_finished(run=run)  # in case the signal was sent before the study was read
            study.refresh_from_db()
        if study.current_version_id is None:
            study_version(study)
            study.refresh_from_db()
    return study


# --- the worker ----------------------------------------------------------------------------------------------------


def worker_answers(timeout: float = 5.0) -> bool:
    from celery import current_app as app  # the project's app (config.celery), set current when Django loads

    if app.conf.task_always_eager:
        return True
    try:
        return app.send_task("annotation.tasks.ping").get(timeout=timeout) == "pong"
    except Exception:  # no worker, no broker: the caller starts one or says so
        return False


def embedded_worker_start() -> subprocess.Popen:
    """One worker on both queues, as the quick start runs it; the caller stops it."""
    log_dir = Path(settings.VAR_DIR) / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    handle = open(log_dir / "run_loop-worker.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,gpu",
                             "--pool=solo", "--concurrency=1", "--loglevel=INFO", "-n", f"run-loop-{os.getpid()}@%h"],
                            env=os.environ.copy(), stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not worker_answers(timeout=2.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"The embedded worker did not start; see {log_dir / 'run_loop-worker.log'}.")
    return proc


# --- rounds --------------------------------------------------------------------------------------------------------


def round_wait(rnd: Round, *, timeout_s: float, reconcile_every_s: float = 10.0, on_poll=None) -> Round:
    """Wait for the round to end; runs the reconciler meanwhile (so a lost message costs one stage timeout)."""
    deadline, last = time.monotonic() + timeout_s, time.monotonic()
    while True:
        rnd.refresh_from_db()
        if rnd.status in TERMINAL:
            return rnd
        if time.monotonic() > deadline:
            raise TimeoutError(f"Round {rnd.number} is still {rnd.status} after {timeout_s:.0f} s.")
        if time.monotonic() - last > reconcile_every_s:
            rounds_reconcile()
            last = time.monotonic()
        if on_poll is not None:
            on_poll(rnd)
        time.sleep(0.5)


def round_summary(rnd: Round) -> dict:
    m = rnd.metrics or {}
    promotion = m.get("promotion") or {}
    skipped = dict(m.get("skipped") or {})
    return {
        "round": rnd.number, "status": rnd.status,
        "model_version": rnd.model_version.name if rnd.model_version else None,
        "produced_version": rnd.produced_version.name if rnd.produced_version else None,
        "promoted": promotion.get("promoted"),
        "images": Image.objects.filter(round=rnd).count(),
        "synthetic": Image.objects.filter(round=rnd, source=Source.SYNTHETIC).count(),
        "labels": Label.objects.filter(task__round=rnd).count(),
        "reader_accuracy": m.get("reader_accuracy"),
        "simulated_preference_score": m.get("simulated_preference_score"),
        "reward_auroc": m.get("reward_auroc"),
        "fid": m.get("fid"),
        "reward_diff_vs_parent": promotion.get("reward_diff"),
        "promotion_p_value": promotion.get("p_value"), "best_step": (m.get("finetune") or {}).get("best_step"),
        "selection": (rnd.selection or {}).get("strategy"),
        "seconds": round((rnd.finished_at - rnd.created_at).total_seconds(), 1) if rnd.finished_at else None,
        "skipped": skipped,
    }
