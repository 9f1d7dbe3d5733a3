"""Writes for studies and their members: create (validated), add a member, reveal the truth to readers."""

from __future__ import annotations

import re
import uuid

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation.models import (
    ACTIVE_STATUSES,
    EvaluationPanel,
    Image,
    Label,
    PanelKind,
    Role,
    Study,
    StudyMembership,
    TaskKind,
)
from annotation.studies.audit import audit
from annotation.studies.rubric import validate_rubric_definition

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
_CODE = re.compile(r"^[A-Z0-9]{1,16}$")  # a DICOM code string: Modality (CR, DX, ...) or ViewPosition (PA, AP, ...)


def codes_parse(value, *, field: str) -> list[str]:
    """"CR,DX", ["cr", "dx"], "any" or "" → upper-case codes ("any" → ["ANY"]); a sentence for anything else."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    codes = []
    for item in items:
        code = str(item).strip().upper()
        if not code:
            continue
        if not _CODE.match(code):
            raise ValidationError(f"{field}: {item!r} is not a DICOM code (letters and digits, e.g. CR, DX, PA, AP) "
                                  "or 'any'.")
        if code not in codes:
            codes.append(code)
    return ["ANY"] if "ANY" in codes else codes


def study_create(*, name: str, title: str = "", actor: AbstractUser | None = None, **settings_) -> Study:
    """Create a study with its settings validated by `study_validate` (the one rule the CLI, the API and the
    dashboard's form share); its creator, when a person, becomes its first study admin."""
    if not _NAME.match(name or ""):
        raise ValidationError(f"name {name!r}: use 1–80 lower-case letters, digits, '-' or '_', starting with a "
                              "letter or digit (it names the study on the command line and in URLs).")
    if Study.objects.filter(name=name).exists():
        raise ValidationError(f"A study named {name!r} exists already.")
    for field in ("modalities", "views"):
        if field in settings_:
            settings_[field] = codes_parse(settings_[field], field=field)
    person = actor if actor and actor.is_authenticated else None
    study = Study(name=name, title=title or name, created_by=person, **settings_)
    study_validate(study=study)
    with transaction.atomic():
        study.save()
        audit(actor=actor, action="study.create", study=study, obj=study, name=name)
        if person is not None and not person.is_superuser:
            membership_add(study=study, user=person, role=Role.ADMIN, actor=actor)
    return study


#: settings a study admin may change after creation (the name is fixed: the CLI, API and exports use it)
EDITABLE = ("title", "description", "task_kinds", "rubric", "readers_per_image", "images_per_round", "real_fraction",
            "catch_rate", "repeat_rate", "repeat_washout", "display_size", "modalities", "views", "panel_size",
            "promotion_panel_size", "equivalence_margin", "prompt_source", "prompt_policy")
#: settings a running round reads (its queues, cases, panels and prompts): they wait until no round is running
ROUND_SETTINGS = ("task_kinds", "rubric", "readers_per_image", "images_per_round", "real_fraction", "catch_rate",
                  "repeat_rate", "repeat_washout", "display_size", "panel_size", "promotion_panel_size",
                  "prompt_source", "prompt_policy")


def study_update(*, study: Study, actor: AbstractUser | None, **changes) -> Study:
    """Change a study's settings, validated by the same rule as `study_create`. Refused with the reason: a setting
    a running round reads while one runs; the display size once images are stored (they were resized to it); the
    rubric once rubric scores exist (they were given on its scales); a panel's size once the panel is defined
    (every version is compared on the same items)."""

    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise ValidationError(f"These settings cannot be changed here: {', '.join(sorted(unknown))}.")
    for field in ("modalities", "views"):
        if field in changes:
            changes[field] = codes_parse(changes[field], field=field)
    changed = {k: v for k, v in changes.items() if getattr(study, k) != v}
    if not changed:
        return study
    reasons = []
    running = study.rounds.filter(status__in=ACTIVE_STATUSES).order_by("number").first()
    touched = [k for k in ROUND_SETTINGS if k in changed]
    if running is not None and touched:
        reasons.append(f"round {running.number} is running ({running.status}): {', '.join(touched)} can change "
                       "once it is done or cancelled.")
    if "display_size" in changed and Image.objects.filter(study=study).exists():
        reasons.append(f"display_size: the study's images are stored for readers at {study.display_size} px; it "
                       "cannot change once images exist (create a new study for another size).")
    if "rubric" in changed and Label.objects.filter(task__round__study=study, task__kind=TaskKind.RUBRIC).exists():
        reasons.append("rubric: readers have scored images on the current criteria and scales; it cannot change "
                       "once rubric scores exist (create a new study for another rubric).")
    for field, kind in (("panel_size", PanelKind.EVALUATION), ("promotion_panel_size", PanelKind.PROMOTION)):
        if field in changed and EvaluationPanel.objects.filter(study=study, kind=kind).exists():
            reasons.append(f"{field}: the {kind} panel is fixed once defined, so every version is compared on "
                           "the same items.")
    if reasons:
        raise ValidationError(" ".join(reasons))
    before = {k: getattr(study, k) for k in changed}
    for key, value in changed.items():
        setattr(study, key, value)
    try:
        study_validate(study=study)
    except ValidationError:
        for key, value in before.items():
            setattr(study, key, value)
        raise
    with transaction.atomic():
        study.save(update_fields=list(changed))
        audit(actor=actor, action="study.update", study=study, obj=study,
              changed={k: [before[k], changed[k]] for k in changed})
    return study


def study_validate(*, study: Study) -> None:
    validate_rubric_definition(study.rubric)
    if not study.modalities:
        raise ValidationError("modalities: give at least one (CR, DX for chest radiographs) or 'any'.")
    if study.prompt_policy not in ("truncate", "chunks"):
        raise ValidationError("prompt_policy must be 'truncate' or 'chunks'.")
    if not 0.0 <= study.real_fraction <= 1.0:
        raise ValidationError("real_fraction must be between 0 and 1.")
    if not 0.0 <= study.catch_rate < 0.5 or not 0.0 <= study.repeat_rate < 0.5:
        raise ValidationError("catch_rate and repeat_rate must be in [0, 0.5).")
    unknown = set(study.task_kinds) - set(TaskKind.values)
    if not study.task_kinds or unknown:
        raise ValidationError(f"task_kinds must be a non-empty list drawn from {list(TaskKind.values)}.")
    if study.readers_per_image < 1 or not 64 <= study.display_size <= 2048:
        raise ValidationError("readers_per_image must be ≥ 1 and display_size within 64–2048 px.")
    if study.images_per_round < 1:
        raise ValidationError("images_per_round must be ≥ 1.")
    if not 0.0 < study.equivalence_margin < 0.5:
        raise ValidationError("equivalence_margin must be between 0 and 0.5 (accuracy units around 0.5).")
    if study.prompt_source not in ("templates", "reports"):
        raise ValidationError("prompt_source must be 'templates' or 'reports'.")


def membership_add(*, study: Study, user: AbstractUser, role: str, simulated: bool = False,
                   actor: AbstractUser | None = None) -> StudyMembership:
    with transaction.atomic():
        member, created = StudyMembership.objects.get_or_create(
            study=study, user=user, role=role,
            defaults={"pseudonym": f"{'R' if role == Role.READER else 'A'}-{uuid.uuid4().hex[:8]}",
                      "is_simulated": simulated},
        )
        if created:
            audit(actor=actor, action="membership.add", study=study, obj=member, user=user.username, role=role)
    return member


def study_reveal(*, study: Study, actor: AbstractUser) -> Study:
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study.pk)
        if study.revealed_at is None:
            study.revealed_at = timezone.now()
            study.save(update_fields=["revealed_at"])
            audit(actor=actor, action="study.reveal", study=study, obj=study)
    return study
