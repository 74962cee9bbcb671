"""Routing state: fail2ban rules, windows, admission, cooldowns; every behaviour on both backends.

The Redis backend runs against ``REDIS_TEST_URL`` (default redis://127.0.0.1:6379/15) under a
key prefix of its own, deleted afterwards. Time is a fake clock, so nothing sleeps.
"""

from __future__ import annotations

import math
import os
import secrets
from collections import Counter

import pytest

from proxy import state
from proxy.config import CredentialConfig, Deployment
from proxy.routing import sticky_score, wrr_sequence
from proxy.state import Fail2Ban, LocalState, RedisState, Rotation, Rule, parse_duration

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")
T0 = 1_800_000_000.0  # a bucket boundary for the default 60 s window (1 s buckets)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def dep(cred: str = "a", model: str = "m", *, rpm=None, tpm=None, cred_rpm=None, cred_tpm=None, weight=1,
        fallback=False) -> Deployment:
    c = CredentialConfig(cred, "openai", rpm=cred_rpm, tpm=cred_tpm, weight=weight, is_fallback=fallback)
    return Deployment(model, c, model, rpm, tpm)


def redis_available() -> bool:
    import redis

    try:
        redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=0.5).ping()
        return True
    except redis.exceptions.RedisError:
        return False


async def drop_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_TEST_URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["local", "redis"])
async def backend(request, clock, settings):
    if request.param == "local":
        yield LocalState(clock)
        return
    if not redis_available():
        pytest.skip(f"Redis not reachable at {REDIS_TEST_URL}")
    settings.ROUTER_REDIS_PREFIX = prefix = f"{{test-{secrets.token_hex(4)}}}:"
    st = RedisState(REDIS_TEST_URL, clock)
    yield st
    await drop_prefix(prefix)
    await st.aclose()


RULES = Fail2Ban.from_config({"max_attempts": 2, "ban_duration": "30s"})


# ---- pure parts --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [
    (None, 60.0), ("", 60.0), (90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("5m", 300.0),
    ("1h30m", 5400.0), ("500ms", 0.5), ("1.5s", 1.5), ("permanent", None), (0, None), ("0s", None),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 m", "1x", True, "m5"])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(("raw", "cred", "status", "rule"), [
    # defaults: 3 in a row, 60 s, the statuses the router fails over on
    ({}, "a", 500, Rule(3, 60.0)),
    ({}, "a", 429, Rule(3, 60.0)),
    ({}, "a", 401, Rule(3, 60.0)),
    ({}, "a", 400, None),
    ({}, "a", 404, None),
    # the original router's keys
    ({"max_attempts": 5, "ban_duration": "permanent"}, "a", 503, Rule(5, None)),
    ({"ban_duration": 0}, "a", 503, Rule(3, None)),
    ({"error_codes": [429]}, "a", 500, None),
    ({"error_codes": [429]}, "a", 429, Rule(3, 60.0)),
    ({"error_codes": [429, 500], "error_code_rules": [{"code": 500, "max_attempts": 1}]}, "a", 500, Rule(1, 60.0)),
    ({"error_code_rules": [{"code": 429, "ban_duration": "5m"}]}, "a", 429, Rule(3, 300.0)),
    ({"ban_duration": "permanent", "error_code_rules": [{"code": 429, "ban_duration": "10s"}]}, "a", 429,
     Rule(3, 10.0)),
    # credential overrides replace the global codes and rules for that credential only
    ({"credential_overrides": {"reseller": {"error_codes": [400]}}}, "reseller", 400, Rule(3, 60.0)),
    ({"credential_overrides": {"reseller": {"error_codes": [400]}}}, "reseller", 500, None),
    ({"credential_overrides": {"reseller": {"error_codes": [400]}}}, "other", 400, None),
    ({"credential_overrides": {"r": {"error_code_rules": [{"code": 500, "max_attempts": 7}]}}}, "r", 500,
     Rule(7, 60.0)),
    # loosely checked input never breaks routing
    ({"max_attempts": "x", "ban_duration": "weird"}, "a", 500, Rule(3, 60.0)),
])
def test_fail2ban_rules(raw, cred, status, rule):
    assert Fail2Ban.from_config(raw).rule(cred, status) == rule


def test_fail2ban_rules_are_parsed_once_per_snapshot():
    raw = {"max_attempts": 4}
    assert state.fail2ban_rules(raw) is state.fail2ban_rules(raw)
    assert state.fail2ban_rules({"max_attempts": 4}) is not state.fail2ban_rules(raw)


@pytest.mark.parametrize(("weights", "counts"), [
    ((1, 1), {0: 1, 1: 1}), ((3, 1), {0: 3, 1: 1}), ((2, 4), {0: 1, 1: 2}), ((5, 3, 2), {0: 5, 1: 3, 2: 2}),
])
def test_wrr_sequence_honours_weights(weights, counts):
    assert Counter(wrr_sequence(weights)) == counts


def test_wrr_sequence_interleaves_and_stays_bounded():
    assert wrr_sequence((3, 1)) == (0, 0, 1, 0)
    assert len(wrr_sequence((100000, 1))) <= 1001


def test_sticky_score_is_stable_and_spreads():
    deps = [dep(c) for c in "abc"]
    first = {k: max(deps, key=lambda d: sticky_score(k, d)).credential.name for k in map(str, range(300))}
    again = {k: max(deps, key=lambda d: sticky_score(k, d)).credential.name for k in map(str, range(300))}
    assert first == again
    assert all(60 < n < 140 for n in Counter(first.values()).values())
    # removing a member only moves the keys it had
    without_c = {k: max(deps[:2], key=lambda d: sticky_score(k, d)).credential.name for k in map(str, range(300))}
    assert all(without_c[k] == v for k, v in first.items() if v != "c")


def test_window_usage_and_wait():
    w = state.Window()
    w.add(100, 3)
    w.add(100, 1)
    w.add(130, 2)
    assert w.used(130) == 6
    assert w.wait(5, 130.0, 1.0) == 30.0  # bucket 100 leaves the 60-bucket window at t=160
    assert w.wait(2, 130.0, 1.0) == 60.0  # below 2 only once bucket 130 leaves too
    assert w.used(160) == 2  # bucket 100 is gone


def test_rotation():
    deps = [dep(c) for c in "abcd"]
    names = lambda ds: "".join(d.credential.name for d in ds)  # noqa: E731
    assert names(state.rotate(deps, Rotation("k", 3, (0, 1, 2)), 1)[0]) == "bcad"
    assert names(state.rotate(deps, None, 5)[0]) == "abcd"


# ---- both backends ---------------------------------------------------------------------------------

async def test_admission_rotates_round_robin_with_weights(backend):
    deps = [dep("a", weight=3), dep("b")]
    seq = wrr_sequence((3, 1))
    rotation = Rotation("pool|0", 2, seq)
    firsts = Counter()
    for _ in range(8):
        adm = await backend.admit(deps, rotation)
        firsts[adm.order[adm.index].credential.name] += 1
    assert firsts == {"a": 6, "b": 2}


async def test_rpm_limit_skips_and_reports_wait(backend, clock):
    deps = [dep("a", cred_rpm=2), dep("b", rpm=1)]
    picks = []
    for _ in range(3):
        adm = await backend.admit(deps)
        picks.append(adm.order[adm.index].credential.name)
        clock.advance(10)
    assert picks == ["a", "a", "b"]
    adm = await backend.admit(deps)
    assert adm.index is None
    assert [(s.dep.credential.name, s.reason, s.rate) for s in adm.skipped] == [("a", "rpm", True), ("b", "rpm", True)]
    # a: requests at T0 and T0+10, the first leaves the window at T0+60; now is T0+30
    assert [s.wait for s in adm.skipped] == [30.0, 50.0]  # b: one request at T0+20
    clock.advance(30)
    adm = await backend.admit(deps)
    assert adm.order[adm.index].credential.name == "a"


async def test_tpm_counts_finished_requests(backend, clock):
    d = dep("a", tpm=100)
    assert (await backend.admit([d])).index == 0
    backend.add_tokens(d, 120)
    await drain(backend)
    clock.advance(5)
    adm = await backend.admit([d])
    assert adm.index is None and adm.skipped[0].reason == "tpm" and adm.skipped[0].wait == 55.0
    clock.advance(55)
    assert (await backend.admit([d])).index == 0


async def test_credential_limits_are_shared_by_its_models(backend):
    m1, m2 = dep("a", "m1", cred_rpm=1), dep("a", "m2", cred_rpm=1)
    assert (await backend.admit([m1])).index == 0
    adm = await backend.admit([m2])
    assert adm.index is None and adm.skipped[0].reason == "rpm"


async def test_repeated_failures_cool_down_and_expire(backend, clock):
    d = dep("a")
    assert await backend.failure(d, 500, RULES, reason="boom") is None
    cd = await backend.failure(d, 500, RULES, reason="boom")
    assert cd is not None and cd.status == 500 and cd.kind == "error" and cd.failures == 2
    assert cd.remaining(clock()) == 30.0 and not cd.permanent
    await sync(backend)
    assert backend.cooling(d) is not None
    adm = await backend.admit([d])
    assert adm.index is None
    skip = adm.skipped[0]
    assert (skip.reason, skip.wait, skip.rate, skip.status) == ("cooldown", 30.0, False, 500)
    clock.advance(31)
    assert (await backend.admit([d])).index == 0
    # the ban ran out: the pair starts afresh (one failure does not re-ban it)
    assert await backend.failure(d, 500, RULES) is None


async def test_success_resets_the_count(backend):
    d = dep("a")
    await backend.failure(d, 502, RULES)
    await sync(backend)
    await backend.success(d)
    assert await backend.failure(d, 502, RULES) is None
    assert await backend.failure(d, 502, RULES) is not None


async def test_counts_are_per_status_and_per_pair(backend):
    a, b = dep("a"), dep("b")
    assert await backend.failure(a, 500, RULES) is None
    assert await backend.failure(a, 503, RULES) is None
    assert await backend.failure(b, 500, RULES) is None
    assert await backend.failure(a, 500, RULES) is not None


async def test_uncounted_statuses_do_nothing(backend):
    d = dep("a")
    for _ in range(5):
        assert await backend.failure(d, 400, RULES) is None
    assert (await backend.admit([d])).index == 0


async def test_retry_after_429_cools_down_for_that_long_at_once(backend, clock):
    d = dep("a")
    cd = await backend.failure(d, 429, RULES, retry_after=7.5)
    assert cd is not None and cd.kind == "rate" and cd.remaining(clock()) == 7.5
    adm = await backend.admit([d])
    assert adm.skipped[0].rate and adm.skipped[0].wait == 7.5
    # a shorter provider wait never shortens it; a longer one extends it
    assert await backend.failure(d, 429, RULES, retry_after=2) is None
    assert (await backend.failure(d, 429, RULES, retry_after=20)).remaining(clock()) == 20


async def test_permanent_ban_until_cleared(backend, clock):
    rules = Fail2Ban.from_config({"max_attempts": 1, "ban_duration": "permanent"})
    d = dep("a")
    cd = await backend.failure(d, 401, rules)
    assert cd.permanent and cd.remaining(clock()) is None
    clock.advance(10 ** 6)
    adm = await backend.admit([d])
    assert adm.index is None and adm.skipped[0].wait is None and adm.skipped[0].permanent
    assert await backend.aclear([state.dep_key(d)]) == 1
    await sync(backend)
    assert (await backend.admit([d])).index == 0


async def test_probe_admission_ignores_the_cooldown_but_not_limits(backend):
    d = dep("a", rpm=1)
    await backend.failure(d, 500, Fail2Ban.from_config({"max_attempts": 1}))
    assert (await backend.admit([d])).index is None
    assert (await backend.admit([d], ignore_cooldown=True)).index == 0
    adm = await backend.admit([d], ignore_cooldown=True)
    assert adm.index is None and adm.skipped[0].reason == "rpm"


async def test_lift_on_probe_success(backend):
    d = dep("a")
    await backend.failure(d, 500, Fail2Ban.from_config({"max_attempts": 1}))
    await sync(backend)
    await backend.success(d, lift=True)
    await sync(backend)
    assert backend.cooling(d) is None and (await backend.admit([d])).index == 0


async def test_forget_lifts_a_credentials_cooldowns(backend):
    a, b = dep("a"), dep("b")
    one = Fail2Ban.from_config({"max_attempts": 1})
    await backend.failure(a, 500, one)
    await backend.failure(b, 500, one)
    await run_sync(backend.forget, "a")
    await sync(backend)
    assert backend.cooling(a) is None and backend.cooling(b) is not None


async def test_cooldowns_listing_and_health(backend):
    await backend.failure(dep("a", "m1"), 429, RULES, retry_after=5, reason="slow down")
    listed = await backend.acooldowns()
    assert [(c.key, c.kind, c.reason) for c in listed] == [("a|m1", "rate", "slow down")]
    data = listed[0].to_dict(T0)
    assert data["credential"] == "a" and data["model"] == "m1" and data["remaining_seconds"] == 5.0
    assert backend.health()["cooldowns"] == 1 and backend.health()["backend"] in ("local", "redis")


# ---- Redis specifics -----------------------------------------------------------------------------

@pytest.fixture
async def shared(clock, settings):
    """Two RedisState objects on one prefix: two router processes."""
    if not redis_available():
        pytest.skip(f"Redis not reachable at {REDIS_TEST_URL}")
    settings.ROUTER_REDIS_PREFIX = prefix = f"{{test-{secrets.token_hex(4)}}}:"
    one, two = RedisState(REDIS_TEST_URL, clock), RedisState(REDIS_TEST_URL, clock)
    yield one, two
    await drop_prefix(prefix)
    await one.aclose()
    await two.aclose()


async def test_two_processes_share_limits_cursor_and_cooldowns(shared):
    one, two = shared
    limited = [dep("a", cred_rpm=3), dep("b", cred_rpm=3)]
    rotation = Rotation("pool|0", 2, (0, 1))
    picks = []
    for st in (one, two, one, two):
        adm = await st.admit(limited, rotation)
        picks.append(adm.order[adm.index].credential.name)
    assert sorted(picks) == ["a", "a", "b", "b"]  # one shared cursor: strict alternation
    assert picks[0] != picks[1]
    for st in (one, two):
        await st.admit(limited)
    adm = await two.admit(limited)
    assert adm.index is None and {s.reason for s in adm.skipped} == {"rpm"}
    # a cooldown recorded by one process is seen by the other at its next sync
    d = dep("c")
    await one.failure(d, 500, Fail2Ban.from_config({"max_attempts": 1}))
    assert two.cooling(d) is None
    await two.sync()
    assert two.cooling(d) is not None and two.cooling(d).status == 500
    # and the limited path reads it straight from Redis
    limited_c = dep("c", rpm=10)
    adm = await two.admit([limited_c])
    assert adm.index is None and adm.skipped[0].reason == "cooldown"


async def test_failure_counts_are_shared(shared):
    one, two = shared
    d = dep("a")
    assert await one.failure(d, 500, RULES) is None
    assert await two.failure(d, 500, RULES) is not None


async def test_unlimited_pools_make_no_round_trip(shared, monkeypatch):
    one, _ = shared
    calls = []
    monkeypatch.setattr(one, "_run", lambda *a, **k: calls.append(a))
    one.synced_at = math.inf  # no background sync either
    adm = await one.admit([dep("a"), dep("b")], Rotation("p", 2, (0, 1)))
    assert adm.index == 0 and calls == []


async def test_outage_degrades_to_local_state_then_recovers(settings, clock, caplog):
    settings.ROUTER_REDIS_RETRY_SECONDS = 0.0
    settings.ROUTER_REDIS_PREFIX = f"{{test-{secrets.token_hex(4)}}}:"
    port = _closed_port()
    st = RedisState(f"redis://127.0.0.1:{port}/0", clock)
    d = dep("a", rpm=1)
    with caplog.at_level("ERROR", logger="proxy.state"):
        assert (await st.admit([d])).index == 0
        adm = await st.admit([d])  # the limit is still enforced, per process
        assert adm.index is None and adm.skipped[0].reason == "rpm"
        assert await st.failure(dep("b"), 500, Fail2Ban.from_config({"max_attempts": 1})) is not None
    assert st.health()["redis"] == "unreachable" and "redis_error" in st.health()
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1  # logged once
    if redis_available():
        st.url = REDIS_TEST_URL
        await st.aclose()
        await st.sync()
        assert st.health()["redis"] == "ok"
        await drop_prefix(settings.ROUTER_REDIS_PREFIX)
    await st.aclose()


# ---- helpers -------------------------------------------------------------------------------------

def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def sync(backend) -> None:
    if isinstance(backend, RedisState):
        await backend.sync()


async def drain(backend) -> None:
    import asyncio

    if isinstance(backend, RedisState):
        while backend._tasks:
            await asyncio.gather(*backend._tasks)


async def run_sync(fn, *args) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(fn, thread_sensitive=False)(*args)
