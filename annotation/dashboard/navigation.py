"""What the top bar offers a signed-in user: the dashboard link for whoever the dashboard is for
(`permissions.uses_dashboard`; a template context processor evaluated only when the page asks, so a reader's case
page pays one query at most)."""

from __future__ import annotations

from annotation.permissions import uses_dashboard


def navigation(request) -> dict:
    user = getattr(request, "user", None)
    return {"administers_a_study": lambda: uses_dashboard(user)}
