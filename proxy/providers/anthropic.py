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
from ..translators.messages_native import (
    PassthroughContext,
    PassthroughStream,
    forwarded_headers,
    native_body,
)
from ..translators.prompt_cache import add_breakpoints
from .base import Adapter, UpstreamRequest

ANTHROPIC_BASE = "https://api.anthropic.com"


class AnthropicAdapter(Adapter):
    provider = "anthropic"

    @staticmethod
    def _base(dep: Deployment) -> str:
        return (dep.credential.base_url or ANTHROPIC_BASE).rstrip("/").removesuffix("/v1")

    def chat_request(self, dep: Deployment, body: dict, *, stream: bool) -> UpstreamRequest:
        cred = dep.credential
        out, ctx = chat_to_anthropic({**body, "stream": stream}, dep.upstream_model)
        if dep.caches_prompts:
            out = add_breakpoints(out)
        return UpstreamRequest(f"{self._base(dep)}/v1/messages", out,
                               anthropic_headers(cred.api_key, cred.extra_headers), stream, ctx, dep=dep)

    def messages_native(self, dep: Deployment) -> bool:
        return True

    @staticmethod
    def _native_headers(dep: Deployment, client_headers: dict[str, str]) -> dict[str, str]:
        cred = dep.credential
        return {**anthropic_headers(cred.api_key), **forwarded_headers(client_headers), **cred.extra_headers}

    def messages_request(self, dep: Deployment, body: dict, client_headers: dict[str, str], *,
                         stream: bool) -> UpstreamRequest:
        body = add_breakpoints(body) if dep.caches_prompts else body
        return UpstreamRequest(f"{self._base(dep)}/v1/messages", native_body(body, dep.upstream_model, vertex=False),
                               self._native_headers(dep, client_headers), stream, PassthroughContext(), dep=dep)

    def count_tokens_request(self, dep: Deployment, body: dict, chat: dict,
                             client_headers: dict[str, str]) -> UpstreamRequest:
        return UpstreamRequest(f"{self._base(dep)}/v1/messages/count_tokens", {**body, "model": dep.upstream_model},
                               self._native_headers(dep, client_headers), dep=dep)

    def chat_response(self, data: dict, ctx: AnthropicContext) -> dict:
        return anthropic_to_chat(data, ctx)

    def chat_stream(self, ctx: AnthropicContext | PassthroughContext) -> AnthropicStream | PassthroughStream:
        return PassthroughStream() if isinstance(ctx, PassthroughContext) else AnthropicStream(ctx)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        return anthropic_error(status, body, headers)
