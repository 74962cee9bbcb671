"""OpenTelemetry traces, only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Off, nothing here imports OpenTelemetry and no observer is registered: the request path
pays nothing. On, every API request becomes a SERVER span (continuing the client's W3C
``traceparent``) and every upstream attempt a CLIENT child span whose context is sent
upstream in ``traceparent``; names and attributes follow the GenAI semantic conventions,
plus the router's own (``router.*``).

Cost: the SDK's live ``Span`` validates every attribute under a lock as it is set (about
90 µs of CPU per request here, for two spans). The request path instead records plain
values (ids, nanosecond clocks, one attribute dict) and, when the request has ended, hands
finished ``ReadableSpan`` objects — what exporters consume — to the SDK's
``BatchSpanProcessor``, whose thread encodes and exports them (OTLP over HTTP, configured by
the standard ``OTEL_*`` variables). Sampling follows the client's ``sampled`` flag and the
SDK's configured sampler (``OTEL_TRACES_SAMPLER``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)

_provider: Any = None
_processor: Any = None
_sampler: Any = None
_resource: Any = None
_scope: Any = None
_current: ContextVar[_Trace | None] = ContextVar("router_trace", default=None)

#: proxy.usage endpoint -> gen_ai.operation.name
OPERATIONS = {"chat.completions": "chat", "responses": "chat", "messages": "chat", "embeddings": "embeddings",
              "images": "generate_content"}
#: credential type -> gen_ai.provider.name (the conventions' well-known values where one exists)
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini", "vertex-ai": "gcp.vertex_ai",
             "proxy": "auto_ai_router", "demo": "auto_ai_router"}


def enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup() -> bool:
    """Install the tracer provider and exporter (once per process); False when tracing is off."""
    global _provider, _processor, _sampler, _resource, _scope
    if _provider is not None:
        return True
    if not enabled():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    _resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "auto-ai-router"})
    _provider = TracerProvider(resource=_resource)
    _processor = BatchSpanProcessor(OTLPSpanExporter())
    _provider.add_span_processor(_processor)
    _sampler = _provider.sampler
    _scope = InstrumentationScope("auto_ai_router")
    log.info("OpenTelemetry tracing on: exporting spans over OTLP/HTTP")
    return True


def shutdown() -> None:
    """Export what is queued (server shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def flush(timeout_ms: int = 5000) -> bool:
    return _provider.force_flush(timeout_ms) if _provider is not None else True


class _Trace:
    """What one request's spans will say, recorded as plain values while it runs."""

    __slots__ = ("attempts", "attrs", "end", "error", "name", "parent_id", "remote", "span_id", "start", "trace_id")

    def __init__(self, trace_id: int, parent_id: int | None, name: str, attrs: dict) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id
        self.span_id = random.getrandbits(64) or 1
        self.name = name
        self.attrs = attrs
        self.start = time.time_ns()
        self.end = 0
        self.error = False
        self.attempts: list[tuple] = []


def _parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a valid W3C ``traceparent``, else None."""
    if not value or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] == "ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(flags & 1)


def _noop() -> None:
    return None


def start_request(method: str, path: str, headers: dict[str, str]) -> Callable[[], None]:
    """Start recording the request's span in this context; returns what ends (and emits) it."""
    from opentelemetry import trace as trace_api

    parent = _parse_traceparent(headers.get("traceparent"))
    if parent is not None:
        trace_id, parent_id, sampled = parent
        parent_ctx = trace_api.set_span_in_context(trace_api.NonRecordingSpan(trace_api.SpanContext(
            trace_id, parent_id, is_remote=True, trace_flags=trace_api.TraceFlags(1 if sampled else 0))))
    else:
        trace_id, parent_id, parent_ctx = random.getrandbits(128) or 1, None, None
    name = f"{method} {path}"
    if not _sampler.should_sample(parent_ctx, trace_id, name, trace_api.SpanKind.SERVER).decision.is_sampled():
        return _noop
    trace = _Trace(trace_id, parent_id, name, {"http.request.method": method, "url.path": path})
    token = _current.set(trace)

    def end() -> None:
        _current.reset(token)
        trace.end = time.time_ns()
        _emit(trace)

    return end


def annotate_request(usage_log: Any) -> None:
    """``proxy.usage`` finish hook: what the request did, on its span (GenAI conventions)."""
    trace = _current.get()
    if trace is None:
        return
    operation = OPERATIONS.get(usage_log.endpoint, usage_log.endpoint)
    model = usage_log.requested_model
    trace.name = f"{operation} {model}" if model else operation
    attrs = trace.attrs
    attrs.update({
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": usage_log.prompt,
        "gen_ai.usage.output_tokens": usage_log.completion,
        "gen_ai.usage.cache_read.input_tokens": usage_log.cached,
        "gen_ai.usage.reasoning.output_tokens": usage_log.reasoning,
        "http.response.status_code": usage_log.status,
        "router.endpoint": usage_log.endpoint,
        "router.attempts": usage_log.attempts,
        "router.stream": usage_log.stream,
    })
    cache_writes = sum(int(getattr(usage_log, name, 0) or 0) for name in ("cache_write_5m", "cache_write_1h"))
    if cache_writes:
        attrs["gen_ai.usage.cache_creation.input_tokens"] = cache_writes
    if usage_log.resolved_model:
        attrs["gen_ai.response.model"] = usage_log.resolved_model
    if usage_log.provider:
        attrs["gen_ai.provider.name"] = PROVIDERS.get(usage_log.provider, usage_log.provider)
    if usage_log.credential:
        attrs["router.credential"] = usage_log.credential
    reasons = getattr(usage_log, "finish_reasons", None)
    if reasons:
        attrs["gen_ai.response.finish_reasons"] = sorted(reasons)
    from .metrics import key_entry

    entry = key_entry(usage_log.key_id)
    if entry is not None and entry.alias:
        attrs["router.key_alias"] = entry.alias
    if getattr(usage_log, "team_id", ""):
        attrs["router.team_id"] = usage_log.team_id
    if usage_log.client_closed:
        attrs["router.client_closed"] = True
    if usage_log.error_type:
        attrs["error.type"] = usage_log.error_type
    trace.error = usage_log.status >= 500


def start_attempt(dep: Any, number: int, headers: dict[str, str]) -> Callable[[int | None, Any], None]:
    """An upstream attempt's CLIENT span (child of the request's); its context goes upstream in ``headers``."""
    trace = _current.get()
    if trace is None:
        return _no_attempt
    span_id = random.getrandbits(64) or 1
    headers["traceparent"] = f"00-{trace.trace_id:032x}-{span_id:016x}-01"
    start = time.time_ns()

    def end(status: int | None, error: Any) -> None:
        error_type = (getattr(error, "code", None) or type(error).__name__) if error is not None else None
        trace.attempts.append((span_id, start, time.time_ns(), dep, number, status, error_type))

    return end


def _no_attempt(status: int | None, error: Any) -> None:
    return None


def _emit(trace: _Trace) -> None:
    """Hand the finished spans to the batch processor (its thread encodes and exports them)."""
    from opentelemetry import trace as trace_api
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Status, StatusCode

    sampled = trace_api.TraceFlags(1)
    own = trace_api.SpanContext(trace.trace_id, trace.span_id, is_remote=False, trace_flags=sampled)
    parent = None if trace.parent_id is None else trace_api.SpanContext(
        trace.trace_id, trace.parent_id, is_remote=True, trace_flags=sampled)
    spans = [ReadableSpan(trace.name, context=own, parent=parent, resource=_resource, attributes=trace.attrs,
                          kind=trace_api.SpanKind.SERVER, instrumentation_scope=_scope,
                          status=Status(StatusCode.ERROR) if trace.error else Status(StatusCode.UNSET),
                          start_time=trace.start, end_time=trace.end)]
    for span_id, start, end, dep, number, status, error_type in trace.attempts:
        cred = dep.credential
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": dep.upstream_model,
                 "gen_ai.provider.name": PROVIDERS.get(cred.type, cred.type), "router.credential": cred.name,
                 "router.attempt": number, "router.public_model": dep.name}
        if status:
            attrs["http.response.status_code"] = status
        if error_type:
            attrs["error.type"] = error_type  # never the message: upstream text may carry secrets
        spans.append(ReadableSpan(
            f"chat {dep.upstream_model}", context=trace_api.SpanContext(trace.trace_id, span_id, is_remote=False,
                                                                        trace_flags=sampled),
            parent=own, resource=_resource, attributes=attrs, kind=trace_api.SpanKind.CLIENT,
            instrumentation_scope=_scope, status=Status(StatusCode.ERROR) if error_type else Status(StatusCode.UNSET),
            start_time=start, end_time=end))
    for span in spans:
        _processor.on_end(span)
