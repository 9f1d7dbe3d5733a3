from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Reading studies"

    def ready(self) -> None:
        # Light modules only: web processes must not load torch.
        from annotation.reading.signals import case_filled
        from annotation.rounds.domain import on_domain_finished
        from annotation.rounds.messages import on_batch_finished, on_case_filled, on_run_finished
        from annotation.rounds.transitions import round_status_changed
        from annotation.webhooks import on_round_status_changed
        from inference.signals import batch_finished
        from training.signals import run_finished

        # A round learns that its generation batch or training run ended from the lower layers' signals.
        batch_finished.connect(on_batch_finished, weak=False, dispatch_uid="round-batch-finished")
        run_finished.connect(on_run_finished, weak=False, dispatch_uid="round-run-finished")
        run_finished.connect(on_domain_finished, weak=False, dispatch_uid="study-domain-finished")
        case_filled.connect(on_case_filled, weak=False, dispatch_uid="round-case-filled")
        round_status_changed.connect(on_round_status_changed, weak=False, dispatch_uid="webhooks-round-status")
