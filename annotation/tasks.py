from celery import shared_task

from . import assignment


@shared_task(name="annotation.tasks.claims_expire_stale")
def claims_expire_stale() -> int:
    return assignment.claims_expire_stale()


@shared_task(name="annotation.tasks.round_report_build")
def round_report_build(*, round_pk: int) -> str:
    from .models import Round
    from .reports import round_report_compute

    rnd = Round.objects.select_related("study").get(pk=round_pk)
    round_report_compute(round=rnd)
    return "done"


# --- rounds: thin tasks keyed by the round id; each checks the round is still in its stage (safe to run twice) ---


@shared_task(name="annotation.tasks.round_advance")
def round_advance(*, round_pk: int) -> str:
    from .models import Round
    from .rounds import round_advance as advance

    return advance(round=Round.objects.get(pk=round_pk)).status


@shared_task(name="annotation.tasks.round_clean", acks_late=True, reject_on_worker_lost=True)
def round_clean(*, round_pk: int) -> str:
    from .rounds import round_clean as stage

    return stage(round_pk)


@shared_task(name="annotation.tasks.round_evaluate", acks_late=True, reject_on_worker_lost=True)
def round_evaluate(*, round_pk: int) -> str:
    from .rounds import round_evaluate as stage

    return stage(round_pk)


@shared_task(name="annotation.tasks.round_simulate", acks_late=True, reject_on_worker_lost=True)
def round_simulate(*, round_pk: int) -> str:
    from .rounds import round_simulate as stage

    return stage(round_pk)


@shared_task(name="annotation.tasks.rounds_reconcile")
def rounds_reconcile() -> int:
    from .rounds import rounds_reconcile as reconcile

    return len(reconcile())


@shared_task(name="annotation.tasks.ping")
def ping() -> str:
    """Answered by any worker consuming the default queue (run_loop checks for one with it)."""
    return "pong"
