"""Round orchestration: one turn of the feedback loop, driven by the round's row.

    draft → generating → cleaning → labeling → training_reward → finetuning → evaluating → done
                                                  (failed, with its stage and error; cancelled)

The database row is the only state. Every stage is a thin Celery task keyed by the round id that first checks the
round is still in its stage, so running it twice changes nothing. Stages backed by a lower layer's job
(`GenerationBatch`, `TrainingRun`) learn that the job ended through its `*_finished` signal; stages the round runs
itself (cleaning, simulated reading, evaluating) write `Round.heartbeat_at` while they work. `rounds_reconcile`
(beat, every CXR_RECONCILE_EVERY_S) advances rounds whose job ended while nobody listened and re-sends the message of
any stage whose heartbeat is older than CXR_STAGE_TIMEOUT_S, so a lost message, a dead worker or a broker that lost
its data never strands a round.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from inference.config import option
from inference.models import GenerationBatch, JobStatus, ModelVersion
from training.models import RunKind, TrainingRun

from annotation import services
from annotation.answers import number_in
from annotation.models import Image, ReadingCase, Round, RoundStatus, Source, Study, TaskKind
from annotation.services import IllegalTransition, audit, round_transition

log = logging.getLogger("cxr.rounds")

ACTIVE = (RoundStatus.GENERATING, RoundStatus.CLEANING, RoundStatus.LABELING, RoundStatus.TRAINING_REWARD,
          RoundStatus.FINETUNING, RoundStatus.EVALUATING)
SELECTIONS = ("random", "active")
OBJECTIVES = {"reward_weighted": RunKind.FINETUNE, "dpo": RunKind.DPO}


def owner_of(rnd: Round) -> str:
    return f"annotation.round:{rnd.pk}"


def round_pk_from_owner(owner: str) -> int | None:
    prefix = "annotation.round:"
    return int(owner[len(prefix):]) if owner.startswith(prefix) and owner[len(prefix):].isdigit() else None


# --- configuration -------------------------------------------------------------------------------------------------


MAX_IMAGES = 100_000  # per round: a bound that keeps every count a sane integer for the database and the sampler
MAX_OVERSAMPLE = 100


@dataclass(frozen=True)
class RoundConfig:
    """What one round does. Stored on the round at launch; a study's `round_defaults` pre-fill it."""

    synthetic: int | None = option(None, "Synthetic images readers see; default: the study's images_per_round × "
                                         "(1 − real_fraction).")
    real: int | None = option(None, "Real images mixed in; default: the rest of images_per_round.")
    oversample: float = option(1.0, "Generate this many times the synthetic budget; `selection` picks which go "
                                    "to readers (≥ 1).")
    selection: str = option("random", "'random' (seeded) or 'active' (reward-model uncertainty + diversity).")
    uncertainty_weight: float = option(0.5, "Active selection: weight of uncertainty against diversity, 0–1.")
    objective: str = option("reward_weighted", "'reward_weighted' (the seed paper's) or 'dpo' (preference pairs).")
    train: bool = option(True, "Train the reward model and finetune after labeling; off: the round ends there.")
    feedback_rounds: str = option("all", "'all': labels of every finished round of the study feed training; "
                                         "'this': only this round's.")
    generation: dict = option({}, "GenerationConfig overrides (steps, guidance_scale, height, ...).")
    reward: dict = option({}, "RewardConfig overrides.")
    finetune: dict = option({}, "FinetuneConfig overrides (steps, lr, beta, rank, ...).")
    eval_samples: int = option(8, "Paired samples (same prompts and seeds) of the old and new version scored by "
                                  "the reward model before the new version is promoted.")
    promote: str = option("auto", "'auto': the new version becomes the study's current one when it scores no "
                                  "worse than `promote_margin` below its parent; 'manual': an admin decides.")
    promote_margin: float = option(0.0, "How far (reward units, −1 to 1) the new version may score below its "
                                        "parent and still be promoted; negative: it must score that much better.")
    image_metrics: bool = option(True, "Compute image metrics (FID when weights are configured, PRDC, ...) in the "
                                       "evaluating stage.")
    auto_next: bool = option(False, "Launch the next round with the same settings when this one is done.")
    seed: int | None = option(None, "Seeds prompts, sampling and selection; default: from the study seed and "
                                    "round number.")

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValidationError(f"selection must be one of {', '.join(SELECTIONS)}.")
        if self.objective not in OBJECTIVES:
            raise ValidationError(f"objective must be one of {', '.join(OBJECTIVES)}.")
        if self.feedback_rounds not in ("all", "this") or self.promote not in ("auto", "manual"):
            raise ValidationError("feedback_rounds must be 'all' or 'this'; promote 'auto' or 'manual'.")
        number_in(self.oversample, 1, MAX_OVERSAMPLE, "oversample", whole=False)
        number_in(self.uncertainty_weight, 0, 1, "uncertainty_weight", whole=False)
        number_in(self.promote_margin, -1, 1, "promote_margin", whole=False)  # negative: the new version must score better
        number_in(self.eval_samples, 0, MAX_IMAGES, "eval_samples")
        for name in ("synthetic", "real"):
            if getattr(self, name) is not None:
                number_in(getattr(self, name), 0, MAX_IMAGES, name)
        if self.seed is not None:
            number_in(self.seed, 0, 2**31 - 1, "seed")
        for name in ("train", "image_metrics", "auto_next"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(f"{name} must be true or false.")
        for name in ("generation", "reward", "finetune"):
            if not isinstance(getattr(self, name), dict):
                raise ValidationError(f"{name} must be an object of settings.")

    @classmethod
    def from_dict(cls, data: dict) -> RoundConfig:
        if not isinstance(data, dict):
            raise ValidationError("The round configuration must be an object.")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValidationError(f"Unknown round settings: {', '.join(sorted(unknown))}.")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValidationError(str(exc)) from None

    def as_dict(self) -> dict:
        return asdict(self)

    def budget(self, study: Study) -> tuple[int, int]:
        """(synthetic, real) images readers see."""
        synthetic = self.synthetic if self.synthetic is not None else round(
            study.images_per_round * (1 - study.real_fraction))
        real = self.real if self.real is not None else max(0, study.images_per_round - synthetic)
        return synthetic, real


def round_config(rnd: Round) -> RoundConfig:
    return RoundConfig.from_dict(rnd.config)


def _seed(rnd: Round) -> int:
    cfg = round_config(rnd)
    return int(cfg.seed) if cfg.seed is not None else (rnd.study.seed * 1_000_003 + rnd.number) % 2**31


# --- model versions ------------------------------------------------------------------------------------------------


def study_version(study: Study) -> ModelVersion:
    """The version the study's next round samples from (the configured default until something is chosen)."""
    if study.current_version_id is None:
        from inference.services import model_version_default

        study.current_version = model_version_default()
        study.save(update_fields=["current_version"])
    return study.current_version


def study_versions(study: Study) -> list[ModelVersion]:
    """Versions an admin may choose for the study: the current one, its ancestors, and every version the
    study's rounds sampled from or produced (with their ancestors)."""
    seen: dict[int, ModelVersion] = {}
    starts = [study.current_version] if study.current_version_id else []
    for rnd in study.rounds.select_related("model_version", "produced_version"):
        starts += [v for v in (rnd.model_version, rnd.produced_version) if v is not None]
    starts += [run.produced_version for run in TrainingRun.objects.filter(
        owner=f"annotation.study:{study.pk}", produced_version__isnull=False).select_related("produced_version")]
    for version in starts:
        while version is not None and version.pk not in seen:
            seen[version.pk] = version
            version = version.parent
    return sorted(seen.values(), key=lambda v: v.pk)


def study_version_choose(*, study: Study, version: ModelVersion, actor: AbstractUser | None,
                         reason: str = "chosen by an admin") -> Study:
    """Make `version` the one the next round samples from (promotion, roll-back or an admin's choice)."""
    if version.pk not in {v.pk for v in study_versions(study)}:
        raise ValidationError(f"Version {version.name} does not belong to study {study.name}.")
    if version.load_error:
        raise ValidationError(f"Version {version.name} cannot be loaded: {version.load_error}")
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study.pk)
        previous = study.current_version
        study.current_version = version
        study.save(update_fields=["current_version"])
        audit(actor=actor, action="version.choose", study=study, obj=version, reason=reason,
              previous=previous.name if previous else None, version=version.name)
    return study


def study_version_rollback(*, study: Study, actor: AbstractUser | None) -> Study:
    current = study_version(study)
    if current.parent is None:
        raise ValidationError(f"{current.name} has no parent to roll back to.")
    return study_version_choose(study=study, version=current.parent, actor=actor, reason="roll-back")


# --- launch and admin actions ---------------------------------------------------------------------------------------


def round_launch(*, study: Study, actor: AbstractUser | None = None, config: dict | None = None,
                 round: Round | None = None) -> Round:
    """Create (or take a draft) round, fix its configuration and the version it samples from, and start
    generating. Refused while another round of the study is still running."""
    from inference.services import generation_batch_create, generation_config_default
    from inference.tiny import TEMPLATE_REPORTS

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
    version = study_version(study)
    gen = generation_config_default(version).as_dict()
    if TaskKind.PREFERENCE in study.task_kinds:
        gen["images_per_prompt"] = 2
    try:
        from inference.generation import GenerationConfig

        gen_cfg = GenerationConfig.from_dict({**gen, **cfg.generation})
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"generation: {exc}") from None
    prompts = []
    if study.prompt_source == "reports":
        prompts = list(Image.objects.filter(study=study, source=Source.REAL).exclude(prompt="")
                       .values_list("prompt", flat=True).distinct()[:5000])
    prompts = prompts or list(TEMPLATE_REPORTS)
    with transaction.atomic():
        rnd = round or services.round_create(study=study, actor=actor)
        rnd = Round.objects.select_for_update().get(pk=rnd.pk)
        if rnd.status != RoundStatus.DRAFT:
            raise IllegalTransition(f"Round {rnd.number} was launched already ({rnd.status}).")
        rnd.config, rnd.model_version = cfg.as_dict(), version
        rnd.save(update_fields=["config", "model_version"])
        count = max(synthetic, int(np.ceil(synthetic * cfg.oversample)))
        if gen_cfg.images_per_prompt > 1:
            count = int(np.ceil(count / gen_cfg.images_per_prompt) * gen_cfg.images_per_prompt)
        rnd.generation_batch = generation_batch_create(
            model_version=version, count=count, prompts=prompts, seed=_seed(rnd), owner=owner_of(rnd),
            config=gen_cfg, clean=False)
        rnd.progress = {"generated": 0, "to_generate": count}
        rnd.save(update_fields=["generation_batch", "progress"])
        rnd = round_transition(round=rnd, to=RoundStatus.GENERATING, actor=actor)
        audit(actor=actor, action="round.launch", study=study, obj=rnd, version=version.name, config=cfg.as_dict())
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
    it does not train. The share answered is recorded on the round."""
    with transaction.atomic():
        rnd = Round.objects.select_for_update().select_related("study").get(pk=round.pk)
        if rnd.status != RoundStatus.LABELING:
            if rnd.status in (RoundStatus.TRAINING_REWARD, RoundStatus.DONE) and rnd.labeling_closed_at:
                return rnd  # closed already (twice is fine)
            raise IllegalTransition(f"Round {rnd.number} is {rnd.status}, not labeling.")
        share = labeling_share(rnd)
        rnd.metrics = {**rnd.metrics, "labeling": share}
        rnd.save(update_fields=["metrics"])
        train = round_config(rnd).train
        rnd = round_transition(round=rnd, to=RoundStatus.TRAINING_REWARD if train else RoundStatus.DONE,
                               actor=actor)
        audit(actor=actor, action="round.close_labeling", study=rnd.study, obj=rnd, **share)
        from annotation.tasks import round_snapshot_freeze

        transaction.on_commit(lambda: round_snapshot_freeze.delay(round_pk=rnd.pk))
    advance_later(rnd)
    return rnd


def round_retry(*, round: Round, actor: AbstractUser | None = None) -> Round:
    """Restart a failed round at the stage that failed; the stage's job resumes where it stopped."""
    from inference.services import generation_batch_requeue
    from training.services import training_run_requeue

    with transaction.atomic():
        rnd = Round.objects.select_for_update().get(pk=round.pk)
        if rnd.status != RoundStatus.FAILED or not rnd.failed_stage:
            raise IllegalTransition(f"Round {rnd.number} is {rnd.status}; only a failed round can be retried.")
        stage = rnd.failed_stage
        rnd = round_transition(round=rnd, to=stage, actor=actor)
        Round.objects.filter(pk=rnd.pk).update(failed_stage="", stage_error="", heartbeat_at=timezone.now())
        if stage == RoundStatus.GENERATING and rnd.generation_batch_id:
            GenerationBatch.objects.filter(pk=rnd.generation_batch_id, status=JobStatus.FAILED).update(
                status=JobStatus.PENDING)
            generation_batch_requeue(batch=rnd.generation_batch)
        elif stage == RoundStatus.TRAINING_REWARD and rnd.reward_run_id:
            _rerun(rnd.reward_run, training_run_requeue)
        elif stage == RoundStatus.FINETUNING and rnd.finetune_run_id:
            _rerun(rnd.finetune_run, training_run_requeue)
        else:
            _enqueue_stage(rnd)
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


# --- the driver -------------------------------------------------------------------------------------------------------


def round_advance(*, round: Round) -> Round:
    """Move the round on if its current stage is finished; start the next stage's work. Idempotent: it only looks at
    the rows, so calling it any number of times, from signals, the reconciler or an admin, is safe."""
    rnd = Round.objects.select_related("study", "generation_batch", "reward_run", "finetune_run").get(pk=round.pk)
    status = rnd.status
    if status == RoundStatus.GENERATING:
        batch = rnd.generation_batch
        if batch.status == JobStatus.DONE:
            rnd = _to(rnd, RoundStatus.GENERATING, RoundStatus.CLEANING, then=_enqueue_stage)
        elif batch.status == JobStatus.FAILED:
            rnd = round_fail(round=rnd, stage=status, error=f"generation batch {batch.pk}: {batch.error_message}")
    elif status in (RoundStatus.CLEANING, RoundStatus.EVALUATING):
        _enqueue_stage(rnd)
    elif status == RoundStatus.LABELING:
        if labeling_complete(rnd):
            rnd = round_close_labeling(round=rnd)
        elif _has_simulated_work(rnd):
            _enqueue_stage(rnd)
    elif status == RoundStatus.TRAINING_REWARD:
        rnd = _advance_reward(rnd)
    elif status == RoundStatus.FINETUNING:
        rnd = _advance_finetune(rnd)
    return rnd


def _to(rnd: Round, current: str, to: str, *, then=None, **fields_) -> Round:
    """Transition if the round is still in `current` (a concurrent driver may have moved it already)."""
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != current:
            return locked
        for name, value in fields_.items():
            setattr(locked, name, value)
        if fields_:
            locked.save(update_fields=list(fields_))
        locked = round_transition(round=locked, to=to)
        Round.objects.filter(pk=locked.pk).update(heartbeat_at=timezone.now())
        if then is not None:
            then(locked)
    return locked


def _advance_reward(rnd: Round) -> Round:
    from training.reward import RewardConfig
    from training.services import training_run_create

    from annotation.feedback import feedback_snapshot_freeze

    run = rnd.reward_run
    if run is None:
        cfg = round_config(rnd)
        rounds = [rnd]
        if cfg.feedback_rounds == "all":
            rounds = list(Round.objects.filter(study=rnd.study, number__lt=rnd.number, status=RoundStatus.DONE,
                                               labeling_closed_at__isnull=False)) + [rnd]
        key, digest, summary = feedback_snapshot_freeze(rounds=rounds)
        base = RewardConfig.tiny() if _tiny(rnd) else RewardConfig()
        try:
            reward_cfg = RewardConfig.from_dict({**base.to_dict(), **cfg.reward,
                                                 "criteria": [c["key"] for c in rnd.study.rubric]})
        except (TypeError, ValueError) as exc:
            return round_fail(round=rnd, stage=rnd.status, error=f"reward settings: {exc}")
        with transaction.atomic():
            locked = Round.objects.select_for_update().get(pk=rnd.pk)
            if locked.status != RoundStatus.TRAINING_REWARD or locked.reward_run_id:
                return locked
            locked.reward_run = training_run_create(kind=RunKind.REWARD, owner=owner_of(rnd),
                                                    config=reward_cfg.to_dict(), snapshot_key=key,
                                                    snapshot_sha256=digest)
            locked.metrics = {**locked.metrics, "feedback": summary}
            locked.save(update_fields=["reward_run", "metrics"])
        return locked
    if run.status == JobStatus.FAILED:
        return round_fail(round=rnd, stage=rnd.status, error=f"reward run {run.pk}: {run.error_message}")
    if run.status != JobStatus.DONE:
        return rnd
    return _start_finetune(rnd)


def _start_finetune(rnd: Round) -> Round:
    from training.finetune import FinetuneConfig
    from training.services import snapshot_load, training_run_create

    cfg = round_config(rnd)
    kind = OBJECTIVES[cfg.objective]
    reward_run = rnd.reward_run
    if kind == RunKind.DPO and not snapshot_load(reward_run)["pairs"]:
        return round_fail(round=rnd, stage=rnd.status,
                          error="DPO needs preference pairs; this round's labels gave none (add the preference task "
                                "kind, or use objective reward_weighted).")
    base = FinetuneConfig.tiny() if _tiny(rnd) else FinetuneConfig()
    try:
        ft = FinetuneConfig.from_dict({**base.as_dict(), **cfg.finetune, "seed": _seed(rnd)})
    except (TypeError, ValueError) as exc:
        return round_fail(round=rnd, stage=rnd.status, error=f"finetune settings: {exc}")
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != RoundStatus.TRAINING_REWARD:
            return locked
        locked.finetune_run = training_run_create(
            kind=kind, owner=owner_of(rnd), config=ft.as_dict(), snapshot_key=reward_run.snapshot_key,
            snapshot_sha256=reward_run.snapshot_sha256, base_version=rnd.model_version, reward_run=reward_run)
        reward_metrics = reward_run.metrics or {}
        locked.metrics = {**locked.metrics, "reward": {
            "run": reward_run.pk, "auroc": (reward_metrics.get("realism") or {}).get("auroc"),
            "auroc_skipped": (reward_metrics.get("realism") or {}).get("auroc_skipped"),
            "criteria": reward_metrics.get("criteria"), "mismatch": reward_metrics.get("mismatch"),
        }}
        locked.save(update_fields=["finetune_run", "metrics"])
        return round_transition(round=locked, to=RoundStatus.FINETUNING)


def _advance_finetune(rnd: Round) -> Round:
    run = rnd.finetune_run
    if run is None:  # the transition and the run are written together; only a hand-edited row gets here
        return round_fail(round=rnd, stage=rnd.status, error="no finetune run recorded")
    if run.status == JobStatus.FAILED:
        return round_fail(round=rnd, stage=rnd.status, error=f"finetune run {run.pk}: {run.error_message}")
    if run.status != JobStatus.DONE:
        return rnd
    run.refresh_from_db()
    return _to(rnd, RoundStatus.FINETUNING, RoundStatus.EVALUATING, then=_enqueue_stage,
               produced_version=run.produced_version,
               metrics={**rnd.metrics, "finetune": {"run": run.pk, **(run.metrics or {}),
                                                    "loss_curve_points": len(run.loss_curve)}})


def _tiny(rnd: Round) -> bool:
    from inference.services import is_tiny_version

    return rnd.model_version is not None and is_tiny_version(rnd.model_version)


def _has_simulated_work(rnd: Round) -> bool:
    from annotation.simulated import simulated_members

    return bool(simulated_members(rnd.study))


# --- messages -----------------------------------------------------------------------------------------------------


def advance_later(rnd: Round) -> None:
    """Drive the round on from a worker, after the current transaction commits."""
    from annotation.tasks import round_advance as task

    transaction.on_commit(lambda: task.delay(round_pk=rnd.pk))


def _enqueue_stage(rnd: Round) -> None:
    """Send the message of the round's own stage work; stamps the heartbeat so the reconciler waits a timeout."""
    from annotation import tasks

    task = {RoundStatus.CLEANING: tasks.round_clean, RoundStatus.EVALUATING: tasks.round_evaluate,
            RoundStatus.LABELING: tasks.round_simulate}.get(rnd.status)
    if task is None:
        return
    Round.objects.filter(pk=rnd.pk).update(heartbeat_at=timezone.now())
    transaction.on_commit(lambda: task.delay(round_pk=rnd.pk))


def on_job_finished(owner: str) -> None:
    """A lower layer's job of a round ended: drive the round on (after the job's own commit)."""
    pk = round_pk_from_owner(owner)
    if pk is not None:
        from annotation.tasks import round_advance as task

        transaction.on_commit(lambda: task.delay(round_pk=pk))


# --- recovery ------------------------------------------------------------------------------------------------------


def rounds_reconcile(*, timeout_s: float | None = None) -> list[dict]:
    """Advance every running round whose job ended while nobody listened, and re-send the message of every stage
    whose heartbeat is older than `timeout_s` (default CXR_STAGE_TIMEOUT_S). Returns what it did."""
    from inference.services import generation_batch_requeue
    from training.services import training_run_requeue

    timeout = settings.CXR_STAGE_TIMEOUT_S if timeout_s is None else timeout_s
    stale_before = timezone.now() - timedelta(seconds=timeout)
    actions: list[dict] = []
    rounds = (Round.objects.filter(status__in=ACTIVE)
              .select_related("study", "generation_batch", "reward_run", "finetune_run"))
    for rnd in rounds:
        job = {RoundStatus.GENERATING: rnd.generation_batch, RoundStatus.TRAINING_REWARD: rnd.reward_run,
               RoundStatus.FINETUNING: rnd.finetune_run}.get(rnd.status)
        try:
            if job is not None and job.status in (JobStatus.DONE, JobStatus.FAILED):
                actions.append({"round": rnd.pk, "status": rnd.status, "action": "advance"})
                round_advance(round=rnd)
            elif job is not None:
                beat = job.heartbeat_at or job.created_at
                if beat < stale_before:
                    actions.append({"round": rnd.pk, "status": rnd.status, "action": "requeue",
                                    "job": f"{type(job).__name__}:{job.pk}"})
                    with transaction.atomic():
                        (generation_batch_requeue(batch=job) if isinstance(job, GenerationBatch)
                         else training_run_requeue(run=job))
            elif rnd.status == RoundStatus.TRAINING_REWARD:
                actions.append({"round": rnd.pk, "status": rnd.status, "action": "advance"})
                round_advance(round=rnd)  # the reward run was never created
            elif rnd.status == RoundStatus.LABELING:
                if labeling_complete(rnd):
                    actions.append({"round": rnd.pk, "status": rnd.status, "action": "close"})
                    round_close_labeling(round=rnd)
                elif _has_simulated_work(rnd) and (rnd.heartbeat_at or rnd.labeling_opened_at) < stale_before:
                    actions.append({"round": rnd.pk, "status": rnd.status, "action": "requeue"})
                    with transaction.atomic():
                        _enqueue_stage(rnd)
            elif (rnd.heartbeat_at or rnd.created_at) < stale_before:
                actions.append({"round": rnd.pk, "status": rnd.status, "action": "requeue"})
                with transaction.atomic():
                    _enqueue_stage(rnd)
        except Exception:  # one broken round must not stop the others from being recovered
            log.exception("reconciling round %s failed", rnd.pk)
    return actions


def heartbeat(rnd: Round) -> None:
    Round.objects.filter(pk=rnd.pk).update(heartbeat_at=timezone.now())


def _progress(rnd: Round, **values) -> None:
    """Merge `values` into the round's progress (one UPDATE, with the heartbeat)."""
    current = Round.objects.values_list("progress", flat=True).get(pk=rnd.pk) or {}
    Round.objects.filter(pk=rnd.pk).update(progress={**current, **values}, heartbeat_at=timezone.now())


def _in_stage(round_pk: int, status: str) -> Round | None:
    rnd = Round.objects.select_related("study", "generation_batch", "model_version", "produced_version",
                                       "reward_run", "finetune_run").get(pk=round_pk)
    return rnd if rnd.status == status else None


def _stage(status: str):
    """Run a round's own stage: skipped unless the round is in it; an exception fails the round with the error."""
    def wrap(fn):
        def run(round_pk: int) -> str:
            rnd = _in_stage(round_pk, status)
            if rnd is None:
                return "skipped"
            heartbeat(rnd)
            try:
                fn(rnd)
            except Exception as exc:
                log.exception("round %s: %s failed", round_pk, status)
                round_fail(round=rnd, stage=status, error=f"{type(exc).__name__}: {exc}")
                return "failed"
            return "done"
        run.__name__ = run.__qualname__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run
    return wrap


# --- cleaning: choose, import, clean, open ------------------------------------------------------------------------


@_stage(RoundStatus.CLEANING)
def round_clean(rnd: Round) -> None:
    """Choose which generated images readers see, store them in the round with the real images, clean them all
    (real and synthetic alike) and open labeling."""
    from annotation.selection import select_generated

    cfg = round_config(rnd)
    synthetic, real = cfg.budget(rnd.study)
    if not rnd.selection:
        selection = select_generated(rnd, budget=synthetic, strategy=cfg.selection, seed=_seed(rnd),
                                     uncertainty_weight=cfg.uncertainty_weight)
        Round.objects.filter(pk=rnd.pk, selection={}).update(selection=selection)
        rnd.refresh_from_db()
    _import_selected(rnd)
    _attach_real(rnd, real)
    total = Image.objects.filter(round=rnd, cleaned_from__isnull=True, is_catch=False).count()
    done = Image.objects.filter(round=rnd, cleaned_from__isnull=False).count()
    _progress(rnd, to_clean=total + done, cleaned=done)

    def cleaned_one() -> None:
        nonlocal done
        done += 1
        _progress(rnd, cleaned=done)

    services.round_clean_images(round=rnd, on_cleaned=cleaned_one)
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != RoundStatus.CLEANING:
            return
        services.round_open_labeling(round=locked)
    round_advance(round=rnd)


def _import_selected(rnd: Round) -> None:
    from inference.models import GeneratedImage
    from training.services import image_load

    chosen = rnd.selection.get("chosen", [])
    version = rnd.model_version
    for item in GeneratedImage.objects.filter(batch=rnd.generation_batch, index__in=chosen).order_by("index"):
        if Image.objects.filter(study=rnd.study, meta__generated=item.pk).exists():
            continue
        services.image_store(
            study=rnd.study, round=rnd, source=Source.SYNTHETIC, pixels=image_load(item.raw_key), prompt=item.prompt,
            seed=item.seed, generator=version.name, model_version=version,
            meta={"generated": item.pk, "batch": item.batch_id, "batch_index": item.index})
        heartbeat(rnd)


def _attach_real(rnd: Round, wanted: int) -> None:
    """Real images from the study's pool (imported, not yet read in any round), up to `wanted` in the round."""
    have = Image.objects.filter(round=rnd, source=Source.REAL, is_catch=False).count()
    if have >= wanted:
        return
    used = Image.objects.filter(study=rnd.study, cleaned_from__isnull=False).values("cleaned_from")
    pool = (Image.objects.filter(study=rnd.study, source=Source.REAL, round__isnull=True, is_catch=False,
                                 cleaned_from__isnull=True).exclude(pk__in=used).order_by("pk"))
    picked = list(pool.values_list("pk", flat=True)[: wanted - have])
    Image.objects.filter(pk__in=picked).update(round=rnd)
    if len(picked) < wanted - have:
        Round.objects.filter(pk=rnd.pk).update(metrics={
            **rnd.metrics, "warnings": [f"only {have + len(picked)} of {wanted} real images were available"]})


# --- simulated reading -----------------------------------------------------------------------------------------------


@_stage(RoundStatus.LABELING)
def round_simulate(rnd: Round) -> None:
    """The study's simulated readers answer their queues; labeling closes if that completes it."""
    import time

    from annotation.simulated import round_simulate_readers

    last = [time.monotonic()]

    def beat() -> None:
        if time.monotonic() - last[0] > 2.0:
            last[0] = time.monotonic()
            heartbeat(rnd)

    round_simulate_readers(round=rnd, on_answer=beat)
    round_advance(round=rnd)


# --- evaluating ------------------------------------------------------------------------------------------------------


@_stage(RoundStatus.EVALUATING)
def round_evaluate(rnd: Round) -> None:
    """Reader statistics and image metrics for the round, the simulated readers' preference score of what it
    generated, and the promotion check of the new version against its parent; then done (and the next round,
    when configured)."""
    from annotation.evaluation import evaluate_round

    metrics, promote = evaluate_round(rnd)
    with transaction.atomic():
        locked = Round.objects.select_for_update().get(pk=rnd.pk)
        if locked.status != RoundStatus.EVALUATING:
            return
        locked.metrics = {**locked.metrics, **metrics}
        locked.save(update_fields=["metrics"])
        if promote and rnd.produced_version is not None:
            study_version_choose(study=rnd.study, version=rnd.produced_version, actor=None,
                                 reason=f"promoted by round {rnd.number}")
        round_transition(round=locked, to=RoundStatus.DONE)
    if round_config(rnd).auto_next:
        transaction.on_commit(lambda: round_launch(study=Study.objects.get(pk=rnd.study_id), config=rnd.config))

