"""The headless feedback loop: a study on phantoms with simulated readers, run for N rounds through the real
Celery workflow (`python manage.py run_loop`), and the per-round summary it prints."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from django.conf import settings

from annotation.images.storage import image_store
from annotation.models import Image, Label, Round, RoundStatus, Source, Study
from annotation.reading.simulated import reader_of, simulated_members, simulated_readers_ensure
from annotation.rounds.domain import domain_adapt, on_domain_finished, tiny_domain_path
from annotation.rounds.driver import rounds_reconcile
from annotation.rounds.panel import study_prompts
from annotation.rounds.versions import study_version
from annotation.studies.services import study_create
from inference.ml.generation import generate, plan_requests
from inference.ml.generation_config import GenerationConfig
from inference.ml.loading import PipelineSpec, load_pipeline
from inference.ml.phantoms import generate_phantom, generate_phantoms
from inference.models import GenerationBatch
from inference.services import generation_batch_create
from inference.storage import image_load
from training.ml.realism import RealismModel
from training.ml.simulated_reader import (
    PROPERTIES,
    TOWARD_REAL,
    SimulatedReader,
    directions_toward,
    parse_taste,
    taste_name,
)

log = logging.getLogger("cxr.loop")
TERMINAL = (RoundStatus.DONE, RoundStatus.FAILED, RoundStatus.CANCELLED)

#: `run_loop`'s default round: sized so that one round moves the tiny domain-adapted model by more than the noise
#: on a CPU. The readers label 32 synthetic and 16 real images; those labels train the reward model (100 steps); the
#: finetune then draws 128 fresh samples from the parent (4 per prompt of the labelled images, seeded by the round)
#: and learns from them weighted by the reward model's scores — z-scores clipped to ±2 — with a light real-data term
#: (beta 0.02 on a quarter of each batch of 8), LoRA on attention + ResNet convolutions + time embedding (attention
#: alone barely moves global properties such as brightness), 100 steps at lr 1e-3. Why fresh samples: in the
#: recipe pilot (shared/pilots) weights on the few labelled images moved the model a lot but their permuted control
#: swung as much (a coin flip per round); on many reward-scored fresh samples the control's swing shrank to a
#: quarter while the feedback's effect stayed. `--preset tiny` runs the product's tiny defaults instead (8 finetune
#: steps: a smoke test, not learning).
LOOP_ROUND = {
    "synthetic": 32, "real": 16,
    "reward": {"steps": 100},
    "finetune": {"steps": 100, "lr": 1e-3, "reward_normalisation": "standardise", "reward_clip": 2.0,
                 "fresh_samples": 128, "fresh_per_prompt": 4, "lora_targets": "attention+conv", "beta": 0.02,
                 "batch_size": 8, "real_fraction": 0.25, "val_every": 0, "restore_best": False,
                 "checkpoint_every": 0},
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


def loop_study_ensure(*, name: str, readers: int, images: int = 8, base: str = "domain",
                      panel_size: int | None = None, seed: int | None = None, taste: str | None = None,
                      promotion_panel_size: int | None = None) -> Study:
    """The study `name`, created when missing: phantom real images, the chosen base version, and `readers`
    simulated readers (readers_per_image = readers, so every task gets answered) whose real/synthetic calls follow
    one realism function fitted on the real images against the base's, and whose taste is `taste`
    ('toward-real', the default: they prefer centre contrast moved from the base's images toward the real ones'; or
    'NAME[:+1|:-1]', any property of `training.ml.simulated_reader`), calibrated on the base's images as the in-silico
    harness's reader is (its scores span 0–1 on what it will be shown). The taste is fixed when the readers are
    created: asking an existing study for another is refused (ValueError)."""
    prop, sign = parse_taste(taste or TOWARD_REAL)
    label = taste_label(prop, sign)
    study = Study.objects.filter(name=name).first()
    if study is not None and taste is not None:
        had = {reader_of(m).taste or TOWARD_REAL for m in simulated_members(study)}
        if had and had != {label}:
            raise ValueError(f"Study {name}'s simulated readers already have the taste {', '.join(sorted(had))}; "
                             f"a taste is fixed when the study is created: use a new study name for {label}.")
    if study is None:
        extra = {k: v for k, v in (("panel_size", panel_size), ("seed", seed),
                                   ("promotion_panel_size", promotion_panel_size)) if v is not None}
        study = study_create(name=name, title=f"Headless loop {name}", display_size=64,
                                      images_per_round=images, readers_per_image=max(1, readers),
                                      task_kinds=["realism", "rubric"], prompt_source="reports", **extra)
    real_pool_ensure(study=study, unused=max(4, images))
    _base_ensure(study, base)
    if readers and not simulated_members(study):
        real = [image_load(i.display_key) for i in
                Image.objects.filter(study=study, source=Source.REAL).order_by("pk")[:32]]
        base_images = base_sample(study, count=32)
        realism = RealismModel.fit(real, base_images)
        if prop == TOWARD_REAL:
            prop, direction = "centre_contrast", directions_toward(real, base_images)["centre_contrast"]["toward_real"]
        else:
            direction = sign
        profiles = [SimulatedReader(accuracy=round(0.6 + 0.3 * i / max(readers - 1, 1), 3), seed=i + 1,
                                    property=prop, direction=direction, realism=realism.as_dict(),
                                    taste=label)
                    .calibrated(base_images) for i in range(readers)]
        simulated_readers_ensure(study=study, count=readers, readers=profiles)
    return study


def taste_label(prop: str, sign: float | None) -> str:
    return TOWARD_REAL if prop == TOWARD_REAL else taste_name(prop, sign)


def tastes_table(count: int = 32) -> list[dict]:
    """Every taste `run_loop --reader-taste` takes, with its direction relative to the real images: measured on
    `count` phantoms (the embedded default's real images) against as many samples of the tiny domain base (built
    once per machine and cached), in-process."""
    phantoms = list(generate_phantoms(count, seed=100_000, size=64))
    device = torch.device("cpu")
    pipe = load_pipeline(PipelineSpec(base=str(tiny_domain_path())), device)
    requests = plan_requests(prompts=[p.report for p in phantoms], count=count, images_per_prompt=1, seed=0)
    base_images = [image for _, image in generate(pipe, requests, GenerationConfig.tiny(), device=device)]
    toward = directions_toward([p.image for p in phantoms], base_images)
    rows = [{"taste": TOWARD_REAL, "description": "centre contrast, in the direction from the base model's images "
             "toward the real ones (the default)", "toward_real": 1.0, "shift_sd": abs(toward["centre_contrast"][
                 "shift_sd"])}]
    for name, fn in PROPERTIES.items():
        rows.append({"taste": name, "description": (fn.__doc__ or "").strip().split("\n")[0], **toward[name]})
    return rows


def _job_wait(row, what: str, done=("done",), failed=("failed",), timeout_s: float = 3600):
    deadline = time.monotonic() + timeout_s
    while row.status not in done + failed:  # on the worker (inline when tasks are eager)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not finish within {timeout_s:.0f} s.")
        time.sleep(0.5)
        row.refresh_from_db()
    if row.status in failed:
        raise RuntimeError(f"{what} failed: {row.error_message}")
    return row


def base_sample(study: Study, *, count: int) -> list:
    """`count` images of the study's current version (a generation batch on the worker, found again by its
    owner), e.g. to fit the realism function on."""

    owner = f"annotation.study:{study.pk}:base-sample"
    batch = (GenerationBatch.objects.filter(owner=owner, model_version=study.current_version).exclude(
        status="failed").first() or generation_batch_create(model_version=study.current_version, count=count,
                                                            prompts=study_prompts(study), seed=study.seed % 2**31,
                                                            owner=owner, clean=False))
    batch = _job_wait(batch, f"Base sample batch {batch.pk}")
    return [image_load(g.raw_key) for g in batch.images.order_by("index")]


def _base_ensure(study: Study, base: str) -> None:
    if study.current_version_id is None:
        if base == "domain":
            run = _job_wait(domain_adapt(study=study), "Domain adaptation run")
            on_domain_finished(run=run)  # in case the signal was sent before the study was read
            study.refresh_from_db()
        if study.current_version_id is None:
            study_version(study)
            study.refresh_from_db()


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
    panel = m.get("panel")
    for key, reason in ((panel or {}).get("skipped") or {}).items():
        skipped[f"panel.{key}"] = reason
    return {
        "round": rnd.number, "status": rnd.status,
        "model_version": rnd.model_version.name if rnd.model_version else None,
        "produced_version": rnd.produced_version.name if rnd.produced_version else None,
        "promoted": bool(promotion.get("promoted")), "promotion": promotion or None,
        "panel": panel,
        "images": Image.objects.filter(round=rnd).count(),
        "synthetic": Image.objects.filter(round=rnd, source=Source.SYNTHETIC).count(),
        "labels": Label.objects.filter(task__round=rnd).count(),
        "reader_accuracy": m.get("reader_accuracy"),
        "simulated_preference_score": m.get("simulated_preference_score"),
        "reward_auroc": m.get("reward_auroc"),
        "fid": m.get("fid"),
        "reward_valid": m.get("reward_valid"),
        "reward_diff_vs_parent": promotion.get("reward_diff"),
        "promotion_p_value": promotion.get("p_value"), "best_step": (m.get("finetune") or {}).get("best_step"),
        "selection": (rnd.selection or {}).get("strategy"),
        "seconds": round((rnd.finished_at - rnd.created_at).total_seconds(), 1) if rnd.finished_at else None,
        "skipped": skipped,
    }
