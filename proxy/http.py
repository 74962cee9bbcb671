"""One pooled ``httpx.AsyncClient`` per event loop.

Connections belong to the loop that opened them, so clients are keyed by loop
(tests and several servers each get their own). The default transport is
httpx-aiohttp (the httpx API at a fraction of httpx's own CPU cost per
request); ``ROUTER_HTTP_TRANSPORT=httpx`` selects the plain httpx transport.
Read timeouts are enforced by the caller (time to first byte and idle gap
separately), so the client's own read timeout is off.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ssl
import weakref

import certifi
import httpx
from django.conf import settings

_SSL: ssl.SSLContext | None = None
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def ssl_context() -> ssl.SSLContext:
    # Building a context from certifi costs ~100 ms: once per process.
    global _SSL
    if _SSL is None:
        _SSL = ssl.create_default_context(cafile=certifi.where())
    return _SSL


def client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    c = _clients.get(loop)
    if c is None or c.is_closed:
        kwargs = dict(
            verify=ssl_context(),
            timeout=httpx.Timeout(connect=settings.ROUTER_CONNECT_TIMEOUT, read=None, write=60.0,
                                  pool=settings.ROUTER_CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30),
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
    """Close this loop's client (server shutdown, end of a test loop)."""
    c = _clients.pop(asyncio.get_running_loop(), None)
    if c is not None:
        await c.aclose()


_registered = False


def _close_at_exit() -> None:
    """Daphne sends no lifespan shutdown: close what is still open when the process exits, so no
    "Unclosed client session" warning ends every run (and keep-alive connections close cleanly)."""
    global _registered
    if not _registered:
        _registered = True
        atexit.register(_close_all)


def _close_all() -> None:
    for loop, c in list(_clients.items()):
        if c.is_closed or loop.is_closed() or loop.is_running():
            continue
        with contextlib.suppress(Exception):
            loop.run_until_complete(c.aclose())
    _clients.clear()
