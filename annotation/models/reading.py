"""Rounds, images and the blinded reading queue.

Label rows are immutable: a revision is a new row, and the task points at its current one. Counters on
`ReadingCase` (`taken`, `done`) are the only shared mutable state of assignment; they change through
conditional UPDATEs, which is what keeps claims race-free on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models.studies import Source, Study, TaskKind, new_token


class RoundStatus(models.TextChoices):
    DRAFT = "draft"
    GENERATING = "generating"
    CLEANING = "cleaning"
    LABELING = "labeling"
    TRAINING_REWARD = "training_reward"
    FINETUNING = "finetuning"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Statuses in which a round is running (one at a time per study).
ACTIVE_STATUSES = (RoundStatus.GENERATING, RoundStatus.CLEANING, RoundStatus.LABELING, RoundStatus.TRAINING_REWARD,
                   RoundStatus.FINETUNING, RoundStatus.EVALUATING)


class Round(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=RoundStatus.choices, default=RoundStatus.DRAFT)
    stage_error = models.TextField(blank=True)
    progress = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    #: Sizes of the case pools, written once when labeling opens: {kind: {slot: n}}.
    pools = models.JSONField(default=dict, blank=True)
    #: RoundConfig as JSON, fixed at launch.
    config = models.JSONField(default=dict, blank=True)
    failed_stage = models.CharField(max_length=20, blank=True, help_text="The stage a retry restarts.")
    model_version = models.ForeignKey("inference.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="+", help_text="The version this round sampled from.")
    generation_batch = models.ForeignKey("inference.GenerationBatch", null=True, blank=True,
                                         on_delete=models.PROTECT, related_name="+")
    reward_run = models.ForeignKey("training.TrainingRun", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    finetune_run = models.ForeignKey("training.TrainingRun", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    produced_version = models.ForeignKey("inference.ModelVersion", null=True, blank=True,
                                         on_delete=models.PROTECT, related_name="+",
                                         help_text="The version the round's finetune registered.")
    #: Which generated images went to readers and why: {"strategy", "seed", "chosen": [batch index], ...}.
    selection = models.JSONField(default=dict, blank=True)
    #: Written by the round's own stages (cleaning, simulated reading, evaluating) while they work; the reconciler
    #: re-enqueues a stage whose heartbeat is older than CXR_STAGE_TIMEOUT_S.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    labeling_opened_at = models.DateTimeField(null=True, blank=True)
    labeling_closed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "number"]
        constraints = [models.UniqueConstraint(fields=["study", "number"], name="uniq_round_number")]

    def __str__(self) -> str:
        return f"{self.study.name} round {self.number}"


class Image(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="images")
    round = models.ForeignKey(Round, null=True, blank=True, on_delete=models.SET_NULL, related_name="images")
    source = models.CharField(max_length=10, choices=Source.choices)
    storage_key = models.CharField(max_length=255, help_text="Full-resolution normalised image (storage key).")
    display_key = models.CharField(max_length=255, help_text="Blinded rendition served to readers.")
    sha256 = models.CharField(max_length=64, help_text="Of the imported or generated file's bytes.")
    pixel_sha256 = models.CharField(max_length=64, blank=True, db_index=True,
                                    help_text="Of the decoded, normalised pixels (finds one image under two encodings).")
    sop_uid_hash = models.CharField(max_length=64, blank=True, db_index=True,
                                    help_text="Keyed hash of the original SOP Instance UID (the UID is not kept).")
    patient_pseudonym = models.CharField(max_length=32, blank=True,
                                         help_text="Keyed pseudonym of the patient ID: held-out splits group by it.")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    original_name = models.CharField(max_length=255, blank=True)
    prompt = models.TextField(blank=True, help_text="Report text or generation prompt.")
    findings = models.JSONField(default=list, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    generator = models.CharField(max_length=200, blank=True, help_text="What made a synthetic image.")
    model_version = models.ForeignKey("inference.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                      related_name="+", help_text="The model version that sampled it.")
    cleaned_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    mask_key = models.CharField(max_length=255, blank=True)
    deid_removed = models.JSONField(default=list, blank=True, help_text="DICOM attributes removed on import.")
    burned_in_phi = models.BooleanField(default=False)
    is_catch = models.BooleanField(default=False, help_text="A known-answer case mixed into queues.")
    meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "sha256"], name="uniq_image_sha_per_study")]
        indexes = [models.Index(fields=["study", "source"])]

    def __str__(self) -> str:
        return f"image {self.pk} ({self.source})"


class ReadingCase(models.Model):
    """One thing to read in a round (an image, or a pair for preference) and how many readers it still needs."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="cases")
    kind = models.CharField(max_length=12, choices=TaskKind.choices)
    #: Pool the case is drawn from: "real", "synthetic" or "pair".
    slot = models.CharField(max_length=10)
    is_catch = models.BooleanField(default=False)
    #: Dense index within (round, kind, is_catch, slot): readers walk a seeded permutation of it.
    idx = models.PositiveIntegerField()
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    image_b = models.ForeignKey(Image, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    capacity = models.PositiveIntegerField()
    taken = models.PositiveIntegerField(default=0, help_text="Live claims plus answers.")
    done = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["round", "kind", "is_catch", "slot", "idx"], name="uniq_case_slot_idx")
        ]

    def __str__(self) -> str:
        return f"{self.kind} case {self.idx} ({self.slot}) of {self.round}"


class ReaderQueue(models.Model):
    """A reader's place in one round: the seed of their order and how far they have walked each pool."""

    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="queues")
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="queues")
    token = models.CharField(max_length=32, unique=True, default=new_token)
    seed = models.BigIntegerField()
    #: {kind: {"served": n, "<slot>": next permutation position, "catch:<slot>": catch trials served}}
    cursor = models.JSONField(default=dict)
    kind_index = models.PositiveSmallIntegerField(default=0)
    position = models.PositiveIntegerField(default=0, help_text="Tasks handed out so far.")
    done_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["reader", "round"], name="uniq_queue_reader_round")]

    def __str__(self) -> str:
        return f"queue of {self.reader} in {self.round}"


class TaskStatus(models.TextChoices):
    CLAIMED = "claimed"
    DONE = "done"
    EXPIRED = "expired"


class ReadingTask(models.Model):
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="tasks")
    queue = models.ForeignKey(ReaderQueue, on_delete=models.CASCADE, related_name="tasks")
    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reading_tasks")
    case = models.ForeignKey(ReadingCase, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=12, choices=TaskKind.choices)
    slot = models.CharField(max_length=10)
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="+")
    image_b = models.ForeignKey(Image, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    #: Preference tasks: show image_b on the left.
    swap = models.BooleanField(default=False)
    position = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=TaskStatus.CLAIMED)
    token = models.CharField(max_length=32, unique=True, default=new_token)
    token_b = models.CharField(max_length=32, unique=True, null=True, blank=True)
    is_catch = models.BooleanField(default=False)
    repeat_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="repeats")
    repeated = models.BooleanField(default=False, help_text="A repeat of this task has been queued.")
    claimed_at = models.DateTimeField()
    answered_at = models.DateTimeField(null=True, blank=True)
    revisions = models.PositiveIntegerField(default=0)
    current_label = models.ForeignKey(
        "Label", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["reader", "image", "kind"],
                condition=Q(repeat_of__isnull=True) & ~Q(status="expired"),
                name="uniq_reader_image_kind",
            ),
            models.UniqueConstraint(fields=["queue", "position"], name="uniq_queue_position"),
        ]
        indexes = [
            models.Index(fields=["queue", "status", "position"]),
            models.Index(fields=["status", "claimed_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.kind} task {self.position} of {self.reader}"


class Label(models.Model):
    """One answer, never changed: a revision is a new row with the next revision number."""

    task = models.ForeignKey(ReadingTask, on_delete=models.PROTECT, related_name="labels")
    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="labels")
    revision = models.PositiveIntegerField()
    answer = models.JSONField()
    time_spent_ms = models.PositiveIntegerField(default=0)
    submission_id = models.UUIDField(unique=True, help_text="Client-generated: a retried submit stores once.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "revision"], name="uniq_label_revision")]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"label {self.pk} (revision {self.revision}) of task {self.task_id}"
