"""Real router processes: two instances sharing limits through Redis, a Redis that goes away and
comes back, and a router chained to itself stopped by the hop counter. The first router a test starts
runs under Daphne, the next under uvicorn: both servers serve the same instance group (the chained
router runs under uvicorn)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time

import httpx
import pytest

from tests.fakes.openai import OpenAIFake, completion
from tests.fakes.server import Reply
from tests.live import SERVERS, LiveRouter, free_port
from tests.test_routing import forever
from tests.test_state import REDIS_TEST_URL, drop_prefix, redis_available

KEY = "sk-router-live-test"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


def router_yaml(upstream_url: str, *, rpm: int | None = None, cred_type: str = "openai") -> str:
    limit = f"\n    rpm: {rpm}" if rpm else ""
    return f"""
server:
  master_key: {KEY}
credentials:
  - name: upstream
    type: {cred_type}
    api_key: sk-upstream-secret
    base_url: {upstream_url}{limit}
models:
  - name: gpt-4o
    credential: upstream
"""


def post(router: LiveRouter, body: dict = CHAT) -> httpx.Response:
    return httpx.post(router.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
                      timeout=30)


def health(router: LiveRouter) -> dict:
    return httpx.get(router.url + "/health", timeout=10).json()


@pytest.fixture
def upstream():
    fake = OpenAIFake().start()
    fake.script = forever(Reply(json=completion("hello")))
    yield fake
    fake.stop()


@pytest.fixture
def routers(tmp_path):
    started: list[LiveRouter] = []

    def make(yaml_text: str, **env: str) -> LiveRouter:
        router = LiveRouter(yaml_text, tmp_path, env=env, server=SERVERS[len(started) % 2]).start()
        started.append(router)
        return router
    yield make
    for router in started:
        router.stop()


@pytest.fixture
def redis_prefix():
    if not redis_available():
        pytest.skip(f"Redis not reachable at {REDIS_TEST_URL}")
    import asyncio

    prefix = f"{{live-{secrets.token_hex(4)}}}:"
    yield prefix
    asyncio.run(drop_prefix(prefix))


def test_two_router_processes_share_one_limit_through_redis(routers, upstream, redis_prefix):
    env = {"REDIS_URL": REDIS_TEST_URL, "ROUTER_REDIS_PREFIX": redis_prefix}
    yaml_text = router_yaml(upstream.url + "/v1", rpm=3)
    one, two = routers(yaml_text, **env), routers(yaml_text, **env)
    statuses = [post(r).status_code for r in (one, two, one)]
    assert statuses == [200, 200, 200]
    for router in (two, one):
        res = post(router)
        assert res.status_code == 429, res.text
        assert 55 <= int(res.headers["retry-after"]) <= 60
        assert res.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(upstream.requests) == 3
    assert health(one)["routing_state"] == {"backend": "redis", "redis": "ok", "cooldowns": 0}
    rows = one.usage_rows(wait_for=3)
    assert [r["status"] for r in rows] == [200, 200, 429]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_going_away_degrades_to_local_state_and_comes_back(routers, upstream, tmp_path):
    port = free_port()

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
                return proc
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    redis = start_redis()
    try:
        router = routers(router_yaml(upstream.url + "/v1", rpm=100), REDIS_URL=f"redis://127.0.0.1:{port}/0",
                         ROUTER_REDIS_RETRY_SECONDS="0.3", ROUTER_STATE_SYNC_SECONDS="0.2")
        assert post(router).status_code == 200
        redis.terminate()
        redis.wait(10)
        assert [post(router).status_code for _ in range(3)] == [200, 200, 200]  # served from local state
        data = health(router)
        assert data["status"] == "degraded" and data["routing_state"]["redis"] == "unreachable"
        assert router.log().count("Redis unreachable") == 1  # said once, not per request
        redis = start_redis()
        deadline = time.monotonic() + 10
        while health(router)["routing_state"]["redis"] != "ok":
            assert time.monotonic() < deadline, router.log()
            post(router)
            time.sleep(0.2)
        assert "Redis reachable again" in router.log()
        assert post(router).status_code == 200
    finally:
        redis.terminate()
        redis.wait(10)


def test_a_router_chained_to_itself_stops_at_the_hop_limit(routers, tmp_path):
    port = free_port()
    # a proxy credential pointing back at this very router: A -> A -> A ...
    router = LiveRouter(router_yaml(f"http://127.0.0.1:{port}/v1", cred_type="proxy").replace(
        "sk-upstream-secret", KEY), tmp_path, env={"ROUTER_MAX_HOPS": "3", "ROUTER_MAX_ATTEMPTS": "1"},
        server="uvicorn")  # requests nested in one process
    router.port = port
    router.start()
    try:
        started = time.monotonic()
        res = post(router)
        assert time.monotonic() - started < 10
        assert res.status_code in (502, 503, 508), res.text
        assert "Loop detected" in res.json()["error"]["message"]
        rows = router.usage_rows(wait_for=4)
        # hops 0, 1 and 2 forwarded (and failed), hop 3 refused: one row per request the process got
        assert sorted(r["status"] for r in rows) == [502, 502, 502, 508]
    finally:
        router.stop()

