"""Anthropic Messages API (``type: anthropic``); Vertex reuses ``ClaudeStream`` for Claude."""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..config import Deployment
from ..errors import ProxyError
from ..sse import SSEEvent
from ..translators.anthropic import (
    AnthropicContext,
    AnthropicStream,
    anthropic_error,
    anthropic_headers,
    anthropic_to_chat,
    chat_to_anthropic,
)
from .base import Adapter, UpstreamRequest

ANTHROPIC_BASE = "https://api.anthropic.com"
# Events that come before any content: an error may still follow them.
_PRELUDE = frozenset({"message_start", "ping"})


def _event_type(ev: SSEEvent) -> str:
    if ev.event:
        return ev.event
    try:
        data = json.loads(ev.data)
    except ValueError:
        return ""
    return str(data.get("type") or "") if isinstance(data, dict) else ""


class ClaudeStream:
    """``AnthropicStream`` with two adjustments for the pipeline and for OpenAI clients.

    * The role chunk of ``message_start`` is held back until a content block (or the end)
      arrives. Anthropic often answers ``message_start`` and then an ``error`` event
      (``overloaded_error``); the pipeline commits to an upstream once it has a first
      translated chunk, so holding the role chunk keeps that error before the commit: it
      fails over or becomes a plain HTTP error instead of a 200 stream that breaks.
    * Each ``thinking_blocks`` delta entry carries ``index`` (its position among the
      message's thinking blocks): the OpenAI SDK's stream accumulator merges list deltas
      by index and raises on a second entry without one (thinking + redacted thinking).
      The index is dropped again when the block is replayed to Anthropic.
    """

    def __init__(self, inner: AnthropicStream) -> None:
        self.inner = inner
        self._held: list[dict] | None = []
        self._thinking = 0

    def feed(self, ev: SSEEvent) -> list[dict]:
        out = self._indexed(self.inner.feed(ev))
        if self._held is None:
            return out
        self._held += out
        if _event_type(ev) in _PRELUDE:
            return []
        out, self._held = self._held, None
        return out

    def finish(self) -> list[dict]:
        out = self._indexed(self.inner.finish())
        held, self._held = self._held or [], None
        return held + out

    def _indexed(self, chunks: list[dict]) -> list[dict]:
        for chunk in chunks:
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            if delta.get("thinking_blocks"):
                delta["thinking_blocks"] = [{"index": self._thinking + i, **block}
                                            for i, block in enumerate(delta["thinking_blocks"])]
                self._thinking += len(delta["thinking_blocks"])
        return chunks


class AnthropicAdapter(Adapter):
    provider = "anthropic"

    def chat_request(self, dep: Deployment, body: dict, *, stream: bool) -> UpstreamRequest:
        cred = dep.credential
        out, ctx = chat_to_anthropic({**body, "stream": stream}, dep.upstream_model)
        base = (cred.base_url or ANTHROPIC_BASE).rstrip("/").removesuffix("/v1")
        return UpstreamRequest(f"{base}/v1/messages", out, anthropic_headers(cred.api_key, cred.extra_headers),
                               stream, ctx, dep=dep)

    def chat_response(self, data: dict, ctx: AnthropicContext) -> dict:
        return anthropic_to_chat(data, ctx)

    def chat_stream(self, ctx: AnthropicContext) -> ClaudeStream:
        return ClaudeStream(AnthropicStream(ctx))

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        return anthropic_error(status, body, headers)
