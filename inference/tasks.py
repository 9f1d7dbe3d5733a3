from celery import shared_task

from . import services
from .models import GenerationBatch

GPU_TASK = {"acks_late": True, "reject_on_worker_lost": True, "queue": "gpu"}


@shared_task(name="inference.tasks.generation_batch_run", **GPU_TASK)
def generation_batch_run(*, batch_pk: int) -> str:
    batch = GenerationBatch.objects.select_related("model_version").get(pk=batch_pk)
    return services.generation_batch_run(batch=batch).status
