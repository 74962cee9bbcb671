"""Slow clients cannot hold the server: a connection cap and deadlines to send a request.

Under Daphne (``install()``): Daphne hands a request to the ASGI app only once Twisted has received all of it, and
Twisted's only guard is an idle timer that every byte resets: a client sending one header
byte every few seconds (slowloris) holds its connection, and its memory, forever. Daphne's
own ``--http-timeout`` bounds the time to *answer* (it would cut long streams), so the
deadlines belong here, at the connection:

- ``ROUTER_HEADER_TIMEOUT``: from a request's first byte until its headers are complete;
- ``ROUTER_BODY_TIMEOUT``: from then until its body is complete (the ASGI front enforces the
  same deadline itself under other servers);
- ``ROUTER_MAX_CONNECTIONS``: connections beyond it are closed as they are accepted.

A connection past a deadline is aborted. An idle keep-alive connection is left to Twisted's
idle timer (60 s). Installed once per process, only when Daphne is the server.

Under uvicorn, ``routerproject.uvicorn_server`` enforces the same with this module's counter
and constants.
"""

from __future__ import annotations

import logging
import sys

from django.conf import settings

log = logging.getLogger(__name__)

_IDLE, _HEADERS, _BODY, _APP = range(4)
IDLE_TIMEOUT = 60  # seconds a connection may sit idle between requests (Twisted's default)
MAX_HEADER_BYTES = 16384  # Twisted's totalHeadersSize
BODY_GRACE = 1.0  # under uvicorn: the front's 408 comes first


class _Counter:
    open = 0
    refused = 0
    timed_out = 0


counter = _Counter()


def refuse() -> None:
    counter.refused += 1
    if counter.refused % 100 == 1:
        log.warning("connection limit reached (%d open; ROUTER_MAX_CONNECTIONS): refusing connections; "
                    "%d refused so far", counter.open, counter.refused)


def install() -> None:
    from routerproject import servers

    module = sys.modules.get("daphne.http_protocol")  # only when Daphne is the server
    factory = getattr(module, "HTTPFactory", None)
    if factory is None or getattr(factory, "_router_limits", False) or not servers.daphne_may_serve():
        return
    from twisted.internet import reactor
    from twisted.web.http import HTTPChannel

    build = factory.buildProtocol

    def buildProtocol(self, addr):
        if counter.open >= settings.ROUTER_MAX_CONNECTIONS:
            refuse()
            return None  # Twisted closes the socket at once
        return build(self, addr)

    def arm(channel, seconds: float, phase: int) -> None:
        disarm(channel)
        channel._router_phase = phase
        channel._router_deadline = reactor.callLater(seconds, expire, channel)

    def disarm(channel) -> None:
        deadline = getattr(channel, "_router_deadline", None)
        if deadline is not None and deadline.active():
            deadline.cancel()
        channel._router_deadline = None

    def expire(channel) -> None:
        counter.timed_out += 1
        channel._router_deadline = None
        transport = channel.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    made, received, headers_done = HTTPChannel.connectionMade, HTTPChannel.dataReceived, \
        HTTPChannel.allHeadersReceived
    content_done, request_done, lost = HTTPChannel.allContentReceived, HTTPChannel.requestDone, \
        HTTPChannel.connectionLost

    def connectionMade(self):
        counter.open += 1
        self._router_counted = True
        self._router_phase = _IDLE
        made(self)

    def dataReceived(self, data):
        if getattr(self, "_router_phase", _APP) == _IDLE and data.strip():
            arm(self, settings.ROUTER_HEADER_TIMEOUT, _HEADERS)
        received(self, data)

    def allHeadersReceived(self):
        arm(self, settings.ROUTER_BODY_TIMEOUT, _BODY)
        headers_done(self)

    def allContentReceived(self):
        disarm(self)
        self._router_phase = _APP  # the app answers at its own pace (streams may last minutes)
        content_done(self)

    def requestDone(self, request):
        request_done(self, request)
        self._router_phase = _IDLE

    def connectionLost(self, reason):
        disarm(self)
        if getattr(self, "_router_counted", False):
            self._router_counted = False
            counter.open -= 1
        lost(self, reason)

    for name, fn in (("connectionMade", connectionMade), ("dataReceived", dataReceived),
                     ("allHeadersReceived", allHeadersReceived), ("allContentReceived", allContentReceived),
                     ("requestDone", requestDone), ("connectionLost", connectionLost)):
        setattr(HTTPChannel, name, fn)
    factory.buildProtocol = buildProtocol
    factory._router_limits = True


def stats() -> dict[str, int]:
    return {"open": counter.open, "refused": counter.refused, "timed_out": counter.timed_out}
