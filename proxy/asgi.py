"""A lean ASGI front for the API paths (``/v1/*``, ``/health``).

Django's full handler (request objects, sync middleware, a worker thread per
request) costs several CPU milliseconds; the API needs none of it. This app
reads the body (enforcing the size limit), calls an async handler, sends its
response, and cancels the handler when the client disconnects, which closes
the upstream request. Everything else (admin, static) goes to Django.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from django.conf import settings

from . import server_limits, shutdown
from .auth import Principal, authenticate, presented_key
from .body_budget import Reservation, budget
from .errors import ProxyError
from .failures import as_proxy_error

if TYPE_CHECKING:
    from keys.snapshot import KeyEntry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    request_id: str
    path_param: str = ""
    #: who is calling (``proxy.auth``); None only on routes where a key is optional (``/health``)
    principal: Principal | None = None
    _reservation: Reservation | None = None
    #: sent with whatever the handler answers, errors included (a limited key's x-ratelimit-*)
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> KeyEntry | None:
        """The client key (``keys.snapshot``); None for the master key (or no key on /health)."""
        principal = self.principal
        return principal.key if principal is not None else None

    def body_parsed(self) -> None:
        """The body is parsed: its share of the body budget is free again."""
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class UsageRecorder(Protocol):
    error_type: str
    status: int
    client_closed: bool

    def fail(self, err: ProxyError) -> None: ...

    def finish(self) -> None: ...


@dataclass(slots=True)
class StreamingResponse:
    """A streamed answer. Once its headers are out, a failure can only be told in the stream:
    ``terminal(err)`` gives the endpoint's last frame for ``err`` (Chat: an ``error`` event,
    Responses: ``response.failed``...); the front sends it, then ends the body. ``usage`` (set by
    the handler) is finished by the front when the stream is over: failed (the error's status),
    cut short (499), or complete."""

    stream: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    terminal: Callable[[ProxyError], bytes] | None = None
    usage: UsageRecorder | None = None


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
#: an endpoint's own error shape (Anthropic's for /v1/messages); None: the default (OpenAI's)
ErrorShape = Callable[[ProxyError, Request], Response | None]

#: observers of API requests (metrics, tracing): called with (method, path, headers) as a request
#: starts, in the context its handler will run in; each returns what to call when it has ended
request_observers: list[Callable[[str, str, dict[str, str]], Callable[[], None]]] = []
#: called with +1 and -1 as a streaming response starts and ends (the open-streams gauge)
stream_observers: list[Callable[[int], None]] = []


def json_response(data: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
                    headers=headers or {})


def error_response(err: ProxyError) -> Response:
    headers = dict(err.headers)
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after)))
    return json_response(err.to_dict(), err.status, headers)


class ApiApp:
    def __init__(self, routes: dict[str, dict[str, Handler]], prefixes: dict[str, dict[str, Handler]],
                 fallback, *, optional_auth: frozenset[str] = frozenset(),
                 error_shapes: dict[str, ErrorShape] | None = None) -> None:
        self.routes = routes
        self.prefixes = prefixes
        self.fallback = fallback
        self.optional_auth = optional_auth  # paths served without a key (a valid one shows more)
        self.error_shapes = error_shapes or {}  # by path prefix: errors the front answers before the handler
        skip_twisted_form_parsing()
        server_limits.install()

    def _match(self, path: str) -> tuple[dict[str, Handler] | None, str]:
        methods = self.routes.get(path) or self.routes.get(path.rstrip("/"))
        if methods is not None:
            return methods, ""
        for prefix, handlers in self.prefixes.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                return handlers, path[len(prefix):]
        return None, ""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        path = scope["path"]
        methods, param = self._match(path)
        if methods is None:
            if path.startswith("/v1/"):
                methods = {}
            else:
                await self.fallback(scope, receive, send)
                return
        request_id = "req_" + secrets.token_hex(12)
        sender = _Sender(send)
        if shutdown.draining():  # SIGTERM: a request on a kept-alive connection is told to go elsewhere
            refusal = error_response(shutdown.error())
            refusal.headers["connection"] = "close"
            await sender.respond(refusal, request_id)
            return
        try:
            await self._serve(scope, receive, sender, methods, param, request_id)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # the server cancelled this app (and with it the task); a client leaving is no error
        except Exception as exc:  # nothing raised on the request path escapes to the server
            err = as_proxy_error(exc, request_id, started=sender.started)
            if not sender.started:
                await sender.respond(error_response(err), request_id)

    async def _serve(self, scope, receive, sender: _Sender, methods: dict[str, Handler], param: str,
                     request_id: str) -> None:
        path = scope["path"]
        handler = methods.get(scope["method"])
        if handler is None:
            err = ProxyError(404, f"Unknown API path {path}", code="unknown_url") if not methods else \
                ProxyError(405, f"Method {scope['method']} not allowed on {path}", code="method_not_allowed")
            await sender.respond(error_response(err), request_id)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        req = Request(scope["method"], path, headers, b"", request_id, param)
        try:
            await self._read_and_respond(handler, req, receive, sender)
        finally:
            req.body_parsed()  # whatever happened, the request's share of the body budget is given back

    async def _read_and_respond(self, handler: Handler, req: Request, receive, sender: _Sender) -> None:
        headers = req.headers
        try:
            req.principal = await self._authenticate(req.path, headers)
            # the key is checked before a byte of the body is read: a stranger costs no memory
            req._reservation = await budget.reserve(_expected_size(headers))
            req.body = await _read_body(receive, headers)
            req._reservation.shrink(len(req.body))
        except ProxyError as err:
            response = self.error_response(err, req)
            if (err.status == 401 and _large(headers)) or err.status == 408:
                # not worth reading the rest of the body (401); what is left of it is still on the way (408)
                response.headers["connection"] = "close"
            await sender.respond(response, req.request_id)
            return
        except _Disconnected:
            return
        ends = [observe(req.method, req.path, headers) for observe in request_observers]
        task = asyncio.ensure_future(self._respond(handler, req, sender))
        shutdown.track(task)
        watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, task))
        try:
            await task
        finally:
            watcher.cancel()
            for end in reversed(ends):
                end()

    def error_response(self, err: ProxyError, req: Request) -> Response:
        for prefix, shape in self.error_shapes.items():
            if req.path == prefix or req.path.startswith(prefix + "/"):
                shaped = shape(err, req)
                if shaped is not None:
                    return shaped
        return error_response(err)

    async def _authenticate(self, path: str, headers: dict[str, str]) -> Principal | None:
        if path not in self.optional_auth:
            return await authenticate(headers)
        if not presented_key(headers):
            return None
        try:
            return await authenticate(headers, count=False)
        except Exception:  # /health must answer even when the config cannot be loaded
            return None

    async def _respond(self, handler: Handler, req: Request, sender: _Sender) -> None:
        try:
            response = await handler(req)
        except Exception as exc:
            response = self.error_response(as_proxy_error(exc, req.request_id, started=False), req)
        if req.response_headers:
            response.headers = {**req.response_headers, **response.headers}
        await sender.respond(response, req.request_id)

    async def _lifespan(self, receive, send) -> None:
        from . import http, usage

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await http.aclose()
                await usage.aflush()
                await send({"type": "lifespan.shutdown.complete"})
                return


def skip_twisted_form_parsing() -> None:
    """Under Daphne, stop Twisted parsing POST bodies as HTML forms.

    Daphne hands the raw body to the ASGI app and never reads Twisted's ``request.args``, yet
    Twisted parses the Content-Type of every POST with the ``email`` package first: about 8 % of
    the router's event-loop CPU per chat request (py-spy). Off, a form upload is also no longer
    parsed twice (Django parses the admin's forms itself).
    """
    from routerproject import servers

    module = sys.modules.get("daphne.http_protocol")  # only when Daphne is the server
    web_request = getattr(module, "WebRequest", None)
    if web_request is None or getattr(web_request, "_router_skips_form_parsing", False) \
            or not servers.daphne_may_serve():
        return
    from twisted.web.http import Request as TwistedRequest

    if "parsePOSTFormSubmission" not in inspect.signature(TwistedRequest.__init__).parameters:
        return  # an older Twisted without the switch
    original = web_request.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        original(self, *args, **kwargs)

    web_request.__init__ = __init__
    web_request._router_skips_form_parsing = True


class _Disconnected(Exception):
    pass


def _expected_size(headers: dict[str, str]) -> int:
    declared = headers.get("content-length", "")
    if declared.isdigit():
        return int(declared)
    return settings.ROUTER_MAX_BODY_BYTES if "transfer-encoding" in headers else 0


def _large(headers: dict[str, str]) -> bool:
    return _expected_size(headers) > 64 * 1024


async def _read_body(receive, headers: dict[str, str]) -> bytes:
    limit = settings.ROUTER_MAX_BODY_BYTES
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ProxyError(413, f"Request body is {declared} bytes; the limit is {limit} bytes.",
                         code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.ROUTER_BODY_TIMEOUT):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise ProxyError(413, f"Request body exceeds the limit of {limit} bytes.",
                                     code="request_too_large")
                chunks.append(chunk)
                if not message.get("more_body"):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except TimeoutError:
        raise ProxyError(408, f"The request body did not arrive within {settings.ROUTER_BODY_TIMEOUT:g}s.",
                         code="request_timeout") from None


async def _cancel_on_disconnect(receive, task: asyncio.Future) -> None:
    """The client went away: cancelling the handler closes its upstream request."""
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


def _headers(content_type: str, request_id: str, extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type.encode()), (b"x-request-id", request_id.encode())]
    headers.extend((k.encode(), v.encode()) for k, v in extra.items())
    return headers


class _Sender:
    """Sends one response; remembers whether its headers are out (then only the stream can tell an error)."""

    __slots__ = ("send", "started")

    def __init__(self, send) -> None:
        self.send = send
        self.started = False

    async def respond(self, response: Response | StreamingResponse, request_id: str) -> None:
        if isinstance(response, Response):
            self.started = True
            await self.send({"type": "http.response.start", "status": response.status,
                             "headers": _headers(response.content_type, request_id, response.headers)})
            await self.send({"type": "http.response.body", "body": response.body})
            return
        await self._stream(response, request_id)

    async def _stream(self, response: StreamingResponse, request_id: str) -> None:
        stream, usage = response.stream, response.usage
        outcome = "cut"  # until the stream ends or fails: the client left, or the server is stopping
        for observe in stream_observers:
            observe(1)
        try:
            extra = {"cache-control": "no-cache", "x-accel-buffering": "no", **response.headers}
            self.started = True
            await self.send({"type": "http.response.start", "status": response.status,
                             "headers": _headers(response.content_type, request_id, extra)})
            try:
                async for chunk in stream:
                    await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
                outcome = "done"
            except asyncio.CancelledError:
                err = shutdown.cut_error()
                if err is None:
                    raise  # the client left
                outcome = "failed"
                await self._terminal(response, err)
            except Exception as exc:
                outcome = "failed"
                await self._terminal(response, as_proxy_error(exc, request_id, started=True))
            await self.send({"type": "http.response.body", "body": b""})
        finally:
            for observe in stream_observers:
                observe(-1)
            try:
                await stream.aclose()  # type: ignore[attr-defined]
            finally:
                if usage is not None:
                    if outcome == "cut" and not usage.error_type:
                        usage.client_closed, usage.status = True, 499
                    usage.finish()

    async def _terminal(self, response: StreamingResponse, err: ProxyError) -> None:
        """End a stream whose headers are out with its endpoint's error frame; the row says why."""
        if response.usage is not None:
            response.usage.fail(err)
        if response.terminal is not None:
            await self.send({"type": "http.response.body", "body": response.terminal(err), "more_body": True})
