"""Defaults that must not expose a router: where it listens, and what it warns about.

``scripts/run`` (``manage.py runserver``) listens on ``ROUTER_HOST`` (default
127.0.0.1: a laptop's router is not reachable from the network unless asked). When it
does listen beyond loopback while still using the published sample key or the
development secret key, it says so loudly on stderr before serving. ``manage.py check
--deploy`` flags the development secret key and a missing ``ROUTER_ENCRYPTION_KEY``
(Django's own W009 does not recognise our placeholder).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.core import checks

DEFAULT_SECRET_KEY = "insecure-local-only-secret-key-change-me-in-production"
SAMPLE_MASTER_KEY = "sk-router-local-dev"  # router.sample.yaml's key, printed in the README


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def addrport(host: str, port: int) -> str:
    """``host:port`` as runserver takes it (IPv6 in brackets)."""
    host = host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def sample_key_in_use() -> bool:
    """Whether clients authenticate with the published sample key (needs the database)."""
    from credentials.models import RouterSettings, hash_key

    if settings.ROUTER_MASTER_KEY:
        return settings.ROUTER_MASTER_KEY == SAMPLE_MASTER_KEY
    stored = RouterSettings.objects.filter(pk=1).values_list("master_key_hash", flat=True).first()
    return stored == hash_key(SAMPLE_MASTER_KEY)


def exposure_warnings(host: str, *, sample_key: bool, secret_key: str) -> list[str]:
    if is_loopback(host):
        return []
    out = []
    if sample_key:
        out.append(f"clients authenticate with the published sample key {SAMPLE_MASTER_KEY!r}: anyone who can "
                   "reach this address can use your provider credentials. Set server.master_key in your config "
                   "or ROUTER_MASTER_KEY.")
    if secret_key == DEFAULT_SECRET_KEY:
        out.append("DJANGO_SECRET_KEY is the development default: admin sessions can be forged. "
                   "Set DJANGO_SECRET_KEY to a long random value.")
    return out


@checks.register(checks.Tags.security, deploy=True)
def check_deploy_secrets(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    out: list[checks.CheckMessage] = []
    if settings.SECRET_KEY == DEFAULT_SECRET_KEY:
        out.append(checks.Warning(
            "SECRET_KEY is the router's development default, published in its source.",
            hint="Set DJANGO_SECRET_KEY to a long random value (e.g. python -c 'import secrets; "
                 "print(secrets.token_urlsafe(50))').",
            id="router.W001"))
    if not settings.ROUTER_ENCRYPTION_KEY.strip():
        out.append(checks.Warning(
            "ROUTER_ENCRYPTION_KEY is not set: stored provider keys are encrypted with the development key.",
            hint="Set ROUTER_ENCRYPTION_KEY (a Fernet key or a long passphrase); see the README.",
            id="router.W002"))
    return out
