from celery import shared_task

from . import assignment


@shared_task(name="annotation.tasks.claims_expire_stale")
def claims_expire_stale() -> int:
    return assignment.claims_expire_stale()
