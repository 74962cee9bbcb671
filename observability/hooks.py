"""Where metrics and tracing plug into the request path (installed once, at app start).

Each piece is registered only when it is on: with ``ROUTER_METRICS=false`` and no
``OTEL_EXPORTER_OTLP_ENDPOINT`` the observer lists stay empty and requests pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from proxy import asgi, pipeline, usage

    from . import rollups, tracing

    hooks = getattr(usage, "batch_hooks", None)
    if hooks is not None and rollups.add_rows not in hooks:
        hooks.append(rollups.add_rows)
    if settings.ROUTER_METRICS:
        from . import metrics

        usage.finish_hooks.append(metrics.on_finish)
        pipeline.attempt_observers.append(_metrics_attempt)
        asgi.request_observers.append(_metrics_request)
        asgi.stream_observers.append(metrics.OPEN_STREAMS.inc)
    if tracing.setup():
        usage.finish_hooks.append(tracing.annotate_request)
        pipeline.attempt_observers.append(tracing.start_attempt)
        asgi.request_observers.append(tracing.start_request)


def _metrics_request(method: str, path: str, headers: dict[str, str]) -> Callable[[], None]:
    from .metrics import IN_FLIGHT

    IN_FLIGHT.inc()
    return IN_FLIGHT.dec


def _metrics_attempt(dep: Any, number: int, headers: dict[str, str]) -> Callable[[int | None, Any], None]:
    from .metrics import on_attempt

    def end(status: int | None, error: Any) -> None:
        on_attempt(dep, status, error is not None)

    return end
