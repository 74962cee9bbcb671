"""Graceful shutdown: on SIGTERM stop accepting, let requests finish, then end the rest properly.

Left alone, Twisted stops the reactor on SIGTERM and Daphne cancels every
application at once: streams are cut mid-answer and their rows say
``499 client_closed`` (uvicorn waits for them, but then cancels them with no
terminal event either). ``install()`` (called when the API app is built, so plain
``daphne routerproject.asgi:application`` gets it) makes Daphne's SIGTERM call
``begin()`` instead; under uvicorn ``routerproject.servers`` does the same and
hands over its own ways to stop (``use()``). ``begin()``:

1. closes the listening sockets (new connections are refused; a new request on
   an open keep-alive connection gets ``503 server_shutdown``);
2. gives the requests in flight up to ``ROUTER_SHUTDOWN_GRACE_SECONDS`` to finish;
3. cuts the rest: their tasks are cancelled with a mark that the stream code
   turns into ``ProxyError(503, code="server_shutdown")``, so each ends with its
   endpoint's terminal error (Chat: an ``error`` event; Responses:
   ``response.failed``; before headers: a 503 answer) and a row saying so;
4. flushes usage rows (the spool takes what the database cannot);
5. stops the server.

A second SIGTERM skips what is left of the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable

from django.conf import settings

from .errors import ProxyError

log = logging.getLogger(__name__)

CUT_WAIT = 5.0  # after cutting, how long the cut requests get to send their last event and rows

_inflight: set[asyncio.Task] = set()
_cut: set[asyncio.Task] = set()


def _nothing() -> None:
    pass


class _State:
    draining = False
    hurry: asyncio.Event | None = None  # set by a second SIGTERM
    drain: asyncio.Task | None = None
    stop_listening: Callable[[], None] = _nothing  # the server's: close the listening sockets
    stop: Callable[[], None] = _nothing  # the server's: stop (after the requests and the usage rows)


_state = _State()


def use(*, stop_listening: Callable[[], None], stop: Callable[[], None]) -> None:
    """The running server's ways to stop accepting connections and to stop, for ``begin()``."""
    _state.stop_listening, _state.stop = stop_listening, stop


def draining() -> bool:
    return _state.draining


def track(task: asyncio.Task) -> None:
    """Count ``task`` (one API request) as in flight until it is done."""
    _inflight.add(task)
    task.add_done_callback(_inflight.discard)


def error() -> ProxyError:
    return ProxyError(503, "The router is shutting down; retry the request.", code="server_shutdown",
                      retry_after=1)


def cut_error() -> ProxyError | None:
    """The error to end the current request with if shutdown cut it (its CancelledError is then spent)."""
    task = asyncio.current_task()
    if task is None or task not in _cut:
        return None
    task.uncancel()
    return error()


# ---- under Daphne ------------------------------------------------------------------------------


def install() -> None:
    """Route Daphne's SIGTERM to ``begin()`` (nothing to do under another server)."""
    from routerproject import servers

    if "daphne.server" not in sys.modules or not servers.daphne_may_serve():
        return
    from twisted.internet import reactor

    if getattr(reactor, "_router_graceful", False):
        return
    reactor._router_graceful = True
    use(stop_listening=_stop_listening, stop=reactor.stop)

    def on_sigterm(signum, frame) -> None:
        reactor.callFromThread(begin)

    # The reactor installs ``self.sigTerm`` when it starts; when it already runs, replace the handler itself.
    reactor.sigTerm = on_sigterm
    if reactor.running:
        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread
            log.warning("graceful shutdown not installed: the app was built outside the main thread")


def begin() -> None:
    if _state.draining:
        if _state.hurry is not None:
            _state.hurry.set()
        log.warning("second SIGTERM: cutting the requests in flight now")
        return
    _state.draining = True
    grace = settings.ROUTER_SHUTDOWN_GRACE_SECONDS
    log.warning("SIGTERM: no longer accepting connections; %d request(s) in flight get up to %gs to finish",
                len(_inflight), grace)
    _state.stop_listening()
    _state.drain = asyncio.ensure_future(_drain(grace))


def _stop_listening() -> None:
    from twisted.internet import reactor
    from twisted.internet.interfaces import IListeningPort

    for reader in reactor.getReaders():
        if IListeningPort.providedBy(reader):
            reader.stopListening()


async def _drain(grace: float) -> None:
    try:
        await wait_or_cut(grace)
        from . import usage

        await asyncio.to_thread(usage.writer.close, min(10.0, max(2.0, grace)))
    except Exception:
        log.exception("graceful shutdown failed; stopping now")
    finally:
        _state.stop()


async def wait_or_cut(grace: float) -> None:
    """Wait up to ``grace`` seconds for the requests in flight, then cut the rest."""
    hurry = _state.hurry = asyncio.Event()
    hurried = asyncio.ensure_future(hurry.wait())
    deadline = time.monotonic() + grace
    try:
        while (left := [t for t in _inflight if not t.done()]) and not hurry.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait([*left, hurried], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurried.cancel()
    if not left:
        log.warning("shutdown: every request finished")
        return
    log.warning("shutdown: cutting %d request(s) still in flight after %gs", len(left), grace)
    for task in left:
        _cut.add(task)
        task.cancel()
    await asyncio.wait(left, timeout=CUT_WAIT)
