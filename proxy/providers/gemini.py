"""Gemini API on AI Studio (``type: gemini``), and the Google-side I/O that Vertex shares.

The key goes in ``x-goog-api-key`` (never in the URL, where it would end up in logs).
Besides URLs and auth, three steps need I/O and so cannot live in the pure translator;
they run in ``send`` (for both AI Studio and Vertex Gemini):

* remote media: ``fileData`` parts with an http(s) URL (client ``image_url`` / file URLs)
  are downloaded (``proxy.media``: bounded, no private addresses, DNS pinned) and sent as
  ``inlineData``; Google fetches only some hosts itself;
* a 400 "invalid/corrupted thought signature" (a signature minted by another model or
  project, e.g. after a failover) is retried once with the signatures replaced by the
  documented dummy value;
* embeddings are split into batches the endpoint accepts, sent concurrently and merged;
  so are Gemini image requests for several images (one image per call).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .. import http
from ..config import Deployment
from ..errors import ProxyError
from ..media import fetch_media
from ..translators.gemini import (
    DUMMY_SIGNATURE,
    GeminiContext,
    GeminiStream,
    chat_to_gemini,
    embeddings_to_gemini,
    gemini_embeddings_to_openai,
    gemini_error,
    gemini_to_chat,
    gemini_url,
)
from ..translators.images import (
    GeminiImageContext,
    ImagenContext,
    ImageRequest,
    gemini_image_request,
    gemini_image_response,
    image_family,
    imagen_edit_model,
    imagen_request,
    imagen_response,
    merge_gemini_responses,
)
from .base import Adapter, UpstreamRequest

log = logging.getLogger(__name__)

Post = Callable[[UpstreamRequest, dict[str, str]], Awaitable[http.Response]]

EMBED_BATCH = 100  # batchEmbedContents takes at most 100 requests
EMBED_CONCURRENCY = 8


# ---- remote media ---------------------------------------------------------------

def _remote_parts(body: dict) -> list[dict]:
    return [part for content in body.get("contents") or [] for part in content.get("parts") or []
            if str((part.get("fileData") or {}).get("fileUri", "")).startswith(("http://", "https://"))]


async def inline_remote_media(body: dict, cache: dict[str, tuple[str | None, str]]) -> None:
    """Replace http(s) ``fileData`` parts by ``inlineData`` (each URL downloaded once, concurrently)."""
    parts = _remote_parts(body)
    urls = list(dict.fromkeys(p["fileData"]["fileUri"] for p in parts if p["fileData"]["fileUri"] not in cache))
    if urls:
        cache.update(zip(urls, await asyncio.gather(*(fetch_media(u) for u in urls)), strict=True))
    for part in parts:
        file = part.pop("fileData")
        mime, data = cache[file["fileUri"]]
        part["inlineData"] = {"mimeType": mime or file["mimeType"], "data": data}


# ---- generateContent ---------------------------------------------------------------

def _has_signatures(body: dict) -> bool:
    return any(part.get("thoughtSignature") not in (None, DUMMY_SIGNATURE)
               for content in body.get("contents") or [] for part in content.get("parts") or [])


async def send_generate(post: Post, req: UpstreamRequest, headers: dict[str, str]) -> http.Response:
    """Remote media inlined; one retry without thought signatures when Google rejects them."""
    media: dict[str, tuple[str | None, str]] = {}
    await inline_remote_media(req.body, media)
    response = await post(req, headers)
    if response.status_code != 400 or req.source is None or req.dep is None or not _has_signatures(req.body):
        return response
    body = await response.aread()  # kept: the pipeline reads it again if we give up
    await response.aclose()
    if gemini_error(400, body, response.headers).code != "invalid_thought_signature":
        return response
    log.info("%s rejected the thought signatures; retrying once without them", req.dep.key)
    req.body, req.ctx = chat_to_gemini(req.source, req.dep.upstream_model, replace_signatures=True)
    await inline_remote_media(req.body, media)
    return await post(req, headers)


# ---- embeddings ------------------------------------------------------------------------

@dataclass(slots=True)
class EmbeddingBatches:
    """Context of an embeddings request: its batches go out as separate upstream requests."""

    model: str
    encoding_format: str | None
    bodies: list[dict]
    key: str  # the list to concatenate: "embeddings" (AI Studio) or "predictions" (Vertex)


def batched(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _merge(datas: list[dict], key: str) -> dict:
    merged: dict[str, Any] = {key: [item for data in datas for item in data.get(key) or []]}
    counts = [(d.get("usageMetadata") or {}).get("promptTokenCount") for d in datas]
    if any(c is not None for c in counts):
        merged["usageMetadata"] = {"promptTokenCount": sum(int(c or 0) for c in counts)}
    return merged


async def send_batches(post: Post, req: UpstreamRequest, headers: dict[str, str], bodies: list[dict],
                       merge: Callable[[list[dict]], dict]) -> http.Response:
    """One request per body (at most ``EMBED_CONCURRENCY`` at once), merged into one answer in order."""
    if len(bodies) == 1:
        return await post(dataclasses.replace(req, body=bodies[0]), headers)
    limit = asyncio.Semaphore(EMBED_CONCURRENCY)

    async def one(body: dict) -> http.Response:
        async with limit:
            response = await post(dataclasses.replace(req, body=body), headers)
            try:
                await response.aread()
            finally:
                await response.aclose()
            return response

    results = await asyncio.gather(*(one(b) for b in bodies), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    responses: list[http.Response] = results  # type: ignore[assignment]
    failed = next((r for r in responses if r.status_code >= 400), None)
    if failed is not None:
        return failed
    try:
        merged = merge([r.json() for r in responses])
    except ValueError:
        raise ProxyError(502, "upstream returned a body that is not JSON", code="bad_upstream_response") from None
    return httpx.Response(200, json=merged)


async def send_google(post: Post, req: UpstreamRequest, headers: dict[str, str]) -> http.Response:
    """``send`` for Google's APIs (AI Studio and Vertex Gemini): the I/O steps above, by request kind."""
    if isinstance(req.ctx, GeminiContext):
        return await send_generate(post, req, headers)
    ctx = req.ctx
    if isinstance(ctx, EmbeddingBatches):
        return await send_batches(post, req, headers, ctx.bodies, lambda datas: _merge(datas, ctx.key))
    if isinstance(ctx, GeminiImageContext):
        return await send_batches(post, req, headers, [req.body] * ctx.n, merge_gemini_responses)
    return await post(req, headers)


def google_images_request(req: ImageRequest, model: str) -> tuple[str, dict, object]:
    """(``:action``, body, context) of an image request to a Google model that draws."""
    family = image_family(model)
    if family == "imagen":
        body, ctx = imagen_request(req, imagen_edit_model(model) if req.edit else model)
        return "predict", body, ctx
    if family == "gemini":
        body, gctx = gemini_image_request(req, model)
        return "generateContent", body, gctx
    raise ProxyError(400, f"model {req.model!r} ({model}) does not generate images: Google's image models are "
                     "imagen-* and gemini-*-image*", param="model", code="unsupported_model")


def google_images_response(data: dict, ctx: object) -> dict:
    if isinstance(ctx, ImagenContext):
        return imagen_response(data, ctx)
    return gemini_image_response(data, ctx)  # type: ignore[arg-type]


def count_tokens_body(generate: dict, model: str | None = None) -> dict:
    """A ``countTokens`` body for a ``generateContent`` body: Vertex takes its fields, AI Studio the whole
    request under ``generateContentRequest`` (with the model)."""
    fields = {k: generate[k] for k in ("contents", "systemInstruction", "tools") if k in generate}
    if model is None:
        return fields
    return {"generateContentRequest": {"model": f"models/{model.removeprefix('models/')}", **generate}}


# ---- the adapter ----------------------------------------------------------------------

class GeminiAdapter(Adapter):
    provider = "gemini"

    def headers(self, dep: Deployment) -> dict[str, str]:
        cred = dep.credential
        headers = {"content-type": "application/json", **cred.extra_headers}
        if cred.api_key:
            headers["x-goog-api-key"] = cred.api_key
        return headers

    async def send(self, req: UpstreamRequest, headers: dict[str, str]) -> http.Response:
        return await send_google(super().send, req, headers)

    def chat_request(self, dep: Deployment, body: dict, *, stream: bool) -> UpstreamRequest:
        out, ctx = chat_to_gemini(body, dep.upstream_model)
        return UpstreamRequest(gemini_url(dep.credential.base_url, dep.upstream_model, stream), out,
                               self.headers(dep), stream, ctx, dep=dep, source=body)

    def chat_response(self, data: dict, ctx: GeminiContext) -> dict:
        return gemini_to_chat(data, ctx)

    def chat_stream(self, ctx: GeminiContext) -> GeminiStream:
        return GeminiStream(ctx)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        return gemini_error(status, body, headers, provider=self.provider)

    def count_tokens_request(self, dep: Deployment, body: dict, chat: dict,
                             client_headers: dict[str, str]) -> UpstreamRequest:
        out, _ = chat_to_gemini(chat, dep.upstream_model)
        url = gemini_url(dep.credential.base_url, dep.upstream_model, False, action="countTokens")
        return UpstreamRequest(url, count_tokens_body(out, dep.upstream_model), self.headers(dep), dep=dep)


    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        url = gemini_url(dep.credential.base_url, dep.upstream_model, False, action="batchEmbedContents")
        requests = embeddings_to_gemini(body, dep.upstream_model)["requests"]
        bodies = [{"requests": batch} for batch in batched(requests, EMBED_BATCH)]
        ctx = EmbeddingBatches(str(body["model"]), body.get("encoding_format"), bodies, "embeddings")
        return UpstreamRequest(url, bodies[0], self.headers(dep), ctx=ctx, dep=dep)

    def embeddings_response(self, data: dict, ctx: EmbeddingBatches) -> dict:
        return gemini_embeddings_to_openai(data, ctx.model, encoding_format=ctx.encoding_format)

    def images_request(self, dep: Deployment, req: ImageRequest, *, stream: bool) -> UpstreamRequest:
        model = dep.upstream_model
        if req.edit and image_family(model) == "imagen":
            raise ProxyError(400, f"model {req.model!r}: Imagen edits are served by Vertex AI credentials only, not "
                             "AI Studio; use a Gemini image model or a vertex-ai credential.", param="model",
                             code="unsupported_model")
        action, body, ctx = google_images_request(req, model)
        url = gemini_url(dep.credential.base_url, model, False, action=action)
        return UpstreamRequest(url, body, self.headers(dep), ctx=ctx, dep=dep)

    def images_response(self, data: dict, ctx: object) -> dict:
        return google_images_response(data, ctx)
