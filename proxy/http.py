"""Pooled HTTP clients, one per event loop: an ``aiohttp.ClientSession`` for provider calls (``send``)
and an ``httpx.AsyncClient`` for the rest (model discovery).

Connections belong to the loop that opened them, so clients are keyed by loop (tests and several
servers each get their own). Provider calls go through aiohttp directly: httpx's request and
response machinery on top of it cost ~0.25 ms of CPU per request, a quarter of the router's budget
(bench/profile_tail.py). ``send`` returns an ``UpstreamResponse``, the part of ``httpx.Response``
the pipeline uses, so adapters that answer themselves (the demo, merged Gemini batches) may still
return an ``httpx.Response``. ``ROUTER_HTTP_TRANSPORT=httpx`` sends through plain httpx instead.
Read timeouts are enforced by the caller (time to first byte and idle gap separately), so the
clients' own read timeouts are off.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import ssl
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp
import certifi
import httpx
from django.conf import settings

_SSL: ssl.SSLContext | None = None
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()
MAX_CONNECTIONS, KEEPALIVE_SECONDS = 1000, 30


class Response(Protocol):
    """What callers of ``send`` read: ``UpstreamResponse`` or an ``httpx.Response``."""

    status_code: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    async def aread(self) -> bytes: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...

    def json(self) -> Any: ...


class ConnectTimeout(aiohttp.ClientConnectionError):
    """aiohttp's connect time-out is a ``TimeoutError``, which callers take for the upstream's own
    silence (504): it is an unreachable upstream (502), as httpx reports it."""


class UpstreamResponse:
    __slots__ = ("_content", "_raw", "headers", "status_code")

    def __init__(self, raw: aiohttp.ClientResponse) -> None:
        self._raw = raw
        self.status_code = raw.status
        self.headers = raw.headers  # case-insensitive, like httpx's
        self._content: bytes | None = None

    @property
    def content(self) -> bytes:
        if self._content is None:
            raise httpx.ResponseNotRead()
        return self._content

    async def aread(self) -> bytes:
        if self._content is None:
            self._content = await self._raw.read()
        return self._content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while data := await self.read_some():
            yield data

    async def read_some(self) -> bytes:
        """What has arrived (waiting for something), b"" at the end. Safe to cancel: unlike a
        generator's ``anext``, a cancelled wait loses no data, so a heartbeat needs no task per read."""
        if self._content is not None:
            content, self._content = self._content, b""
            return content
        return await self._raw.content.readany()

    async def aclose(self) -> None:
        # releasing a response whose body was not read to its end closes its connection
        raw = self._raw
        raw.release()
        await raw.wait_for_close()

    def json(self) -> Any:
        return json.loads(self.content)


def ssl_context() -> ssl.SSLContext:
    # Building a context from certifi costs ~100 ms: once per process.
    global _SSL
    if _SSL is None:
        _SSL = ssl.create_default_context(cafile=certifi.where())
    return _SSL


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    s = _sessions.get(loop)
    if s is None or s.closed:
        timeout = settings.ROUTER_CONNECT_TIMEOUT
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0, ssl=ssl_context(),
                                         keepalive_timeout=KEEPALIVE_SECONDS)
        # no cookie jar: a cookie one credential's upstream sets must not ride along with another's
        s = aiohttp.ClientSession(connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                                  timeout=aiohttp.ClientTimeout(connect=timeout, sock_connect=timeout))
        _sessions[loop] = s
        _close_at_exit()
    return s


def _json_bytes(body: Any) -> bytes:
    # as httpx encodes ``json=``
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


async def send(method: str, url: str, headers: dict[str, str], *, body: Any = None,
               form: dict[str, str] | None = None,
               files: list[tuple[str, tuple[str, bytes, str]]] | None = None) -> Response:
    """Send and return once the status and headers are in (the body is read by the caller): ``body``
    as JSON, or a multipart form (``form`` text fields, then ``files`` as (field, (name, bytes, type)))."""
    if settings.ROUTER_HTTP_TRANSPORT == "httpx":
        c = client()
        if files is not None:
            request = c.build_request(method, url, data=form, files=files, headers=headers)
        else:
            request = c.build_request(method, url, json=body, headers=headers)
        return await c.send(request, stream=True)
    data: bytes | aiohttp.FormData
    if files is not None:
        data = aiohttp.FormData(quote_fields=False)
        for name, value in (form or {}).items():
            data.add_field(name, value)
        for name, (filename, content, content_type) in files:
            data.add_field(name, content, filename=filename, content_type=content_type)
    else:
        data = _json_bytes(body)
        if "content-type" not in headers and not any(k.lower() == "content-type" for k in headers):
            headers = {**headers, "content-type": "application/json"}
    try:
        raw = await session().request(method, url, data=data, headers=headers, allow_redirects=False)
    except aiohttp.ServerTimeoutError as exc:
        raise ConnectTimeout(str(exc)) from None
    return UpstreamResponse(raw)


def client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    c = _clients.get(loop)
    if c is None or c.is_closed:
        kwargs = dict(
            verify=ssl_context(),
            timeout=httpx.Timeout(connect=settings.ROUTER_CONNECT_TIMEOUT, read=None, write=60.0,
                                  pool=settings.ROUTER_CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=100,
                                keepalive_expiry=KEEPALIVE_SECONDS),
            follow_redirects=False,
            trust_env=False,
        )
        if settings.ROUTER_HTTP_TRANSPORT == "httpx":
            c = httpx.AsyncClient(**kwargs)
        else:
            from httpx_aiohttp import HttpxAiohttpClient

            c = HttpxAiohttpClient(**kwargs)
        _clients[loop] = c
        _close_at_exit()
    return c


async def aclose() -> None:
    """Close this loop's clients (server shutdown, end of a test loop)."""
    loop = asyncio.get_running_loop()
    c, s = _clients.pop(loop, None), _sessions.pop(loop, None)
    if c is not None:
        await c.aclose()
    if s is not None:
        await s.close()


_registered = False


def _close_at_exit() -> None:
    """Daphne sends no lifespan shutdown: close what is still open when the process exits, so no
    "Unclosed client session" warning ends every run (and keep-alive connections close cleanly)."""
    global _registered
    if not _registered:
        _registered = True
        atexit.register(_close_all)


def _close_all() -> None:
    for loop in {*_clients.keys(), *_sessions.keys()}:
        if loop.is_closed() or loop.is_running():
            continue
        c, s = _clients.get(loop), _sessions.get(loop)
        with contextlib.suppress(Exception):
            if c is not None and not c.is_closed:
                loop.run_until_complete(c.aclose())
            if s is not None and not s.closed:
                loop.run_until_complete(s.close())
    _clients.clear()
    _sessions.clear()
