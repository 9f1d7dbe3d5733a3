"""Studies and who is in them: the study's settings, memberships and roles, the audit trail."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models


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


def default_modalities() -> list[str]:
    return ["CR", "DX"]


def default_views() -> list[str]:
    return ["PA", "AP"]


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
    modalities = models.JSONField(
        default=default_modalities, blank=True,
        help_text="DICOM modalities imported (CR, DX for chest radiographs; [\"any\"] for any); others are refused.")
    views = models.JSONField(default=default_views, blank=True,
                             help_text="DICOM view positions imported (PA, AP); empty: any view.")
    prompt_policy = models.CharField(
        max_length=10, default="truncate", choices=[("truncate", "Truncate to 77 tokens"),
                                                    ("chunks", "77-token chunks, concatenated")],
        help_text="How a report longer than the text encoder's 77 tokens becomes a prompt (sampling and training).")
    prompt_source = models.CharField(
        max_length=20, default="templates", choices=[("templates", "Templates"), ("reports", "Report corpus")]
    )
    panel_size = models.PositiveIntegerField(
        default=64, help_text="Evaluation panel: prompts × seeds every model version samples once, so versions "
                              "are compared on the same items (0: no panel; promotion is then an admin's call).")
    promotion_panel_size = models.PositiveIntegerField(
        default=32, help_text="Promotion panel: prompts × seeds disjoint from the evaluation panel's, scored by the "
                              "reward models only, that decide promotion, so the items that decide are not the "
                              "items that measure (0: promotion is decided on the evaluation panel).")
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
    simulation = models.JSONField(default=dict, blank=True, help_text="A simulated reader's settings (training.ml.simulated_reader.SimulatedReader.as_dict).")
    created_at = models.DateTimeField(auto_now_add=True)
    deactivated_at = models.DateTimeField(
        null=True, blank=True, help_text="When a study admin ended this membership: the reader's labels stay, their "
                                         "open claims went back to the pool, they get no new cases.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "user", "role"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} of {self.study}"


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


class Invitation(models.Model):
    """A one-time, expiring link that makes its user a reader or a study admin of a study. Only a hash of the
    token is stored: the link is shown once, to the admin who made it."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.READER)
    note = models.CharField(max_length=200, blank=True, help_text="Whom it is for (a name or e-mail), for the admin.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"invitation to {self.study} as {self.role}"


class PracticeCase(models.Model):
    """A case of a study's practice set: an image with its known answer (real or synthetic) and what to look at.
    Stored apart from the study's images: never part of a round, a statistic or an export."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="practice_cases")
    display_key = models.CharField(max_length=255, help_text="The image as readers see it (storage key).")
    answer = models.CharField(max_length=10, choices=Source.choices, help_text="The known answer.")
    explanation = models.CharField(max_length=500, blank=True, help_text="Shown after the reader answers.")
    position = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "pk"]

    def __str__(self) -> str:
        return f"practice case {self.position + 1} of {self.study}"


class PracticeAnswer(models.Model):
    """A reader's answer to a practice case (the latest one counts); feedback only, never a label."""

    case = models.ForeignKey(PracticeCase, on_delete=models.CASCADE, related_name="answers")
    reader = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    call = models.CharField(max_length=10, choices=Source.choices)
    correct = models.BooleanField()
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["case", "reader"], name="uniq_practice_answer")]

    def __str__(self) -> str:
        return f"{self.reader} on {self.case}"
