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

from django.conf import settings

from .errors import ProxyError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    request_id: str
    path_param: str = ""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StreamingResponse:
    stream: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]

#: observers of API requests (metrics, tracing): called with (method, path, headers) as a request
#: starts, in the context its handler will run in; each returns what to call when it has ended
request_observers: list[Callable[[str, str, dict[str, str]], Callable[[], None]]] = []
#: called with +1 and -1 as a streaming response starts and ends (the open-streams gauge)
stream_observers: list[Callable[[int], None]] = []


def json_response(data: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
                    headers=headers or {})


def error_response(err: ProxyError) -> Response:
    headers = {}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after)))
    return json_response(err.to_dict(), err.status, headers)


class ApiApp:
    def __init__(self, routes: dict[str, dict[str, Handler]], prefixes: dict[str, dict[str, Handler]],
                 fallback) -> None:
        self.routes = routes
        self.prefixes = prefixes
        self.fallback = fallback
        skip_twisted_form_parsing()

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
        handler = methods.get(scope["method"])
        if handler is None:
            err = ProxyError(404, f"Unknown API path {path}", code="unknown_url") if not methods else \
                ProxyError(405, f"Method {scope['method']} not allowed on {path}", code="method_not_allowed")
            await _send(send, error_response(err), request_id)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await _read_body(receive, headers)
        except ProxyError as err:
            await _send(send, error_response(err), request_id)
            return
        except _Disconnected:
            return
        req = Request(scope["method"], path, headers, body, request_id, param)
        ends = [observe(req.method, path, headers) for observe in request_observers]
        task = asyncio.ensure_future(self._respond(handler, req, send))
        watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, task))
        try:
            await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # the server cancelled this app (and with it the task); a client leaving is no error
        finally:
            watcher.cancel()
            for end in reversed(ends):
                end()

    async def _respond(self, handler: Handler, req: Request, send) -> None:
        try:
            response = await handler(req)
        except ProxyError as err:
            response = error_response(err)
        except Exception:
            log.exception("unhandled error in %s (request %s)", req.path, req.request_id)
            response = error_response(ProxyError(500, "Internal router error; see the router log for "
                                                 f"request {req.request_id}.", code="internal_error"))
        await _send(send, response, req.request_id)

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
    module = sys.modules.get("daphne.http_protocol")  # only when Daphne is the server
    web_request = getattr(module, "WebRequest", None)
    if web_request is None or getattr(web_request, "_router_skips_form_parsing", False):
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


async def _read_body(receive, headers: dict[str, str]) -> bytes:
    limit = settings.ROUTER_MAX_BODY_BYTES
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ProxyError(413, f"Request body is {declared} bytes; the limit is {limit} bytes.",
                         code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ProxyError(413, f"Request body exceeds the limit of {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _cancel_on_disconnect(receive, task: asyncio.Future) -> None:
    """The client went away: cancelling the handler closes its upstream request."""
    while (await receive())["type"] != "http.disconnect":
        pass
    task.cancel()


def _headers(content_type: str, request_id: str, extra: dict[str, str]) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type.encode()), (b"x-request-id", request_id.encode())]
    headers.extend((k.encode(), v.encode()) for k, v in extra.items())
    return headers


async def _send(send, response: Response | StreamingResponse, request_id: str) -> None:
    if isinstance(response, Response):
        await send({"type": "http.response.start", "status": response.status,
                    "headers": _headers(response.content_type, request_id, response.headers)})
        await send({"type": "http.response.body", "body": response.body})
        return
    extra = {"cache-control": "no-cache", "x-accel-buffering": "no", **response.headers}
    await send({"type": "http.response.start", "status": response.status,
                "headers": _headers(response.content_type, request_id, extra)})
    stream = response.stream
    for observe in stream_observers:
        observe(1)
    try:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        for observe in stream_observers:
            observe(-1)
        await stream.aclose()  # type: ignore[attr-defined]
