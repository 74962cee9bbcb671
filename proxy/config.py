"""The routing configuration as an immutable in-memory snapshot.

The request path calls ``await current()``: no database query unless the
snapshot is missing or older than ``ROUTER_CONFIG_POLL_SECONDS``.
``RouterSettings.config_version`` (one indexed row) is checked in a worker
thread, and the configuration reloaded if it changed: while requests keep
coming, by a task on the loop every half interval, so no request waits for the
check (it cost one request per interval a thread hop and 1-4 ms); the first
request after a quiet spell checks before it goes on. An admin save in this
process drops the snapshot at once (signals); one in another process bumps the
version, so every instance reloads within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError

from keys.snapshot import EMPTY as EMPTY_KEYS
from keys.snapshot import KeyTable
from pricing import table as pricing_table

from . import db, redaction
from .errors import ProxyError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    name: str
    type: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    project_id: str = ""
    location: str = ""
    service_account: dict | None = field(default=None, repr=False)
    extra_headers: dict[str, str] = field(default_factory=dict, repr=False)
    rpm: int | None = None
    tpm: int | None = None
    weight: int = 1
    is_fallback: bool = False
    responses_api: bool = False
    discover_models: bool = False
    prompt_caching: bool = False


@dataclass(frozen=True, slots=True)
class Deployment:
    """One (public model name, credential) pair of a pool."""

    name: str
    credential: CredentialConfig
    upstream_model: str
    rpm: int | None = None
    tpm: int | None = None
    prompt_caching: bool = False  # add Anthropic cache breakpoints (the model's or its credential's setting)

    @property
    def caches_prompts(self) -> bool:
        return self.prompt_caching or self.credential.prompt_caching

    @property
    def key(self) -> str:
        return f"{self.credential.name}/{self.upstream_model}"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    version: int
    master_key_hash: str = field(repr=False)
    credentials: dict[str, CredentialConfig]
    pools: dict[str, tuple[Deployment, ...]]
    aliases: dict[str, tuple[str, ...]]
    fail2ban: dict
    keys: KeyTable = EMPTY_KEYS  # client keys and teams (``keys.snapshot``)

    def check_key(self, key: str) -> bool:
        from credentials.models import hash_key

        expected = self.master_key_hash
        if not expected or not key:
            return False
        return hmac.compare_digest(hash_key(key), expected)


def load() -> RouterConfig:
    """Build a snapshot from the database (sync: run it in a thread)."""
    from credentials.models import Credential, ModelAlias, ProviderModel, RouterSettings, hash_key
    from keys.snapshot import load_table

    router = RouterSettings.load()
    creds: dict[str, CredentialConfig] = {}
    secrets: list[str] = [settings.ROUTER_MASTER_KEY or ""]
    for c in Credential.objects.all():
        # disabled credentials too: their keys may still sit in cooldown reasons and old errors
        secrets += [c.api_key, *(v for v in (c.extra_headers or {}).values() if isinstance(v, str))]
        if c.service_account_json:
            try:
                secrets += redaction.secrets_of_service_account(json.loads(c.service_account_json))
            except ValueError:
                secrets.append(c.service_account_json)
        if not c.enabled:
            continue
        try:
            sa = c.service_account_info() if c.type == "vertex-ai" else None
        except (OSError, ValueError) as exc:
            log.error("credential %s: cannot read its service account (%s); it is skipped", c.name, exc)
            continue
        secrets += redaction.secrets_of_service_account(sa)
        creds[c.name] = CredentialConfig(
            name=c.name, type=c.type, base_url=c.base_url.rstrip("/"), api_key=c.api_key,
            project_id=c.project_id, location=c.location, service_account=sa,
            extra_headers=dict(c.extra_headers or {}), rpm=c.rpm, tpm=c.tpm, weight=max(1, c.weight),
            is_fallback=c.is_fallback, responses_api=c.responses_api, discover_models=c.discover_models,
            prompt_caching=c.prompt_caching,
        )
    pools: dict[str, list[Deployment]] = {}
    for m in ProviderModel.objects.filter(enabled=True).select_related("credential"):
        cred = creds.get(m.credential.name)
        if cred is None:
            continue
        pools.setdefault(m.name, []).append(Deployment(m.name, cred, m.upstream_id, m.rpm, m.tpm,
                                                       m.prompt_caching or cred.prompt_caching))
    aliases = {a.alias: tuple(a.targets) for a in ModelAlias.objects.all()}
    redaction.set_source("config", secrets)
    master = hash_key(settings.ROUTER_MASTER_KEY) if settings.ROUTER_MASTER_KEY else router.master_key_hash
    pricing_table.reload()  # prices share the config version: one poll, one reload
    return RouterConfig(
        version=router.config_version, master_key_hash=master, credentials=creds,
        pools={k: tuple(v) for k, v in pools.items()}, aliases=aliases, fail2ban=dict(router.fail2ban or {}),
        keys=load_table(),
    )


def _db_version() -> int:
    from credentials.models import RouterSettings

    return RouterSettings.objects.filter(pk=1).values_list("config_version", flat=True).first() or 0


class _Snapshot:
    def __init__(self) -> None:
        self.config: RouterConfig | None = None
        self.checked = 0.0
        self.polling = False
        self.used = 0.0  # when a request last asked for the configuration
        self.lock = threading.Lock()

    def _poll(self) -> None:
        try:
            version = db.closing(_db_version)
            if self.config is None or version != self.config.version:
                self.config = db.closing(load)
                log.info("configuration reloaded (version %s)", self.config.version)
        except Exception:
            log.exception("configuration poll failed; keeping the previous snapshot")
        finally:
            self.checked = time.monotonic()
            self.polling = False


_snapshot = _Snapshot()
_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = weakref.WeakKeyDictionary()


async def current() -> RouterConfig:
    snap = _snapshot
    config = snap.config
    if config is None:
        # First request of the process (or after invalidate()): everyone waits for one load.
        try:
            await db.run(_load_once)
        except DatabaseError as exc:
            log.error("cannot load the configuration: %s", type(exc).__name__)
            raise ProxyError(503, "The router cannot read its configuration database; try again shortly.",
                             code="service_unavailable", retry_after=5) from None
        return snap.config  # type: ignore[return-value]
    now = snap.used = time.monotonic()
    interval = settings.ROUTER_CONFIG_POLL_SECONDS
    loop = asyncio.get_running_loop()
    if interval > 0:
        task = _pollers.get(loop)
        if task is not None and not task.done():
            return config
        _pollers[loop] = loop.create_task(_poll_while_busy(snap))
    if now - snap.checked > interval and not snap.polling:
        # After a quiet spell: this request checks, concurrent ones use the snapshot meanwhile.
        snap.polling = True
        await loop.run_in_executor(None, snap._poll)
        return snap.config or config
    return config


async def _poll_while_busy(snap: _Snapshot) -> None:
    """Check every half interval while requests keep coming; after a quiet interval, stop (the next
    request checks first, then starts this again)."""
    loop = asyncio.get_running_loop()
    while (interval := settings.ROUTER_CONFIG_POLL_SECONDS) > 0:
        await asyncio.sleep(interval / 2)
        if time.monotonic() - snap.used > interval:
            return
        if not snap.polling and snap.config is not None:
            snap.polling = True
            await loop.run_in_executor(None, snap._poll)


async def stop_polling() -> None:
    """Stop this loop's poll task (tests: before their loop closes)."""
    task = _pollers.pop(asyncio.get_running_loop(), None)
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _load_once() -> None:
    with _snapshot.lock:
        if _snapshot.config is None:
            _snapshot.config = load()
            _snapshot.checked = time.monotonic()


def invalidate() -> None:
    """Drop the snapshot; the next request reloads (tests, and after imports in-process)."""
    _snapshot.config = None


def snapshot() -> RouterConfig | None:
    """The loaded configuration, if any, without loading it (sync readers: metrics at scrape time)."""
    return _snapshot.config
