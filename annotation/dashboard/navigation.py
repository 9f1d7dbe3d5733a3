"""What the top bar offers a signed-in user: the dashboard link for whoever administers a study or may create one
(a template context processor; evaluated only when the page asks, so a reader's case page pays one query at most)."""

from __future__ import annotations

from annotation.permissions import administered_study_ids, can_create_studies


def navigation(request) -> dict:
    user = getattr(request, "user", None)

    def administers_a_study() -> bool:
        if user is None or not user.is_authenticated:
            return False
        return administered_study_ids(user) != set() or can_create_studies(user)

    return {"administers_a_study": administers_a_study}
