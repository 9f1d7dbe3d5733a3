"""The annotation app's Celery tasks: thin wrappers keyed by row ids. Each imports its service when it runs (the
services enqueue these tasks, so a module-level import would be a circle); the registered names are the strings
in routing, beat and messages that may be in flight, and never change."""

from celery import shared_task


@shared_task(name="annotation.tasks.claims_expire_stale")
def claims_expire_stale_task() -> int:
    from annotation.reading.assignment import claims_expire_stale

    return claims_expire_stale()


@shared_task(name="annotation.tasks.round_report_build")
def round_report_build_task(*, round_pk: int) -> str:
    from annotation.models import Round
    from annotation.rounds.config import round_config
    from annotation.rounds.report import round_report_compute

    rnd = Round.objects.select_related("study").get(pk=round_pk)
    round_report_compute(round=rnd, with_images=round_config(rnd).image_metrics)
    return "done"


# --- rounds: thin tasks keyed by the round id; each checks the round is still in its stage (safe to run twice) ---


@shared_task(name="annotation.tasks.round_advance")
def round_advance_task(*, round_pk: int) -> str:
    from annotation.models import Round
    from annotation.rounds.driver import round_advance

    return round_advance(round=Round.objects.get(pk=round_pk)).status


@shared_task(name="annotation.tasks.round_clean")
def round_clean_task(*, round_pk: int) -> str:
    from annotation.rounds.stages import round_clean

    return round_clean(round_pk)


@shared_task(name="annotation.tasks.round_evaluate")
def round_evaluate_task(*, round_pk: int) -> str:
    from annotation.rounds.stages import round_evaluate

    return round_evaluate(round_pk)


@shared_task(name="annotation.tasks.round_simulate")
def round_simulate_task(*, round_pk: int) -> str:
    from annotation.rounds.stages import round_simulate

    return round_simulate(round_pk)


@shared_task(name="annotation.tasks.rounds_reconcile")
def rounds_reconcile_task() -> int:
    from annotation.rounds.driver import rounds_reconcile

    return len(rounds_reconcile())


@shared_task(name="annotation.tasks.ping")
def ping() -> str:
    """Answered by any worker consuming the default queue (run_loop checks for one with it)."""
    return "pong"


# --- exports and webhooks ------------------------------------------------------------------------------------------


@shared_task(name="annotation.tasks.import_job_run")
def import_job_run_task(*, job_pk: int) -> str:
    from annotation.images.jobs import import_job_run

    return import_job_run(job_pk)


@shared_task(name="annotation.tasks.export_job_run")
def export_job_run_task(*, job_pk: int) -> str:
    from annotation.exports.jobs import export_job_run

    return export_job_run(job_pk)


@shared_task(name="annotation.tasks.webhook_deliver", bind=True, max_retries=None)
def webhook_deliver_task(self, *, delivery_pk: int) -> str:
    """One attempt; a failure is retried with exponential backoff until CXR_WEBHOOK_MAX_ATTEMPTS."""
    from django.conf import settings

    from annotation.models import DeliveryStatus, WebhookDelivery
    from annotation.webhooks import backoff_s, deliver

    delivery = WebhookDelivery.objects.select_related("webhook").get(pk=delivery_pk)
    if delivery.status != DeliveryStatus.PENDING:
        return delivery.status
    if deliver(delivery):
        return DeliveryStatus.DELIVERED
    if delivery.attempts >= settings.CXR_WEBHOOK_MAX_ATTEMPTS:
        return DeliveryStatus.FAILED
    raise self.retry(countdown=backoff_s(delivery.attempts))


@shared_task(name="annotation.tasks.round_snapshot_freeze")
def round_snapshot_freeze_task(*, round_pk: int) -> int:
    from annotation.models import Round
    from annotation.rounds.feedback import round_snapshot_freeze

    return round_snapshot_freeze(Round.objects.get(pk=round_pk))["items"]
