"""``POST /v1/responses`` (Codex CLI's only protocol) on every provider.

Credentials that speak the Responses API natively (``responses_api``) get the
request as sent, with only ``model`` rewritten, and their events are relayed
untouched. For every other provider the request is translated to the internal
Chat format once, sent through that provider's Chat adapter (so failover can
cross providers) and the canonical chunks are re-emitted as Responses events.

Headers are held until the upstream's first event, so early failures are real
HTTP statuses Codex understands (404 model_not_found, 429 + Retry-After,
400 context_length_exceeded, 502/503). After that, failures become
``response.failed`` and long upstream silences get a ``response.in_progress``
heartbeat so Codex's idle timer does not fire.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from django.conf import settings

from .asgi import Request, Response, StreamingResponse, json_response
from .errors import ProxyError, bad_request
from .pipeline import HEARTBEAT, Opened, is_native, joined, native, open_upstream
from .redaction import redact
from .translators.common import new_id, now
from .translators.responses import ResponsesStream, base_response, encode_event, response_echo, responses_to_chat
from .usage import UsageLog
from .views import (
    authorize,
    check_types,
    delta_chars,
    estimate,
    guarded,
    parse_body,
    prepend,
    require_model,
    route,
    start_log,
)

_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
FLUSH: dict = {}  # from _translated after each chunk: the writer may send what it holds (see pipeline.joined)
_NUMBER = (int, float)
# OpenAI's types for the create-response parameters; a missing or null one takes OpenAI's default
# (notably `stream`: false, so the SDKs' plain `responses.create` gets JSON).
_TYPES = {
    "stream": (bool,), "store": (bool,), "background": (bool,), "parallel_tool_calls": (bool,),
    "temperature": _NUMBER, "top_p": _NUMBER, "presence_penalty": _NUMBER, "frequency_penalty": _NUMBER,
    "max_output_tokens": (int,), "max_tool_calls": (int,), "top_logprobs": (int,), "tools": (list,),
    "tool_choice": (str, dict), "metadata": (dict,), "reasoning": (dict,), "text": (dict,), "include": (list,),
    "user": (str,), "prompt_cache_key": (str,), "safety_identifier": (str,), "service_tier": (str,),
    "truncation": (str,), "instructions": (str, list), "stream_options": (dict,),
}


async def responses(req: Request) -> Response | StreamingResponse:
    body = parse_body(req)
    log = start_log(req, "responses", body, stream=body.get("stream") is True)
    return await guarded(log, _responses(req, body, log))


def validate_responses(body: dict) -> None:
    require_model(body)
    check_types(body, _TYPES)
    if body.get("background"):
        raise bad_request("`background` responses are not supported: the router does not store responses. "
                          "Omit `background` or set it to false.", param="background")


async def _responses(req: Request, body: dict, log: UsageLog) -> Response | StreamingResponse:
    config = await authorize(req)
    validate_responses(body)
    plan = route(config, req, body)
    translated: tuple[dict, object] | None = None

    def build(adapter, dep):
        nonlocal translated
        if dep.credential.responses_api and hasattr(adapter, "responses_request"):
            return native(adapter.responses_request(dep, {**body, "stream": True}))
        if translated is None:
            translated = responses_to_chat(body)
        return adapter.chat_request(dep, translated[0], stream=True)

    stream = body.get("stream") is True
    opened = await open_upstream(plan, build, log, stream=True, heartbeat=settings.ROUTER_KEEPALIVE_INTERVAL)
    log.first_byte()
    if is_native(opened.req):
        native_stream = _NativeStream(body)
        if stream:
            return StreamingResponse(joined(native_stream.relay(opened, log), opened.chunks),
                                     terminal=native_stream.failed)
        return await _collect(_parsed(native_stream.relay(opened, log)))
    rs = ResponsesStream(translated[1])  # type: ignore[index]
    events = _translated(opened, rs, log)
    if stream:
        return StreamingResponse(joined(_encoded(events), opened.chunks),
                                 terminal=lambda err: b"".join(map(encode_event, rs.fail(err))))
    return await _collect(events)


async def _translated(opened: Opened, rs: ResponsesStream, log: UsageLog) -> AsyncIterator[dict]:
    chunks = opened.chunks
    assert chunks is not None
    seen = 0
    try:
        for ev in rs.started():
            yield ev
        for chunk in [*opened.first]:
            log.add_usage(chunk.get("usage"))
            if any(_has_output(choice.get("delta")) for choice in chunk.get("choices") or ()):
                log.first_token()
            log.images += _images_in(chunk)
            for ev in rs.feed(chunk):
                yield ev
        async for chunk in chunks:
            if chunk is HEARTBEAT:
                yield rs.keepalive()
                continue
            if chunk.get("usage"):
                log.add_usage(chunk["usage"])
            log.images += _images_in(chunk)
            for choice in chunk.get("choices") or ():
                size = delta_chars(choice.get("delta"))
                if size > 0:
                    seen += size
                    log.first_token()
                log.finish_reason(choice.get("finish_reason"))
            for ev in rs.feed(chunk):
                yield ev
            yield FLUSH
        for ev in rs.finish():
            _note_terminal(ev, log)
            yield ev
    finally:
        await chunks.aclose()
        estimate(log, seen)


def _has_output(delta: dict | None) -> bool:
    return bool(delta and (delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")))


def _note_terminal(ev: dict, log: UsageLog) -> None:
    if ev.get("type") == "response.failed":
        error = (ev.get("response") or {}).get("error") or {}
        log.status, log.error_type = 502, str(error.get("code") or "server_error")
        log.error_message = redact(str(error.get("message") or ""))[:1000]


async def _encoded(events: AsyncIterator[dict]) -> AsyncIterator[bytes]:
    try:
        async for ev in events:
            yield encode_event(ev) if ev is not FLUSH else b""
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def _collect(events: AsyncIterator[dict]) -> Response:
    """``stream: false``: the terminal event's response object, as JSON."""
    final: dict | None = None
    async for ev in events:
        if ev.get("type") in _TERMINAL:
            final = ev.get("response")
    if final is None:
        raise ProxyError(502, "upstream ended without a response", code="server_error")
    if final.get("status") == "failed":
        error = final.get("error") or {}
        raise ProxyError(502, str(error.get("message") or "upstream failed"), code=error.get("code") or "server_error")
    return json_response(final)


# ---- native passthrough ----------------------------------------------------------

async def _parsed(frames: AsyncIterator[bytes]) -> AsyncIterator[dict]:
    from .sse import SSEParser

    parser = SSEParser()
    try:
        async for frame in frames:
            for event in parser.feed(frame):
                try:
                    yield json.loads(event.data)
                except ValueError:
                    continue
    finally:
        await frames.aclose()  # type: ignore[attr-defined]


class _NativeStream:
    """Relays a native Responses stream as is. Keeps the upstream's latest Response object for the events
    the router adds (heartbeats, a ``response.failed``): complete Response objects, never a stub."""

    __slots__ = ("response",)

    def __init__(self, body: dict) -> None:
        self.response = base_response(new_id("resp_"), now(), str(body.get("model") or ""), response_echo(body),
                                      "in_progress")

    async def relay(self, opened: Opened, log: UsageLog) -> AsyncIterator[bytes]:
        chunks = opened.chunks
        assert chunks is not None
        try:
            async for event in prepend(opened.first, chunks):
                if event is HEARTBEAT:
                    # A reasoning upstream can be silent for minutes; Codex's idle timer counts data events only.
                    yield self._event("response.in_progress", "in_progress")
                    continue
                self._note(event)
                if (event.event or "").endswith(".delta"):
                    log.first_token()
                _native_usage(event, log)
                yield _relayed(event)
        finally:
            await chunks.aclose()

    def failed(self, err: ProxyError) -> bytes:
        return self._event("response.failed", "failed",
                           error={"code": err.code or "server_error", "message": err.message})

    def _note(self, event) -> None:
        # Only lifecycle events carry a "response" key (inside JSON strings the quotes are escaped);
        # after a terminal one the router adds nothing, so it is not parsed here.
        if event.event in _TERMINAL or '"response"' not in event.data:
            return
        try:
            response = json.loads(event.data).get("response")
        except (ValueError, AttributeError):
            return
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            self.response = {**self.response, **response}

    def _event(self, kind: str, status: str, **fields) -> bytes:
        return encode_event({"type": kind, "response": {**self.response, "status": status, **fields}})


def _relayed(event) -> bytes:
    """The event's own bytes; an upstream error event is redacted first (providers echo keys in errors)."""
    head = event.data[:60]
    if event.event in ("error", "response.failed") or '"error"' in head or '"response.failed"' in head:
        return redact(event.raw.decode("utf-8", "replace")).encode()
    return event.raw


def _images_in(chunk: dict) -> int:
    """Images a Gemini image model drew in this chunk (the usage row counts them)."""
    return sum(len((choice.get("delta") or {}).get("images") or ()) for choice in chunk.get("choices") or ())


def _native_usage(event, log: UsageLog) -> None:
    if event.event not in _TERMINAL and '"response.' not in event.data[:60]:
        return
    try:
        data = json.loads(event.data)
    except ValueError:
        return
    if data.get("type") in _TERMINAL:
        log.add_usage(chat_usage_from_responses((data.get("response") or {}).get("usage")))
        log.images = sum(1 for item in (data.get("response") or {}).get("output") or ()
                         if isinstance(item, dict) and item.get("type") == "image_generation_call")
        if data["type"] == "response.failed":
            _note_terminal(data, log)


def chat_usage_from_responses(usage: dict | None) -> dict | None:
    if not isinstance(usage, dict):
        return None
    input_details = usage.get("input_tokens_details") or {}
    return {
        "prompt_tokens": usage.get("input_tokens") or 0,
        "completion_tokens": usage.get("output_tokens") or 0,
        "prompt_tokens_details": {"cached_tokens": input_details.get("cached_tokens"),
                                  "cache_write_tokens": input_details.get("cache_write_tokens")},
        "completion_tokens_details": {
            "reasoning_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens")},
    }
