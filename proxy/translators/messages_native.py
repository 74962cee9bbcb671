"""Native ``/v1/messages`` relay to Anthropic and Claude on Vertex: the request as the client sent it.

``native_request`` rewrites only what the upstream addresses differently (the model
name; for Vertex the model moves to the URL and ``anthropic_version`` into the body)
and forwards the client's ``anthropic-version`` / ``anthropic-beta`` headers.
``PassthroughStream`` relays the upstream's SSE events byte for byte, holding the
prelude (``message_start``, ``ping``) until the first content so that an error event
right after it (``overloaded_error``) still fails over to another credential.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from proxy.errors import ProxyError
from proxy.sse import SSEEvent
from proxy.translators.anthropic import (
    ANTHROPIC_VERSION,
    ERROR_TYPE_STATUS,
    VERTEX_ANTHROPIC_VERSION,
    anthropic_error,
    anthropic_usage,
)

FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
_PRELUDE = frozenset({"message_start", "ping"})


@dataclass(frozen=True, slots=True)
class PassthroughContext:
    """Marks an upstream request whose answer is relayed as is."""

    vertex: bool = False


def forwarded_headers(client_headers: dict[str, str]) -> dict[str, str]:
    headers = {k: v for k in FORWARDED_HEADERS if (v := client_headers.get(k))}
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    return headers


def native_body(body: dict, upstream_model: str, *, vertex: bool) -> dict:
    if not vertex:
        return {**body, "model": upstream_model}
    out = {k: v for k, v in body.items() if k != "model"}
    out["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
    return out


def event_type(event: SSEEvent) -> str | None:
    if event.event:
        return event.event
    try:
        return json.loads(event.data).get("type")
    except (ValueError, AttributeError):
        return None


class PassthroughStream:
    """Upstream SSE events in, the same events out (prelude held until the first content)."""

    def __init__(self) -> None:
        self._held: list[SSEEvent] | None = []
        self._stopped = False

    def feed(self, event: SSEEvent) -> list[SSEEvent]:
        kind = event_type(event)
        if kind == "message_stop":
            self._stopped = True
        if self._held is None:
            return [event]
        if kind == "error":
            raise stream_error(event)
        if kind in _PRELUDE:
            self._held.append(event)
            return []
        out, self._held = [*self._held, event], None
        return out

    def finish(self) -> list[SSEEvent]:
        if not self._stopped:
            raise ProxyError(502, "anthropic stream ended before message_stop", code="server_error",
                             retryable=True)
        out, self._held = self._held or [], None
        return out


def stream_error(event: SSEEvent) -> ProxyError:
    """An ``error`` event before any content: the same error as an HTTP answer would be."""
    try:
        error_type = (json.loads(event.data).get("error") or {}).get("type")
    except (ValueError, AttributeError):
        error_type = None
    status = ERROR_TYPE_STATUS.get(error_type or "", 500)
    err = anthropic_error(status, event.data.encode(), {})
    err.upstream_status = err.upstream_status or status
    return err


class UsageReader:
    """The usage an Anthropic stream or message reports, as Chat usage for the usage row."""

    def __init__(self) -> None:
        self.usage: dict = {}

    def event(self, event: SSEEvent) -> None:
        kind = event.event
        if kind not in (None, "message_start", "message_delta"):
            return
        if kind is None and '"message_' not in event.data[:40]:
            return
        try:
            data = json.loads(event.data)
        except ValueError:
            return
        if data.get("type") == "message_start":
            self.usage.update((data.get("message") or {}).get("usage") or {})
        elif data.get("type") == "message_delta":
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})

    def message(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if isinstance(data, dict) and isinstance(data.get("usage"), dict):
            self.usage.update(data["usage"])

    def chat_usage(self) -> dict | None:
        return anthropic_usage(self.usage) if self.usage else None
