"""Which model version a study's next round samples from: the current one, the versions an admin may choose, and
choosing or rolling back (promotion goes through `study_version_choose` too)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.models import Study
from annotation.rounds.messages import owner_of
from annotation.studies.audit import audit
from inference.models import ModelVersion
from inference.services import model_version_default
from training.models import TrainingRun


def study_version(study: Study) -> ModelVersion:
    """The version the study's next round samples from (the configured default until something is chosen)."""
    if study.current_version_id is None:

        study.current_version = model_version_default()
        study.save(update_fields=["current_version"])
    return study.current_version


def study_versions(study: Study) -> list[ModelVersion]:
    """Versions an admin may choose for the study: the current one, its ancestors, and every version the
    study's rounds sampled from or produced (with their ancestors)."""
    seen: dict[int, ModelVersion] = {}
    starts = [study.current_version] if study.current_version_id else []
    for rnd in study.rounds.select_related("model_version", "produced_version"):
        starts += [v for v in (rnd.model_version, rnd.produced_version) if v is not None]
    starts += [run.produced_version for run in TrainingRun.objects.filter(
        owner=owner_of(study), produced_version__isnull=False).select_related("produced_version")]
    for version in starts:
        while version is not None and version.pk not in seen:
            seen[version.pk] = version
            version = version.parent
    return sorted(seen.values(), key=lambda v: v.pk)


def comparison_versions(study: Study, names: list[str]) -> list[ModelVersion]:
    """The study's versions named by a comparison round, in its order; refused with the study's version names when
    one is not the study's or cannot be loaded."""
    study_version(study)  # the configured default counts as the study's until something else is chosen
    versions = study_versions(study)
    mine = {v.name: v for v in versions if v.name in names}
    missing = [n for n in names if n not in mine]
    if missing:
        known = ", ".join(v.name for v in versions)
        raise ValidationError(f"compare: study {study.name} has no model version {', '.join(map(repr, missing))}; "
                              f"its versions: {known}.")
    broken = [f"{v.name} ({v.load_error})" for n in names if (v := mine[n]).load_error]
    if broken:
        raise ValidationError(f"compare: these versions cannot be loaded: {'; '.join(broken)}.")
    return [mine[n] for n in names]


def study_version_choose(*, study: Study, version: ModelVersion, actor: AbstractUser | None,
                         reason: str = "chosen by an admin") -> Study:
    """Make `version` the one the next round samples from (promotion, roll-back or an admin's choice)."""
    if version.pk not in {v.pk for v in study_versions(study)}:
        raise ValidationError(f"Version {version.name} does not belong to study {study.name}.")
    if version.load_error:
        raise ValidationError(f"Version {version.name} cannot be loaded: {version.load_error}")
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study.pk)
        previous = study.current_version
        study.current_version = version
        study.save(update_fields=["current_version"])
        audit(actor=actor, action="version.choose", study=study, obj=version, reason=reason,
              previous=previous.name if previous else None, version=version.name)
    return study


def study_version_rollback(*, study: Study, actor: AbstractUser | None) -> Study:
    current = study_version(study)
    if current.parent is None:
        raise ValidationError(f"{current.name} has no parent to roll back to.")
    return study_version_choose(study=study, version=current.parent, actor=actor, reason="roll-back")
