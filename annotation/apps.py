from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Reading studies"

    def ready(self) -> None:
        # Rounds learn that their generation batch or training run ended from the lower layers' signals.
        from inference.signals import batch_finished  # light modules: web processes must not load torch
        from training.signals import run_finished

        from annotation.domain import on_domain_finished
        from annotation.rounds import on_job_finished

        batch_finished.connect(lambda sender, batch, **_: on_job_finished(batch.owner), weak=False,
                               dispatch_uid="round-batch-finished")
        run_finished.connect(lambda sender, run, **_: on_job_finished(run.owner), weak=False,
                             dispatch_uid="round-run-finished")
        run_finished.connect(lambda sender, run, **_: on_domain_finished(run), weak=False,
                             dispatch_uid="study-domain-finished")
