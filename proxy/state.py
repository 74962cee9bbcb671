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

import asyncio
import itertools
import json
import logging
import math
import random
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from .config import Deployment

log = logging.getLogger(__name__)

BUCKETS = 60
DEFAULT_CODES = (401, 402, 403, 408, 429, 500, 502, 503, 504, 529)
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BAN_SECONDS = 60.0
MAX_RETRY_AFTER_BAN = 24 * 3600.0
FAILS_TTL = 3600


def dep_key(dep: Deployment) -> str:
    # "|" cannot appear in a credential name, so the key splits back unambiguously.
    return f"{dep.credential.name}|{dep.upstream_model}"


def split_key(key: str) -> tuple[str, str]:
    cred, _, model = key.partition("|")
    return cred, model


# ---- fail2ban rules ------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, default: float | None = DEFAULT_BAN_SECONDS) -> float | None:
    """Seconds from ``90``, ``"90s"``, ``"1h30m"``, ``"500ms"``; None means permanent (``permanent`` or 0)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return None if value <= 0 else float(value)
    text = str(value).strip()
    if text == "permanent":
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_duration(float(text), default)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return None if seconds <= 0 else seconds


@dataclass(frozen=True, slots=True)
class Rule:
    max_attempts: int
    duration: float | None  # None: permanent


@dataclass(frozen=True, slots=True)
class Fail2Ban:
    default: Rule
    codes: frozenset[int]
    rules: dict[int, Rule]
    overrides: dict[str, tuple[frozenset[int] | None, dict[int, Rule]]]

    @classmethod
    def from_config(cls, raw: dict | None) -> Fail2Ban:
        raw = raw if isinstance(raw, dict) else {}
        default = Rule(_int(raw.get("max_attempts"), DEFAULT_MAX_ATTEMPTS),
                       _duration(raw.get("ban_duration"), DEFAULT_BAN_SECONDS))
        codes = _codes(raw.get("error_codes")) or frozenset(DEFAULT_CODES)
        overrides = {}
        for name, block in (raw.get("credential_overrides") or {}).items():
            if isinstance(block, dict):
                rules = _rules(block.get("error_code_rules"), default)
                overrides[str(name)] = (_codes(block.get("error_codes")), rules)
        return cls(default, codes, _rules(raw.get("error_code_rules"), default), overrides)

    def rule(self, credential: str, status: int) -> Rule | None:
        """The rule for a failure with ``status``, or None when that status is not counted."""
        codes, rules = self.overrides.get(credential, (None, {}))
        if status not in (codes or self.codes):
            return None
        return rules.get(status) or self.rules.get(status) or self.default


def _int(value: Any, default: int) -> int:
    try:
        return max(1, int(value)) if value is not None else default
    except (TypeError, ValueError):
        return default


def _duration(value: Any, default: float | None) -> float | None:
    try:
        return parse_duration(value, default)
    except ValueError:
        log.warning("fail2ban: unreadable ban_duration %r; using %s", value, default)
        return default


def _codes(value: Any) -> frozenset[int] | None:
    if not isinstance(value, list) or not value:
        return None
    return frozenset(int(c) for c in value if str(c).isdigit())


def _rules(value: Any, default: Rule) -> dict[int, Rule]:
    out: dict[int, Rule] = {}
    for item in value if isinstance(value, list) else ():
        if isinstance(item, dict) and str(item.get("code", "")).isdigit():
            out[int(item["code"])] = Rule(_int(item.get("max_attempts"), default.max_attempts),
                                          _duration(item.get("ban_duration"), default.duration))
    return out


_rules_cache: dict[int, tuple[dict, Fail2Ban]] = {}


def fail2ban_rules(raw: dict) -> Fail2Ban:
    """Parsed once per config snapshot (keyed by the dict's identity, which the snapshot keeps alive)."""
    hit = _rules_cache.get(id(raw))
    if hit is not None and hit[0] is raw:
        return hit[1]
    rules = Fail2Ban.from_config(raw)
    if len(_rules_cache) > 32:
        _rules_cache.clear()
    _rules_cache[id(raw)] = (raw, rules)
    return rules


# ---- values ------------------------------------------------------------------------------


@dataclass(slots=True)
class Cooldown:
    key: str
    until: float  # math.inf: permanent
    status: int
    kind: str  # "rate" (429) or "error"
    since: float
    reason: str = ""
    failures: int = 0

    def active(self, now: float) -> bool:
        return self.until > now

    def remaining(self, now: float) -> float | None:
        return None if math.isinf(self.until) else max(0.0, self.until - now)

    @property
    def permanent(self) -> bool:
        return math.isinf(self.until)

    def to_dict(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        cred, model = split_key(self.key)
        remaining = self.remaining(now)
        return {"credential": cred, "model": model, "status": self.status, "kind": self.kind,
                "since": round(self.since, 3), "until": None if self.permanent else round(self.until, 3),
                "remaining_seconds": None if remaining is None else round(remaining, 3),
                "permanent": self.permanent, "failures": self.failures, "reason": self.reason}

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "kind": self.kind, "since": self.since, "reason": self.reason[:300],
                           "failures": self.failures}, separators=(",", ":"))

    @classmethod
    def from_json(cls, key: str, raw: str | bytes | None, until: float) -> Cooldown:
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        return cls(key, until, int(data.get("status") or 0), str(data.get("kind") or "error"),
                   float(data.get("since") or 0.0), str(data.get("reason") or ""), int(data.get("failures") or 0))


@dataclass(slots=True)
class Skip:
    """A candidate passed over without calling it."""

    dep: Deployment
    reason: str  # "cooldown" | "rpm" | "tpm"
    wait: float | None  # seconds until it is available again; None: not before an admin clears it
    rate: bool  # a rate limit (ours or the provider's 429): counts toward answering 429
    status: int = 0
    permanent: bool = False


@dataclass(slots=True)
class Admission:
    order: list[Deployment]  # the candidates after the pool rotation
    index: int | None  # the admitted one, or None when every candidate was skipped
    skipped: list[Skip] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rotation:
    """Rotate ``deps[:size]`` so the member ``seq[cursor % len(seq)]`` comes first (weighted round robin)."""

    key: str
    size: int
    seq: tuple[int, ...]


def rotate(deps: Sequence[Deployment], rotation: Rotation | None, cursor: int) -> tuple[list[Deployment], int]:
    if rotation is None or rotation.size < 2:
        return list(deps), 0
    start = rotation.seq[cursor % len(rotation.seq)]
    n = rotation.size
    return [*deps[start:n], *deps[:start], *deps[n:]], start


def limits(dep: Deployment) -> list[tuple[str, int, str]]:
    """(window key, limit, kind) for each limit that applies to ``dep``: per credential and per deployment."""
    cred = dep.credential
    out = []
    for scope, rpm, tpm in ((cred.name, cred.rpm, cred.tpm), (dep_key(dep), dep.rpm, dep.tpm)):
        if rpm:
            out.append((f"rpm|{scope}", rpm, "rpm"))
        if tpm:
            out.append((f"tpm|{scope}", tpm, "tpm"))
    return out


def has_limits(dep: Deployment) -> bool:
    cred = dep.credential
    return bool(cred.rpm or cred.tpm or dep.rpm or dep.tpm)


def has_tpm(dep: Deployment) -> bool:
    return bool(dep.credential.tpm or dep.tpm)


def window_seconds() -> float:
    return settings.ROUTER_LIMIT_WINDOW_SECONDS


class Window:
    """Usage over the sliding window, in ``BUCKETS`` buckets: (bucket number, amount), oldest first."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def used(self, bucket: int) -> int:
        oldest = bucket - BUCKETS + 1
        while self.buckets and self.buckets[0][0] < oldest:
            self.total -= self.buckets.popleft()[1]
        return self.total

    def add(self, bucket: int, amount: int) -> None:
        if self.buckets and self.buckets[-1][0] == bucket:
            self.buckets[-1][1] += amount
        else:
            self.buckets.append([bucket, amount])
        self.total += amount

    def wait(self, limit: int, now: float, size: float) -> float:
        """Seconds until usage falls below ``limit`` as old buckets leave the window."""
        total = self.total
        for bucket, amount in self.buckets:
            total -= amount
            if total < limit:
                return max(0.0, (bucket + BUCKETS) * size - now)
        return size


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


def ban_for_retry_after(status: int, retry_after: float | None) -> float | None:
    if status == 429 and retry_after is not None and retry_after > 0:
        return min(retry_after, MAX_RETRY_AFTER_BAN)
    return None


def kind_of(status: int) -> str:
    return "rate" if status == 429 else "error"


# ---- Redis -----------------------------------------------------------------------------------

_ADMIT = """
local now, size, nb, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ignore_cd, rot, n = ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[8])
local order = {}
for i = 1, n do order[i] = i end
local start = 0
if rot > 1 then
  local seq = {}
  for s in string.gmatch(ARGV[7], '[^,]+') do seq[#seq + 1] = tonumber(s) end
  local c = redis.call('INCR', KEYS[2])
  if c > 1000000000 then redis.call('SET', KEYS[2], 0) end
  start = seq[(c % #seq) + 1]
  for i = 1, rot do order[i] = ((start + i - 1) % rot) + 1 end
end
local cur = math.floor(now / size)
local oldest = cur - nb + 1
local function usage(key)
  local flat = redis.call('HGETALL', key)
  local total, stale, buckets = 0, {}, {}
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if b < oldest then stale[#stale + 1] = flat[i]
    else
      local v = tonumber(flat[i + 1])
      total = total + v
      buckets[#buckets + 1] = {b, v}
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return total, buckets
end
local function wait_ms(total, buckets, limit)
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  for _, bv in ipairs(buckets) do
    total = total - bv[2]
    if total < limit then return math.max(0, math.ceil(((bv[1] + nb) * size - now) * 1000)) end
  end
  return math.ceil(size * 1000)
end
local skips = {}
for pos = 1, n do
  local i = order[pos]
  local a = 8 + (i - 1) * 5
  local reason, wait, kind, status = nil, 0, 'rate', 0
  if not ignore_cd then
    local untl = redis.call('HGET', KEYS[1], ARGV[a + 1])
    if untl then
      untl = tonumber(untl)
      if untl < 0 then reason, wait = 'cooldown', -1
      elseif untl > now then reason, wait = 'cooldown', math.ceil((untl - now) * 1000) end
      if reason then
        local ok, info = pcall(cjson.decode, redis.call('HGET', KEYS[3], ARGV[a + 1]) or '{}')
        if ok and type(info) == 'table' then kind, status = info['kind'] or 'error', tonumber(info['status']) or 0 end
      end
    end
  end
  if not reason then
    for j = 1, 4 do
      local limit = tonumber(ARGV[a + 1 + j])
      if limit > 0 then
        local total, buckets = usage(KEYS[3 + (i - 1) * 4 + j])
        if total >= limit then
          reason = (j % 2 == 1) and 'rpm' or 'tpm'
          wait = wait_ms(total, buckets, limit)
          break
        end
      end
    end
  end
  if reason then
    skips[#skips + 1] = pos - 1
    skips[#skips + 1] = reason
    skips[#skips + 1] = wait
    skips[#skips + 1] = kind
    skips[#skips + 1] = status
  else
    for j = 1, 3, 2 do
      if tonumber(ARGV[a + 1 + j]) > 0 then
        local key = KEYS[3 + (i - 1) * 4 + j]
        redis.call('HINCRBY', key, cur, 1)
        redis.call('EXPIRE', key, ttl)
      end
    end
    return {pos - 1, start, skips}
  end
end
return {-1, start, skips}
"""

# KEYS: cooldown until, cooldown info, failure counts of the pair, set of failing pairs
# ARGV: now, pair, status, max_attempts (0: not counted), until (-1: permanent), immediate (1/0), info json, ttl
_FAILURE = """
local now, pair, status = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local max, untl, immediate = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6] == '1'
local current = tonumber(redis.call('HGET', KEYS[1], pair) or '')
if current and (current < 0 or current > now) then
  -- already cooling: only a longer provider-given wait replaces the cooldown
  if not immediate or current < 0 or current >= untl then return {0, 0} end
end
if not immediate then
  if max <= 0 then return {0, 0} end
  local count = redis.call('HINCRBY', KEYS[3], status, 1)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
  redis.call('SADD', KEYS[4], pair)
  if count < max then return {0, count} end
end
local failures = immediate and 1 or 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do failures = failures + tonumber(v) end
local info = cjson.decode(ARGV[7])
info['failures'] = failures
redis.call('HSET', KEYS[1], pair, ARGV[5])
redis.call('HSET', KEYS[2], pair, cjson.encode(info))
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], pair)
return {1, failures}
"""

# KEYS: cooldown until, cooldown info, set of failing pairs. ARGV: now
_SNAPSHOT = """
local now = tonumber(ARGV[1])
local flat = redis.call('HGETALL', KEYS[1])
local live, infos = {}, {}
for i = 1, #flat, 2 do
  local untl = tonumber(flat[i + 1])
  if untl < 0 or untl > now then
    live[#live + 1] = flat[i]
    live[#live + 1] = flat[i + 1]
  else
    redis.call('HDEL', KEYS[1], flat[i])
    redis.call('HDEL', KEYS[2], flat[i])
  end
end
for i = 1, #live, 2 do infos[#infos + 1] = redis.call('HGET', KEYS[2], live[i]) or '' end
return {live, infos, redis.call('SMEMBERS', KEYS[3])}
"""


class RedisUnavailable(Exception):
    pass


class RedisState:
    """Shared state in Redis with the in-process state as mirror (cooldowns) and as fallback (outages)."""

    backend = "redis"

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.clock = clock
        self.prefix = settings.ROUTER_REDIS_PREFIX
        self.local = LocalState(clock)
        self.failing: set[str] = set()  # pairs with failure counts in Redis (mirror): a success must reset them
        self.up = True
        self.down_since: float | None = None
        self.last_error = ""
        self.retry_at = 0.0
        self.synced_at = 0.0
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._scripts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task] = set()
        self._syncing = False
        self._lock = threading.Lock()

    # -- keys

    def k(self, name: str) -> str:
        return self.prefix + name

    def fails_key(self, pair: str) -> str:
        return self.k("fails:" + pair)

    # -- connection and outage handling

    def _client(self):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            timeout = settings.ROUTER_REDIS_TIMEOUT
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                             retry=Retry(NoBackoff(), 0), health_check_interval=0)
            self._clients[loop] = client
            self._scripts[loop] = {name: client.register_script(src) for name, src in
                                   (("admit", _ADMIT), ("failure", _FAILURE), ("snapshot", _SNAPSHOT))}
        return client

    def _script(self, name: str):
        self._client()
        return self._scripts[asyncio.get_running_loop()][name]

    def usable(self) -> bool:
        """Redis is believed up, or it is time to try it again."""
        if self.up:
            return True
        if time.monotonic() >= self.retry_at:
            self.retry_at = time.monotonic() + settings.ROUTER_REDIS_RETRY_SECONDS
            return True
        return False

    def _failed(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.retry_at = time.monotonic() + settings.ROUTER_REDIS_RETRY_SECONDS
        if self.up:
            self.up = False
            self.down_since = self.clock()
            log.error("Redis unreachable (%s): routing state (limits, cooldowns) is now per process until it "
                      "comes back", self.last_error)

    def _recovered(self) -> None:
        if not self.up:
            log.warning("Redis reachable again: routing state is shared again")
            self.up = True
            self.down_since = None
            self.last_error = ""
            # what was counted locally during the outage is not merged: Redis is the truth again
            self.local.windows.clear()
            self.local.fails.clear()

    async def _run(self, name: str, keys: list[str], args: list) -> Any:
        try:
            result = await self._script(name)(keys=keys, args=args)
        except Exception as exc:
            if not _is_redis_outage(exc):
                raise
            self._failed(exc)
            raise RedisUnavailable from exc
        self._recovered()
        return result

    async def aclose(self) -> None:
        """Close this event loop's Redis client (tests, shutdown)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- mirror of the cooldowns

    def maybe_sync(self) -> None:
        """Refresh the cooldown mirror in the background when it is older than the sync interval."""
        if self._syncing or time.monotonic() - self.synced_at < settings.ROUTER_STATE_SYNC_SECONDS:
            return
        if not self.usable():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._syncing = True
        self._spawn(loop, self.sync())

    async def sync(self) -> None:
        try:
            live, infos, failing = await self._run(
                "snapshot", [self.k("cd"), self.k("cdinfo"), self.k("failing")], [repr(self.clock())])
        except RedisUnavailable:
            return
        finally:
            self._syncing = False
            self.synced_at = time.monotonic()
        mirror = {}
        for i in range(0, len(live), 2):
            pair = _text(live[i])
            until = float(live[i + 1])
            mirror[pair] = Cooldown.from_json(pair, infos[i // 2], math.inf if until < 0 else until)
        self.local.cooldowns = mirror
        self.failing = {_text(p) for p in failing}

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reads on the hot path

    def cooling(self, dep: Deployment, now: float | None = None) -> Cooldown | None:
        return self.local.cooling(dep, now)

    def cursor(self, key: str) -> int:
        return self.local.cursor(key)

    def probe_allowed(self, dep: Deployment) -> bool:
        return self.local.probe_allowed(dep)

    # -- the request path

    async def admit(self, deps: Sequence[Deployment], rotation: Rotation | None = None, *,
                    ignore_cooldown: bool = False) -> Admission:
        self.maybe_sync()
        if any(has_limits(d) for d in deps) and self.usable():
            try:
                return await self._admit(deps, rotation, ignore_cooldown)
            except RedisUnavailable:
                pass
        return self.local.admit_now(deps, rotation, ignore_cooldown=ignore_cooldown)

    async def _admit(self, deps: Sequence[Deployment], rotation: Rotation | None, ignore_cooldown: bool) -> Admission:
        window = window_seconds()
        keys = [self.k("cd"), self.k("rr:" + rotation.key) if rotation else self.k("rr:"), self.k("cdinfo")]
        args: list = [repr(self.clock()), repr(window / BUCKETS), BUCKETS, int(window * 2) + 1,
                      "1" if ignore_cooldown else "0", rotation.size if rotation else 0,
                      ",".join(map(str, rotation.seq)) if rotation else "", len(deps)]
        for dep in deps:
            pair = dep_key(dep)
            cred = dep.credential
            scopes = ((f"rpm|{cred.name}", cred.rpm), (f"tpm|{cred.name}", cred.tpm),
                      (f"rpm|{pair}", dep.rpm), (f"tpm|{pair}", dep.tpm))
            keys.extend(self.k("w:" + scope) for scope, _ in scopes)
            args.append(pair)
            args.extend(limit or 0 for _, limit in scopes)
        index, start, flat = await self._run("admit", keys, args)
        order = list(deps)
        if rotation is not None and rotation.size > 1:
            n = rotation.size
            order = [*deps[start:n], *deps[:start], *deps[n:]]
        adm = Admission(order, None if index < 0 else int(index))
        for i in range(0, len(flat), 5):
            wait = None if int(flat[i + 2]) < 0 else int(flat[i + 2]) / 1000
            adm.skipped.append(Skip(order[int(flat[i])], _text(flat[i + 1]), wait, _text(flat[i + 3]) == "rate",
                                    int(flat[i + 4]), wait is None))
        return adm

    async def failure(self, dep: Deployment, status: int, rules: Fail2Ban, *, retry_after: float | None = None,
                      reason: str = "") -> Cooldown | None:
        if not self.usable():
            return self.local.failure_now(dep, status, rules, retry_after=retry_after, reason=reason)
        now = self.clock()
        pair = dep_key(dep)
        immediate = ban_for_retry_after(status, retry_after)
        rule = rules.rule(dep.credential.name, status)
        if immediate is None and rule is None:
            return None
        if immediate is not None:
            cd = Cooldown(pair, now + immediate, status, "rate", now, reason)
        else:
            until = math.inf if rule.duration is None else now + rule.duration  # type: ignore[union-attr]
            cd = Cooldown(pair, until, status, kind_of(status), now, reason)
        until_arg = "-1" if cd.permanent else repr(cd.until)
        try:
            banned, count = await self._run(
                "failure", [self.k("cd"), self.k("cdinfo"), self.fails_key(pair), self.k("failing")],
                [repr(now), pair, status, rule.max_attempts if rule else 0, until_arg,
                 "1" if immediate is not None else "0", cd.to_json(), FAILS_TTL])
        except RedisUnavailable:
            return self.local.failure_now(dep, status, rules, retry_after=retry_after, reason=reason)
        if not banned:
            if count:
                self.failing.add(pair)
            return None
        cd.failures = int(count)
        self.local.cooldowns[pair] = cd
        self.failing.discard(pair)
        return cd

    async def success(self, dep: Deployment, *, lift: bool = False) -> None:
        pair = dep_key(dep)
        self.local.success_now(dep, lift=lift)
        if not self.up or (pair not in self.failing and not lift):
            return
        self.failing.discard(pair)
        try:
            pipe = self._client().pipeline(transaction=True)
            pipe.delete(self.fails_key(pair)).srem(self.k("failing"), pair)
            if lift:
                pipe.hdel(self.k("cd"), pair).hdel(self.k("cdinfo"), pair)
            await pipe.execute()
        except Exception as exc:
            if not _is_redis_outage(exc):
                raise
            self._failed(exc)

    def add_tokens(self, dep: Deployment, tokens: int) -> None:
        if tokens <= 0 or not has_tpm(dep):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or not self.usable():
            self.local.add_tokens(dep, tokens)
            return
        self._spawn(loop, self._add_tokens(dep, tokens))

    async def _add_tokens(self, dep: Deployment, tokens: int) -> None:
        window = window_seconds()
        bucket = int(self.clock() // (window / BUCKETS))
        try:
            pipe = self._client().pipeline(transaction=False)
            for key, _, kind in limits(dep):
                if kind == "tpm":
                    name = self.k("w:" + key)
                    pipe.hincrby(name, str(bucket), tokens).expire(name, int(window * 2) + 1)
            await pipe.execute()
        except Exception as exc:
            if not _is_redis_outage(exc):
                log.exception("TPM accounting failed")
                return
            self._failed(exc)
            self.local.add_tokens(dep, tokens)

    # -- visibility and admin

    def list_cooldowns(self) -> list[Cooldown]:
        return self.local.list_cooldowns()

    async def acooldowns(self) -> list[Cooldown]:
        if self.usable():
            self.synced_at = 0.0
            await self.sync()
        return self.local.list_cooldowns()

    async def aclear(self, keys: Sequence[str] | None = None) -> int:
        cleared = self.local.clear(keys)
        if not self.usable():
            return cleared
        try:
            return max(cleared, await self._clear(self._client(), keys))
        except Exception as exc:
            if not _is_redis_outage(exc):
                raise
            self._failed(exc)
            return cleared

    async def _clear(self, client, keys: Sequence[str] | None) -> int:
        if keys is None:
            keys = [_text(k) for k in await client.hkeys(self.k("cd"))]
            keys += [_text(k) for k in await client.smembers(self.k("failing"))]
        if not keys:
            return 0
        pipe = client.pipeline(transaction=True)
        pipe.hdel(self.k("cd"), *keys).hdel(self.k("cdinfo"), *keys).srem(self.k("failing"), *keys)
        pipe.delete(*(self.fails_key(k) for k in keys))
        result = await pipe.execute()
        self.failing.difference_update(keys)
        return int(result[0])

    def clear(self, keys: Sequence[str] | None = None) -> int:
        """Sync version for the admin (runs in a worker thread, outside any event loop)."""
        return self.in_thread(self.aclear(keys))

    def in_thread(self, coro) -> Any:
        """Run ``coro`` on a private event loop (admin views, signal handlers), closing its client.
        Called from inside an event loop instead, it is scheduled there and None is returned."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._spawn(loop, coro)
            return None

        async def run():
            try:
                return await coro
            finally:
                client = self._clients.pop(asyncio.get_running_loop(), None)
                if client is not None:
                    await client.aclose()
        return asyncio.run(run())

    async def admin_view(self, deps: Sequence[Deployment]) -> tuple[dict, list[Cooldown], dict[str, dict[str, int]]]:
        cooldowns = await self.acooldowns()
        usage = {}
        for dep in deps:
            usage[dep_key(dep)] = await self._usage(dep) if self.up else self.local.usage(dep)
        return self.health(), cooldowns, usage

    async def _usage(self, dep: Deployment) -> dict[str, int]:
        size = window_seconds() / BUCKETS
        oldest = int(self.clock() // size) - BUCKETS + 1
        out = {}
        for key, _, _ in limits(dep):
            buckets = await self._client().hgetall(self.k("w:" + key))
            out[key] = sum(int(v) for b, v in buckets.items() if int(b) >= oldest)
        return out

    def usage(self, dep: Deployment) -> dict[str, int]:
        return self.local.usage(dep)

    def forget(self, credential: str, *, windows: bool = False) -> None:
        self.local.forget(credential, windows=windows)
        try:
            self.in_thread(self._forget(credential, windows))
        except Exception as exc:
            log.warning("could not lift the cooldowns of %s in Redis (%s)", credential, type(exc).__name__)

    async def _forget(self, credential: str, windows: bool) -> None:
        client = self._client()
        prefix = credential + "|"
        pairs = {_text(k) for k in await client.hkeys(self.k("cd"))}
        pairs |= {_text(k) for k in await client.smembers(self.k("failing"))}
        pairs = [p for p in pairs if p.startswith(prefix)]
        if windows:
            for kind in ("rpm", "tpm"):
                await client.delete(self.k(f"w:{kind}|{credential}"))
                async for key in client.scan_iter(match=_glob_escape(self.k(f"w:{kind}|{credential}|")) + "*"):
                    await client.delete(key)
        if pairs:
            pipe = client.pipeline(transaction=True)
            pipe.hdel(self.k("cd"), *pairs).hdel(self.k("cdinfo"), *pairs).srem(self.k("failing"), *pairs)
            pipe.delete(*(self.fails_key(p) for p in pairs))
            await pipe.execute()

    def health(self) -> dict:
        data = {"backend": self.backend, "redis": "ok" if self.up else "unreachable",
                "cooldowns": len(self.local.list_cooldowns())}
        if not self.up:
            data["redis_down_since"] = round(self.down_since or 0.0, 3)
            data["redis_error"] = self.last_error
            data["note"] = "serving with per-process limits and cooldowns until Redis is back"
        return data


def _is_redis_outage(exc: BaseException) -> bool:
    from redis.exceptions import BusyLoadingError, ConnectionError, ReadOnlyError, TimeoutError

    return isinstance(exc, (ConnectionError, TimeoutError, BusyLoadingError, ReadOnlyError, OSError,
                            asyncio.TimeoutError))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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

    from . import usage

    if count_tokens not in usage.finish_hooks:
        usage.finish_hooks.append(count_tokens)
    post_save.connect(_credential_saved, sender="credentials.Credential", dispatch_uid="proxy-state-credential-save")
    post_delete.connect(_credential_deleted, sender="credentials.Credential",
                        dispatch_uid="proxy-state-credential-delete")


_register_hooks()
