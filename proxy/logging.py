"""Log filter: secrets must never reach a log line (messages, arguments, tracebacks)."""

from __future__ import annotations

import logging

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
