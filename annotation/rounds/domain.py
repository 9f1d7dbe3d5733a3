"""The study's first model version: the base adapted to its real image–report pairs (the seed paper's first step).

On real weights this is a `domain` training run (LoRA, 10 epochs at 512 px in the seed paper) started from the
configured base. On the embedded default the base is the tiny SD with its VAE fitted and its UNet pretrained on
phantoms (`training.ml.insilico_base.build_insilico_base`, shipped in the repository under weights/tiny-domain and
copied under CXR_MODELS_DIR/tiny-domain), and the LoRA run is its tiny preset; the version it registers is reused by
every later call. The demo starts from its own shipped base (`demo_base`, 128 px, trained ten times longer).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotation.models import Study
from annotation.rounds.feedback import domain_snapshot_freeze
from annotation.rounds.messages import owner_of, owner_pk
from annotation.rounds.versions import study_version_choose
from annotation.studies.audit import audit
from inference.models import ModelVersion
from inference.services import tiny_size
from training.ml.finetune.config import FinetuneConfig
from training.models import RunKind, RunStatus, TrainingRun
from training.services import training_run_create

TINY_DOMAIN_STEPS = 40


def shipped_base_path(name: str, progress=None) -> Path:
    """A shipped tiny base's folder under CXR_MODELS_DIR/<name>: copied from the repository (CXR_WEIGHTS_DIR/<name>),
    or built here when the shipped copy is missing or from another recipe (`progress(stage, done, total)` while it
    is built: a few CPU minutes for tiny-domain, about an hour for tiny-demo)."""
    from training.ml.insilico_base import SHIPPED_BASES, build_insilico_base  # torch: the web imports this

    return build_insilico_base(Path(settings.CXR_MODELS_DIR) / name, SHIPPED_BASES[name](),
                               shipped=Path(settings.CXR_WEIGHTS_DIR) / name, progress=progress)


def shipped_base(name: str, progress=None) -> ModelVersion:
    """A shipped tiny base as a model version (registered once), so it gets the tiny presets at its own size."""
    version, _ = ModelVersion.objects.get_or_create(
        name=name, defaults={"base_path": str(shipped_base_path(name, progress))})
    return version


def tiny_domain_path(progress=None) -> Path:
    """The loop's and the proofs' pretrained 64-px base (weights/tiny-domain)."""
    return shipped_base_path("tiny-domain", progress)


def tiny_domain_base(progress=None) -> ModelVersion:
    return shipped_base("tiny-domain", progress)


def demo_base(progress=None) -> ModelVersion:
    """The demo's base: the tiny SD pretrained offline at 128 px (`demo_base_config`, weights/tiny-demo)."""
    return shipped_base("tiny-demo", progress)


def domain_adapt(*, study: Study, base: ModelVersion | None = None, config: dict | None = None,
                 actor=None) -> TrainingRun:
    """Start (or find) the study's domain-adaptation run; when it is done its version becomes the study's
    current one. Runs on the worker (inline when tasks are eager)."""

    owner = owner_of(study)
    existing = TrainingRun.objects.filter(kind=RunKind.DOMAIN, owner=owner).exclude(
        status=RunStatus.FAILED).order_by("-pk").first()
    if existing is not None:
        return existing
    base = base or tiny_domain_base()
    size = tiny_size(base)
    preset = (FinetuneConfig().as_dict() if size is None
              else FinetuneConfig.tiny(size).as_dict() | {"steps": TINY_DOMAIN_STEPS, "val_every": 0})
    cfg = FinetuneConfig.from_dict({**preset, "prompt_policy": study.prompt_policy, **(config or {}),
                                    "objective": "domain"})
    key, digest, summary = domain_snapshot_freeze(study=study)
    if not summary["items"]:
        raise ValueError(f"Study {study.name} has no real images with reports to adapt to.")
    with transaction.atomic():
        run = training_run_create(kind=RunKind.DOMAIN, owner=owner, config=cfg.as_dict(), snapshot_key=key,
                                  snapshot_sha256=digest, base_version=base)
        audit(actor=actor, action="domain.start", study=study, obj=run, images=summary["items"])
    return run


def on_domain_finished(sender=None, *, run: TrainingRun, **_) -> None:
    """A study's domain run ended: its version becomes the study's current one (unless an admin chose another).
    The receiver of `training.signals.run_finished`; also called directly by whoever waited for the run."""
    pk = owner_pk(run.owner, Study)
    if run.kind != RunKind.DOMAIN or pk is None or run.status != RunStatus.DONE:
        return
    study = Study.objects.filter(pk=pk).first()
    if study is None or run.produced_version is None:
        return
    if study.current_version_id in (None, run.base_version_id):
        study_version_choose(study=study, version=run.produced_version, actor=None,
                             reason=f"domain adaptation (run {run.pk})")
