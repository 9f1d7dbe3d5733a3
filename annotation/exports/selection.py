"""Which labels an export holds (`Selection`), from API or CLI parameters or as stored on a job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.dateparse import parse_datetime

from annotation.models import Label, Round, Study, StudyMembership


@dataclass(frozen=True)
class Selection:
    """Which labels an export holds."""

    study: str
    rounds: tuple[int, ...] = ()
    since_round: int | None = None
    updated_after: datetime | None = None
    include_simulated: bool = False
    include_superseded: bool = True
    identities: str = "pseudonym"
    meta: dict = field(default_factory=dict)

    @property
    def incremental(self) -> bool:
        """Only what is new since a round or a time: an export a poller runs, for which nothing new is no error."""
        return self.updated_after is not None or self.since_round is not None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["rounds"] = list(self.rounds)
        out["updated_after"] = self.updated_after.isoformat() if self.updated_after else None
        return out


def selection_from(params: dict, *, study: Study, is_admin: bool) -> Selection:
    """A Selection from API/CLI parameters, refusing what does not make sense with a sentence."""

    rounds: list[int] = []
    raw = params.get("round") or params.get("rounds") or []
    for value in raw if isinstance(raw, list | tuple) else str(raw).split(","):
        if str(value).strip():
            try:
                number = int(value)
            except ValueError:
                raise ValidationError(f"round must be a round number, not {value!r}.") from None
            if not 0 < number < 2**31:
                raise ValidationError(f"round must be a round number, not {value!r}.")
            rounds.append(number)
    since = params.get("since_round")
    try:
        since = int(since) if since not in (None, "") else None
    except ValueError:
        raise ValidationError("since_round must be a round number.") from None
    if since is not None and not 0 <= since < 2**31:
        raise ValidationError("since_round must be a round number.")
    updated = params.get("updated_after")
    updated_at = None
    if updated not in (None, ""):
        try:
            updated_at = updated if isinstance(updated, datetime) else parse_datetime(str(updated))
        except ValueError:  # well formed but impossible, e.g. 2026-02-30
            updated_at = None
        if updated_at is None:
            raise ValidationError("updated_after must be an ISO 8601 date-time, e.g. 2026-11-26T12:00:00Z.")
        updated_at = utc(updated_at)
    identities = params.get("identities") or "pseudonym"  # usernames only when a study admin asks for them
    if identities not in ("pseudonym", "username"):
        raise ValidationError("identities must be 'pseudonym' or 'username'.")
    if identities == "username" and not is_admin:
        raise ValidationError("Only study admins may export reader usernames.")
    missing = set(rounds) - set(Round.objects.filter(study=study, number__in=rounds).values_list("number",
                                                                                                   flat=True))
    if missing:
        raise ValidationError(f"Study {study.name} has no round {', '.join(map(str, sorted(missing)))}.")

    def flag(name: str, default: bool) -> bool:
        value = params.get(name)
        return default if value in (None, "") else str(value).lower() in ("1", "true", "yes", "on")

    return Selection(study=study.name, rounds=tuple(sorted(rounds)), since_round=since, updated_after=updated_at,
                     include_simulated=flag("include_simulated", False),
                     include_superseded=flag("include_superseded", True), identities=identities)


# --- rows ----------------------------------------------------------------------------------------------------------

def selection_scope(sel: Selection, study: Study) -> tuple[dict[int, int], list[int]]:
    """The selected rounds (id → number) and the simulated readers to leave out, resolved once per export so the
    row query joins only labels and tasks."""
    rounds = Round.objects.filter(study=study)
    if sel.rounds:
        rounds = rounds.filter(number__in=sel.rounds)
    if sel.since_round is not None:
        rounds = rounds.filter(number__gt=sel.since_round)
    simulated = [] if sel.include_simulated else list(
        StudyMembership.objects.filter(study=study, is_simulated=True).values_list("user_id", flat=True))
    return dict(rounds.values_list("pk", "number")), simulated


def selection_empty_reason(sel: Selection) -> str | None:
    """Why an export of `sel` would hold no label (a sentence), or None when some label matches."""
    study = Study.objects.get(name=sel.study)
    rounds, simulated = selection_scope(sel, study)
    labels = Label.objects.filter(task__round_id__in=list(rounds))
    if sel.updated_after is not None:
        labels = labels.filter(created_at__gt=utc(sel.updated_after))
    if not sel.include_superseded:
        labels = labels.filter(task__current_label_id=models.F("pk"))
    if labels.exclude(reader_id__in=simulated).exists():
        return None
    left_out = labels.filter(reader_id__in=simulated).count() if simulated else 0
    if left_out:
        return (f"No labels match: all {left_out} matching labels come from simulated readers, and simulated readers "
                "are left out unless include_simulated (--include-simulated) is set.")
    where = "in the selected rounds" if (sel.rounds or sel.since_round is not None) else "in this study"
    return f"No labels match: no reader has labelled anything {where}" + (
        " after updated_after." if sel.updated_after is not None else ".")


def utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

def selection_load(data: dict) -> Selection:
    """The Selection stored as JSON on an export job."""
    data = dict(data)
    data["rounds"] = tuple(data.get("rounds") or ())
    if data.get("updated_after"):
        data["updated_after"] = parse_datetime(data["updated_after"])
    return Selection(**data)
