"""Who may call the management API: the master key (Bearer or x-api-key) or a staff admin session.

A client key authenticates (so it gets 403, not 401: the key is valid, the route is not for it).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from credentials.models import RouterSettings, hash_key

from ..models import ApiKey


@dataclass(frozen=True)
class KeyUser:
    """request.user for a caller that presented a router key."""

    key_id: str
    is_staff: bool
    is_authenticated: bool = True
    is_active: bool = True
    is_superuser: bool = False
    pk: None = None

    def __str__(self) -> str:
        return self.key_id


def is_master_key(secret: str) -> bool:
    expected = hash_key(settings.ROUTER_MASTER_KEY) if settings.ROUTER_MASTER_KEY else \
        RouterSettings.load().master_key_hash
    return bool(expected and secret) and hmac.compare_digest(hash_key(secret), expected)


def presented_key(request) -> str:
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return key or request.headers.get("x-api-key", "").strip()


class RouterKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        secret = presented_key(request)
        if not secret:
            return None  # maybe an admin session
        if is_master_key(secret):
            return KeyUser("master", is_staff=True), None
        key = ApiKey.objects.filter(key_hash=hash_key(secret)).only("token").first()
        if key is not None:
            return KeyUser(key.token, is_staff=False), None
        raise exceptions.AuthenticationFailed("Incorrect API key provided.")

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="router"'



class RouterKeyScheme(OpenApiAuthenticationExtension):
    target_class = RouterKeyAuthentication
    name = "masterKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The router's master key"}
