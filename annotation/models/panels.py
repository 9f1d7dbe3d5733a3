"""A study's evaluation panel: fixed prompts × seeds every model version samples once, and each version's
per-item scores on it (simulated readers' preference and fooling chance, the realism function, every reward
model of the study), so two versions are compared item by item."""

from __future__ import annotations

from django.db import models


class PanelKind(models.TextChoices):
    EVALUATION = "evaluation", "Evaluation (measures versions)"
    PROMOTION = "promotion", "Promotion (decides, reward models only)"


class EvaluationPanel(models.Model):
    study = models.ForeignKey("annotation.Study", on_delete=models.CASCADE, related_name="panels")
    kind = models.CharField(max_length=16, choices=PanelKind.choices, default=PanelKind.EVALUATION,
                            help_text="What the panel is for: measuring versions, or deciding promotion.")
    prompts = models.JSONField(default=list, help_text="Prompt pool the panel's requests are drawn from.")
    count = models.PositiveIntegerField(help_text="Panel items (prompt × seed requests).")
    seed = models.BigIntegerField(help_text="Seeds the panel's requests: the same for every version.")
    config = models.JSONField(default=dict, help_text="GenerationConfig every version samples the panel with.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "kind"], name="uniq_panel_study_kind")]

    def __str__(self) -> str:
        return f"{self.kind} panel of {self.study} ({self.count} items)"


class PanelScore(models.Model):
    panel = models.ForeignKey(EvaluationPanel, on_delete=models.CASCADE, related_name="scores")
    model_version = models.ForeignKey("inference.ModelVersion", on_delete=models.PROTECT, related_name="+")
    batch = models.ForeignKey("inference.GenerationBatch", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", help_text="The version's samples of the panel.")
    scores = models.JSONField(default=dict, blank=True, help_text="Per-item lists: preference, fooling, realism; "
                                                                  "reward: {reward run id: [...]}.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["panel", "model_version"], name="uniq_panel_version")]
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.model_version} on {self.panel}"
