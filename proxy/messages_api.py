"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API on every provider.

Anthropic and Claude-on-Vertex deployments get the request as the client sent it
(only the model mapped; ``anthropic-version`` / ``anthropic-beta`` forwarded) and
their answer relayed byte for byte, errors included: clients such as Claude Code
match on Anthropic's exact words. Every other provider gets the request translated
to the internal Chat format once (``translators.messages``) and its chunks turned
back into Messages events, so failover can cross providers. Errors the router
makes itself use Anthropic's shape and statuses; after the first byte a failure
is an ``event: error``, and long upstream silences get ``ping`` events.

``GET /v1/models`` answers in Anthropic's list shape when the request carries
``anthropic-version`` (the Anthropic SDKs and Claude Code's model discovery).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator

import aiohttp
import httpx
from django.conf import settings

from . import routing, views
from .asgi import Request, Response, StreamingResponse, json_response
from .config import Deployment
from .errors import ProxyError
from .pipeline import HEARTBEAT, Opened, joined, open_upstream
from .providers import adapter_for
from .providers.base import Adapter, UpstreamRequest
from .translators.messages import (
    InvalidMessages,
    MessagesStream,
    chat_to_message,
    encode_event,
    error_body,
    error_status_and_type,
    estimate_input_tokens,
    messages_to_chat,
)
from .translators.messages_native import PassthroughContext, UsageReader
from .usage import UsageLog

log = logging.getLogger(__name__)
PING = encode_event({"type": "ping"})
_MODEL_NAME = re.compile(r"`([^`]+)`")


# ---- errors ------------------------------------------------------------------------

def anthropic_error_response(err: ProxyError, req: Request) -> Response:
    headers = {"request-id": req.request_id}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after)))
    if err.upstream_body and not err.credential_fault:
        # Anthropic's own error: relayed unchanged (Claude Code recovers on its wording)
        return Response(err.upstream_status or err.status, err.upstream_body, headers=headers)
    if err.code == "model_not_found" and (name := _MODEL_NAME.search(err.message)):
        err = ProxyError(404, f"model: {name.group(1)}", type="not_found_error")
    status, _ = error_status_and_type(err)
    return json_response(error_body(err, req.request_id), status, headers)


def models_error_response(err: ProxyError, req: Request) -> Response | None:
    """``/v1/models`` errors in Anthropic's shape for Anthropic clients (``anthropic-version``)."""
    return anthropic_error_response(err, req) if req.headers.get("anthropic-version") else None


async def _anthropic_errors(req: Request, coro) -> Response | StreamingResponse:
    try:
        return await coro
    except ProxyError as err:
        return anthropic_error_response(err, req)


def _validate(body: dict, *, count: bool = False) -> None:
    if not isinstance(body.get("model"), str) or not body["model"].strip():
        raise InvalidMessages("model: Field required")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise InvalidMessages("messages: Field required")
    if not count and body.get("max_tokens") is None:
        raise InvalidMessages("max_tokens: Field required")


# ---- POST /v1/messages ---------------------------------------------------------------

async def messages(req: Request) -> Response | StreamingResponse:
    return await _anthropic_errors(req, _logged(req))


async def _logged(req: Request) -> Response | StreamingResponse:
    body = views.parse_body(req)
    log_ = views.start_log(req, "messages", body, stream=body.get("stream") is True)
    return await views.guarded(log_, _messages(req, body, log_))


async def _messages(req: Request, body: dict, usage: UsageLog) -> Response | StreamingResponse:
    config = await views.authorize(req)
    _validate(body)
    stream = body.get("stream") is True
    plan = views.route(config, req, body)
    translated: tuple | None = None

    def build(adapter: Adapter, dep: Deployment) -> UpstreamRequest:
        nonlocal translated
        if adapter.messages_native(dep):
            return adapter.messages_request(dep, body, req.headers, stream=stream)
        if translated is None:
            translated = messages_to_chat(body, stream=stream)
        return adapter.chat_request(dep, translated[0], stream=stream)

    heartbeat = settings.ROUTER_KEEPALIVE_INTERVAL if stream else None
    opened = await open_upstream(plan, build, usage, stream=stream, heartbeat=heartbeat)
    usage.first_byte()
    headers = {"request-id": req.request_id}
    if isinstance(opened.req.ctx, PassthroughContext):
        if stream:
            return StreamingResponse(joined(_relay_native(opened, usage), opened.chunks), headers=headers,
                                     terminal=_native_terminal)
        raw = await opened.response.aread()
        reader = UsageReader()
        reader.message(raw)
        usage.add_usage(reader.chat_usage())
        return Response(200, raw, headers=headers)
    ctx = translated[1]  # type: ignore[index]
    if stream:
        ms = MessagesStream(ctx)
        return StreamingResponse(joined(_relay_translated(opened, ms, usage), opened.chunks), headers=headers,
                                 terminal=lambda err: b"".join(map(encode_event, ms.fail(err))))
    raw = await opened.response.aread()
    try:
        completion = opened.adapter.chat_response(json.loads(raw), opened.req.ctx)
    except ValueError:
        raise ProxyError(502, f"{opened.adapter.provider} returned a body that is not JSON",
                         code="bad_upstream_response") from None
    usage.add_usage(completion.get("usage"))
    return json_response(chat_to_message(completion, ctx), headers=headers)


async def _relay_translated(opened: Opened, ms: MessagesStream, usage: UsageLog) -> AsyncIterator[bytes]:
    """Chunks in, Messages events out; a failure midway is the front's to end (``terminal``: an error event)."""
    chunks = opened.chunks
    assert chunks is not None
    seen = 0
    try:
        for ev in ms.started():
            yield encode_event(ev)
        async for chunk in views.prepend(opened.first, chunks):
            if chunk is HEARTBEAT:
                yield PING
                continue
            if chunk.get("usage"):
                usage.add_usage(chunk["usage"])
            for choice in chunk.get("choices") or ():
                seen += len(json.dumps(choice.get("delta") or {})) - 2
                usage.finish_reason(choice.get("finish_reason"))
            for ev in ms.feed(chunk):
                if ev["type"] == "content_block_delta":
                    usage.first_token()
                yield encode_event(ev)
            yield b""  # nothing for this chunk: what is held may go out (pipeline.joined)
        for ev in ms.finish():
            _note_error(ev, usage)
            yield encode_event(ev)
    finally:
        await chunks.aclose()
        views.estimate(usage, seen)


async def _relay_native(opened: Opened, usage: UsageLog) -> AsyncIterator[bytes]:
    """The upstream's events byte for byte (``ping`` on long silences)."""
    chunks = opened.chunks
    assert chunks is not None
    reader = UsageReader()
    try:
        async for event in views.prepend(opened.first, chunks):
            if event is HEARTBEAT:
                yield PING
                continue
            reader.event(event)
            if event.event == "content_block_delta":
                usage.first_token()
            elif event.event == "error":
                _note_error(json.loads(event.data), usage)
            yield event.raw
    finally:
        await chunks.aclose()
        usage.add_usage(reader.chat_usage())


def _native_terminal(err: ProxyError) -> bytes:
    return encode_event(error_body(err))


def _note_error(ev: dict, usage: UsageLog) -> None:
    if ev.get("type") == "error":
        error = ev.get("error") or {}
        usage.status, usage.error_type = 502, str(error.get("type") or "api_error")
        usage.error_message = str(error.get("message") or "")[:1000]


# ---- POST /v1/messages/count_tokens ------------------------------------------------------

async def count_tokens(req: Request) -> Response:
    return await _anthropic_errors(req, _count_tokens(req))  # type: ignore[return-value]


async def _count_tokens(req: Request) -> Response:
    body = views.parse_body(req)
    config = await views.authorize(req)
    _validate(body, count=True)
    plan = views.route(config, req, body)
    dep = plan.deps[0]
    adapter = adapter_for(dep.credential.type)
    chat = None if adapter.messages_native(dep) else messages_to_chat(body, stream=False)[0]
    upstream = adapter.count_tokens_request(dep, body, chat or {}, req.headers)
    counted = await _provider_count(adapter, dep, upstream) if upstream is not None else None
    tokens = counted if counted is not None else estimate_input_tokens(body)
    return json_response({"input_tokens": tokens}, headers={"request-id": req.request_id})


async def _provider_count(adapter: Adapter, dep: Deployment, upstream: UpstreamRequest) -> int | None:
    """The provider's count; None (estimate instead) when it cannot be had. The client's own mistakes
    (an Anthropic 4xx about the request) are raised as Anthropic said them."""
    try:
        headers = {**upstream.headers, **await adapter.auth_headers(dep.credential)}
        async with asyncio.timeout(settings.ROUTER_FIRST_BYTE_TIMEOUT):
            response = await adapter.send(upstream, headers)
            raw = await response.aread()
            await response.aclose()
    except (ProxyError, httpx.HTTPError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("count_tokens on %s failed (%s); estimating locally", dep.key, type(exc).__name__)
        return None
    if response.status_code >= 400:
        err = adapter.error(response.status_code, raw, response.headers)
        if err.upstream_body and response.status_code in (400, 404, 413):
            err.upstream_status = response.status_code
            raise err
        log.warning("count_tokens on %s answered %d; estimating locally", dep.key, response.status_code)
        return None
    try:
        return adapter.count_tokens_response(json.loads(raw))
    except ValueError:
        return None


# ---- GET /v1/models (Anthropic's shape when asked for it) ------------------------------------

def _model(name: str) -> dict:
    return {"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"}


async def list_models(req: Request) -> Response:
    if not req.headers.get("anthropic-version"):
        return await views.list_models(req)
    return await _anthropic_errors(req, _list_models(req))  # type: ignore[return-value]


async def _list_models(req: Request) -> Response:
    config = await views.authorize(req)
    names = views.all_model_names(config)
    if req.key is not None:
        names = [n for n in names if req.key.may_use(n)]
    data = [_model(name) for name in names]
    return json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None})


async def get_model(req: Request) -> Response:
    if not req.headers.get("anthropic-version"):
        return await views.get_model(req)
    return await _anthropic_errors(req, _get_model(req))  # type: ignore[return-value]


async def _get_model(req: Request) -> Response:
    config = await views.authorize(req)
    views.admission.check_model(req.key, req.path_param)
    if not routing.exists(config, req.path_param):
        raise routing.model_not_found(req.path_param)
    return json_response(_model(req.path_param))
