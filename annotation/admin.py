"""Django admin for study admins: provenance is visible here (and only here and in the API for admins)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html

from annotation.images import importing
from annotation.models import (
    ApiToken,
    AuditEvent,
    Image,
    Label,
    ReadingTask,
    Round,
    Study,
    StudyMembership,
)
from annotation.permissions import administered
from annotation.rounds.services import round_open_labeling
from annotation.rounds.transitions import round_transition
from annotation.studies.audit import audit
from annotation.studies.services import study_reveal, study_validate


class StudyScopedAdmin(admin.ModelAdmin):
    """Staff who are not superusers see only the studies they administer (and what belongs to them)."""

    study_path = "study"

    def get_queryset(self, request):
        return administered(super().get_queryset(request), request.user, self.study_path)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        """Choices (and what a raw id may name) limited to the admin's studies: nothing can be pointed at, or moved
        into, another study from here."""
        path = _STUDY_PATHS.get(db_field.related_model)
        if path is not None and not request.user.is_superuser:
            kwargs["queryset"] = administered(db_field.related_model._default_manager.all(), request.user, path)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


#: How each study-owned model reaches its study (for foreign-key choices in the admin).
_STUDY_PATHS = {Study: "pk", Round: "study", Image: "study", ReadingTask: "round__study",
                Label: "task__round__study"}


class MembershipInline(admin.TabularInline):
    model = StudyMembership
    extra = 0
    fields = ("user", "role", "pseudonym", "is_simulated")


class ImportForm(forms.Form):
    archive = forms.FileField(help_text="A ZIP of PNG, JPEG or DICOM files, or a single image file.")
    reports = forms.FileField(required=False, help_text="Optional CSV: file_name,report")


@admin.register(Study)
class StudyAdmin(StudyScopedAdmin):
    study_path = "pk"
    list_display = ("name", "title", "readers_per_image", "real_fraction", "revealed_at", "created_at")
    search_fields = ("name", "title")
    inlines = [MembershipInline]
    actions = ["reveal_truth"]

    def save_model(self, request, obj, form, change):
        try:
            study_validate(study=obj)
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            raise
        super().save_model(request, obj, form, change)
        audit(actor=request.user, action="study.change" if change else "study.create", study=obj,
                       obj=obj, fields=list(form.changed_data))

    @admin.action(description="Reveal the truth to readers")
    def reveal_truth(self, request, queryset):
        for study in queryset:
            study_reveal(study=study, actor=request.user)

    def get_urls(self):
        return [path("<int:pk>/import/", self.admin_site.admin_view(self.import_view), name="study-import"),
                *super().get_urls()]

    def import_view(self, request, pk):
        study = get_object_or_404(self.get_queryset(request), pk=pk)
        form = ImportForm(request.POST or None, request.FILES or None)
        result = None
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["archive"]
            reports = importing.read_reports_csv(form.cleaned_data["reports"].read()) if form.cleaned_data[
                "reports"] else {}
            with tempfile.TemporaryDirectory() as tmp:
                path_ = Path(tmp) / Path(upload.name).name
                with open(path_, "wb") as handle:
                    for chunk in upload.chunks():
                        handle.write(chunk)
                try:
                    result = importing.images_import_path(study=study, path=path_, reports=reports,
                                                          actor=request.user)
                except importing.ArchiveRejected as exc:
                    form.add_error("archive", exc.reason)
        context = {**self.admin_site.each_context(request), "form": form, "study": study, "result": result,
                   "title": f"Import images into {study}"}
        # nothing usable in the upload (every file rejected, or none an image) is the client's error, said as a 400
        refused = bool(form.errors) or (result is not None and not result.imported and not result.duplicates)
        return render(request, "admin/annotation/import.html", context, status=400 if refused else 200)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}),
                         "import_url": reverse("admin:study-import", args=[object_id])}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Round)
class RoundAdmin(StudyScopedAdmin):
    list_display = ("study", "number", "status", "labeling_opened_at", "finished_at", "report_link")
    list_filter = ("status", ("study", admin.RelatedOnlyFieldListFilter))
    readonly_fields = ("pools", "progress", "metrics", "stage_error")
    actions = ["open_labeling", "close_labeling"]

    def get_readonly_fields(self, request, obj=None):
        # a stored round stays in its study, under its number
        return (*self.readonly_fields, "study", "number") if obj is not None else self.readonly_fields

    @admin.display(description="Report")
    def report_link(self, obj):
        return format_html('<a href="{}">report</a>', reverse("dashboard:round-report", args=[obj.pk]))

    @admin.action(description="Open labeling (build reading cases)")
    def open_labeling(self, request, queryset):
        for rnd in queryset:
            try:
                round_open_labeling(round=rnd, actor=request.user)
            except ValidationError as exc:
                messages.error(request, f"{rnd}: {'; '.join(exc.messages)}")

    @admin.action(description="Close labeling")
    def close_labeling(self, request, queryset):
        for rnd in queryset:
            try:
                round_transition(round=rnd, to="done", actor=request.user)
            except ValidationError as exc:
                messages.error(request, f"{rnd}: {'; '.join(exc.messages)}")


@admin.register(Image)
class ImageAdmin(StudyScopedAdmin):
    list_display = ("pk", "study", "round", "source", "is_catch", "original_name", "burned_in_phi", "created_at")
    list_filter = ("source", "is_catch", "burned_in_phi", ("study", admin.RelatedOnlyFieldListFilter))
    search_fields = ("original_name", "prompt", "sha256")
    readonly_fields = ("study", "round", "storage_key", "display_key", "sha256", "deid_removed", "preview")

    def has_add_permission(self, request):
        return False  # images come in through the import (files, de-identification, display rendition)

    @admin.display(description="Display rendition")
    def preview(self, obj):
        return format_html("<code>{}</code> ({}×{} original)", obj.display_key, obj.width, obj.height)


@admin.register(ReadingTask)
class ReadingTaskAdmin(StudyScopedAdmin):
    study_path = "round__study"
    list_display = ("pk", "round", "reader", "kind", "position", "status", "is_catch", "claimed_at")
    list_filter = ("kind", "status", "is_catch")
    raw_id_fields = ("queue", "case", "image", "image_b", "repeat_of", "current_label")

    # tasks are handed out by the assignment engine only: the admin shows them
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Label)
class LabelAdmin(StudyScopedAdmin):
    study_path = "task__round__study"
    list_display = ("pk", "task", "reader", "revision", "created_at")
    readonly_fields = [f.name for f in Label._meta.fields]

    def has_add_permission(self, request):
        return False  # labels come from readers only

    def has_delete_permission(self, request, obj=None):
        return False  # labels are append-only

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(StudyScopedAdmin):
    """Study admins see their studies' events; events outside any study (logins, tokens) are for superusers."""

    list_display = ("created_at", "actor", "action", "study", "object_type", "object_id")
    list_filter = ("action",)

    def has_add_permission(self, request):
        return False  # the trail is written by the code that acts, never by hand

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Staff see (and may revoke) their own tokens; superusers see everyone's. Tokens are issued by
    `manage.py api_token` (the key is printed once); here only the name and the revocation can change."""

    list_display = ("name", "user", "prefix", "scope", "created_at", "revoked_at")
    readonly_fields = ("user", "scope", "prefix", "key_hash", "created_at")
    fields = ("name", "user", "scope", "prefix", "key_hash", "created_at", "revoked_at")

    def has_add_permission(self, request):
        return False

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(user=request.user)
admin.site.site_header = "CXR feedback loop · administration"
