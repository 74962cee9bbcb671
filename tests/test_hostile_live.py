"""Hostile clients and upstreams against a real Daphne router process.

Memory is read from the router's /proc status: ``VmRSS`` now, ``VmHWM`` the peak.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.fakes.server import FakeServer, Reply
from tests.live import LiveRouter

KEY = "sk-router-live-test"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
MALFORMED = [
    'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":"partial"},"finish_reason":null}]}\n\n',
    "data: [1, 2]\n\n",
]


def config(upstream: str) -> str:
    return f"""
server: {{master_key: {KEY}}}
credentials:
  - {{name: up, type: openai, api_key: sk-upstream-secret, base_url: {upstream}/v1}}
models:
  - {{name: m, credential: up}}
"""


def memory_kb(router: LiveRouter, field: str) -> int:
    assert router.proc is not None
    for line in Path(f"/proc/{router.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc status")


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    async def malformed(req) -> Reply:
        return Reply(sse=MALFORMED)

    upstream = FakeServer(malformed).start()
    live = LiveRouter(config(upstream.url), tmp_path_factory.mktemp("hostile"),
                      env={"ROUTER_USAGE_LOGGING": "1", "ROUTER_MAX_ATTEMPTS": "1"}).start()
    yield live
    live.stop()
    upstream.stop()


async def _malformed_streams(url: str, total: int, concurrency: int = 20) -> list[str]:
    """``total`` streaming requests; returns what went wrong (nothing, hopefully)."""
    problems: list[str] = []
    todo = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, limits=limits) as client:
        async def worker() -> None:
            for _ in todo:
                res = await client.post("/v1/chat/completions", json=CHAT)
                last = res.text.strip().rsplit("data: ", 1)[-1]
                if res.status_code != 200 or json.loads(last).get("error", {}).get("code") != "bad_upstream_response":
                    problems.append(f"{res.status_code} {res.text[-200:]}")
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return problems


def test_memory_stays_flat_over_10000_malformed_streams(router):
    assert not asyncio.run(_malformed_streams(router.url, 500))  # warm up: pools, caches, allocator arenas
    before = memory_kb(router, "VmRSS")
    problems = asyncio.run(_malformed_streams(router.url, 10_000))
    after = memory_kb(router, "VmRSS")
    assert not problems, problems[:3]
    # a leak of 12 KB a request (the bug this guards) would be ~120 MB
    assert after - before < 40_000, f"RSS grew from {before} kB to {after} kB over 10,000 requests"
    health = httpx.get(router.url + "/health", timeout=10).json()
    assert health["status"] == "ok"
    rows = router.usage_rows(wait_for=10_500, timeout=30)
    assert {(r["status"], r["error_type"], r["client_closed"]) for r in rows} == {(502, "bad_upstream_response", 0)}
    # tracebacks are rate limited: one malformed stream type, a handful of log lines, not 11,000
    assert router.log().count("Traceback") < 20


def test_keyless_huge_bodies_are_refused_without_parsing_them(router):
    body = b'{"model": "m", "messages": [' + b"{}," * (10 * 1024 * 1024) + b"{}]}"  # 31 MiB of tiny objects

    async def send_four() -> list[int]:
        async with httpx.AsyncClient(base_url=router.url, timeout=60) as client:
            results = await asyncio.gather(*(client.post("/v1/chat/completions", content=body,
                                                         headers={"content-type": "application/json"})
                                             for _ in range(4)))
        return [r.status_code for r in results]

    peak = memory_kb(router, "VmHWM")
    failures_before = httpx.get(router.url + "/health", timeout=10).json()["auth_failures"]
    assert asyncio.run(send_four()) == [401] * 4
    grew = memory_kb(router, "VmHWM") - peak
    # parsed, each body was ~900 MB of Python objects; refused unread, at most the raw bytes Daphne holds
    assert grew < 300_000, f"peak RSS grew by {grew} kB"
    assert httpx.get(router.url + "/health", timeout=10).json()["auth_failures"] == failures_before + 4
