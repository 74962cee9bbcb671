"""Routing state: cooldowns (fail2ban), RPM/TPM windows and round-robin cursors.

Two implementations share one interface (``get()`` picks one from ``settings.REDIS_URL``):

* ``LocalState``: plain dicts in this process. Every operation costs microseconds.
* ``RedisState``: counters, cooldowns and the shared cursor live in Redis so several
  router processes (or hosts) share them. The budget is one round trip per request,
  and only when a candidate has an RPM/TPM limit: one Lua script (``admit``) reads the
  cooldowns, checks every limit of the candidates in order, increments the RPM windows
  of the one it admits and advances the pool's cursor, atomically. Pools without limits
  make no round trip at all: they read a mirror of the cooldowns, refreshed from Redis
  in the background every ``ROUTER_STATE_SYNC_SECONDS``, and rotate with a per-process
  cursor (random start). Failures (the slow path) write through to Redis at once.
  When Redis is unreachable the router keeps serving from the in-process state, logs
  it once, reports it in ``/health`` and tries Redis again every
  ``ROUTER_REDIS_RETRY_SECONDS``.

Limits use a sliding window of ``ROUTER_LIMIT_WINDOW_SECONDS`` (60) cut into 60 buckets:
a deployment is admitted while its usage in the window is below the limit, and the wait
reported when it is not is the time until enough buckets leave the window.

fail2ban (the original router's section, stored in ``RouterSettings.fail2ban``):
``max_attempts`` failures with the same status in a row (no success in between) put a
(credential, upstream model) pair in cooldown for ``ban_duration`` (``permanent`` or 0 =
until an admin clears it); ``error_codes`` lists the statuses that count,
``error_code_rules`` tunes max_attempts/ban_duration per status and
``credential_overrides`` replaces both for one credential. A 429 that carries a
Retry-After cools the pair down for exactly that long, whatever the counters say.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from django.conf import settings

from ..config import Deployment
from .local import LocalState
from .redis_store import RedisState
from .rules import Fail2Ban, Rule, fail2ban_rules, parse_duration
from .values import (
    Admission,
    Cooldown,
    Rotation,
    Skip,
    Window,
    dep_key,
    has_limits,
    has_tpm,
    limits,
    rotate,
    window_seconds,
)

log = logging.getLogger(__name__)

__all__ = ["Admission", "Cooldown", "Fail2Ban", "LocalState", "RedisState", "Rotation", "Rule", "Skip", "Window",
           "admin_clear", "admin_view", "count_tokens", "dep_key", "fail2ban_rules", "get", "has_limits", "limits",
           "parse_duration", "reset", "rotate", "window_seconds"]


# ---- the process's state -------------------------------------------------------------------------

_state: LocalState | RedisState | None = None
_state_lock = threading.Lock()


def get() -> LocalState | RedisState:
    global _state
    state = _state
    if state is None:
        with _state_lock:
            if _state is None:
                url = getattr(settings, "REDIS_URL", None)
                _state = RedisState(url) if url else LocalState()
            state = _state
    return state


def reset() -> None:
    """Forget all state and re-read ``REDIS_URL`` on next use (tests, settings changes)."""
    global _state
    _state = None


def admin_view(deps: Sequence[Deployment]) -> tuple[dict, list[Cooldown], dict[str, dict[str, int]]]:
    """(health, cooldowns, window usage of each deployment's limits), fresh; sync, for the admin."""
    st = get()
    if isinstance(st, RedisState):
        return st.in_thread(st.admin_view(deps))
    return st.health(), st.list_cooldowns(), {dep_key(d): st.usage(d) for d in deps}


def admin_clear(keys: Sequence[str] | None = None) -> int:
    """Lift cooldowns (all when ``keys`` is None); sync, for the admin."""
    return get().clear(keys)


def count_tokens(usage_log: Any) -> None:
    """``UsageLog`` finish hook: tokens of a finished request count against the TPM windows."""
    dep = getattr(usage_log, "dep", None)
    if dep is None or not has_tpm(dep):
        return
    get().add_tokens(dep, int(usage_log.prompt or 0) + int(usage_log.completion or 0))


def _credential_saved(sender, instance, created: bool = False, **kwargs) -> None:
    # A new credential (or a recreated name) starts clean; an edited one (a rotated key, a fixed
    # base_url) gets a fresh chance. Only this process's state, or the shared one in Redis.
    if _state is not None:
        _state.forget(instance.name, windows=created)


def _credential_deleted(sender, instance, **kwargs) -> None:
    if _state is not None:
        _state.forget(instance.name, windows=True)


def _register_hooks() -> None:
    from django.db.models.signals import post_delete, post_save

    from .. import usage

    if count_tokens not in usage.finish_hooks:
        usage.finish_hooks.append(count_tokens)
    post_save.connect(_credential_saved, sender="credentials.Credential", dispatch_uid="proxy-state-credential-save")
    post_delete.connect(_credential_deleted, sender="credentials.Credential",
                        dispatch_uid="proxy-state-credential-delete")


_register_hooks()
