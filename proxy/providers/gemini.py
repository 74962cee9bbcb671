"""Gemini API on AI Studio (``type: gemini``), key in ``x-goog-api-key`` (never in the URL)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import Deployment
from ..errors import ProxyError
from ..translators.gemini import (
    GeminiContext,
    GeminiStream,
    chat_to_gemini,
    embeddings_to_gemini,
    gemini_embeddings_to_openai,
    gemini_error,
    gemini_to_chat,
    gemini_url,
)
from .base import Adapter, UpstreamRequest


class GeminiAdapter(Adapter):
    provider = "gemini"

    def headers(self, dep: Deployment) -> dict[str, str]:
        cred = dep.credential
        headers = {"content-type": "application/json", **cred.extra_headers}
        if cred.api_key:
            headers["x-goog-api-key"] = cred.api_key
        return headers

    def chat_request(self, dep: Deployment, body: dict, *, stream: bool) -> UpstreamRequest:
        out, ctx = chat_to_gemini(body, dep.upstream_model)
        return UpstreamRequest(gemini_url(dep.credential.base_url, dep.upstream_model, stream), out,
                               self.headers(dep), stream, ctx)

    def chat_response(self, data: dict, ctx: GeminiContext) -> dict:
        return gemini_to_chat(data, ctx)

    def chat_stream(self, ctx: GeminiContext) -> GeminiStream:
        return GeminiStream(ctx)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        return gemini_error(status, body, headers, provider=self.provider)

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        url = gemini_url(dep.credential.base_url, dep.upstream_model, False, action="batchEmbedContents")
        return UpstreamRequest(url, embeddings_to_gemini(body, dep.upstream_model), self.headers(dep),
                               ctx=(body["model"], body.get("encoding_format")))

    def embeddings_response(self, data: dict, ctx: Any) -> dict:
        model, encoding = ctx
        return gemini_embeddings_to_openai(data, model, encoding_format=encoding)
