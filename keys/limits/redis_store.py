"""Key and team limits shared by every router process through Redis: one Lua round trip to admit.

The connection, its time-outs and the outage handling are the routing state's
(``proxy.state.RedisState``): when Redis is unreachable, admission falls back to the
in-process ``LocalLimits`` until it is back, like routing does.

Per scope (a key or a team), under the router's Redis prefix:
``kw:rpm|S`` / ``kw:tpm|S`` sliding windows (hash bucket -> count), ``kf:S`` requests in
flight (sorted set: request id -> expiry), ``kr:S`` their reserved cost (hash request id ->
nano-dollars, ``_total``), ``ks:S:PERIOD:GEN`` the period's live spend (seeded from the
database when missing: after a flush, an expiry, a new period or a hand-set spend).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from proxy.state.redis_store import WINDOW_LUA, RedisState, RedisUnavailable, is_outage
from proxy.state.values import BUCKETS, window_seconds

from ..snapshot import Scope
from .local import LocalLimits
from .values import Verdict, refusal, reservation_seconds

log = logging.getLogger(__name__)

SPEND_TTL = 86400  # an idle live spend is dropped after a day and seeded again from the database
SETTLE_BATCH_SECONDS = 0.005  # settlements of requests ending within this long share one round trip
KEYS_PER_SCOPE = 5

# ARGV: now, size, nb, window ttl, request id, expiry, estimate, reservation ttl, n; per scope: rpm, tpm, parallel,
# budget (-1: none). Answer: {1 admitted | 0 refused | -1 seed needed, scope, reason, wait ms, spend, reserved, data}
_ADMIT = """
local now, size, nb, wttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rid, expiry, est, rttl, n = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local cur = math.floor(now / size)
local oldest = cur - nb + 1
""" + WINDOW_LUA + """
local seeds = {}
for i = 1, n do
  if tonumber(ARGV[9 + i * 4]) >= 0 and redis.call('EXISTS', KEYS[i * 5]) == 0 then seeds[#seeds + 1] = i - 1 end
end
if #seeds > 0 then return {-1, 0, '', 0, 0, 0, seeds} end
local info = {}
for i = 1, n do
  local a, k = 9 + (i - 1) * 4, (i - 1) * 5
  local rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local par, budget = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local flight = 0
  if par > 0 or budget >= 0 then
    local gone = redis.call('ZRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    for _, r in ipairs(gone) do
      local amount = tonumber(redis.call('HGET', KEYS[k + 4], r) or '0')
      if amount ~= 0 then redis.call('HINCRBY', KEYS[k + 4], '_total', -amount) end
      redis.call('HDEL', KEYS[k + 4], r)
    end
    if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now) end
    flight = redis.call('ZCARD', KEYS[k + 3])
  end
  local rused, rreset, tused, treset = 0, 0, 0, 0
  if rpm > 0 then
    local total, buckets = usage(KEYS[k + 1])
    if total >= rpm then return {0, i - 1, 'rpm', wait_ms(total, buckets, rpm), 0, 0, {}} end
    rused = total + 1
    if total > 0 then rreset = wait_ms(total, buckets, total)
    else rreset = math.ceil(((cur + nb) * size - now) * 1000) end
  end
  if tpm > 0 then
    local total, buckets = usage(KEYS[k + 2])
    if total >= tpm then return {0, i - 1, 'tpm', wait_ms(total, buckets, tpm), 0, 0, {}} end
    tused = total
    if total > 0 then treset = wait_ms(total, buckets, total) end
  end
  if par > 0 and flight >= par then return {0, i - 1, 'parallel', 1000, 0, 0, {}} end
  if budget >= 0 then
    local spend = tonumber(redis.call('GET', KEYS[k + 5]))
    local reserved = tonumber(redis.call('HGET', KEYS[k + 4], '_total') or '0')
    if spend + reserved >= budget then return {0, i - 1, 'budget', 0, spend, reserved, {}} end
  end
  info[#info + 1] = rused
  info[#info + 1] = rreset
  info[#info + 1] = tused
  info[#info + 1] = treset
end
for i = 1, n do
  local a, k = 9 + (i - 1) * 4, (i - 1) * 5
  if tonumber(ARGV[a + 1]) > 0 then
    redis.call('HINCRBY', KEYS[k + 1], cur, 1)
    redis.call('EXPIRE', KEYS[k + 1], wttl)
  end
  local budget = tonumber(ARGV[a + 4])
  if tonumber(ARGV[a + 3]) > 0 or budget >= 0 then
    redis.call('ZADD', KEYS[k + 3], expiry, rid)
    redis.call('EXPIRE', KEYS[k + 3], rttl)
  end
  if budget >= 0 and est > 0 then
    redis.call('HSET', KEYS[k + 4], rid, est)
    redis.call('HINCRBY', KEYS[k + 4], '_total', est)
    redis.call('EXPIRE', KEYS[k + 4], rttl)
  end
end
return {1, 0, '', 0, 0, 0, info}
"""

# ARGV: now, size, window ttl, request id, cost, tokens, spend ttl, n; per scope: counts tokens (1/0), budget (1/0)
_SETTLE = """
local cur = math.floor(tonumber(ARGV[1]) / tonumber(ARGV[2]))
local wttl, rid, cost, tokens, sttl = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
for i = 1, tonumber(ARGV[8]) do
  local a, k = 8 + (i - 1) * 2, (i - 1) * 5
  redis.call('ZREM', KEYS[k + 3], rid)
  local amount = redis.call('HGET', KEYS[k + 4], rid)
  if amount then
    redis.call('HINCRBY', KEYS[k + 4], '_total', -tonumber(amount))
    redis.call('HDEL', KEYS[k + 4], rid)
  end
  if ARGV[a + 2] == '1' and cost > 0 and redis.call('EXISTS', KEYS[k + 5]) == 1 then
    redis.call('INCRBY', KEYS[k + 5], cost)
    redis.call('EXPIRE', KEYS[k + 5], sttl)
  end
  if ARGV[a + 1] == '1' and tokens > 0 then
    redis.call('HINCRBY', KEYS[k + 2], cur, tokens)
    redis.call('EXPIRE', KEYS[k + 2], wttl)
  end
end
return 1
"""

RedisState.extra_scripts.update({"key_admit": _ADMIT, "key_settle": _SETTLE})


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLimits:
    backend = "redis"

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self.local = LocalLimits(state.clock)
        self._pending: list[tuple[list[str], list]] = []
        self._flusher: asyncio.Task | None = None

    def _keys(self, scopes: Sequence[Scope], spend_keys: Sequence[str | None]) -> list[str]:
        k = self.state.k
        out = []
        for scope, spend_key in zip(scopes, spend_keys, strict=True):
            name = scope.name
            out += [k("kw:rpm|" + name), k("kw:tpm|" + name), k("kf:" + name), k("kr:" + name),
                    k("ks:" + (spend_key or name))]
        return out

    async def admit(self, scopes: Sequence[Scope], rid: str, estimate: int,
                    spend_keys: Sequence[str | None]) -> Verdict:
        if not self.state.usable():
            return self.local.admit_now(scopes, rid, estimate, spend_keys)
        now = self.state.clock()
        window = window_seconds()
        rttl = int(reservation_seconds() * 2) + 1
        args: list = [repr(now), repr(window / BUCKETS), BUCKETS, int(window * 2) + 1, rid,
                      repr(now + reservation_seconds()), estimate, rttl, len(scopes)]
        for scope, spend_key in zip(scopes, spend_keys, strict=True):
            args += [scope.rpm or 0, scope.tpm or 0, scope.parallel or 0, scope.budget_nano if spend_key else -1]
        try:
            status, index, reason, wait, spend, reserved, data = await self.state.call(
                "key_admit", self._keys(scopes, spend_keys), args)
        except RedisUnavailable:
            return self.local.admit_now(scopes, rid, estimate, spend_keys)
        if status == -1:
            return Verdict(False, seed=[int(i) for i in data])
        if status == 0:
            return refusal(int(index), _text(reason), int(wait) / 1000, int(spend), int(reserved))
        verdict = Verdict(True)
        for i in range(0, len(data), 4):
            verdict.windows.append((int(data[i]), int(data[i + 1]) / 1000, int(data[i + 2]), int(data[i + 3]) / 1000))
        return verdict

    async def seed(self, spend_key: str, value: int) -> None:
        await self.local.seed(spend_key, value)
        if not self.state.usable():
            return
        try:
            await self.state.client().set(self.state.k("ks:" + spend_key), value, nx=True, ex=SPEND_TTL)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.state.failed(exc)

    def settle(self, scopes: Sequence[Scope], rid: str, spend_keys: Sequence[str | None], cost: int,
               tokens: int) -> None:
        """Queue the settlement; queued ones go to Redis together (one round trip) a few ms later."""
        self.local.settle(scopes, rid, spend_keys, cost, tokens)  # in case it was admitted during an outage
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        window = window_seconds()
        args: list = [repr(self.state.clock()), repr(window / BUCKETS), int(window * 2) + 1, rid, cost, tokens,
                      SPEND_TTL, len(scopes)]
        for scope, spend_key in zip(scopes, spend_keys, strict=True):
            args += ["1" if scope.tpm else "0", "1" if spend_key is not None else "0"]
        self._pending.append((self._keys(scopes, spend_keys), args))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(SETTLE_BATCH_SECONDS)
        await self._flush()

    async def _flush(self) -> None:
        batch, self._pending, self._flusher = self._pending, [], None
        if batch and self.state.usable():
            try:
                await self.state.call_many("key_settle", batch)
            except RedisUnavailable:
                pass  # the reservations lapse by themselves; the spend is durable in the database anyway

    async def drain(self) -> None:
        """Send queued settlements now (tests, shutdown)."""
        flusher = self._flusher
        if flusher is not None:
            flusher.cancel()  # possibly before it ever ran: flush here either way
            await asyncio.gather(flusher, return_exceptions=True)
        await self._flush()

    def health(self) -> dict:
        return {"backend": self.backend}
