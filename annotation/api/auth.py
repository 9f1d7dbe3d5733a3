"""Bearer tokens for API clients. Only a SHA-256 of each key is stored."""

from __future__ import annotations

import hashlib
import secrets

from django.utils import timezone
from rest_framework import authentication, exceptions

from annotation.models import ApiToken


def token_issue(*, user, name: str, scope: str) -> tuple[ApiToken, str]:
    """Create a token and return it with its plain key, which is shown once and never stored."""
    key = "cxr_" + secrets.token_urlsafe(30)
    token = ApiToken.objects.create(
        user=user, name=name, scope=scope, prefix=key[4:12], key_hash=hashlib.sha256(key.encode()).hexdigest()
    )
    return token, key


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace") not in ("Bearer", "Token"):
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        digest = hashlib.sha256(header[1]).hexdigest()
        token = ApiToken.objects.select_related("user").filter(key_hash=digest, revoked_at__isnull=True).first()
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token

    def authenticate_header(self, request):
        return self.keyword


try:  # how the OpenAPI schema describes the token (drf-spectacular finds subclasses of this on import)
    from drf_spectacular.extensions import OpenApiAuthenticationExtension

    class ApiTokenScheme(OpenApiAuthenticationExtension):
        target_class = "annotation.api.auth.ApiTokenAuthentication"
        name = "bearerToken"

        def get_security_definition(self, auto_schema):
            return {"type": "http", "scheme": "bearer",
                    "description": "An API token (`cxr_…`) with scope read, export or admin."}
except ImportError:  # pragma: no cover - drf-spectacular is a pinned dependency
    pass
