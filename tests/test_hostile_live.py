"""Hostile clients and upstreams against a real router process, under Daphne and under uvicorn.

Memory is read from the router's /proc status: ``VmRSS`` now, ``VmHWM`` the peak.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.fakes.server import FakeServer, Reply
from tests.live import SERVERS, LiveRouter

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


@pytest.fixture(scope="module", params=SERVERS)
def router(tmp_path_factory, request):
    async def malformed(req) -> Reply:
        return Reply(sse=MALFORMED)

    upstream = FakeServer(malformed).start()
    live = LiveRouter(config(upstream.url), tmp_path_factory.mktemp("hostile"), server=request.param,
                      env={"ROUTER_USAGE_LOGGING": "1", "ROUTER_MAX_ATTEMPTS": "1"}).start()
    yield live
    live.stop()
    upstream.stop()


async def _malformed_streams(url: str, total: int, concurrency: int = 20) -> list[str]:
    """``total`` streaming requests; returns what went wrong (nothing, hopefully). aiohttp: the
    client's own CPU matters here, the machine has two cores for both sides."""
    problems: list[str] = []
    todo = iter(range(total))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, headers=AUTH, connector=connector) as client:
        async def worker() -> None:
            for _ in todo:
                async with client.post("/v1/chat/completions", json=CHAT) as res:
                    text = await res.text()
                last = text.strip().rsplit("data: ", 1)[-1]
                if res.status != 200 or json.loads(last).get("error", {}).get("code") != "bad_upstream_response":
                    problems.append(f"{res.status} {text[-200:]}")
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


# ---- slow clients ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=SERVERS)
def guarded_router(tmp_path_factory, request):
    upstream = FakeServer(lambda req: _never()).start()
    live = LiveRouter(config(upstream.url), tmp_path_factory.mktemp("slow"), server=request.param, env={
        "ROUTER_HEADER_TIMEOUT": "2", "ROUTER_BODY_TIMEOUT": "2", "ROUTER_MAX_CONNECTIONS": "340"}).start()
    yield live
    live.stop()
    upstream.stop()


async def _never() -> Reply:
    return Reply(status=599, json={})


async def _slowloris(url: str, count: int, *, body: bool) -> list[float]:
    """``count`` connections trickling a request one piece every 0.5 s; seconds until the server hung up."""
    host, port = url.removeprefix("http://").split(":")
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
    pieces = [head[i:i + 1] for i in range(len(head))]  # a byte at a time: ~35 s for the headers
    if body:  # headers complete at once, then a body that never completes
        pieces = [head + b"\r\ncontent-length: 100000\r\n\r\n"] + [b"x"] * 200
    loop = asyncio.get_running_loop()

    async def one() -> float:
        reader, writer = await asyncio.open_connection(host, int(port))
        started = loop.time()
        try:
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(4096), 0.5) == b"":
                        break  # the server closed the connection
                except TimeoutError:
                    continue
            return loop.time() - started
        except ConnectionError:
            return loop.time() - started
        finally:
            writer.close()

    return await asyncio.gather(*(one() for _ in range(count)))


@pytest.mark.parametrize("body", [False, True], ids=["slow_headers", "slow_body"])
def test_300_slowloris_connections_are_cut_at_the_deadline_and_health_still_answers(guarded_router, body):
    async def attack_and_check() -> tuple[list[float], int]:
        attack = asyncio.ensure_future(_slowloris(guarded_router.url, 300, body=body))
        await asyncio.sleep(1.0)  # all 300 connected and trickling
        async with httpx.AsyncClient(timeout=5) as client:
            health = await client.get(guarded_router.url + "/health")
        return await attack, health.status_code

    held, health_status = asyncio.run(attack_and_check())
    assert health_status == 200
    # cut at the 2 s deadline (a piece every 0.5 s: without it a connection lasts 35 s or more)
    assert max(held) < 8, sorted(held)[-5:]
    assert min(held) >= 1.5


def test_connections_beyond_the_cap_are_refused_and_the_router_recovers(guarded_router):
    async def run() -> tuple[int, int]:
        host, port = guarded_router.url.removeprefix("http://").split(":")
        conns = [await asyncio.open_connection(host, int(port)) for _ in range(360)]
        await asyncio.sleep(0.5)

        async def was_closed(reader: asyncio.StreamReader) -> bool:
            try:
                return await asyncio.wait_for(reader.read(1), 0.5) == b""
            except TimeoutError:
                return False
            except ConnectionError:
                return True

        closed = sum(await asyncio.gather(*(was_closed(reader) for reader, _ in conns)))
        for _, writer in conns:
            writer.close()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=5) as client:
            return closed, (await client.get(guarded_router.url + "/health")).status_code

    closed, status = asyncio.run(run())
    assert closed >= 20  # 360 against a cap of 340 (the router's own keep-alive may hold one more)
    assert status == 200


def test_oversized_headers_are_refused_and_the_connection_closed(guarded_router):
    host, port = guarded_router.url.removeprefix("http://").split(":")
    padding = "".join(f"x-pad-{i}: {'p' * 100}\r\n" for i in range(200))  # ~22 KiB: past the 16 KiB cap

    async def send() -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            request = f"GET /health HTTP/1.1\r\nHost: x\r\n{padding}\r\n".encode()
            for i in range(0, len(request), 1024):  # in pieces, as headers trickle in from a slow client
                writer.write(request[i:i + 1024])
                await writer.drain()
            return await asyncio.wait_for(reader.read(), 10)  # until the server closes
        except ConnectionError:
            return b""
        finally:
            writer.close()

    answer = asyncio.run(send())
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert httpx.get(guarded_router.url + "/health", headers={"x-pad": "p" * 8000}, timeout=5).status_code == 200
