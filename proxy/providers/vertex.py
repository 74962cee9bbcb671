"""Vertex AI (``type: vertex-ai``): Gemini models, and Claude models through ``publishers/anthropic``.

Both speak their own provider's format (the Gemini and Anthropic translators);
only the URLs and the OAuth2 bearer token differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import CredentialConfig, Deployment
from ..errors import ProxyError
from ..translators.anthropic import (
    AnthropicContext,
    AnthropicStream,
    anthropic_error,
    anthropic_to_chat,
    chat_to_anthropic,
)
from ..translators.gemini import (
    GeminiStream,
    chat_to_gemini,
    embeddings_to_vertex,
    gemini_error,
    gemini_to_chat,
    vertex_embeddings_to_openai,
    vertex_url,
)
from .base import Adapter, UpstreamRequest
from .google_token import TokenCache

tokens = TokenCache()


def is_claude(model: str) -> bool:
    return model.startswith("claude") or "/anthropic/" in model


class VertexAdapter(Adapter):
    provider = "vertex-ai"

    async def auth_headers(self, cred: CredentialConfig) -> dict[str, str]:
        if not cred.service_account:
            raise ProxyError(502, f"Vertex credential {cred.name!r} has no service account",
                             code="misconfigured_credential", retryable=True, credential_fault=True)
        return {"authorization": f"Bearer {await tokens.token(cred.service_account)}"}

    def on_auth_failure(self, cred: CredentialConfig) -> None:
        if cred.service_account:
            tokens.forget(cred.service_account)

    def _url(self, dep: Deployment, publisher: str, action: str) -> str:
        cred = dep.credential
        return vertex_url(cred.base_url or None, cred.project_id, cred.location or "us-central1", publisher,
                          dep.upstream_model, action)

    def chat_request(self, dep: Deployment, body: dict, *, stream: bool) -> UpstreamRequest:
        headers = {"content-type": "application/json", **dep.credential.extra_headers}
        if is_claude(dep.upstream_model):
            out, ctx = chat_to_anthropic({**body, "stream": stream}, dep.upstream_model, vertex=True)
            action = "streamRawPredict" if stream else "rawPredict"
            return UpstreamRequest(self._url(dep, "anthropic", action), out, headers, stream, ctx)
        out, gctx = chat_to_gemini(body, dep.upstream_model)
        action = "streamGenerateContent" if stream else "generateContent"
        return UpstreamRequest(self._url(dep, "google", action), out, headers, stream, gctx)

    def chat_response(self, data: dict, ctx: Any) -> dict:
        return anthropic_to_chat(data, ctx) if isinstance(ctx, AnthropicContext) else gemini_to_chat(data, ctx)

    def chat_stream(self, ctx: Any):
        return AnthropicStream(ctx) if isinstance(ctx, AnthropicContext) else GeminiStream(ctx)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        # Claude and Gemini errors on Vertex both come from Google's front end or the model;
        # anthropic_error understands Anthropic's shape, gemini_error Google's.
        if b'"type": "error"' in body[:200] or b'"type":"error"' in body[:200]:
            return anthropic_error(status, body, headers)
        return gemini_error(status, body, headers, provider="vertex")

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return UpstreamRequest(self._url(dep, "google", "predict"), embeddings_to_vertex(body),
                               {"content-type": "application/json", **dep.credential.extra_headers},
                               ctx=(body["model"], body.get("encoding_format")))

    def embeddings_response(self, data: dict, ctx: Any) -> dict:
        model, encoding = ctx
        return vertex_embeddings_to_openai(data, model, encoding_format=encoding)
