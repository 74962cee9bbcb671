"""SIGTERM on a real router (Daphne and uvicorn) with live streams: they finish within the grace period, or are ended
with their endpoint's terminal error and a row saying the server shut down (not 499 client_closed)."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest

from tests.fakes.openai import OpenAIFake, stream_frames
from tests.fakes.server import Reply
from tests.live import LiveRouter, both_servers
from tests.test_routing import forever

KEY = "sk-router-live-test"
HEADERS = {"authorization": f"Bearer {KEY}"}


def router_yaml(upstream_url: str) -> str:
    return f"""
server: {{master_key: {KEY}}}
credentials: [{{name: upstream, type: openai, api_key: sk-upstream-secret, base_url: {upstream_url}}}]
models: [{{name: gpt-4o, credential: upstream}}]
"""


@pytest.fixture
def slow_upstream():
    fakes = []

    def make(pieces: int, delay: float) -> OpenAIFake:
        fake = OpenAIFake().start()
        fake.script = forever(Reply(sse=stream_frames([f"w{i} " for i in range(pieces)], delay=delay),
                                    content_type="text/event-stream"))
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.stop()


async def _stream(client: httpx.AsyncClient, path: str, body: dict, started: asyncio.Event,
                  counter: list[int], total: int) -> list[str]:
    """The SSE data lines of one streamed request."""
    data: list[str] = []
    async with client.stream("POST", path, json=body, headers=HEADERS) as res:
        assert res.status_code == 200
        async for line in res.aiter_lines():
            if line.startswith("data: "):
                if not data:
                    counter[0] += 1
                    if counter[0] == total:
                        started.set()
                data.append(line[6:])
    return data


async def _run_streams(router: LiveRouter, bodies: list[tuple[str, dict]]) -> tuple[list[list[str]], float, bool]:
    """Start every stream, SIGTERM the router once all have begun; the streams' data, the seconds from
    SIGTERM to the last stream's end, and whether new connections were refused meanwhile."""
    started = asyncio.Event()
    counter = [0]
    limits = httpx.Limits(max_connections=len(bodies) + 5)
    async with httpx.AsyncClient(base_url=router.url, timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(_stream(client, path, body, started, counter, len(bodies)))
                 for path, body in bodies]
        await asyncio.wait_for(started.wait(), 30)
        router.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        refused = False
        for _ in range(40):  # the listening socket closes at once
            await asyncio.sleep(0.05)
            try:
                async with httpx.AsyncClient(timeout=2) as fresh:
                    await fresh.get(router.url + "/health")
            except httpx.ConnectError:
                refused = True
                break
        results = await asyncio.gather(*tasks)
        return results, time.monotonic() - signalled, refused


CHAT = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
RESPONSES = {"model": "gpt-4o", "stream": True, "input": "Hi"}


@both_servers
def test_sigterm_lets_50_live_streams_finish_within_the_grace(tmp_path, slow_upstream, server):
    fake = slow_upstream(pieces=10, delay=0.3)  # each stream takes about 3 s
    router = LiveRouter(router_yaml(fake.url + "/v1"), tmp_path, server=server,
                        env={"ROUTER_SHUTDOWN_GRACE_SECONDS": "25", "ROUTER_USAGE_FLUSH_SECONDS": "5"}).start()
    try:
        results, took, refused = asyncio.run(_run_streams(router, [("/v1/chat/completions", CHAT)] * 50))
        assert router.proc.wait(25) == 0
    finally:
        router.stop()
    assert refused, "the router kept accepting connections after SIGTERM"
    assert took < 25
    for data in results:
        assert data[-1] == "[DONE]"
        text = "".join((json.loads(d)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                       for d in data[:-1])
        assert text == "".join(f"w{i} " for i in range(10))
    rows = router.usage_rows(wait_for=50, timeout=2)  # flushed at exit (the flush interval is 5 s)
    assert len(rows) == 50
    assert {(r["status"], r["client_closed"], r["error_type"]) for r in rows} == {(200, 0, "")}
    assert "took too long to shut down" not in router.log()


@both_servers
def test_streams_past_a_short_grace_end_with_their_terminal_error_and_a_shutdown_row(tmp_path, slow_upstream,
                                                                                     server):
    fake = slow_upstream(pieces=40, delay=0.25)  # 10 s: longer than the grace
    router = LiveRouter(router_yaml(fake.url + "/v1"), tmp_path, server=server,
                        env={"ROUTER_SHUTDOWN_GRACE_SECONDS": "1"}).start()
    try:
        bodies = [("/v1/chat/completions", CHAT)] * 5 + [("/v1/responses", RESPONSES)] * 5
        results, took, refused = asyncio.run(_run_streams(router, bodies))
        assert router.proc.wait(15) == 0
    finally:
        router.stop()
    assert refused
    assert 0.9 < took < 8, took  # cut after the grace, well before the upstream would have finished
    for data in results[:5]:  # Chat: an error event, then the end (no [DONE])
        last = json.loads(data[-1])
        assert last["error"]["code"] == "server_shutdown", data[-2:]
        assert "[DONE]" not in data
    for data in results[5:]:  # Responses: response.failed
        last = json.loads(data[-1])
        assert last["type"] == "response.failed", data[-2:]
        assert last["response"]["error"]["code"] == "server_shutdown"
    rows = router.usage_rows(wait_for=10, timeout=2)
    assert len(rows) == 10
    assert {(r["status"], r["client_closed"], r["error_type"]) for r in rows} == {(503, 0, "server_shutdown")}
    assert sorted(r["endpoint"] for r in rows) == ["chat.completions"] * 5 + ["responses"] * 5
