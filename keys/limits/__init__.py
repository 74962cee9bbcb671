"""Per-key and per-team RPM/TPM/parallel limits and budgets (see ``keys.admission``).

``get()`` picks the store that matches the routing state: Redis-shared when ``REDIS_URL`` is
set (``RedisLimits``, degrading to per process during outages), in-process otherwise.
"""

from __future__ import annotations

from proxy import state as state_mod
from proxy.state import RedisState

from .local import LocalLimits
from .redis_store import RedisLimits
from .values import Verdict, from_nano, to_nano

__all__ = ["LocalLimits", "RedisLimits", "Verdict", "from_nano", "get", "to_nano"]

_store: LocalLimits | RedisLimits | None = None
_state = None


def get() -> LocalLimits | RedisLimits:
    global _store, _state
    st = state_mod.get()
    if _store is None or st is not _state:  # proxy.state.reset() (tests, settings changes) starts afresh
        _store = RedisLimits(st) if isinstance(st, RedisState) else LocalLimits()
        _state = st
    return _store
