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
