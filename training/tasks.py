"""The training app's Celery task. It imports its service when it runs (the service enqueues it); the registered
name is a string in routing and in messages that may be in flight, and never changes. Its queue, time limit and
late acknowledgement come from the settings (`CXR_GPU_TASKS`, `CELERY_TASK_ACKS_LATE`): a worker killed mid-run
leaves the message for the next worker, which resumes from the run's last checkpoint."""

from celery import shared_task


@shared_task(name="training.tasks.training_run_execute")
def training_run_execute_task(*, run_pk: int) -> str:
    from training.models import TrainingRun
    from training.services import training_run_execute

    run = TrainingRun.objects.select_related("base_version", "reward_run").get(pk=run_pk)
    return training_run_execute(run=run).status
