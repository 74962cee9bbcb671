"""uvicorn with the router's rules: graceful shutdown, connection cap, request deadlines, lingering close.

What Daphne gets from ``proxy.shutdown.install()`` and ``proxy.server_limits.install()``, uvicorn
gets here (imported only when uvicorn serves):

- ``Server``: SIGTERM/SIGINT call ``proxy.shutdown.begin()``, which closes the listening sockets,
  lets requests finish or cuts them with their endpoint's terminal event, flushes usage rows, then
  sets ``should_exit``; uvicorn then closes idle connections, runs the lifespan shutdown (closing the
  upstream HTTP clients) and returns. The exit status is 0, as under Daphne.
- ``Protocol`` (httptools): uvicorn has no header or body deadline (a connection that never sends
  a byte is held forever), its ``limit_concurrency`` answers 503s rather than refusing
  connections, and httptools does not cap header size. This protocol refuses connections past
  ``ROUTER_MAX_CONNECTIONS``, cuts a request whose headers take longer than
  ``ROUTER_HEADER_TIMEOUT`` or whose body takes longer than ``ROUTER_BODY_TIMEOUT`` (a second after
  the front's own 408, which answers first on API paths; Django's pages have no such answer),
  answers 400 to headers past 16 KiB, and closes connections idle for a minute (Twisted's rules).
- Lingering close: when the app answers ``connection: close`` before the request body is in (a
  401 to a keyless 31 MiB upload), closing at once would reset the connection under a client that
  is still sending, and it would never read the answer. The rest of the body is read and dropped
  (no memory held) until it ends or its deadline passes, then the connection closes.
"""

from __future__ import annotations

import asyncio

import uvicorn
from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy import server_limits, shutdown
from proxy.server_limits import counter

_IDLE, _HEADERS, _BODY = range(3)


class Server(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            self.loop = asyncio.get_running_loop()
            shutdown.use(stop_listening=self._stop_listening, stop=self._stop)

    def _stop_listening(self) -> None:
        for listener in self.servers:
            listener.close()

    def _stop(self) -> None:
        self.should_exit = True
        if self._wake is not None:
            self._wake.set()

    async def main_loop(self) -> None:
        """uvicorn's, waking once a second (the Date header's resolution) rather than ten times:
        fewer timers on the loop that a request can land behind. ``shutdown.begin()`` wakes it."""
        self._wake = asyncio.Event()
        while not await self.on_tick(0):  # tick 0: refresh the Date header, check should_exit
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass

    def handle_exit(self, sig, frame) -> None:
        if self.loop is None or self.should_exit:  # not serving yet, or past the drain: uvicorn's own way
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # and no re-raised signal: exit status 0
            return
        self.loop.call_soon_threadsafe(shutdown.begin)


class _LingeringTransport:
    """The transport as uvicorn sees it: ``close()`` waits for the request body to end (see above)."""

    def __init__(self, transport: asyncio.Transport, protocol: Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False
        # the hot calls, bound once: no __getattr__ on each write
        self.write = transport.write
        self.get_extra_info = transport.get_extra_info
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading
        self.abort = transport.abort

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self._protocol.reading_body() and not self._transport.is_closing():
            self.lingering = True
            self._transport.resume_reading()  # uvicorn's flow control may have paused it
            return
        self._transport.close()

    def body_done(self) -> None:
        if self.lingering:
            self.lingering = False
            self._transport.close()


class Protocol(HttpToolsProtocol):
    _counted = False
    _phase = _IDLE
    _header_bytes = 0
    _deadline: asyncio.TimerHandle | None = None
    _lingering: _LingeringTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        if counter.open >= settings.ROUTER_MAX_CONNECTIONS:
            server_limits.refuse()
            transport.abort()
            return
        counter.open += 1
        self._counted = True
        self._lingering = _LingeringTransport(transport, self)
        super().connection_made(self._lingering)  # type: ignore[arg-type]
        # a connection that never sends a byte goes the way of an idle kept-alive one
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused: uvicorn never saw it
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._release()  # the WebSocket protocol takes the connection over (and the app refuses it)
        super().handle_websocket_upgrade()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            counter.open -= 1
        self._disarm()

    def reading_body(self) -> bool:
        return self._phase == _BODY

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm(settings.ROUTER_HEADER_TIMEOUT, _HEADERS)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(name, value)
        super().on_header(name, value)

    def _count_header_bytes(self, *parts: bytes) -> None:
        self._header_bytes += sum(map(len, parts))
        if self._header_bytes > server_limits.MAX_HEADER_BYTES:
            raise ValueError("request line and headers too large")  # a parser error: 400, then closed

    def on_headers_complete(self) -> None:
        self._arm(settings.ROUTER_BODY_TIMEOUT + server_limits.BODY_GRACE, _BODY)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        if self._lingering is not None:
            self._lingering.body_done()

    def _arm(self, seconds: float, phase: int) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        self._phase = _IDLE
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        counter.timed_out += 1
        self._deadline = None
        self.transport.abort()
