"""Defaults that must not expose a router: where it listens, and what it warns about.

``scripts/run`` (``manage.py serve``) listens on ``ROUTER_HOST`` (default
127.0.0.1: a laptop's router is not reachable from the network unless asked). When it
does listen beyond loopback while still using the published sample key or the
development secret key, it says so loudly on stderr before serving. ``manage.py check
--deploy`` flags the development secret key and a missing ``ROUTER_ENCRYPTION_KEY``
(Django's own W009 does not recognise our placeholder).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from django.conf import settings
from django.core import checks

DEFAULT_SECRET_KEY = "insecure-local-only-secret-key-change-me-in-production"
SAMPLE_MASTER_KEY = "sk-router-local-dev"  # router.sample.yaml's key, printed in the README
# set in the workers of ``manage.py serve --workers N``: their supervisor warned once for all of them
SUPERVISED_ENV = "ROUTER_SUPERVISOR_PID"


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


def warn_if_exposed(host: str) -> list[str]:
    """Print the exposure warnings for a server about to listen on ``host`` to stderr, loudly."""
    from django.db import DatabaseError, connections

    if is_loopback(host) or os.environ.get(SUPERVISED_ENV):
        return []
    try:
        sample_key = sample_key_in_use()
    except DatabaseError:  # not migrated yet: Django's own checks say so
        sample_key = False
    finally:
        connections.close_all()  # this thread is about to run the server's event loop
    warnings = exposure_warnings(host, sample_key=sample_key, secret_key=settings.SECRET_KEY)
    for warning in warnings:
        sys.stderr.write(f"\n*** WARNING: listening on {host}, reachable from the network: {warning}\n")
    if warnings:
        sys.stderr.write("*** Bind 127.0.0.1 for local use (scripts/run: unset ROUTER_HOST).\n\n")
        sys.stderr.flush()
    return warnings


def daphne_bind(argv: list[str]) -> str | None:
    """The host the ``daphne`` command line binds (its default is 127.0.0.1); None when not run by it."""
    if not argv or not (Path(argv[0]).name == "daphne" or Path(argv[0]).parent.name == "daphne"):
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-b", "--bind")
    known, _ = parser.parse_known_args(argv[1:])
    return known.bind or "127.0.0.1"


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
