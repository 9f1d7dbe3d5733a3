from django.contrib import admin

from inference.models import GeneratedImage, GenerationBatch, ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "parent", "produced_by", "base_path", "lora_key", "created_at")
    readonly_fields = ("load_error", "config")
    search_fields = ("name", "base_path")


class GeneratedImageInline(admin.TabularInline):
    model = GeneratedImage
    extra = 0
    fields = ("index", "seed", "prompt", "mask_fraction", "raw_key", "cleaned_key")
    readonly_fields = fields
    can_delete = False


@admin.register(GenerationBatch)
class GenerationBatchAdmin(admin.ModelAdmin):
    list_display = ("pk", "model_version", "owner", "count", "status", "heartbeat_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = ("progress", "error_message", "heartbeat_at", "finished_at", "config")
    inlines = [GeneratedImageInline]
