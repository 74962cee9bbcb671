"""Secrets at rest: Fernet (AES-128-CBC + HMAC) with rotatable keys.

``ROUTER_ENCRYPTION_KEY`` holds comma-separated keys, newest first: the first
encrypts, every one decrypts (MultiFernet), so keys rotate without downtime
(``manage.py rotate_secrets`` re-encrypts). A key that is not a Fernet key is
treated as a passphrase and stretched with SHA-256. A value that no key
decrypts raises instead of passing ciphertext on as an API key.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)

PREFIX = "enc1:"
# For local runs only (documented in the README); production must set ROUTER_ENCRYPTION_KEY.
DEV_KEY = "local-development-key-do-not-use-in-production"


def _fernet_for(key: str) -> Fernet:
    try:
        return Fernet(key.encode())
    except (ValueError, TypeError):
        return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


@lru_cache(maxsize=4)
def _multifernet(raw: str) -> MultiFernet:
    keys = [k.strip() for k in raw.split(",") if k.strip()] or [DEV_KEY]
    return MultiFernet([_fernet_for(k) for k in keys])


def warn_if_development_key() -> None:
    """Said once where the server starts (routerproject.asgi), not on every manage.py command."""
    if not settings.ROUTER_ENCRYPTION_KEY.strip(",").strip() and not (settings.DEBUG or settings.TESTING):
        log.warning("ROUTER_ENCRYPTION_KEY is not set: secrets are encrypted with the local development key. "
                    "Set it in production (see the README's settings).")


def _cipher() -> MultiFernet:
    return _multifernet(settings.ROUTER_ENCRYPTION_KEY)


def encrypt(plaintext: str) -> str:
    if not plaintext:
        return ""
    return PREFIX + _cipher().encrypt(plaintext.encode()).decode()


def decrypt(stored: str) -> str:
    if not stored:
        return ""
    if not stored.startswith(PREFIX):
        raise ImproperlyConfigured("a secret column holds a value that is not encrypted")
    try:
        return _cipher().decrypt(stored[len(PREFIX):].encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "cannot decrypt a stored secret: ROUTER_ENCRYPTION_KEY does not contain the key it was encrypted with"
        ) from None


def rotate(stored: str) -> str:
    if not stored:
        return ""
    return PREFIX + _cipher().rotate(stored[len(PREFIX):].encode()).decode()


def mask(secret: str) -> str:
    """``sk-proj-abcdef123456`` -> ``sk-…3456``: enough to recognise a key, not to use it."""
    if not secret:
        return ""
    if len(secret) <= 8:
        return "…" + secret[-2:]
    head = secret[:3] if secret[:3].isascii() and secret[2] == "-" else ""
    return f"{head}…{secret[-4:]}"
