"""OpenTelemetry traces, only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

Off, nothing here imports OpenTelemetry and no observer is registered: the request path
pays nothing. On, every API request gets a SERVER span (continuing the client's W3C
``traceparent``) and every upstream attempt a CLIENT child span whose context is sent
upstream in ``traceparent``; names and attributes follow the GenAI semantic conventions,
plus the router's own (``router.*``). Spans leave through a ``BatchSpanProcessor``: the
request path only appends to its queue; a background thread exports (OTLP over HTTP,
configured by the standard ``OTEL_*`` variables).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_tracer: Any = None
_provider: Any = None

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
    global _tracer, _provider
    if _tracer is not None:
        return True
    if not enabled():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "auto-ai-router"})
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("auto_ai_router")
    log.info("OpenTelemetry tracing on: exporting spans over OTLP/HTTP")
    return True


def shutdown() -> None:
    """Export what is queued (server shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def flush(timeout_ms: int = 5000) -> bool:
    return _provider.force_flush(timeout_ms) if _provider is not None else True


def start_request(method: str, path: str, headers: dict[str, str]) -> Callable[[], None]:
    """Start the request's span as the current context; returns what ends it."""
    from opentelemetry import context, propagate, trace

    parent = propagate.extract(headers)
    span = _tracer.start_span(f"{method} {path}", context=parent, kind=trace.SpanKind.SERVER,
                              attributes={"http.request.method": method, "url.path": path})
    token = context.attach(trace.set_span_in_context(span, parent))

    def end() -> None:
        context.detach(token)
        span.end()

    return end


def annotate_request(usage_log: Any) -> None:
    """``proxy.usage`` finish hook: what the request did, on its span (GenAI conventions)."""
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = trace.get_current_span()
    if not span.is_recording():
        return
    operation = OPERATIONS.get(usage_log.endpoint, usage_log.endpoint)
    model = usage_log.requested_model
    span.update_name(f"{operation} {model}" if model else operation)
    attrs: dict[str, Any] = {
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
    }
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
        attrs["gen_ai.response.finish_reasons"] = list(reasons)
    for name, attr in (("key_alias", "router.key_alias"), ("team_id", "router.team_id")):
        value = getattr(usage_log, name, "")
        if value:
            attrs[attr] = value
    if usage_log.client_closed:
        attrs["router.client_closed"] = True
    if usage_log.error_type:
        attrs["error.type"] = usage_log.error_type
    span.set_attributes(attrs)
    if usage_log.status >= 500:
        span.set_status(Status(StatusCode.ERROR, usage_log.error_type or str(usage_log.status)))


def start_attempt(dep: Any, number: int, headers: dict[str, str]) -> Callable[[int | None, Any], None]:
    """An upstream attempt's CLIENT span (child of the request's); its context goes upstream in ``headers``."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Status, StatusCode

    cred = dep.credential
    span = _tracer.start_span(f"chat {dep.upstream_model}", kind=trace.SpanKind.CLIENT, attributes={
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": dep.upstream_model,
        "gen_ai.provider.name": PROVIDERS.get(cred.type, cred.type),
        "router.credential": cred.name,
        "router.attempt": number,
        "router.public_model": dep.name,
    })
    propagate.inject(headers, context=trace.set_span_in_context(span))

    def end(status: int | None, error: Any) -> None:
        if status:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", getattr(error, "code", None) or type(error).__name__)
            span.set_status(Status(StatusCode.ERROR))  # no message: upstream text may carry secrets
        span.end()

    return end
