from celery import shared_task

from inference import services
from inference.models import GenerationBatch

# Routed to the "gpu" queue by CELERY_TASK_ROUTES; acks_late + reject_on_worker_lost: a killed worker
# leaves the message for the next one.
GPU_TASK = {"acks_late": True, "reject_on_worker_lost": True}


@shared_task(name="inference.tasks.generation_batch_run", **GPU_TASK)
def generation_batch_run(*, batch_pk: int) -> str:
    batch = GenerationBatch.objects.select_related("model_version").get(pk=batch_pk)
    return services.generation_batch_run(batch=batch).status
