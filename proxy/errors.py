"""OpenAI-shaped errors and the classification of upstream failures.

Every failure on the request path ends as a ``ProxyError``: the client sees
``{"error": {"message", "type", "param", "code"}}`` with ``status``; the routing
layer reads ``retryable`` / ``credential_fault`` / ``retry_after`` to decide
whether another credential may serve the request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from .redaction import redact

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
CREDENTIAL_STATUSES = frozenset({401, 402, 403})

_CONTEXT_RE = re.compile(
    r"context[_ ]length|context window|prompt is too long|too many tokens|"
    r"exceeds the maximum number of tokens|maximum context length|input is too long",
    re.I,
)
_QUOTA_RE = re.compile(r"insufficient_quota|quota|billing|spend limit|credit balance", re.I)
_POLICY_RE = re.compile(r"content policy|policy violation|safety", re.I)


class ProxyError(Exception):
    """An error the router answers with, in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retryable: bool = False,
        credential_fault: bool = False,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        headers: dict[str, str] | None = None,
        upstream_body: bytes | None = None,
    ) -> None:
        message = redact(message)  # whatever built it, an error never carries a secret the router holds
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.code = code
        self.param = param
        self.retryable = retryable
        self.credential_fault = credential_fault
        self.retry_after = retry_after
        self.upstream_status = upstream_status  # the provider's own status (fail2ban rules are written in it)
        self.headers = headers or {}  # sent with the error (x-should-retry, x-ratelimit-*)
        # the provider's error body when it speaks the client's protocol (Anthropic to /v1/messages):
        # relayed unchanged, since clients match on its exact words
        self.upstream_body = upstream_body

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"ProxyError({self.status}, {self.code or self.type}: {self.message[:80]!r})"


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, param=param, code=code)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, ``retry-after`` (seconds or HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def classify_upstream_error(
    status: int,
    message: str,
    *,
    provider: str,
    upstream_code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProxyError:
    """Turn an upstream HTTP error into the error the router reports.

    ``message`` is the provider's own text (secrets redacted by ``ProxyError``),
    ``upstream_code`` its machine-readable code or type (``rate_limit_error``,
    ``RESOURCE_EXHAUSTED``...).
    """
    headers = headers or {}
    message = redact(message)  # providers echo keys in auth errors; redacted before the classifiers read it
    code = upstream_code
    text = f"{upstream_code or ''} {message}"
    retry_after = parse_retry_after(headers)
    should_retry = headers.get("x-should-retry")
    full_message = f"{provider} upstream error ({status}): {message}".strip()

    if status in (400, 413, 422) and _CONTEXT_RE.search(text):
        return ProxyError(400, full_message, code="context_length_exceeded", type="invalid_request_error")
    if status in (402, 429) and _QUOTA_RE.search(text) and "rate" not in (upstream_code or "").lower():
        return ProxyError(
            429, full_message, code="insufficient_quota", type="insufficient_quota",
            retryable=True, credential_fault=True, retry_after=retry_after,
        )
    if status == 429:
        return ProxyError(429, full_message, code="rate_limit_exceeded", retryable=True, retry_after=retry_after)
    if status == 529:
        return ProxyError(503, full_message, code="server_is_overloaded", type="service_unavailable_error",
                          retryable=True, retry_after=retry_after)
    if status in CREDENTIAL_STATUSES:
        # Never a 401 to the client: that reads as "your router key is wrong".
        return ProxyError(502, full_message, code="upstream_authentication_error",
                          type="upstream_authentication_error", retryable=True, credential_fault=True)
    if status in RETRYABLE_STATUSES or status >= 500:
        out_status = status if status in (502, 503, 504) else 502
        retryable = should_retry != "false"
        return ProxyError(out_status, full_message, code="server_error", type="server_error",
                          retryable=retryable, retry_after=retry_after)
    if status == 404:
        return ProxyError(404, full_message, code=code or "not_found")
    if _POLICY_RE.search(text):
        return ProxyError(status, full_message, code=code or "content_policy_violation")
    return ProxyError(status if 400 <= status < 500 else 502, full_message, code=code)
