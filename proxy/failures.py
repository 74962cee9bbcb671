"""Any exception on the request path, as the ``ProxyError`` the client gets.

A ``ProxyError`` is already an answer. An upstream answer of the wrong shape (a
list where an object belongs, a usage count of ``"12x"``) surfaces as
TypeError/ValueError/KeyError... inside a translator: ``upstream_shape`` turns
those into 502 ``bad_upstream_response``. ``RecursionError`` is a request too
deeply nested to process (400). Anything else is a router bug: 500 before the
response started, 502 after (the stream ends with the endpoint's terminal
error either way). Tracebacks are logged at most once per ``LOG_EVERY``
seconds per exception type, so a misbehaving upstream cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ProxyError

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
_logged_at: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def bad_upstream(provider: str, what: str) -> ProxyError:
    return ProxyError(502, f"{provider} sent {what}", code="bad_upstream_response", retryable=True)


@contextmanager
def upstream_shape(provider: str) -> Iterator[None]:
    """Translate an upstream answer; a failure of its shape is the upstream's fault (502)."""
    try:
        yield
    except ProxyError:
        raise
    except Exception as exc:
        raise shape_error(provider, exc) from None


def shape_error(provider: str, exc: Exception) -> ProxyError:
    """``exc`` (not a ProxyError) was raised translating ``provider``'s answer."""
    if isinstance(exc, RecursionError):
        return bad_upstream(provider, "an answer nested too deeply to translate")
    log_throttled(f"{provider} answer of an unexpected shape", exc)
    return bad_upstream(provider, f"an answer of an unexpected shape ({type(exc).__name__})")


def as_proxy_error(exc: BaseException, request_id: str, *, started: bool) -> ProxyError:
    """What the client is told about ``exc``; ``started``: the response headers are already out."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, RecursionError):
        return ProxyError(400, "Request body is nested too deeply to process.", code="nesting_too_deep")
    log_throttled(f"unhandled error (request {request_id})", exc)
    if started:
        return ProxyError(502, f"The response could not be completed ({type(exc).__name__}); see the router log "
                          f"for request {request_id}.", code="bad_upstream_response")
    return ProxyError(500, f"Internal router error; see the router log for request {request_id}.",
                      code="internal_error")


def log_throttled(message: str, exc: BaseException) -> None:
    kind = type(exc).__name__
    now = time.monotonic()
    if now - _logged_at.get(kind, float("-inf")) < LOG_EVERY:
        _suppressed[kind] = _suppressed.get(kind, 0) + 1
        return
    _logged_at[kind] = now
    more = _suppressed.pop(kind, 0)
    log.error("%s%s", message, f" ({more} more {kind} not logged)" if more else "", exc_info=exc)
