"""The inference app's Celery task. It imports its service when it runs (the service enqueues it); the registered
name is a string in routing and in messages that may be in flight, and never changes. Its queue, time limit and
late acknowledgement come from the settings (`CXR_GPU_TASKS`, `CELERY_TASK_ACKS_LATE`): a killed worker leaves the
message for the next one."""

from celery import shared_task


@shared_task(name="inference.tasks.generation_batch_run")
def generation_batch_run_task(*, batch_pk: int) -> str:
    from inference.jobs import generation_batch_run
    from inference.models import GenerationBatch

    batch = GenerationBatch.objects.select_related("model_version").get(pk=batch_pk)
    return generation_batch_run(batch=batch).status
