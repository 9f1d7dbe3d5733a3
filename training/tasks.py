from celery import shared_task

from training import services
from training.models import TrainingRun

# Routed to the "gpu" queue (CELERY_TASK_ROUTES). acks_late + reject_on_worker_lost: a worker killed mid-run leaves
# the message for the next worker, which resumes from the run's last checkpoint.
GPU_TASK = {"acks_late": True, "reject_on_worker_lost": True}


@shared_task(name="training.tasks.training_run_execute", **GPU_TASK)
def training_run_execute(*, run_pk: int) -> str:
    run = TrainingRun.objects.select_related("base_version", "reward_run").get(pk=run_pk)
    return services.training_run_execute(run=run).status
