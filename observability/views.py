"""``/metrics`` (Prometheus) and the orchestrator probes ``/health/liveness``, ``/health/readiness``."""

from __future__ import annotations

import hmac

from django.conf import settings

from proxy import config as config_mod
from proxy import db, usage
from proxy import state as state_mod
from proxy.asgi import Request, Response, json_response
from proxy.errors import ProxyError
from proxy.views import _db_ok, presented_key


async def liveness(req: Request) -> Response:
    """The process answers (no database, no Redis: a restart would not fix those)."""
    return json_response({"status": "ok"})


async def readiness(req: Request) -> Response:
    """Ready for traffic: database, Redis (when configured), configuration loaded, usage writer healthy."""
    checks: dict[str, str] = {"database": "ok" if await db.run(_db_ok) else "unreachable"}
    if settings.REDIS_URL:
        checks["redis"] = state_mod.get().health().get("redis") or "unknown"
    try:
        await config_mod.current()
        checks["config"] = "ok"
    except ProxyError:
        checks["config"] = "not loaded"
    stats = usage.writer.stats()
    writer_ok = stats.get("status", "ok") == "ok" if "status" in stats else not stats.get("last_error")
    checks["usage_writer"] = "ok" if writer_ok else "failing"
    ready = all(value == "ok" for value in checks.values())
    return json_response({"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503)


async def metrics(req: Request) -> Response:
    await _authorize_scrape(req)
    from .metrics import render

    body = await db.run(lambda: render(_db_ok))
    return Response(200, body, content_type="text/plain; version=0.0.4; charset=utf-8")


async def _authorize_scrape(req: Request) -> None:
    """``ROUTER_METRICS_TOKEN`` or the master key; open only when ``ROUTER_METRICS_PUBLIC`` says so."""
    if settings.ROUTER_METRICS_PUBLIC:
        return
    key = presented_key(req)
    token = settings.ROUTER_METRICS_TOKEN
    if key and token and hmac.compare_digest(key.encode(), token.encode()):
        return
    config = await config_mod.current()
    if key and config.check_key(key):
        return
    raise ProxyError(401, "GET /metrics needs `Authorization: Bearer <ROUTER_METRICS_TOKEN or the master key>`.",
                     code="invalid_api_key")
