"""Model versions and generation jobs. This app never imports `annotation` or `training`: the layers above
create these rows and learn about progress through the row and the `batch_finished` signal."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class ModelVersion(models.Model):
    """A base pipeline plus an optional LoRA adapter: what a round samples from."""

    name = models.CharField(max_length=120, unique=True)
    base_path = models.CharField(max_length=500, help_text="Local diffusers folder or single-file checkpoint.")
    lora_key = models.CharField(max_length=300, blank=True, help_text="Storage key of the LoRA safetensors file.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    produced_by = models.CharField(max_length=120, blank=True, help_text="The run that produced it, e.g. 'finetune:7'.")
    config = models.JSONField(default=dict, blank=True, help_text="Training config of the adapter, if any.")
    load_error = models.TextField(blank=True, help_text="Why the weights could not be loaded, if they could not.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class JobStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Job(models.Model):
    """A job a worker runs from a row (generation batches, training runs, imports, exports): its status, progress,
    error, heartbeat and times, and the one life cycle every kind goes through. Each move is one UPDATE of the row
    (never a save of a stale copy), so the web side and the reconciler always read the latest state."""

    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.PENDING)
    progress = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    def _update(self, **fields) -> None:
        type(self).objects.filter(pk=self.pk).update(**fields)

    def job_start(self) -> None:
        """Running now (a rerun clears the last error); the heartbeat is stamped."""
        self._update(status=JobStatus.RUNNING, error_message="", heartbeat_at=timezone.now())

    def job_beat(self, **progress) -> None:
        """Still alive; `progress` (if any) is merged into the row's."""
        if progress:
            self.progress = {**self.progress, **progress}
            self._update(heartbeat_at=timezone.now(), progress=self.progress)
        else:
            self._update(heartbeat_at=timezone.now())

    def job_requeued(self) -> None:
        """Its message was sent again: the heartbeat is stamped so a reconciler waits a timeout before resending."""
        type(self).objects.filter(pk=self.pk).exclude(status=JobStatus.DONE).update(heartbeat_at=timezone.now())

    def job_finish(self, status: str, error: str = "", **fields) -> None:
        """Done or failed (with the reason), with any result fields; the row is read back."""
        now = timezone.now()
        self._update(status=status, error_message=error, finished_at=now, heartbeat_at=now, **fields)
        self.refresh_from_db()


class GenerationBatch(Job):
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="batches")
    #: Who asked for it, as "<app>.<model>:<pk>" (e.g. "annotation.round:3"); opaque to this app.
    owner = models.CharField(max_length=120, blank=True, db_index=True)
    prompts = models.JSONField(default=list, help_text="Prompt pool sampled from (reports or templates).")
    count = models.PositiveIntegerField()
    seed = models.BigIntegerField(default=0)
    config = models.JSONField(default=dict, help_text="GenerationConfig as JSON.")
    clean = models.BooleanField(default=True, help_text="Run text/marker removal on every image.")

    class Meta:
        verbose_name_plural = "generation batches"

    def __str__(self) -> str:
        return f"batch {self.pk} of {self.model_version} ({self.status})"


class GeneratedImage(models.Model):
    batch = models.ForeignKey(GenerationBatch, on_delete=models.CASCADE, related_name="images")
    index = models.PositiveIntegerField()
    seed = models.BigIntegerField()
    prompt = models.TextField()
    prompt_encoded = models.TextField(blank=True, help_text="The prompt the text encoder actually read (policy).")
    prompt_shortened = models.BooleanField(default=False, help_text="Truncated to the text encoder's window.")
    raw_key = models.CharField(max_length=255, help_text="As sampled, before cleaning (grayscale PNG).")
    mask_key = models.CharField(max_length=255, blank=True, help_text="Text/marker mask found by cleaning.")
    cleaned_key = models.CharField(max_length=255, blank=True, help_text="After cleaning; what readers see.")
    mask_fraction = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "index"], name="uniq_generated_index")]

    def __str__(self) -> str:
        return f"image {self.index} of batch {self.batch_id}"
