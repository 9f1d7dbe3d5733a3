"""Study setup in the dashboard: create a study and edit its settings, through the same validating services as the
CLI (`study_create`) and the API (`study_create`, `study_update`): one rule, three doors. Creating needs the right
to create studies (`permissions.can_create_studies`); editing, the study-admin role."""

from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from annotation.dashboard.views import _study_for_admin
from annotation.models import Study, TaskKind
from annotation.permissions import can_create_studies
from annotation.studies.services import EDITABLE, study_create, study_update

RUBRIC_BLANK_ROWS = 2


def _help(name: str) -> str:
    return str(Study._meta.get_field(name).help_text)


class StudyForm(forms.Form):
    """The study's settings; each carries the model's one-line help text. Types are checked here, everything else
    (ranges, combinations, what may change now) by the services."""

    name = forms.CharField(max_length=80, help_text="Short identifier for the CLI, the API and exports: lower-case "
                                                    "letters, digits, '-' or '_'. Fixed once created.")
    title = forms.CharField(max_length=200, required=False, help_text="What readers and admins see.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False,
                                  help_text="Optional: the study's purpose, for admins.")
    task_kinds = forms.MultipleChoiceField(choices=TaskKind.choices, widget=forms.CheckboxSelectMultiple,
                                           help_text=_help("task_kinds"))
    readers_per_image = forms.IntegerField(min_value=1, help_text=_help("readers_per_image"))
    images_per_round = forms.IntegerField(min_value=1, help_text="Images each round shows (real and synthetic).")
    real_fraction = forms.FloatField(min_value=0, max_value=1, help_text=_help("real_fraction") +
                                     " 0.5 is the blinded real-vs-synthetic test's balance.")
    catch_rate = forms.FloatField(min_value=0, max_value=0.49, help_text=_help("catch_rate") +
                                  " Catch trials have a known answer and flag inattentive reading.")
    repeat_rate = forms.FloatField(min_value=0, max_value=0.49, help_text=_help("repeat_rate") +
                                   " Repeats measure each reader's consistency.")
    repeat_washout = forms.IntegerField(min_value=0, help_text=_help("repeat_washout"))
    display_size = forms.IntegerField(min_value=64, max_value=2048, help_text=_help("display_size") +
                                      " Fixed once images exist.")
    modalities = forms.CharField(help_text=_help("modalities") + " Comma-separated, or 'any'.")
    views = forms.CharField(required=False, help_text=_help("views") + " Comma-separated.")
    panel_size = forms.IntegerField(min_value=0, help_text=_help("panel_size"))
    promotion_panel_size = forms.IntegerField(min_value=0, help_text=_help("promotion_panel_size"))
    equivalence_margin = forms.FloatField(min_value=0.001, max_value=0.499, help_text=_help("equivalence_margin"))
    prompt_source = forms.ChoiceField(choices=Study._meta.get_field("prompt_source").choices,
                                      help_text="Where generation prompts come from: the real images' reports "
                                                "(imported with a reports CSV) or built-in templates.")
    prompt_policy = forms.ChoiceField(choices=Study._meta.get_field("prompt_policy").choices,
                                      help_text=_help("prompt_policy"))


def _initial(study: Study) -> dict:
    values = {name: getattr(study, name) for name in EDITABLE}
    values["name"] = study.name
    values["modalities"] = "any" if study.modalities == ["ANY"] else ", ".join(study.modalities)
    values["views"] = ", ".join(study.views)
    return values


def _rubric_rows(rubric: list[dict]) -> list[dict]:
    rows = [{"key": c.get("key", ""), "label": c.get("label", ""), "min": c.get("min", 1), "max": c.get("max", 5),
             "help": c.get("help", "")} for c in rubric]
    return rows + [{"key": "", "label": "", "min": 1, "max": 5, "help": ""} for _ in range(RUBRIC_BLANK_ROWS)]


def rubric_from_post(post) -> list[dict]:
    """The rubric editor's rows (rubric-N-key, -label, -min, -max, -help) as criteria; rows without a key are
    left out, a row with a label but no key is refused."""
    criteria = []
    indices = sorted({int(k.split("-")[1]) for k in post if k.startswith("rubric-") and k.split("-")[1].isdigit()})
    for i in indices:
        key, label = post.get(f"rubric-{i}-key", "").strip(), post.get(f"rubric-{i}-label", "").strip()
        if not key:
            if label:
                raise ValidationError(f"rubric: the criterion {label!r} needs a key (a plain identifier such as "
                                      "'anatomy').")
            continue
        try:
            low, high = int(post.get(f"rubric-{i}-min", "")), int(post.get(f"rubric-{i}-max", ""))
        except ValueError:
            raise ValidationError(f"rubric: criterion {key!r} needs whole-number min and max.") from None
        item = {"key": key, "label": label or key, "min": low, "max": high}
        if post.get(f"rubric-{i}-help", "").strip():
            item["help"] = post[f"rubric-{i}-help"].strip()[:300]
        criteria.append(item)
    return criteria


def _form_errors(form: forms.Form) -> str:
    return " ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())


def _render(request, *, form, study, rubric, error="", status=200) -> HttpResponse:
    return render(request, "dashboard/study_form.html", {"form": form, "study": study, "rubric": rubric,
                                                          "error": error}, status=status)


def _settings(form: StudyForm, post) -> dict:
    values = {k: v for k, v in form.cleaned_data.items() if k != "name"}
    values["rubric"] = rubric_from_post(post)
    values["description"] = values.get("description") or ""
    return values


@login_required
def study_new(request: HttpRequest) -> HttpResponse:
    if not can_create_studies(request.user):
        raise PermissionDenied("You may not create studies: ask for the 'annotation.add_study' permission.")
    template = Study(name="")
    if request.method != "POST":
        form = StudyForm(initial={**_initial(template), "name": ""})
        return _render(request, form=form, study=None, rubric=_rubric_rows(template.rubric))
    form = StudyForm(request.POST)
    rubric_rows = _rubric_rows(rubric_from_post_safe(request.POST))
    if not form.is_valid():
        return _render(request, form=form, study=None, rubric=rubric_rows, error=_form_errors(form), status=400)
    try:
        study = study_create(name=form.cleaned_data["name"].strip(), actor=request.user,
                             **_settings(form, request.POST))
    except ValidationError as exc:
        return _render(request, form=form, study=None, rubric=rubric_rows, error=" ".join(exc.messages),
                       status=400)
    return redirect("dashboard:study", study.pk)


def rubric_from_post_safe(post) -> list[dict]:
    """The editor's rows as typed (for showing the form again after an error)."""
    try:
        return rubric_from_post(post)
    except ValidationError:
        return []


@login_required
def study_settings(request: HttpRequest, pk: int) -> HttpResponse:
    study = _study_for_admin(request, pk)
    if request.method != "POST":
        return _render(request, form=StudyForm(initial=_initial(study)), study=study,
                       rubric=_rubric_rows(study.rubric))
    post = request.POST.copy()
    post["name"] = study.name  # fixed once created
    form = StudyForm(post)
    rubric_rows = _rubric_rows(rubric_from_post_safe(post) or study.rubric)
    if not form.is_valid():
        return _render(request, form=form, study=study, rubric=rubric_rows, error=_form_errors(form), status=400)
    try:
        study_update(study=study, actor=request.user, **_settings(form, post))
    except ValidationError as exc:
        study.refresh_from_db()
        return _render(request, form=form, study=study, rubric=rubric_rows, error=" ".join(exc.messages),
                       status=400)
    return redirect("dashboard:study", study.pk)
