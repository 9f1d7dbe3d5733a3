"""Login with throttling: repeated failures for a username from one address lock it out for a window."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpResponse


def _key(request, username: str) -> str:
    ident = f"{username.lower()}|{request.META.get('REMOTE_ADDR', '')}"
    return "cxr:login-fail:" + hashlib.sha256(ident.encode()).hexdigest()


def failures_exceeded(key: str) -> bool:
    """Whether `key` (a username + address, an address guessing invitation links) failed too often lately."""
    return cache.get(key, 0) >= settings.CXR_LOGIN_MAX_FAILURES


def failure_count(key: str) -> None:
    """One more failure for `key` within the window (`CXR_LOGIN_WINDOW_S`)."""
    cache.add(key, 0, settings.CXR_LOGIN_WINDOW_S)
    try:
        cache.incr(key)
    except ValueError:
        cache.set(key, 1, settings.CXR_LOGIN_WINDOW_S)


def refused_for_failures(what: str) -> HttpResponse:
    minutes = max(1, settings.CXR_LOGIN_WINDOW_S // 60)
    return HttpResponse(f"Too many {what}; try again in {minutes} minutes.", status=429, content_type="text/plain")


class ThrottledLoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        if failures_exceeded(_key(request, request.POST.get("username", ""))):
            return refused_for_failures("failed logins for this account")
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        failure_count(_key(self.request, self.request.POST.get("username", "")))
        return super().form_invalid(form)

    def form_valid(self, form):
        cache.delete(_key(self.request, self.request.POST.get("username", "")))
        return super().form_valid(form)
