"""Requests carrying NUL characters are refused with a 400 before any view sees them.

PostgreSQL stores no NUL in text or jsonb, so a NUL in a filter, a form field or a JSON answer would otherwise be a
500 there (and quietly accepted on SQLite). File uploads (multipart) are left alone: image bytes hold NULs.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from django.http import HttpRequest, JsonResponse

MESSAGE = "The request holds a NUL character (\\u0000), which is not accepted in parameters or fields."
_CHECKED_BODIES = ("application/json", "application/x-www-form-urlencoded")


def _body_has_nul(request: HttpRequest) -> bool:
    text = request.body.decode("utf-8", errors="replace")
    if request.content_type == "application/json":
        return "\x00" in text or "\\u0000" in text  # JSON writes it escaped
    return "\x00" in unquote_plus(text)


class RejectNulMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest):
        query = request.META.get("QUERY_STRING", "")
        refused = "\x00" in request.path or "\x00" in unquote_plus(query)
        if not refused and request.content_type in _CHECKED_BODIES and request.method in ("POST", "PUT", "PATCH"):
            refused = _body_has_nul(request)
        if refused:
            return JsonResponse({"detail": MESSAGE}, status=400)
        return self.get_response(request)
