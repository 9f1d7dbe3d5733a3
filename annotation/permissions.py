"""Who administers which study: the one scoping rule the dashboard, the API and the Django admin share.

A superuser administers every study; anyone else the studies where they hold the study-admin role. Readers'
access is not decided here: a reader reaches only their own queues and tasks, by their tokens.
"""

from __future__ import annotations

from django.db.models import QuerySet

from annotation.models import Role, StudyMembership


def administered_study_ids(user) -> set[int] | None:
    """The ids of the studies `user` administers; None means every study (a superuser)."""
    if user.is_superuser:
        return None
    return set(StudyMembership.objects.filter(user=user, role=Role.ADMIN).values_list("study_id", flat=True))


def can_administer(user, study) -> bool:
    """Whether `user` administers `study` (a Study or its id): the one check every admin page and action makes."""
    ids = administered_study_ids(user)
    return ids is None or getattr(study, "pk", study) in ids


def administered(qs: QuerySet, user, path: str = "study") -> QuerySet:
    """`qs` limited to rows of the studies `user` administers; `path` is how a row reaches its study ("pk" for
    studies themselves, "round__study" for tasks, ...)."""
    ids = administered_study_ids(user)
    return qs if ids is None else qs.filter(**{f"{path}__in": ids})


def uses_dashboard(user) -> bool:
    """Whether the dashboard is for `user`: they administer a study (a superuser: all) or may create one; everyone
    else reads in the portal."""
    return bool(user and user.is_authenticated) and (administered_study_ids(user) != set() or can_create_studies(user))


def can_create_studies(user) -> bool:
    """A superuser, or a user given Django's `annotation.add_study` permission (directly or by a group)."""
    return bool(user and user.is_authenticated and user.is_active and user.has_perm("annotation.add_study"))
