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


class ThrottledLoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        key = _key(request, request.POST.get("username", ""))
        if cache.get(key, 0) >= settings.CXR_LOGIN_MAX_FAILURES:
            minutes = max(1, settings.CXR_LOGIN_WINDOW_S // 60)
            return HttpResponse(
                f"Too many failed logins for this account; try again in {minutes} minutes.", status=429,
                content_type="text/plain",
            )
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        key = _key(self.request, self.request.POST.get("username", ""))
        cache.add(key, 0, settings.CXR_LOGIN_WINDOW_S)
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, settings.CXR_LOGIN_WINDOW_S)
        return super().form_invalid(form)

    def form_valid(self, form):
        cache.delete(_key(self.request, self.request.POST.get("username", "")))
        return super().form_valid(form)
