"""Training runs: reward models and LoRA finetunes as database-backed jobs. This app never imports `annotation`;
the round orchestration above creates runs with a frozen feedback snapshot (a storage key) as their input."""

from __future__ import annotations

from django.db import models

from inference.models import Job
from inference.models import JobStatus as RunStatus  # noqa: F401  (the same job life cycle as generation batches)


class RunKind(models.TextChoices):
    DOMAIN = "domain", "Domain adaptation (LoRA on real image-report pairs)"
    REWARD = "reward", "Reward model"
    FINETUNE = "finetune", "Reward-weighted LoRA finetune"
    DPO = "dpo", "Diffusion-DPO LoRA finetune"


class TrainingRun(Job):
    kind = models.CharField(max_length=10, choices=RunKind.choices)
    #: Who asked for it, as "<app>.<model>:<pk>" (e.g. "annotation.round:3"); opaque to this app.
    owner = models.CharField(max_length=120, blank=True, db_index=True)
    config = models.JSONField(default=dict, help_text="The run's dataclass config as JSON.")
    snapshot_key = models.CharField(max_length=300, blank=True, help_text="Frozen input data (storage key).")
    snapshot_sha256 = models.CharField(max_length=64, blank=True)
    base_version = models.ForeignKey("inference.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+", help_text="The version being finetuned.")
    reward_run = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                   help_text="The reward model a finetune is weighted by.")
    progress = models.JSONField(default=dict, blank=True, help_text="step, total")
    loss_curve = models.JSONField(default=list, blank=True, help_text="[[step, loss], ...]")
    metrics = models.JSONField(default=dict, blank=True)
    artifact_key = models.CharField(max_length=300, blank=True, help_text="Reward model or LoRA adapter (storage).")
    produced_version = models.ForeignKey("inference.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                         related_name="+")

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk} ({self.status})"
