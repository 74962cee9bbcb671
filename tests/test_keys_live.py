"""Client keys against real router processes (one under Daphne, one under uvicorn): a key made through
the management API works in a second process within about a second, and a budget holds under 50
concurrent requests from two processes sharing Redis (the issue's race)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from decimal import Decimal

import httpx
import pytest

from tests.fakes.openai import OpenAIFake, completion
from tests.fakes.server import Reply
from tests.live import LiveRouter
from tests.test_routing import forever
from tests.test_routing_live import redis_prefix  # noqa: F401  (a fixture)
from tests.test_state import REDIS_TEST_URL, drop_prefix

MASTER = "sk-router-live-keys-master"
OUTPUT_PRICE = Decimal("0.001")  # per token; input is free, so a request's cost is exactly its 3 output tokens
COST = 3 * OUTPUT_PRICE
CHAT = {"model": "gpt-4o", "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}


def router_yaml(upstream_url: str) -> str:
    return f"""
server:
  master_key: {MASTER}
credentials:
  - name: upstream
    type: openai
    api_key: sk-upstream-secret
    base_url: {upstream_url}
models:
  - name: gpt-4o
    credential: upstream
model_prices:
  gpt-4o: {{input_cost_per_token: 0, output_cost_per_token: {OUTPUT_PRICE}}}
"""


@pytest.fixture
def upstream():
    fake = OpenAIFake()
    fake.script = forever(Reply(json=completion("hello", prompt=9, completion_tokens=3), hang=0.3))
    yield fake.start()
    fake.stop()


@pytest.fixture
def pair(tmp_path, upstream, redis_prefix):  # noqa: F811
    # a generous Redis time-out: on a loaded test machine a 0.5 s one can pass for an outage, and during an
    # outage limits are per process by design (the guarantee is for a reachable Redis)
    env = {"REDIS_URL": REDIS_TEST_URL, "ROUTER_REDIS_PREFIX": redis_prefix, "ROUTER_USAGE_FLUSH_SECONDS": "0.2",
           "ROUTER_REDIS_TIMEOUT": "10"}
    one = LiveRouter(router_yaml(upstream.url + "/v1"), tmp_path, env=env, server="daphne").start()
    two = LiveRouter("", tmp_path, env=env, db=one.db, server="uvicorn").start()
    yield one, two
    for router in (one, two):
        router.stop()


def manage(router: LiveRouter, path: str, body: dict) -> dict:
    res = httpx.post(router.url + path, json=body, headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()


def wait_for_key(router: LiveRouter, secret: str, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        res = httpx.get(router.url + "/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10)
        if res.status_code == 200:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"key not accepted by {router.url} after {timeout}s")


_MONEY = r"\$([\d.,]+)"


def test_budget_holds_under_50_concurrent_requests_from_two_processes(pair, upstream):
    one, two = pair
    made = manage(one, "/key/generate", {"key_alias": "racer", "max_budget": str(10 * COST),
                                         "budget_duration": "30d"})
    secret = made["key"]
    assert wait_for_key(two, secret) < 3  # made in one process, usable in the other within about a second

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, headers={"authorization": f"Bearer {secret}"}) as client:
            return await asyncio.gather(*(client.post((one, two)[i % 2].url + "/v1/chat/completions", json=CHAT)
                                          for i in range(50)))
    responses = asyncio.run(fire())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert all(r.status_code == 429 for r in refused), [r.text for r in refused if r.status_code != 429]
    for res in refused:
        error = res.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        assert res.headers["x-should-retry"] == "false" and "racer" in error["message"]
        # refused only once spend plus what requests in flight hold reached the budget
        amounts = [Decimal(a.replace(",", "")) for a in re.findall(_MONEY, error["message"])]
        spend, held, budget = amounts if len(amounts) == 3 else (amounts[0], Decimal(0), amounts[1])
        assert budget == 10 * COST and spend + held >= budget, error["message"]
    # every request costs the same and its estimate is exact: exactly the 10 the budget covers pass
    assert len(ok) == 10 and len(upstream.requests) == 10
    # and it stays spent: another request is the quota 429 from either process
    for router in (one, two):
        res = httpx.post(router.url + "/v1/chat/completions", json=CHAT,
                         headers={"authorization": f"Bearer {secret}"}, timeout=30)
        assert res.status_code == 429 and res.json()["error"]["code"] == "insufficient_quota"


def durable_spend(router: LiveRouter, token: str, expected: Decimal, timeout: float = 15.0) -> Decimal:
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(router.db) as conn:
            spend = Decimal(str(conn.execute("SELECT spend FROM keys_apikey WHERE token = ?", (token,)).fetchone()[0]))
        if spend >= expected or time.monotonic() > deadline:
            return spend
        time.sleep(0.2)


def test_spend_is_durable_and_survives_a_redis_flush(pair, redis_prefix):  # noqa: F811
    one, two = pair
    made = manage(one, "/key/generate", {"key_alias": "saver", "max_budget": str(4 * COST)})
    wait_for_key(two, made["key"])
    auth = {"authorization": f"Bearer {made['key']}"}
    for router in (one, two, one, two):
        assert httpx.post(router.url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=30).status_code == 200
    # both processes' usage rows added their cost to the key, in the database
    assert durable_spend(one, made["token"], 4 * COST) == 4 * COST
    with sqlite3.connect(one.db) as conn:
        rows = conn.execute("SELECT count(*), sum(cost_usd) FROM proxy_usagerecord WHERE key_id = ?",
                            (made["token"],)).fetchone()
        assert rows[0] == 4 and conn.execute("SELECT last_used_at FROM keys_apikey WHERE token = ?",
                                             (made["token"],)).fetchone()[0]
    # Redis loses everything: the live counters are rebuilt from the durable spend, the budget still holds
    asyncio.run(drop_prefix(redis_prefix))
    for router in (two, one):
        res = httpx.post(router.url + "/v1/chat/completions", json=CHAT, headers=auth, timeout=30)
        assert res.status_code == 429 and res.json()["error"]["code"] == "insufficient_quota", res.text
    info = httpx.get(one.url + "/key/info", params={"key": made["token"]},
                     headers={"authorization": f"Bearer {MASTER}"}, timeout=30).json()["info"]
    assert info["spend"] == float(4 * COST) and info["status"] == "over budget"


def test_block_in_one_process_refuses_in_the_other(pair):
    one, two = pair
    made = manage(one, "/key/generate", {"key_alias": "flipper"})
    wait_for_key(two, made["key"])
    manage(one, "/key/block", {"key": made["token"]})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        res = httpx.get(two.url + "/v1/models", headers={"authorization": f"Bearer {made['key']}"}, timeout=10)
        if res.status_code == 401:
            assert "blocked" in res.json()["error"]["message"]
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the block did not reach the other process")
