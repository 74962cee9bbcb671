"""Who is calling: the client's key, checked before the request body is read.

``authenticate(headers)`` is the one entry point. The API front (``proxy.asgi``)
calls it for every route that needs a key, before it reads a byte of the body,
so a request without a valid key costs neither memory nor a usage row: it is
answered 401 and counted here (``/health``: ``auth_failures``), with at most one
log line per ``LOG_EVERY`` seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keys import admission

from . import config as config_mod
from . import discovery
from .errors import ProxyError

if TYPE_CHECKING:
    from keys.snapshot import KeyEntry

log = logging.getLogger(__name__)

LOG_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``key_id`` goes into usage rows (never the key itself)."""

    key_id: str  # the client key's token id (``keys.ApiKey.token``), or "master"
    is_master: bool = False
    key: KeyEntry | None = None  # the client key: its team, models, limits and budget (``keys.snapshot``)


MASTER = Principal("master", is_master=True)


class _Failures:
    def __init__(self) -> None:
        self.total = 0
        self._unlogged = 0
        self._logged_at = float("-inf")

    def count(self, reason: str) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            log.warning("%d request(s) refused for a missing or wrong API key (last: %s; %d since start)",
                        self._unlogged, reason, self.total)
            self._unlogged, self._logged_at = 0, now


failures = _Failures()


def presented_key(headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return key or headers.get("x-api-key", "").strip()


async def authenticate(headers: dict[str, str], *, count: bool = True) -> Principal:
    """The caller behind ``headers`` (lower-case names); ProxyError 401 ``invalid_api_key`` if none.

    ``count=False`` for routes where a key is optional (``/health``): a wrong key there is no attack.
    """
    config = await config_mod.current()
    discovery.ensure_started()
    key = presented_key(headers)
    if not key:
        if count:
            failures.count("no key")
        raise ProxyError(401, "Missing API key: send `Authorization: Bearer <router key>`.", code="invalid_api_key")
    if config.check_key(key):
        return MASTER
    entry = config.keys.find(key)  # a client key: by the hash of the secret, in the snapshot
    if entry is not None:
        try:
            admission.check_key(entry)  # blocked or expired: 401 saying which
        except ProxyError:
            if count:
                failures.count("blocked or expired key")
            raise
        return Principal(entry.token, key=entry)
    if count:
        failures.count("wrong key")
    raise ProxyError(401, "Incorrect API key provided.", code="invalid_api_key")
