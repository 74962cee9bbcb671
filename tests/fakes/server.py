"""A scripted HTTP server on a loopback socket, for fake upstream providers.

Runs aiohttp in its own thread and event loop, so tests (sync or async, any
loop) and the router under test reach it over real TCP. Each fake provider is a
handler ``async def handler(req: Recorded) -> web.StreamResponse | Reply``;
``Reply`` describes a canned answer (JSON, SSE events with delays, a hang, a
reset) so scripts stay declarative.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    request: web.Request | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    """A canned response.

    ``sse``: list of bytes/str frames or floats (seconds to sleep before the next frame).
    ``hang``: sleep this long before sending headers. ``reset_after``: close the
    socket abruptly after that many SSE frames.
    """

    status: int = 200
    json: Any = None
    body: bytes | str | None = None
    sse: list[bytes | str | float] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    reset_after: int | None = None
    content_type: str | None = None


Handler = Callable[[Recorded], Awaitable["web.StreamResponse | Reply"]]


class FakeServer:
    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeServer:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-server")
        self._thread.start()
        ready.wait(10)
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)  # type: ignore[union-attr]
        try:
            fut.result(5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)  # type: ignore[union-attr]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded(request.method, request.path, dict(request.query),
                       {k.lower(): v for k, v in request.headers.items()}, await request.read(), request)
        self.requests.append(rec)
        result = await self.handler(rec)
        if isinstance(result, Reply):
            return await self.send(request, result)
        return result

    async def send(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.hang:
            await asyncio.sleep(reply.hang)
        if reply.sse is None:
            body = reply.body if reply.body is not None else json.dumps(reply.json)
            return web.Response(status=reply.status, body=body.encode() if isinstance(body, str) else body,
                                headers=reply.headers,
                                content_type=reply.content_type or "application/json")
        resp = web.StreamResponse(status=reply.status, headers=reply.headers)
        resp.content_type = reply.content_type or "text/event-stream"
        await resp.prepare(request)
        sent = 0
        try:
            for frame in reply.sse:
                if isinstance(frame, (int, float)):
                    await asyncio.sleep(frame)
                    continue
                if reply.reset_after is not None and sent >= reply.reset_after:
                    request.transport.abort()  # type: ignore[union-attr]
                    return resp
                await resp.write(frame.encode() if isinstance(frame, str) else frame)
                sent += 1
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return resp


class FakeProvider:
    """Base of the fake providers: owns a ``FakeServer`` answering with ``self.handle``."""

    def __init__(self) -> None:
        self.server = FakeServer(self.handle)

    async def handle(self, req: Recorded) -> web.StreamResponse | Reply:
        raise NotImplementedError

    def start(self):
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[Recorded]:
        return self.server.requests


class Script:
    """A handler answering each request with the next queued ``Reply`` (or a callable)."""

    def __init__(self, *replies: Reply | Handler) -> None:
        self.replies: list[Reply | Handler] = list(replies)

    def add(self, *replies: Reply | Handler) -> None:
        self.replies.extend(replies)

    async def __call__(self, req: Recorded) -> web.StreamResponse | Reply:
        if not self.replies:
            return Reply(status=599, json={"error": {"message": "fake server: no scripted reply left"}})
        reply = self.replies.pop(0)
        if isinstance(reply, Reply):
            return reply
        return await reply(req)


def sse_frames(events: list[dict], *, event_names: bool = False, sep: str = "\n\n", done: bool = False) -> list[str]:
    """Encode dict events as SSE frames (``event:`` lines from each ``type`` if asked)."""
    frames = []
    for ev in events:
        head = f"event: {ev['type']}\n" if event_names else ""
        frames.append(f"{head}data: {json.dumps(ev)}{sep}")
    if done:
        frames.append(f"data: [DONE]{sep}")
    return frames
