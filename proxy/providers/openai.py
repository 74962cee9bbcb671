"""OpenAI and OpenAI-compatible servers, and other routers (``proxy``): the wire format is ours."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..config import CredentialConfig, Deployment
from ..errors import ProxyError, classify_upstream_error
from ..sse import SSEEvent
from ..translators.common import split_thought
from ..translators.images import ImageFile, ImageRequest
from .base import Adapter, RawChunk, UpstreamRequest, join_url

OPENAI_BASE = "https://api.openai.com/v1"
HOP_HEADER = "x-router-hops"
# Fields the internal format adds that an OpenAI upstream would reject (``images``: what a Gemini image
# model drew in an earlier turn; Chat has no way to send an assistant's images back).
_INTERNAL_MESSAGE_FIELDS = ("thinking_blocks", "images")
# OpenAI models that do not reason answer 400 to `reasoning_effort`, which translated clients
# (Claude Code's thinking, Codex's reasoning) send on every request.
_NO_REASONING = re.compile(r"^(gpt-4|gpt-3\.5|chatgpt-)")


def clean_messages(messages: list) -> list:
    """Strip router-internal extensions (thought carriers, thinking blocks) before an OpenAI upstream."""
    out = []
    for msg in messages:
        if not isinstance(msg, dict):
            out.append(msg)
            continue
        changed = None
        if any(k in msg for k in _INTERNAL_MESSAGE_FIELDS):
            changed = {k: v for k, v in msg.items() if k not in _INTERNAL_MESSAGE_FIELDS}
        if msg.get("role") == "assistant" and msg.get("tool_calls"):
            calls = [_strip_call(c) for c in msg["tool_calls"]]
            if calls != msg["tool_calls"]:
                changed = {**(changed or msg), "tool_calls": calls}
        if msg.get("role") == "tool" and isinstance(msg.get("tool_call_id"), str):
            base, sig = split_thought(msg["tool_call_id"])
            if sig:
                changed = {**(changed or msg), "tool_call_id": base}
        out.append(changed or msg)
    return out


def _strip_call(call: Any) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("id"), str):
        return call
    base, sig = split_thought(call["id"])
    return {**call, "id": base} if sig else call


class OpenAIStream:
    def feed(self, event: SSEEvent) -> list[dict]:
        if event.data == "[DONE]" or not event.data:
            return []
        try:
            data = json.loads(event.data)
        except ValueError:
            return []
        if isinstance(data, dict) and "error" in data and "choices" not in data:
            raise stream_error(data["error"], provider="openai")
        chunk = RawChunk(data)
        chunk.raw = event.raw
        return [chunk]

    def finish(self) -> list[dict]:
        return []


class OpenAIAdapter(Adapter):
    provider = "openai"
    passthrough = True

    def base_url(self, cred: CredentialConfig) -> str:
        return cred.base_url or OPENAI_BASE

    def headers(self, cred: CredentialConfig) -> dict[str, str]:
        headers = {"content-type": "application/json", **cred.extra_headers}
        if cred.api_key:
            headers["authorization"] = f"Bearer {cred.api_key}"
        return headers

    def chat_request(self, dep: Deployment, body: dict, *, stream: bool) -> UpstreamRequest:
        upstream = {**body, "model": dep.upstream_model}
        if "messages" in upstream:
            upstream["messages"] = clean_messages(upstream["messages"])
        tools = upstream.get("tools")
        if isinstance(tools, list) and any(isinstance(t, dict) and t.get("type") == "web_search" for t in tools):
            # Chat Completions has no hosted search tool: the canonical web_search is dropped.
            kept = [t for t in tools if not (isinstance(t, dict) and t.get("type") == "web_search")]
            if kept:
                upstream["tools"] = kept
            else:
                upstream.pop("tools", None)
                upstream.pop("tool_choice", None)
        if self.provider == "openai" and _NO_REASONING.match(dep.upstream_model):
            upstream.pop("reasoning_effort", None)
        if stream:
            upstream["stream"] = True
            upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return UpstreamRequest(join_url(self.base_url(dep.credential), "/chat/completions"), upstream,
                               self.headers(dep.credential), stream)

    def chat_response(self, data: dict, ctx: Any) -> dict:
        return data

    def chat_stream(self, ctx: Any) -> OpenAIStream:
        return OpenAIStream()

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        return openai_error(status, body, headers, provider=self.provider)

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        return UpstreamRequest(join_url(self.base_url(dep.credential), "/embeddings"),
                               {**body, "model": dep.upstream_model}, self.headers(dep.credential))

    def images_request(self, dep: Deployment, req: ImageRequest, *, stream: bool) -> UpstreamRequest:
        """Relayed as sent (JSON, or the multipart form of edits) with the upstream model name."""
        fields = {k: v for k, v in req.fields.items() if stream or k not in ("stream", "partial_images")}
        fields["model"] = dep.upstream_model
        headers = self.headers(dep.credential)
        if not req.edit:
            return UpstreamRequest(join_url(self.base_url(dep.credential), "/images/generations"), fields, headers,
                                   stream)
        headers.pop("content-type")  # httpx sets multipart/form-data with its boundary
        name = "image[]" if len(req.images) > 1 else "image"
        files = [(name, _upload(f, "image.png")) for f in req.images]
        if req.mask is not None:
            files.append(("mask", _upload(req.mask, "mask.png")))
        form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items() if v is not None}
        return UpstreamRequest(join_url(self.base_url(dep.credential), "/images/edits"), form, headers, stream,
                               files=files)

    def responses_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        """Native ``/v1/responses`` for upstreams that speak it: only the model is rewritten."""
        return UpstreamRequest(join_url(self.base_url(dep.credential), "/responses"),
                               {**body, "model": dep.upstream_model}, self.headers(dep.credential),
                               bool(body.get("stream")))


def _upload(file: ImageFile, default_name: str) -> tuple[str, bytes, str]:
    return file.filename or default_name, file.data, file.content_type or "application/octet-stream"


class ProxyAdapter(OpenAIAdapter):
    """Another router (this one or the original): OpenAI wire format plus a hop counter."""

    provider = "proxy"

    def base_url(self, cred: CredentialConfig) -> str:
        if not cred.base_url:
            raise ProxyError(502, f"credential {cred.name!r} (proxy) has no base_url", code="misconfigured_credential")
        return cred.base_url


_STATUS_BY_CODE = {"rate_limit_exceeded": 429, "insufficient_quota": 429, "context_length_exceeded": 400,
                   "invalid_request_error": 400, "server_is_overloaded": 529}


def stream_error(err: Any, *, provider: str) -> ProxyError:
    """An ``{"error": ...}`` payload that arrived inside a 200 stream."""
    if not isinstance(err, dict):
        err = {"message": str(err)}
    code = err.get("code") or err.get("type")
    status = err.get("status") if isinstance(err.get("status"), int) else _STATUS_BY_CODE.get(str(code), 500)
    return classify_upstream_error(status, str(err.get("message") or "upstream stream error"), provider=provider,
                                   upstream_code=str(code) if code else None)


def openai_error(status: int, body: bytes, headers: Mapping[str, str], *, provider: str) -> ProxyError:
    message, code = _error_text(body)
    return classify_upstream_error(status, message, provider=provider, upstream_code=code, headers=headers)


def _error_text(body: bytes) -> tuple[str, str | None]:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:2000] or "no error body", None
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("code") or err.get("status")  # Google-style bodies carry `status`
        return str(err.get("message") or json.dumps(err))[:2000], str(code) if code is not None else None
    if isinstance(err, str):
        return err[:2000], None
    return json.dumps(data)[:2000], None
