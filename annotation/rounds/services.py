"""Every service that moves a round: create, launch, open and close labeling, retry, cancel, fail.

Views, the API, the CLI and the driver call these; each locks the round's row and goes through `round_transition`.
"""

from __future__ import annotations

import logging

import numpy as np
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from annotation.models import Image, ReadingCase, Round, RoundStatus, Study, TaskKind
from annotation.reading.cases import cases_build, cases_table_analyze
from annotation.rounds.config import RoundConfig, finetune_settings, round_config, round_seed
from annotation.rounds.messages import advance_later, owner_of, round_batches, stage_enqueue
from annotation.rounds.panel import study_prompts
from annotation.rounds.transitions import ACTIVE, ROUND_TRANSITIONS, IllegalTransition, round_transition
from annotation.rounds.versions import comparison_versions, study_version
from annotation.studies.audit import audit
from annotation.tasks import round_report_build_task, round_snapshot_freeze_task
from inference.ml.generation_config import GenerationConfig
from inference.models import GenerationBatch, JobStatus
from inference.services import generation_batch_create, generation_batch_requeue, generation_config_default
from training.models import TrainingRun
from training.services import training_run_requeue

log = logging.getLogger("cxr.rounds")


def round_create(*, study: Study, actor: AbstractUser | None = None) -> Round:
    with transaction.atomic():
        last = Round.objects.select_for_update().filter(study=study).order_by("-number").first()
        rnd = Round.objects.create(study=study, number=(last.number + 1) if last else 1)
        audit(actor=actor, action="round.create", study=study, obj=rnd, number=rnd.number)
    return rnd


def round_open_labeling(*, round: Round, actor: AbstractUser | None = None) -> Round:
    """Build the round's reading cases from its images and open it to readers."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().select_related("study").get(pk=round.pk)
        if rnd.status == RoundStatus.LABELING:
            return rnd
        if RoundStatus.LABELING not in ROUND_TRANSITIONS[rnd.status]:
            raise IllegalTransition(f"A round cannot go from {rnd.status} to labeling.")
        images = list(Image.objects.filter(round=rnd).order_by("pk"))
        if not images:
            raise ValidationError("The round has no images to read.")
        rnd.pools = cases_build(rnd, images)
        rnd.labeling_opened_at = timezone.now()
        rnd.save(update_fields=["pools", "labeling_opened_at"])
        rnd = round_transition(round=rnd, to=RoundStatus.LABELING, actor=actor)
    cases_table_analyze()
    return rnd

def round_launch(*, study: Study, actor: AbstractUser | None = None, config: dict | None = None,
                 round: Round | None = None) -> Round:
    """Create (or take a draft) round, fix its configuration and the version it samples from, and start
    generating. Refused while another round of the study is still running."""

    study = Study.objects.get(pk=study.pk)  # its current version may have changed since the caller read it
    cfg = RoundConfig.from_dict({**(study.round_defaults or {}), **(config or {})})
    synthetic, real = cfg.budget(study)
    busy = Round.objects.filter(study=study, status__in=ACTIVE).exclude(pk=getattr(round, "pk", None)).first()
    if busy is not None:
        raise ValidationError(f"Round {busy.number} of {study.name} is still {busy.status}; finish, close or cancel "
                              "it before launching another.")
    if synthetic < 1:
        raise ValidationError("A round needs at least one synthetic image (images_per_round or synthetic).")
    if TaskKind.PREFERENCE in study.task_kinds and synthetic < 2:
        raise ValidationError("Preference tasks need at least two synthetic images per round.")
    versions = comparison_versions(study, cfg.compare) if cfg.compare else [study_version(study)]
    version = versions[0]
    gen = generation_config_default(version).as_dict() | {"prompt_policy": study.prompt_policy}
    if TaskKind.PREFERENCE in study.task_kinds and not cfg.compare:
        gen["images_per_prompt"] = 2
    if cfg.compare:
        gen["images_per_prompt"] = 1  # one image per prompt and seed, the same request for every version
    try:
        gen_cfg = GenerationConfig.from_dict({**gen, **cfg.generation})
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"generation: {exc}") from None
    if cfg.trains:
        finetune_settings(cfg, version, study=study)  # refused now, before any image is generated, if it cannot work
    prompts = study_prompts(study)
    with transaction.atomic():
        rnd = round or round_create(study=study, actor=actor)
        rnd = Round.objects.select_for_update().get(pk=rnd.pk)
        if rnd.status != RoundStatus.DRAFT:
            raise IllegalTransition(f"Round {rnd.number} was launched already ({rnd.status}).")
        rnd.config, rnd.model_version = cfg.as_dict(), version
        rnd.save(update_fields=["config", "model_version"])
        count = max(synthetic, int(np.ceil(synthetic * cfg.oversample)))
        if gen_cfg.images_per_prompt > 1:
            count = int(np.ceil(count / gen_cfg.images_per_prompt) * gen_cfg.images_per_prompt)
        batches = [generation_batch_create(model_version=v, count=count, prompts=prompts, seed=round_seed(rnd),
                                           owner=owner_of(rnd), config=gen_cfg, clean=False) for v in versions]
        rnd.generation_batch = batches[0]
        rnd.progress = {"generated": 0, "to_generate": count * len(batches)}
        rnd.save(update_fields=["generation_batch", "progress"])
        rnd = round_transition(round=rnd, to=RoundStatus.GENERATING, actor=actor)
        audit(actor=actor, action="round.launch", study=study, obj=rnd, version=version.name, config=cfg.as_dict(),
              **({"compare": [v.name for v in versions]} if cfg.compare else {}))
    return rnd


def labeling_share(rnd: Round) -> dict:
    """Answers stored against answers planned (readers_per_image per case; catch trials not counted)."""
    totals = ReadingCase.objects.filter(round=rnd, is_catch=False).aggregate(done=Sum("done"),
                                                                             planned=Sum("capacity"))
    done, planned = totals["done"] or 0, totals["planned"] or 0
    return {"answered": done, "planned": planned, "share": done / planned if planned else None}


def labeling_complete(rnd: Round) -> bool:
    return (ReadingCase.objects.filter(round=rnd, is_catch=False).exists()
            and not ReadingCase.objects.filter(round=rnd, is_catch=False, done__lt=F("capacity")).exists())


def round_close_labeling(*, round: Round, actor: AbstractUser | None = None) -> Round:
    """End labeling (every task answered, or an admin's decision) and start training, or finish the round when
    it does not train (its config says so, or it sampled from no model version). The share answered is recorded on
    the round."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().select_related("study").get(pk=round.pk)
        if rnd.status != RoundStatus.LABELING:
            if rnd.status in (RoundStatus.TRAINING_REWARD, RoundStatus.DONE) and rnd.labeling_closed_at:
                return rnd  # closed already (twice is fine)
            raise IllegalTransition(f"Round {rnd.number} is {rnd.status}, not labeling.")
        share = labeling_share(rnd)
        rnd.metrics = {**rnd.metrics, "labeling": share}
        rnd.save(update_fields=["metrics"])
        # a round of images stored directly (it sampled from no model version) has nothing to finetune, and a
        # comparison round does not train: they end here, with their report
        train = round_config(rnd).trains and rnd.model_version_id is not None
        rnd = round_transition(round=rnd, to=RoundStatus.TRAINING_REWARD if train else RoundStatus.DONE,
                               actor=actor)
        audit(actor=actor, action="round.close_labeling", study=rnd.study, obj=rnd, **share)

        transaction.on_commit(lambda: round_snapshot_freeze_task.delay(round_pk=rnd.pk))
        if round_config(rnd).compare:  # its report (the MRMC analysis) is what a comparison round is for
            transaction.on_commit(lambda: round_report_build_task.delay(round_pk=rnd.pk))
    advance_later(rnd)
    return rnd


def round_retry(*, round: Round, actor: AbstractUser | None = None) -> Round:
    """Restart a failed round at the stage that failed; the stage's job resumes where it stopped."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().get(pk=round.pk)
        if rnd.status != RoundStatus.FAILED or not rnd.failed_stage:
            raise IllegalTransition(f"Round {rnd.number} is {rnd.status}; only a failed round can be retried.")
        stage = rnd.failed_stage
        rnd = round_transition(round=rnd, to=stage, actor=actor)
        Round.objects.filter(pk=rnd.pk).update(failed_stage="", stage_error="", heartbeat_at=timezone.now())
        if stage == RoundStatus.GENERATING and rnd.generation_batch_id:
            for batch in round_batches(rnd):
                if batch.status != JobStatus.DONE:
                    GenerationBatch.objects.filter(pk=batch.pk, status=JobStatus.FAILED).update(
                        status=JobStatus.PENDING)
                    generation_batch_requeue(batch=batch)
        elif stage == RoundStatus.TRAINING_REWARD and rnd.reward_run_id:
            _rerun(rnd.reward_run, training_run_requeue)
        elif stage == RoundStatus.FINETUNING and rnd.finetune_run_id:
            _rerun(rnd.finetune_run, training_run_requeue)
        else:
            stage_enqueue(rnd)
        audit(actor=actor, action="round.retry", study=rnd.study, obj=rnd, stage=stage)
    return Round.objects.get(pk=rnd.pk)


def _rerun(run: TrainingRun, requeue) -> None:
    TrainingRun.objects.filter(pk=run.pk, status=JobStatus.FAILED).update(status=JobStatus.PENDING)
    requeue(run=run)


def round_cancel(*, round: Round, actor: AbstractUser | None = None) -> Round:
    """Stop the round: nothing further is scheduled, labels stay, readers get no more tasks from it."""
    return round_transition(round=round, to=RoundStatus.CANCELLED, actor=actor)


def round_fail(*, round: Round, stage: str, error: str) -> Round:
    with transaction.atomic():
        rnd = Round.objects.select_for_update().get(pk=round.pk)
        if rnd.status != stage:
            return rnd
        rnd = round_transition(round=rnd, to=RoundStatus.FAILED, error=error)
        Round.objects.filter(pk=rnd.pk).update(failed_stage=stage)
    log.warning("round %s failed in %s: %s", rnd.pk, stage, error)
    return Round.objects.get(pk=rnd.pk)
