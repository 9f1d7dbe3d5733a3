"""What every API view shares: who may do what (token scopes over the one study-admin scoping rule in
`annotation.permissions`), query-parameter parsing with 400s that say what is wrong, and id-ordered cursor pages."""

from __future__ import annotations

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import CursorPagination

from annotation.models import TokenScope
from annotation.permissions import administered, administered_study_ids, can_administer

# --- who may do what ------------------------------------------------------------------------------------------------


def token_scope(request) -> str:
    """The token's scope, or 'session' for a logged-in browser."""
    token = getattr(request, "auth", None)
    return getattr(token, "scope", "session")


def admin_study_ids(request) -> set[int] | None:
    """Studies the caller may read as an admin (None: all, for superusers); empty for `read` tokens."""
    return set() if token_scope(request) == TokenScope.READ else administered_study_ids(request.user)


def administers(request, study_id: int) -> bool:
    """Whether the caller may act as the study's admin through the API (never with a `read` token)."""
    return token_scope(request) != TokenScope.READ and can_administer(request.user, study_id)


def require_admin_action(request, study_id: int) -> None:
    if token_scope(request) not in ("session", TokenScope.ADMIN):
        raise PermissionDenied("This needs a token with the admin scope.")
    if not administers(request, study_id):
        raise NotFound("No such study.")


def scoped(qs, field: str, request):
    """`qs` limited to the studies the caller administers (`field` leads from a row to its study id); nothing for
    `read` tokens."""
    return qs.none() if token_scope(request) == TokenScope.READ else administered(qs, request.user, field)


MAX_ID = 2**63 - 1
ID = r"[0-9]{1,18}"  # path ids: anything longer cannot be a row, and would overflow the database's integers


class ByIdCursor(CursorPagination):
    ordering = "pk"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


# --- filters -------------------------------------------------------------------------------------------------------


def int_param(request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValidationError({name: "must be a whole number."}) from None
    if not -MAX_ID <= number <= MAX_ID:
        raise ValidationError({name: "is out of range."})
    return number


def time_param(request, name: str):
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:  # well formed but impossible, e.g. 2026-02-30
        parsed = None
    if parsed is None:
        raise ValidationError({name: "must be an ISO 8601 date-time, e.g. 2026-11-26T12:00:00Z."})
    return parsed


def choice_param(request, name: str, choices) -> str | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    if value not in choices:
        raise ValidationError({name: f"must be one of {', '.join(choices)}."})
    return value


def filter_common(qs, request, *, study: str, round_: str | None = None, created: str = "created_at"):
    if (value := int_param(request, "study")) is not None:
        qs = qs.filter(**{study: value})
    if round_ and (value := int_param(request, "round")) is not None:
        qs = qs.filter(**{round_: value})
    if (value := time_param(request, "created_after")) is not None:
        qs = qs.filter(**{f"{created}__gt": value})
    if (value := time_param(request, "created_before")) is not None:
        qs = qs.filter(**{f"{created}__lt": value})
    return qs


COMMON = [OpenApiParameter("study", int), OpenApiParameter("created_after", str),
          OpenApiParameter("created_before", str)]
