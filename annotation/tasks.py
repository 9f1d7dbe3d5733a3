from celery import shared_task

from annotation import assignment


@shared_task(name="annotation.tasks.claims_expire_stale")
def claims_expire_stale() -> int:
    return assignment.claims_expire_stale()


@shared_task(name="annotation.tasks.round_report_build")
def round_report_build(*, round_pk: int) -> str:
    from annotation.models import Round
    from annotation.reports import round_report_compute

    rnd = Round.objects.select_related("study").get(pk=round_pk)
    round_report_compute(round=rnd)
    return "done"


# --- rounds: thin tasks keyed by the round id; each checks the round is still in its stage (safe to run twice) ---


@shared_task(name="annotation.tasks.round_advance")
def round_advance(*, round_pk: int) -> str:
    from annotation.models import Round
    from annotation.rounds import round_advance as advance

    return advance(round=Round.objects.get(pk=round_pk)).status


@shared_task(name="annotation.tasks.round_clean", acks_late=True, reject_on_worker_lost=True)
def round_clean(*, round_pk: int) -> str:
    from annotation.rounds import round_clean as stage

    return stage(round_pk)


@shared_task(name="annotation.tasks.round_evaluate", acks_late=True, reject_on_worker_lost=True)
def round_evaluate(*, round_pk: int) -> str:
    from annotation.rounds import round_evaluate as stage

    return stage(round_pk)


@shared_task(name="annotation.tasks.round_simulate", acks_late=True, reject_on_worker_lost=True)
def round_simulate(*, round_pk: int) -> str:
    from annotation.rounds import round_simulate as stage

    return stage(round_pk)


@shared_task(name="annotation.tasks.rounds_reconcile")
def rounds_reconcile() -> int:
    from annotation.rounds import rounds_reconcile as reconcile

    return len(reconcile())


@shared_task(name="annotation.tasks.ping")
def ping() -> str:
    """Answered by any worker consuming the default queue (run_loop checks for one with it)."""
    return "pong"


# --- exports and webhooks ------------------------------------------------------------------------------------------


@shared_task(name="annotation.tasks.export_job_run", acks_late=True, reject_on_worker_lost=True)
def export_job_run(*, job_pk: int) -> str:
    from annotation.api.jobs import export_job_run as run

    return run(job_pk)


@shared_task(name="annotation.tasks.webhook_deliver", bind=True, max_retries=None)
def webhook_deliver(self, *, delivery_pk: int) -> str:
    """One attempt; a failure is retried with exponential backoff until CXR_WEBHOOK_MAX_ATTEMPTS."""
    from django.conf import settings

    from annotation.models import WebhookDelivery
    from annotation.webhooks import backoff_s, deliver

    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=delivery_pk)
    if delivery.status != "pending":
        return delivery.status
    if deliver(delivery):
        return "delivered"
    if delivery.attempts >= settings.CXR_WEBHOOK_MAX_ATTEMPTS:
        return "failed"
    raise self.retry(countdown=backoff_s(delivery.attempts))


@shared_task(name="annotation.tasks.round_snapshot_freeze")
def round_snapshot_freeze(*, round_pk: int) -> int:
    from annotation.api.jobs import round_snapshot_freeze as freeze
    from annotation.models import Round

    return freeze(Round.objects.get(pk=round_pk))["rows"]
