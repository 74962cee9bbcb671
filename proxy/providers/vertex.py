"""Vertex AI (``type: vertex-ai``): Gemini models, and Claude models through ``publishers/anthropic``.

Both speak their own provider's format (the Gemini and Anthropic translators, and the
Google-side I/O of ``providers.gemini``); only the URLs and the OAuth2 bearer token
differ. The token comes from the credential's service account (``google_token``); a
401 drops it and the request is sent once more with a fresh one, so a token revoked
or expired early costs one retry instead of failing the request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .. import http
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
from ..translators.images import ImagenContext, ImageRequest, imagen_edit_model
from ..translators.messages_native import PassthroughContext, PassthroughStream, forwarded_headers, native_body
from ..translators.prompt_cache import add_breakpoints
from .base import Adapter, StreamTranslator, UpstreamRequest
from .gemini import (
    EMBED_BATCH,
    EmbeddingBatches,
    batched,
    count_tokens_body,
    google_images_request,
    google_images_response,
    send_google,
)
from .google_token import TokenCache

log = logging.getLogger(__name__)
tokens = TokenCache()
DEFAULT_LOCATION = "us-central1"


def is_claude(model: str) -> bool:
    return model.startswith(("claude", "anthropic/")) or "/anthropic/" in model


def embed_batch_size(model: str) -> int:
    # gemini-embedding-001 takes a single instance per :predict; the text-embedding models take up to 250,
    # but also at most 20k tokens per call, so batches stay at AI Studio's 100.
    return 1 if "gemini-embedding" in model else EMBED_BATCH


def project_of(cred: CredentialConfig) -> str:
    return cred.project_id or str((cred.service_account or {}).get("project_id") or "")


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

    async def send(self, req: UpstreamRequest, headers: dict[str, str]) -> http.Response:
        response = await self._send(req, headers)
        if response.status_code != 401 or req.dep is None or not req.dep.credential.service_account:
            return response
        await response.aread()  # kept: it is what the client sees if no fresh token can be had
        await response.aclose()
        cred = req.dep.credential
        tokens.forget(cred.service_account, rejected=headers.get("authorization", "").removeprefix("Bearer "))
        try:
            fresh = await self.auth_headers(cred)
        except Exception as exc:  # the token endpoint failed: report Vertex's own 401
            log.warning("credential %s: token refresh after a 401 failed (%s)", cred.name, type(exc).__name__)
            return response
        log.info("credential %s: Vertex answered 401; retrying once with a fresh token", cred.name)
        return await self._send(req, {**headers, **fresh})

    async def _send(self, req: UpstreamRequest, headers: dict[str, str]) -> http.Response:
        if isinstance(req.ctx, AnthropicContext | PassthroughContext):
            return await super().send(req, headers)
        return await send_google(super().send, req, headers)

    def _url(self, dep: Deployment, publisher: str, action: str) -> str:
        cred = dep.credential
        return vertex_url(cred.base_url or None, project_of(cred), cred.location or DEFAULT_LOCATION, publisher,
                          dep.upstream_model.removeprefix("anthropic/"), action)

    @staticmethod
    def _headers(dep: Deployment) -> dict[str, str]:
        return {"content-type": "application/json", **dep.credential.extra_headers}

    def chat_request(self, dep: Deployment, body: dict, *, stream: bool) -> UpstreamRequest:
        if is_claude(dep.upstream_model):
            out, ctx = chat_to_anthropic({**body, "stream": stream}, dep.upstream_model, vertex=True)
            if dep.caches_prompts:
                out = add_breakpoints(out)
            action = "streamRawPredict" if stream else "rawPredict"
            return UpstreamRequest(self._url(dep, "anthropic", action), out, self._headers(dep), stream, ctx,
                                   dep=dep)
        out, gctx = chat_to_gemini(body, dep.upstream_model)
        action = "streamGenerateContent" if stream else "generateContent"
        return UpstreamRequest(self._url(dep, "google", action), out, self._headers(dep), stream, gctx, dep=dep,
                               source=body)

    def chat_response(self, data: dict, ctx: Any) -> dict:
        return anthropic_to_chat(data, ctx) if isinstance(ctx, AnthropicContext) else gemini_to_chat(data, ctx)

    def chat_stream(self, ctx: Any) -> StreamTranslator:
        if isinstance(ctx, PassthroughContext):
            return PassthroughStream()
        return AnthropicStream(ctx) if isinstance(ctx, AnthropicContext) else GeminiStream(ctx)

    def messages_native(self, dep: Deployment) -> bool:
        return is_claude(dep.upstream_model)

    def messages_request(self, dep: Deployment, body: dict, client_headers: dict[str, str], *,
                         stream: bool) -> UpstreamRequest:
        url = self._url(dep, "anthropic", "streamRawPredict" if stream else "rawPredict")
        headers = {**self._headers(dep), **forwarded_headers(client_headers)}
        headers.pop("anthropic-version")  # Vertex takes the version in the body
        body = add_breakpoints(body) if dep.caches_prompts else body
        return UpstreamRequest(url, native_body(body, dep.upstream_model.removeprefix("anthropic/"), vertex=True),
                               {**headers, **dep.credential.extra_headers}, stream, PassthroughContext(vertex=True),
                               dep=dep)

    def count_tokens_request(self, dep: Deployment, body: dict, chat: dict,
                             client_headers: dict[str, str]) -> UpstreamRequest:
        cred = dep.credential
        if is_claude(dep.upstream_model):
            url = vertex_url(cred.base_url or None, project_of(cred), cred.location or DEFAULT_LOCATION, "anthropic",
                             "count-tokens", "rawPredict")
            model = dep.upstream_model.removeprefix("anthropic/")
            return UpstreamRequest(url, {**body, "model": model}, self._headers(dep), dep=dep)
        out, _ = chat_to_gemini(chat, dep.upstream_model)
        return UpstreamRequest(self._url(dep, "google", "countTokens"), count_tokens_body(out), self._headers(dep),
                               dep=dep)


    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        # Claude's model errors are Anthropic-shaped; Vertex's front end (quota, auth) and Gemini answer
        # in Google's shape.
        head = body[:200]
        if b'"type": "error"' in head or b'"type":"error"' in head:
            return anthropic_error(status, body, headers)
        return gemini_error(status, body, headers, provider=self.provider)

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        if is_claude(dep.upstream_model):
            return super().embeddings_request(dep, body)  # Claude has no embeddings: a clear 400
        out = embeddings_to_vertex(body)
        extra = {k: v for k, v in out.items() if k != "instances"}
        bodies = [{"instances": batch, **extra} for batch in batched(out["instances"],
                                                                     embed_batch_size(dep.upstream_model))]
        ctx = EmbeddingBatches(str(body["model"]), body.get("encoding_format"), bodies, "predictions")
        return UpstreamRequest(self._url(dep, "google", "predict"), bodies[0], self._headers(dep), ctx=ctx, dep=dep)

    def embeddings_response(self, data: dict, ctx: EmbeddingBatches) -> dict:
        return vertex_embeddings_to_openai(data, ctx.model, encoding_format=ctx.encoding_format)

    def images_request(self, dep: Deployment, req: ImageRequest, *, stream: bool) -> UpstreamRequest:
        if is_claude(dep.upstream_model):
            return super().images_request(dep, req, stream=stream)
        action, body, ctx = google_images_request(req, dep.upstream_model)
        edit_model = imagen_edit_model(dep.upstream_model) if isinstance(ctx, ImagenContext) and req.edit else None
        cred = dep.credential
        url = (vertex_url(cred.base_url or None, project_of(cred), cred.location or DEFAULT_LOCATION, "google",
                          edit_model, action) if edit_model else self._url(dep, "google", action))
        return UpstreamRequest(url, body, self._headers(dep), ctx=ctx, dep=dep)

    def images_response(self, data: dict, ctx: Any) -> dict:
        return google_images_response(data, ctx)
