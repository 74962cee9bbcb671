"""Key and team limit stores, every behaviour on both backends (in-process and Redis), with a fake clock."""

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal

import pytest

from keys.limits import LocalLimits, RedisLimits, from_nano, to_nano
from keys.snapshot import Scope
from proxy.state import RedisState
from tests.test_state import REDIS_TEST_URL, Clock, drop_prefix, redis_available

USD = to_nano(Decimal(1))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["local", "redis"])
async def store(request, clock, settings):
    if request.param == "local":
        yield LocalLimits(clock)
        return
    if not redis_available():
        pytest.skip(f"Redis not reachable at {REDIS_TEST_URL}")
    settings.ROUTER_REDIS_PREFIX = prefix = f"{{test-{secrets.token_hex(4)}}}:"
    st = RedisState(REDIS_TEST_URL, clock)
    limits = RedisLimits(st)
    yield limits
    await drop_prefix(prefix)
    await st.aclose()


async def settle(store, *args) -> None:
    store.settle(*args)
    if isinstance(store, RedisLimits):
        await store.drain()


def key(**kw) -> Scope:
    if "max_budget" in kw:
        kw["budget_nano"] = to_nano(kw["max_budget"])
    return Scope("key", "k1", "alice", **kw)


def team(**kw) -> Scope:
    return Scope("team", "t1", "platform", **kw)


def test_nano_dollars_round_trip():
    assert to_nano(Decimal("0.000000001")) == 1 and from_nano(1_500_000_000) == Decimal("1.5")
    assert to_nano(Decimal("0.0000000001"), up=True) == 1 and to_nano(Decimal("0.0000000001")) == 0


async def test_rpm_window_and_headers(store, clock):
    scopes = [key(rpm=2)]
    first = await store.admit(scopes, "r1", 0, [None])
    assert first.ok and first.windows[0][0] == 1 and 59 <= first.windows[0][1] <= 60
    clock.advance(10)
    second = await store.admit(scopes, "r2", 0, [None])
    assert second.ok and second.windows[0][0] == 2 and 49 <= second.windows[0][1] <= 50
    refused = await store.admit(scopes, "r3", 0, [None])
    assert not refused.ok and refused.reason == "rpm" and refused.scope == 0 and 49 <= refused.wait <= 50
    clock.advance(50.5)
    assert (await store.admit(scopes, "r4", 0, [None])).ok  # the first request left the window


async def test_tpm_counts_tokens_at_settlement(store, clock):
    scopes = [key(tpm=100)]
    assert (await store.admit(scopes, "r1", 0, [None])).ok
    await settle(store, scopes, "r1", [None], 0, 150)
    refused = await store.admit(scopes, "r2", 0, [None])
    assert refused.reason == "tpm" and 59 <= refused.wait <= 60
    clock.advance(61)
    ok = await store.admit(scopes, "r3", 0, [None])
    assert ok.ok and ok.windows[0][2] == 0


async def test_parallel_slots_free_on_settle_or_expiry(store, clock, settings):
    settings.ROUTER_BUDGET_RESERVATION_SECONDS = 30
    scopes = [key(parallel=1)]
    assert (await store.admit(scopes, "r1", 0, [None])).ok
    refused = await store.admit(scopes, "r2", 0, [None])
    assert refused.reason == "parallel" and refused.wait == 1.0
    await settle(store, scopes, "r1", [None], 0, 0)
    assert (await store.admit(scopes, "r3", 0, [None])).ok
    clock.advance(31)  # r3 never finished (a crashed process): its slot lapses
    assert (await store.admit(scopes, "r4", 0, [None])).ok


async def test_budget_needs_a_seed_then_reserves_and_settles(store):
    scopes = [key(max_budget=Decimal(1))]
    spend_keys = ["k:k1:0:0"]
    need = await store.admit(scopes, "r1", USD // 4, spend_keys)
    assert not need.ok and need.seed == [0]
    await store.seed("k:k1:0:0", USD // 2)
    await store.seed("k:k1:0:0", 0)  # a second seed (another process) does not overwrite
    assert (await store.admit(scopes, "r1", USD // 4, spend_keys)).ok
    assert (await store.admit(scopes, "r2", USD // 4, spend_keys)).ok  # 0.5 + 0.25 < 1
    refused = await store.admit(scopes, "r3", USD // 4, spend_keys)  # 0.5 + 0.5 reserved >= 1
    assert refused.reason == "budget" and refused.spend == USD // 2 and refused.reserved == USD // 2
    await settle(store, scopes, "r1", spend_keys, USD // 10, 0)  # cheaper than reserved
    ok = await store.admit(scopes, "r3", USD // 4, spend_keys)  # 0.6 + 0.25 < 1
    assert ok.ok
    await settle(store, scopes, "r2", spend_keys, 0, 0)  # failed: released, nothing spent
    await settle(store, scopes, "r3", spend_keys, USD // 2, 0)  # 1.1 spent
    refused = await store.admit(scopes, "r4", 0, spend_keys)
    assert refused.reason == "budget" and refused.spend == USD // 2 + USD // 10 + USD // 2 and refused.reserved == 0


async def test_reservations_of_vanished_requests_lapse(store, clock, settings):
    settings.ROUTER_BUDGET_RESERVATION_SECONDS = 60
    scopes, spend_keys = [key(max_budget=Decimal(1))], ["k:k1:0:0"]
    await store.seed("k:k1:0:0", 0)
    assert (await store.admit(scopes, "r1", USD, spend_keys)).ok
    assert (await store.admit(scopes, "r2", 1, spend_keys)).reason == "budget"
    clock.advance(61)
    assert (await store.admit(scopes, "r2", 1, spend_keys)).ok  # no false 429 forever


async def test_team_limits_apply_on_top_and_nothing_is_counted_on_refusal(store):
    scopes = [key(rpm=10), team(rpm=1)]
    assert (await store.admit(scopes, "r1", 0, [None, None])).ok
    refused = await store.admit(scopes, "r2", 0, [None, None])
    assert refused.scope == 1 and refused.reason == "rpm"
    other = await store.admit([Scope("key", "k2", "bob", rpm=10), team(rpm=1)], "r3", 0, [None, None])
    assert other.scope == 1  # the team's window is shared by its keys
    alone = await store.admit([key(rpm=10)], "r4", 0, [None])
    assert alone.windows[0][0] == 2  # the refused r2 was not counted against the key


async def test_concurrent_admissions_never_overshoot(store):
    scopes, spend_keys = [key(max_budget=Decimal(1))], ["k:k1:0:0"]
    await store.seed("k:k1:0:0", 0)
    verdicts = await asyncio.gather(*(store.admit(scopes, f"r{i}", USD // 10, spend_keys) for i in range(30)))
    assert sum(v.ok for v in verdicts) == 10
    assert all(v.reason == "budget" for v in verdicts if not v.ok)


async def test_redis_unreachable_degrades_to_per_process_limits(clock, settings):
    from tests.live import free_port

    settings.ROUTER_REDIS_TIMEOUT = 0.2
    st = RedisState(f"redis://127.0.0.1:{free_port()}/0", clock)  # nothing listens there
    limits = RedisLimits(st)
    scopes, spend_keys = [key(rpm=1, max_budget=Decimal(1))], ["k:k1:0:0"]
    await limits.seed("k:k1:0:0", 0)
    assert (await limits.admit(scopes, "r1", USD // 2, spend_keys)).ok
    assert (await limits.admit(scopes, "r2", 0, spend_keys)).reason == "rpm"  # still limited, per process
    assert st.health()["redis"] == "unreachable"
    limits.settle(scopes, "r1", spend_keys, USD // 4, 0)
    await limits.drain()
    assert limits.local.spend["k:k1:0:0"] == USD // 4
