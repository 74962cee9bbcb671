"""Secrets must never reach a log line (messages, arguments, tracebacks); the access log."""

from __future__ import annotations

import logging
import time

from .redaction import redact

_formatter = logging.Formatter()


class RedactSecretsFilter(logging.Filter):
    """Attached to the handlers in ``settings.LOGGING``: applies ``proxy.redaction.redact`` to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_daphne_access_log() -> None:
    """Daphne's CLI writes its access log (on at its default verbosity) straight to a stream, past
    logging's filters, with each request's full path: query-string keys (``?key=``) would land there."""
    from daphne.access import AccessLogGenerator

    original = AccessLogGenerator.write_entry
    if getattr(original, "redacting", False):
        return

    def write_entry(self, host, date, request, *args, **kwargs):
        return original(self, host, date, redact(request), *args, **kwargs)

    write_entry.redacting = True  # type: ignore[attr-defined]
    AccessLogGenerator.write_entry = write_entry


access_log = logging.getLogger("router.access")


class AccessLog:
    """ASGI middleware: one line per HTTP request, the same under every server (``ROUTER_ACCESS_LOG``).

    Written through ``logging``, so the handlers' ``RedactSecretsFilter`` cleans it (a ``?key=`` in the
    path). Logged when the response ends, with how long it took (a stream's whole life)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status, logged = 0, False

        async def logged_send(message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                logged = True
                _log_request(scope, status, started)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            if not logged:  # cut short (the client left): the status sent, or 0 when none was
                _log_request(scope, status, started)


def _log_request(scope, status: int, started: float) -> None:
    client = scope.get("client")
    path = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        path += b"?" + scope["query_string"]
    access_log.info('%s - "%s %s" %d %.1fms', f"{client[0]}:{client[1]}" if client else "-", scope["method"],
                    path.decode("latin-1"), status, (time.monotonic() - started) * 1000)
