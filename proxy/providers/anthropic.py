"""Anthropic Messages API (``type: anthropic``)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Deployment
from ..errors import ProxyError
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

    def chat_stream(self, ctx: AnthropicContext) -> AnthropicStream:
        return AnthropicStream(ctx)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        return anthropic_error(status, body, headers)
