"""Studies, rounds, images and the blinded reading queue.

Label rows are immutable: a revision is a new row, and the task points at its current one. Counters on
`ReadingCase` (`taken`, `done`) are the only shared mutable state of assignment; they change through
conditional UPDATEs, which is what keeps claims race-free on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


def new_token() -> str:
    return secrets.token_urlsafe(18)


def new_seed() -> int:
    return secrets.randbelow(2**31)


def default_rubric() -> list[dict]:
    return [
        {"key": "anatomy", "label": "Anatomy", "min": 1, "max": 5},
        {"key": "style", "label": "Style / appearance", "min": 1, "max": 5},
        {"key": "artifacts", "label": "Free of artifacts", "min": 1, "max": 5},
    ]


def default_catch_rule() -> dict:
    return {"min_accuracy": 0.8, "action": "flag", "min_trials": 1}


def default_kinds() -> list[str]:
    return ["realism", "rubric"]


class Source(models.TextChoices):
    REAL = "real", "Real"
    SYNTHETIC = "synthetic", "Synthetic"


class TaskKind(models.TextChoices):
    REALISM = "realism", "Real or synthetic"
    RUBRIC = "rubric", "Quality rubric"
    PREFERENCE = "preference", "Pairwise preference"


class Study(models.Model):
    name = models.SlugField(max_length=80, unique=True, help_text="Short identifier used by the CLI and API.")
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    images_per_round = models.PositiveIntegerField(default=100)
    real_fraction = models.FloatField(default=0.5, help_text="Share of real images in each reader's queue.")
    readers_per_image = models.PositiveIntegerField(default=2, help_text="K: at most this many readers per image.")
    task_kinds = models.JSONField(default=default_kinds, help_text="Kinds read in each round, in this order.")
    rubric = models.JSONField(default=default_rubric, help_text="Criteria: key, label, min, max.")
    display_size = models.PositiveIntegerField(default=512, help_text="Side of the square images readers see, px.")
    catch_rate = models.FloatField(default=0.0, help_text="Share of queue positions given to catch trials.")
    repeat_rate = models.FloatField(default=0.0, help_text="Share of queue positions that repeat an earlier case.")
    repeat_washout = models.PositiveIntegerField(default=20, help_text="Cases between a case and its repeat.")
    seed = models.BigIntegerField(default=new_seed, help_text="Seeds every reader's order; reproducible.")
    prompt_source = models.CharField(
        max_length=20, default="templates", choices=[("templates", "Templates"), ("reports", "Report corpus")]
    )
    equivalence_margin = models.FloatField(
        default=0.10, help_text="TOST margin around 0.5 accuracy for 'indistinguishable'.")
    catch_rule = models.JSONField(
        default=default_catch_rule, help_text="min_accuracy, action (flag | exclude), min_trials.")
    revealed_at = models.DateTimeField(null=True, blank=True, help_text="When readers were shown the truth.")
    current_version = models.ForeignKey(
        "inference.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The model version the next round samples from (changed by promotion, roll-back or an admin).")
    round_defaults = models.JSONField(default=dict, blank=True,
                                      help_text="RoundConfig fields every new round of the study starts from.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "studies"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title or self.name


class Role(models.TextChoices):
    READER = "reader", "Reader"
    ADMIN = "admin", "Study admin"


class StudyMembership(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices)
    pseudonym = models.CharField(max_length=32, help_text="How exports name this reader to non-admins.")
    is_simulated = models.BooleanField(default=False, help_text="A virtual reader driven by code.")
    simulation = models.JSONField(default=dict, blank=True, help_text="A simulated reader's profile (SimulatedProfile).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "user", "role"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} of {self.study}"


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


class AuditEvent(models.Model):
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=40)
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action}"


class TokenScope(models.TextChoices):
    READ = "read", "Read (reader's own tasks / export)"
    EXPORT = "export", "Export labelled data"
    ADMIN = "admin", "Administer studies"


class ApiToken(models.Model):
    """A bearer token for API clients; only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=8, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=10, choices=TokenScope.choices, default=TokenScope.READ)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…, {self.scope})"


def new_submission_id() -> uuid.UUID:
    return uuid.uuid4()


class ExportJob(models.Model):
    """A large export written by a worker; the file lands in storage with its manifest."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="export_jobs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    format = models.CharField(max_length=12)
    selection = models.JSONField(default=dict, help_text="exports.Selection as JSON.")
    status = models.CharField(max_length=10, default="pending")  # pending | running | done | failed
    progress = models.JSONField(default=dict, blank=True)
    file_key = models.CharField(max_length=300, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.format} export {self.pk} of {self.study} ({self.status})"


class Webhook(models.Model):
    """An admin's URL told about round state changes and finished exports, signed with HMAC-SHA256."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, help_text="Signs each payload: X-CXR-Signature: sha256=<hex>.")
    events = models.JSONField(default=list, help_text="Event names ('round.status', 'export.done'); empty = all.")
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"webhook {self.pk} → {self.url}"


class WebhookDelivery(models.Model):
    """One event sent to one webhook: every attempt's outcome is kept."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40)
    payload = models.JSONField()
    status = models.CharField(max_length=10, default="pending")  # pending | delivered | failed
    attempts = models.PositiveIntegerField(default=0)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    log = models.JSONField(default=list, blank=True, help_text="[{at, code, error}] per attempt.")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.event} to webhook {self.webhook_id} ({self.status})"
