"""API v1 representations. Reader-facing ones carry no provenance (source, prompt, model, round)."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from annotation.exports.formats import FORMATS
from annotation.models import ExportJob, Image, Label, ReadingTask, Round, Study, Webhook, WebhookDelivery
from annotation.webhooks import EVENTS
from inference.models import ModelVersion


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


class StudySerializer(serializers.ModelSerializer):
    current_version = serializers.CharField(source="current_version.name", default=None, read_only=True)

    class Meta:
        model = Study
        fields = ["id", "name", "title", "description", "images_per_round", "real_fraction", "readers_per_image",
                  "task_kinds", "rubric", "display_size", "catch_rate", "repeat_rate", "equivalence_margin",
                  "modalities", "views", "prompt_policy", "revealed_at", "current_version", "round_defaults",
                  "created_at"]


class StudyCreateSerializer(serializers.Serializer):
    """What `POST /api/v1/studies/` takes; the values are checked by the one study service (as `study_create`)."""

    name = serializers.CharField(max_length=80)
    title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    description = serializers.CharField(required=False, allow_blank=True, default="")
    modalities = serializers.ListField(child=serializers.CharField(max_length=16), required=False,
                                       help_text='DICOM modalities accepted on import (default ["CR", "DX"]; ["any"]).')
    views = serializers.ListField(child=serializers.CharField(max_length=16, allow_blank=True), required=False,
                                  help_text='DICOM view positions (default ["PA", "AP"]; [] for any).')
    task_kinds = serializers.ListField(child=serializers.CharField(max_length=20), required=False)
    rubric = serializers.ListField(child=serializers.DictField(), required=False)
    readers_per_image = serializers.IntegerField(required=False, min_value=1, max_value=1000)
    images_per_round = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000)
    real_fraction = serializers.FloatField(required=False)
    display_size = serializers.IntegerField(required=False, min_value=1, max_value=100_000)
    catch_rate = serializers.FloatField(required=False)
    repeat_rate = serializers.FloatField(required=False)
    equivalence_margin = serializers.FloatField(required=False, min_value=0.0, max_value=0.5)
    prompt_policy = serializers.ChoiceField(choices=["truncate", "chunks"], required=False)


class StudyUpdateSerializer(StudyCreateSerializer):
    """What `PATCH /api/v1/studies/{id}/` takes: any setting but the name, checked by `study_update` (the dashboard's
    settings form's rule: settings a running round reads wait; display size and rubric are fixed once data exist)."""

    name = None
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True)
    repeat_washout = serializers.IntegerField(required=False, min_value=0, max_value=100_000)
    panel_size = serializers.IntegerField(required=False, min_value=0, max_value=100_000)
    promotion_panel_size = serializers.IntegerField(required=False, min_value=0, max_value=100_000)
    prompt_source = serializers.ChoiceField(choices=["templates", "reports"], required=False)


class RoundSerializer(serializers.ModelSerializer):
    study = serializers.PrimaryKeyRelatedField(read_only=True)
    model_version = serializers.CharField(source="model_version.name", default=None, read_only=True)
    produced_version = serializers.CharField(source="produced_version.name", default=None, read_only=True)

    class Meta:
        model = Round
        fields = ["id", "study", "number", "status", "failed_stage", "stage_error", "config", "model_version",
                  "produced_version", "progress", "metrics", "selection", "created_at", "labeling_opened_at",
                  "labeling_closed_at", "finished_at"]


ID = {"min_value": 1, "max_value": 2**63 - 1}


class LaunchSerializer(serializers.Serializer):
    study = serializers.IntegerField(**ID)
    config = serializers.DictField(required=False, default=dict, help_text="RoundConfig fields.")


class ImageSerializer(serializers.ModelSerializer):
    round = serializers.IntegerField(source="round.number", default=None, read_only=True)
    model_version = serializers.CharField(source="model_version.name", default=None, read_only=True)
    file = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = ["id", "study", "round", "source", "sha256", "width", "height", "prompt", "findings", "seed",
                  "generator", "model_version", "cleaned_from", "is_catch", "meta", "created_at", "file"]

    def get_file(self, obj) -> str:
        return reverse("api:image-file", args=[obj.pk])


class LabelSerializer(serializers.ModelSerializer):
    study = serializers.IntegerField(source="task.round.study_id", read_only=True)
    round = serializers.IntegerField(source="task.round.number", read_only=True)
    kind = serializers.CharField(source="task.kind", read_only=True)
    image = serializers.IntegerField(source="task.image_id", read_only=True)
    image_b = serializers.IntegerField(source="task.image_b_id", read_only=True, allow_null=True)
    source = serializers.CharField(source="task.image.source", read_only=True)
    model_version = serializers.SerializerMethodField()
    reader = serializers.SerializerMethodField()
    reader_simulated = serializers.SerializerMethodField()
    superseded = serializers.SerializerMethodField()

    class Meta:
        model = Label
        fields = ["id", "task", "study", "round", "kind", "image", "image_b", "source", "model_version", "reader",
                  "reader_simulated", "revision", "superseded", "answer", "time_spent_ms", "created_at"]

    def _member(self, obj):
        return self.context.get("pseudonyms", {}).get((obj.task.round.study_id, obj.reader_id))

    def get_reader(self, obj) -> str:
        member = self._member(obj)
        return member[0] if member else f"user-{obj.reader_id}"

    def get_reader_simulated(self, obj) -> bool:
        member = self._member(obj)
        return bool(member and member[1])

    def get_superseded(self, obj) -> bool:
        return obj.task.current_label_id != obj.pk

    def get_model_version(self, obj) -> str | None:
        image = obj.task.image
        return image.model_version.name if image.model_version_id else None


class ReaderTaskSerializer(serializers.ModelSerializer):
    """Blinded: what the reader's own portal shows, nothing more."""

    token = serializers.CharField(read_only=True)
    images = serializers.SerializerMethodField()
    answer = serializers.SerializerMethodField()

    class Meta:
        model = ReadingTask
        fields = ["token", "kind", "position", "status", "images", "answer", "claimed_at", "answered_at"]

    def get_images(self, obj) -> list[str]:
        tokens = [obj.token] if obj.token_b is None else ([obj.token_b, obj.token] if obj.swap
                                                          else [obj.token, obj.token_b])
        return [reverse("portal:image", args=[t]) for t in tokens]

    def get_answer(self, obj) -> dict | None:
        answer = obj.current_label.answer if obj.current_label_id else None
        return {k: v for k, v in answer.items() if k != "preferred"} if answer else None


class AdminTaskSerializer(serializers.ModelSerializer):
    round = serializers.IntegerField(source="round.number", read_only=True)
    study = serializers.IntegerField(source="round.study_id", read_only=True)

    class Meta:
        model = ReadingTask
        fields = ["id", "study", "round", "reader", "kind", "image", "image_b", "position", "status", "is_catch",
                  "repeat_of", "revisions", "current_label", "claimed_at", "answered_at"]


class ModelVersionSerializer(serializers.ModelSerializer):
    parent = serializers.CharField(source="parent.name", default=None, read_only=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "base_path", "lora_key", "parent", "produced_by", "config", "load_error",
                  "created_at"]


class ExportRequestSerializer(serializers.Serializer):
    study = serializers.IntegerField(**ID)
    format = serializers.ChoiceField(choices=FORMATS)
    rounds = serializers.ListField(child=serializers.IntegerField(**ID), required=False, default=list,
                                   max_length=10_000)
    since_round = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**31)
    updated_after = serializers.DateTimeField(required=False, allow_null=True)
    include_simulated = serializers.BooleanField(required=False, default=False)
    include_superseded = serializers.BooleanField(required=False, default=True)
    identities = serializers.ChoiceField(choices=["pseudonym", "username"], required=False, default="pseudonym")


class ExportJobSerializer(serializers.ModelSerializer):
    download = serializers.SerializerMethodField()

    class Meta:
        model = ExportJob
        fields = ["id", "study", "format", "selection", "status", "progress", "manifest", "error_message",
                  "created_at", "finished_at", "download"]

    def get_download(self, obj) -> str | None:
        return reverse("api:export-download", args=[obj.pk]) if obj.status == "done" else None


class BoundedPK(serializers.PrimaryKeyRelatedField):
    """A primary key that must fit the database's integers before it is looked up."""

    def to_internal_value(self, data):
        try:
            if not 1 <= int(data) <= 2**63 - 1:
                self.fail("does_not_exist", pk_value=data)
        except (TypeError, ValueError):
            self.fail("incorrect_type", data_type=type(data).__name__)
        return super().to_internal_value(data)


class WebhookSerializer(serializers.ModelSerializer):
    study = BoundedPK(queryset=Study.objects.all())
    secret = serializers.CharField(required=False, write_only=True, help_text="Generated when left out.")
    events = serializers.ListField(child=serializers.CharField(), required=False, default=list)

    class Meta:
        model = Webhook
        fields = ["id", "study", "url", "secret", "events", "active", "created_at"]

    def validate_study(self, study):
        if self.instance is not None and study.pk != self.instance.study_id:
            raise serializers.ValidationError("A webhook stays with its study; register a new one for another.")
        return study

    def validate_events(self, events):
        unknown = set(events) - set(EVENTS)
        if unknown:
            raise serializers.ValidationError(f"unknown events {sorted(unknown)}; known: {list(EVENTS)}.")
        return events


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(read_only=True)


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = ["id", "event", "payload", "status", "attempts", "response_code", "last_error", "log",
                  "created_at", "delivered_at"]


# --- the evaluation panel (documents `annotation.rounds.panel.panel_versions`) -----------------------------------


class PanelStatSerializer(serializers.Serializer):
    mean = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True, help_text="Bootstrap 95% CI over the panel items; null when n < 2.")
    ci_high = serializers.FloatField(allow_null=True)
    n = serializers.IntegerField(help_text="Panel items scored.")


class PanelVersionSerializer(serializers.Serializer):
    version = serializers.CharField()
    parent = serializers.CharField(allow_null=True)
    current = serializers.BooleanField(help_text="The version the study's next round samples from.")
    preference = PanelStatSerializer(allow_null=True, help_text="Simulated readers' preference; null when the "
                                                                "study has no simulated readers.")
    fooling_rate = PanelStatSerializer(allow_null=True, help_text="Simulated readers' chance of calling it real.")
    realism_only_fooling_rate = PanelStatSerializer(
        allow_null=True, help_text="The same chance with the readers' taste term off: realism alone.")
    realism = PanelStatSerializer(allow_null=True, help_text="The realism function's score.")
    reward = PanelStatSerializer(allow_null=True, help_text="The latest reward model's score (run `reward_run`).")


class PanelSerializer(serializers.Serializer):
    items = serializers.IntegerField(help_text="Panel items (prompt × seed), the same for every version.")
    reward_run = serializers.IntegerField(allow_null=True, help_text="The reward run whose scores `reward` holds.")
    versions = PanelVersionSerializer(many=True, help_text="Scored versions, in the order they were made.")
    skipped = serializers.CharField(required=False, help_text="Why there is no panel yet (only then).")
