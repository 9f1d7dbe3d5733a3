"""How a round talks to the workers and hears back from them.

- Out: `advance_later` (drive the round on from a worker) and `stage_enqueue` (run the round's own stage work), both
  sent after the current transaction commits, keyed by the round id only.
- In: the lower layers' jobs (`GenerationBatch`, `TrainingRun`) carry an owner string; when a job ends, its
  `*_finished` signal reaches `on_batch_finished` / `on_run_finished` (connected in `annotation.apps`), which drive
  the owning round on.
- Liveness: the stages the round runs itself write `heartbeat` / `progress_merge`; the reconciler reads them.
"""

from __future__ import annotations

from django.db import models, transaction
from django.utils import timezone

from annotation.models import Round, RoundStatus
from annotation.tasks import round_advance_task, round_clean_task, round_evaluate_task, round_simulate_task
from inference.models import GenerationBatch


def owner_of(obj: models.Model) -> str:
    """The owner string a lower layer's job carries for `obj` (a round or a study): "annotation.round:3"."""
    return f"annotation.{obj._meta.model_name}:{obj.pk}"


def owner_pk(owner: str, model: type[models.Model]) -> int | None:
    """The primary key of the `model` row that owns a job, or None when another kind of row owns it."""
    prefix = f"annotation.{model._meta.model_name}:"
    rest = owner[len(prefix):] if owner.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def round_batches(rnd: Round) -> list[GenerationBatch]:
    """The generation batches the round waits on: the one it samples, or one per version of a comparison round."""
    if rnd.generation_batch_id is None:
        return []
    return list(GenerationBatch.objects.filter(owner=owner_of(rnd)).order_by("pk")) or [rnd.generation_batch]


# --- out ------------------------------------------------------------------------------------------------------------


def advance_later(rnd: Round | int) -> None:
    """Drive the round on from a worker, after the current transaction commits."""
    pk = rnd if isinstance(rnd, int) else rnd.pk
    transaction.on_commit(lambda: round_advance_task.delay(round_pk=pk))


def stage_enqueue(rnd: Round) -> None:
    """Send the message of the round's own stage work; stamps the heartbeat so the reconciler waits a timeout."""
    task = {RoundStatus.CLEANING: round_clean_task, RoundStatus.EVALUATING: round_evaluate_task,
            RoundStatus.LABELING: round_simulate_task}.get(rnd.status)
    if task is None:
        return
    Round.objects.filter(pk=rnd.pk).update(heartbeat_at=timezone.now())
    transaction.on_commit(lambda: task.delay(round_pk=rnd.pk))


# --- in -------------------------------------------------------------------------------------------------------------


def on_case_filled(sender, *, round_id: int, **_) -> None:
    """A case got its last planned read (`reading.signals.case_filled`): the driver checks whether labeling is
    complete and, if so, closes it and starts training now rather than at the reconciler's next beat."""
    advance_later(round_id)


def on_batch_finished(sender, batch, **_) -> None:
    """A generation batch ended: the round that owns it moves on (after the batch's own commit)."""
    pk = owner_pk(batch.owner, Round)
    if pk is not None:
        advance_later(pk)


def on_run_finished(sender, run, **_) -> None:
    """A training run ended: the round that owns it moves on (after the run's own commit)."""
    pk = owner_pk(run.owner, Round)
    if pk is not None:
        advance_later(pk)


# --- liveness -------------------------------------------------------------------------------------------------------


def heartbeat(rnd: Round) -> None:
    Round.objects.filter(pk=rnd.pk).update(heartbeat_at=timezone.now())


def progress_merge(rnd: Round, **values) -> None:
    """Merge `values` into the round's progress (one UPDATE, with the heartbeat)."""
    current = Round.objects.values_list("progress", flat=True).get(pk=rnd.pk) or {}
    Round.objects.filter(pk=rnd.pk).update(progress={**current, **values}, heartbeat_at=timezone.now())
