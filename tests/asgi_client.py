"""Drive the router's ASGI application in-process, like a server would.

Unlike httpx's ASGITransport this keeps every ``http.response.body`` message
with its arrival time (to check streaming is not buffered) and can disconnect
mid-stream (to check cancellation).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class AsgiResult:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def json(self):
        return json.loads(self.body)

    def sse_data(self) -> list[str]:
        out = []
        for block in self.body.decode().split("\n\n"):
            for line in block.splitlines():
                if line.startswith("data: "):
                    out.append(line[6:])
        return out


async def call(app, method: str, path: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None,
               *, disconnect_after: float | None = None, disconnect_after_chunks: int | None = None) -> AsgiResult:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if body is not None:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "headers": raw_headers, "scheme": "http",
             "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000)}
    result = AsgiResult()
    gone = asyncio.Event()
    sent_body = False
    t0 = time.monotonic()

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body or b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body" and message.get("body"):
            result.chunks.append((time.monotonic() - t0, message["body"]))
            if disconnect_after_chunks is not None and len(result.chunks) >= disconnect_after_chunks:
                gone.set()

    task = asyncio.ensure_future(app(scope, receive, send))
    if disconnect_after is not None:
        await asyncio.sleep(disconnect_after)
        gone.set()
    await asyncio.wait_for(task, 30)
    return result
