"""``RedisState``: routing state shared by several router processes through Redis (atomic Lua)."""


from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from django.conf import settings

from ..config import Deployment
from .local import LocalState
from .rules import Fail2Ban
from .values import (
    BUCKETS,
    FAILS_TTL,
    Admission,
    Cooldown,
    Rotation,
    Skip,
    ban_for_retry_after,
    dep_key,
    has_limits,
    has_tpm,
    kind_of,
    limits,
    window_seconds,
)

log = logging.getLogger(__name__)


# ---- Redis -----------------------------------------------------------------------------------

# Sliding windows in Lua (needs ``now``, ``size``, ``nb`` and ``oldest`` in scope): a window is a hash
# bucket -> amount; ``usage`` drops stale buckets, ``wait_ms`` is the time until usage < limit.
WINDOW_LUA = """
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
"""

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
""" + WINDOW_LUA + """local skips = {}
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
    #: Lua scripts of other shared state (key limits and budgets) run through this connection: ``call()``
    extra_scripts: dict[str, str] = {}

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
            scripts = {"admit": _ADMIT, "failure": _FAILURE, "snapshot": _SNAPSHOT, **self.extra_scripts}
            self._scripts[loop] = {name: client.register_script(src) for name, src in scripts.items()}
        return client

    def _script(self, name: str):
        client = self._client()
        scripts = self._scripts[asyncio.get_running_loop()]
        if name not in scripts:  # registered after this loop's client was made
            scripts[name] = client.register_script(self.extra_scripts[name])
        return scripts[name]

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

    @contextlib.contextmanager
    def _outages(self) -> Iterator[None]:
        """Turn an outage into ``RedisUnavailable`` (and note it); a success notes that Redis is back."""
        try:
            yield
        except Exception as exc:
            if not _is_redis_outage(exc):
                raise
            self._failed(exc)
            raise RedisUnavailable from exc
        self._recovered()

    async def _run(self, name: str, keys: list[str], args: list) -> Any:
        with self._outages():
            return await self._script(name)(keys=keys, args=args)

    async def call(self, name: str, keys: list[str], args: list) -> Any:
        """Run a script of ``extra_scripts``; ``RedisUnavailable`` when Redis is down (the caller degrades)."""
        return await self._run(name, keys, args)

    async def call_many(self, name: str, calls: Sequence[tuple[list[str], list]]) -> None:
        """Run a script of ``extra_scripts`` once per (keys, args), pipelined: one round trip for all."""
        script = self._script(name)
        with self._outages():
            pipe = self._client().pipeline(transaction=False)
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            await pipe.execute()

    def client(self):
        """This event loop's client (raw commands; catch outages with ``is_outage``/``failed``)."""
        return self._client()

    def failed(self, exc: BaseException) -> None:
        self._failed(exc)

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


def is_outage(exc: BaseException) -> bool:
    return _is_redis_outage(exc)


def _is_redis_outage(exc: BaseException) -> bool:
    from redis.exceptions import BusyLoadingError, ConnectionError, ReadOnlyError, TimeoutError

    return isinstance(exc, (ConnectionError, TimeoutError, BusyLoadingError, ReadOnlyError, OSError,
                            asyncio.TimeoutError))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
