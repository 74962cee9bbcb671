"""``LocalState``: routing state in plain dicts of this process (microseconds per operation)."""


from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence

from django.conf import settings

from ..config import Deployment
from .rules import Fail2Ban
from .values import (
    BUCKETS,
    Admission,
    Cooldown,
    Rotation,
    Skip,
    Window,
    ban_for_retry_after,
    dep_key,
    has_limits,
    has_tpm,
    kind_of,
    limits,
    rotate,
    window_seconds,
)

log = logging.getLogger(__name__)


# ---- in-process state ------------------------------------------------------------------------


class LocalState:
    backend = "local"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.cooldowns: dict[str, Cooldown] = {}
        self.fails: dict[str, dict[int, int]] = {}
        self.windows: dict[str, Window] = {}
        self.cursors: dict[str, itertools.count] = {}
        self.probes: dict[str, float] = {}

    # -- reads on the hot path (sync, microseconds)

    def cooling(self, dep: Deployment, now: float | None = None) -> Cooldown | None:
        cd = self.cooldowns.get(dep_key(dep))
        if cd is None:
            return None
        if cd.active(self.clock() if now is None else now):
            return cd
        self._expire(cd.key)
        return None

    def cursor(self, key: str) -> int:
        counter = self.cursors.get(key)
        if counter is None:
            # a random start so several processes do not all send their first request to the same member
            counter = self.cursors[key] = itertools.count(random.randrange(1 << 16))
        return next(counter)

    def probe_allowed(self, dep: Deployment) -> bool:
        """At most one probe per second of a deployment that is cooling down after errors (half-open breaker)."""
        now = time.monotonic()
        key = dep_key(dep)
        interval = settings.ROUTER_PROBE_INTERVAL
        if now - self.probes.get(key, -interval) < interval:
            return False
        self.probes[key] = now
        return True

    # -- the request path

    async def admit(self, deps: Sequence[Deployment], rotation: Rotation | None = None, *,
                    ignore_cooldown: bool = False) -> Admission:
        return self.admit_now(deps, rotation, ignore_cooldown=ignore_cooldown)

    def admit_now(self, deps: Sequence[Deployment], rotation: Rotation | None = None, *,
                  ignore_cooldown: bool = False) -> Admission:
        order, _ = rotate(deps, rotation, self.cursor(rotation.key) if rotation else 0)
        now = self.clock()
        adm = Admission(order, None)
        for i, dep in enumerate(order):
            skip = None if ignore_cooldown else self._cooldown_skip(dep, now)
            if skip is None and has_limits(dep):
                skip = self._limit_skip(dep, now)
            if skip is not None:
                adm.skipped.append(skip)
                continue
            if has_limits(dep):
                self._count(dep, now)
            adm.index = i
            return adm
        return adm

    def _cooldown_skip(self, dep: Deployment, now: float) -> Skip | None:
        cd = self.cooling(dep, now)
        if cd is None:
            return None
        return Skip(dep, "cooldown", cd.remaining(now), cd.kind == "rate", cd.status, cd.permanent)

    def _limit_skip(self, dep: Deployment, now: float) -> Skip | None:
        size = window_seconds() / BUCKETS
        bucket = int(now // size)
        for key, limit, kind in limits(dep):
            window = self.windows.get(key)
            if window is not None and window.used(bucket) >= limit:
                return Skip(dep, kind, window.wait(limit, now, size), True)
        return None

    def _count(self, dep: Deployment, now: float) -> None:
        bucket = int(now // (window_seconds() / BUCKETS))
        for key, _, kind in limits(dep):
            if kind == "rpm":
                self._window(key).add(bucket, 1)

    def _window(self, key: str) -> Window:
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = Window()
        return window

    async def failure(self, dep: Deployment, status: int, rules: Fail2Ban, *, retry_after: float | None = None,
                      reason: str = "") -> Cooldown | None:
        return self.failure_now(dep, status, rules, retry_after=retry_after, reason=reason)

    def failure_now(self, dep: Deployment, status: int, rules: Fail2Ban, *, retry_after: float | None = None,
                    reason: str = "") -> Cooldown | None:
        """Count a failed attempt; returns the cooldown it started, if any."""
        now = self.clock()
        key = dep_key(dep)
        current = self.cooling(dep, now)
        immediate = ban_for_retry_after(status, retry_after)
        if immediate is not None:
            if current is not None and current.until >= now + immediate:
                return None
            counts = self.fails.pop(key, {})
            return self._ban(Cooldown(key, now + immediate, status, "rate", now, reason, sum(counts.values()) + 1))
        rule = rules.rule(dep.credential.name, status)
        if rule is None or current is not None:
            return None
        counts = self.fails.setdefault(key, {})
        counts[status] = counts.get(status, 0) + 1
        if counts[status] < rule.max_attempts:
            return None
        del self.fails[key]
        until = math.inf if rule.duration is None else now + rule.duration
        return self._ban(Cooldown(key, until, status, kind_of(status), now, reason, sum(counts.values())))

    def _ban(self, cd: Cooldown) -> Cooldown:
        self.cooldowns[cd.key] = cd
        return cd

    async def success(self, dep: Deployment, *, lift: bool = False) -> None:
        self.success_now(dep, lift=lift)

    def success_now(self, dep: Deployment, *, lift: bool = False) -> None:
        key = dep_key(dep)
        if self.fails:
            self.fails.pop(key, None)
        if lift and key in self.cooldowns:
            del self.cooldowns[key]

    def add_tokens(self, dep: Deployment, tokens: int) -> None:
        if tokens <= 0 or not has_tpm(dep):
            return
        bucket = int(self.clock() // (window_seconds() / BUCKETS))
        for key, _, kind in limits(dep):
            if kind == "tpm":
                self._window(key).add(bucket, tokens)

    def _expire(self, key: str) -> None:
        # a ban that ran out starts the pair afresh, as in the original router
        self.cooldowns.pop(key, None)
        self.fails.pop(key, None)

    # -- visibility and admin

    def list_cooldowns(self) -> list[Cooldown]:
        now = self.clock()
        for key in [k for k, cd in self.cooldowns.items() if not cd.active(now)]:
            self._expire(key)
        return sorted(self.cooldowns.values(), key=lambda cd: cd.key)

    def usage(self, dep: Deployment) -> dict[str, int]:
        """Current window usage of each limit of ``dep`` (admin)."""
        bucket = int(self.clock() // (window_seconds() / BUCKETS))
        return {key: (self.windows[key].used(bucket) if key in self.windows else 0) for key, _, _ in limits(dep)}

    def clear(self, keys: Sequence[str] | None = None) -> int:
        """Lift the cooldowns of ``keys`` (all when None) and forget their failure counts."""
        targets = list(self.cooldowns) if keys is None else [k for k in keys if k in self.cooldowns]
        for key in targets:
            del self.cooldowns[key]
        for key in list(self.fails) if keys is None else keys:
            self.fails.pop(key, None)
        return len(targets)

    async def aclear(self, keys: Sequence[str] | None = None) -> int:
        return self.clear(keys)

    def forget(self, credential: str, *, windows: bool = False) -> None:
        """An admin saved ``credential``: lift its cooldowns (and, for a new or deleted one, its counters)."""
        prefix = credential + "|"
        for table in (self.cooldowns, self.fails, self.probes):
            for key in [k for k in table if k.startswith(prefix)]:
                del table[key]
        if windows:
            for key in [k for k in self.windows if k.split("|", 2)[1] == credential]:
                del self.windows[key]

    async def acooldowns(self) -> list[Cooldown]:
        return self.list_cooldowns()

    def health(self) -> dict:
        return {"backend": self.backend, "cooldowns": len(self.list_cooldowns())}
