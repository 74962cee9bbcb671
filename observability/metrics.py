"""Prometheus metrics, prefix ``auto_ai_router_``.

Counters and histograms are updated from two places only: once per finished request
(``proxy.usage.finish_hooks``) and once per upstream attempt (``proxy.pipeline.attempt_hooks``),
so the request path pays a handful of label lookups (tens of microseconds) and nothing
when ``ROUTER_METRICS`` is off. Gauges that describe the process (queue, Redis, database,
cooldowns) are read when ``/metrics`` is scraped.

Several router processes: with ``PROMETHEUS_MULTIPROC_DIR`` set (``scripts/run`` sets it
for its workers) prometheus-client keeps each process's values in memory-mapped files and
the scrape sums them, so any worker answers with the totals of all.

Labels are bounded: model names, credentials, providers, endpoints, status classes and key
hash prefixes, never request ids, raw keys or user text.
"""

from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "auto_ai_router_"
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# The default registry would also export process/platform collectors; the router's own
# registry keeps /metrics to its families (and is the one multiprocess mode aggregates).
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter(PREFIX + "requests_total", "Client requests by outcome.",
                   ["model", "credential", "provider", "endpoint", "status_class"], registry=REGISTRY)
TOKENS = Counter(PREFIX + "tokens_total", "Tokens by type (input includes cached; output includes reasoning).",
                 ["model", "credential", "type"], registry=REGISTRY)
COST = Counter(PREFIX + "cost_usd_total", "Cost in US dollars of priced requests.", ["model", "team"],
               registry=REGISTRY)
KEY_REQUESTS = Counter(PREFIX + "key_requests_total", "Client requests by key (first 12 hex of its hash).",
                       ["key", "status_class"], registry=REGISTRY)
KEY_COST = Counter(PREFIX + "key_cost_usd_total", "Cost in US dollars by key (first 12 hex of its hash).",
                   ["key"], registry=REGISTRY)
DURATION = Histogram(PREFIX + "request_duration_seconds", "Time from request to the last byte.",
                     ["model", "endpoint", "stream"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
TTFT = Histogram(PREFIX + "time_to_first_token_seconds",
                 "Time from request to the first content delta (streams; not to the headers).",
                 ["model", "endpoint"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
ATTEMPTS = Counter(PREFIX + "upstream_attempts_total", "Upstream attempts by credential and upstream status.",
                   ["credential", "provider", "status"], registry=REGISTRY)
UPSTREAM_ERRORS = Counter(PREFIX + "upstream_errors_total", "Failed upstream attempts by credential and status.",
                          ["credential", "provider", "status"], registry=REGISTRY)
FAILOVERS = Counter(PREFIX + "failovers_total", "Requests that needed more than one upstream attempt.",
                    ["model"], registry=REGISTRY)
_LIVE = {"multiprocess_mode": "livesum"}
IN_FLIGHT = Gauge(PREFIX + "in_flight_requests", "API requests being handled.", registry=REGISTRY, **_LIVE)
OPEN_STREAMS = Gauge(PREFIX + "open_streams", "Streaming responses being sent.", registry=REGISTRY, **_LIVE)

_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def status_class(status: int) -> str:
    return _STATUS_CLASSES.get(status // 100, "other")


def key_label(key_hash: str) -> str:
    """How a client key appears in metrics: never the key, a short prefix of its SHA-256."""
    return key_hash[:12] if key_hash else ""


def on_finish(log: Any) -> None:
    """Count one finished request (a ``proxy.usage.UsageLog``)."""
    model = log.requested_model
    credential = log.credential
    klass = status_class(log.status)
    REQUESTS.labels(model, credential, log.provider, log.endpoint, klass).inc()
    for kind, value in (("input", log.prompt), ("cached", log.cached), ("output", log.completion),
                        ("reasoning", log.reasoning)):
        if value:
            TOKENS.labels(model, credential, kind).inc(value)
    cost = getattr(log, "cost", None)
    team = getattr(log, "team_id", "") or ""
    if cost:
        COST.labels(model, team).inc(float(cost) if isinstance(cost, Decimal) else cost)
    entry = key_entry(log.key_id)
    if entry is not None:
        label = key_label(entry.key_hash)
        KEY_REQUESTS.labels(label, klass).inc()
        if cost:
            KEY_COST.labels(label).inc(float(cost))
    elapsed = time.perf_counter() - log.started
    DURATION.labels(model, log.endpoint, "true" if log.stream else "false").observe(elapsed)
    ttft = getattr(log, "ttft", None)
    if ttft is not None:
        TTFT.labels(model, log.endpoint).observe(ttft / 1000)
    if log.attempts > 1:
        FAILOVERS.labels(model).inc()


_by_token: tuple[object, dict] = (None, {})


def key_entry(token: str):
    """The client key behind a usage row's ``key_id`` (its token), from the in-memory key table."""
    global _by_token
    if not token or token == "master":
        return None
    from proxy import config as config_mod

    cfg = config_mod.snapshot()
    table = getattr(cfg, "keys", None)
    if table is None:
        return None
    cached_table, index = _by_token
    if cached_table is not table:  # the table is replaced on every reload: index it once per version
        index = {e.token: e for e in table.by_hash.values()}
        _by_token = (table, index)
    return index.get(token)


def known_keys() -> list[tuple[str, str, str]]:
    """(hash, alias, team id) of every client key: the ``key_info`` series."""
    from proxy import config as config_mod

    table = getattr(config_mod.snapshot(), "keys", None)
    return [(e.key_hash, e.alias, e.team_id or "") for e in table.by_hash.values()] if table else []


def on_attempt(dep: Any, status: int | None, failed: bool) -> None:
    """Count one upstream attempt; ``status`` is the upstream's HTTP status (None: no answer)."""
    cred = dep.credential
    code = str(status) if status else "none"
    ATTEMPTS.labels(cred.name, cred.type, code).inc()
    if failed:
        UPSTREAM_ERRORS.labels(cred.name, cred.type, code).inc()


class ProcessCollector(Collector):
    """Gauges read at scrape time from this process: the usage queue, Redis, cooldowns.

    The usage writer's counts are per process; under several workers each scrape sees the
    answering worker's queue, so these carry a ``pid`` label and the sums are left to PromQL.
    """

    def __init__(self, database_up) -> None:
        self.database_up = database_up

    def collect(self):
        from proxy import state as state_mod
        from proxy import usage

        pid = str(os.getpid())
        stats = usage.writer.stats()
        queue = GaugeMetricFamily(PREFIX + "usage_queue_rows", "Usage rows by state in this process.",
                                  labels=["state", "pid"])
        for name in ("pending", "spooled", "rejected", "dropped", "written"):
            value = stats.get(name)
            if isinstance(value, (int, float)):
                queue.add_metric([name, pid], value)
        yield queue
        health = state_mod.get().health()
        redis = GaugeMetricFamily(PREFIX + "redis_up", "1 when the shared routing state in Redis is reachable "
                                  "(absent when REDIS_URL is not set).", labels=["pid"])
        if health.get("redis") is not None:
            redis.add_metric([pid], 1.0 if health.get("redis") == "ok" else 0.0)
        yield redis
        database = GaugeMetricFamily(PREFIX + "database_up", "1 when the database answered a query at scrape time.",
                                     labels=["pid"])
        database.add_metric([pid], 1.0 if self.database_up() else 0.0)
        yield database
        cooldowns = GaugeMetricFamily(PREFIX + "cooldowns_active",
                                      "Deployments (credential/model) cooling down after upstream errors.")
        cooldowns.add_metric([], float(health.get("cooldowns") or 0))
        yield cooldowns
        # read at scrape time from the in-memory key table (the same in every process)
        info = GaugeMetricFamily(PREFIX + "key_info", "Maps a key label (first 12 hex of its hash) to its "
                                 "alias and team; join on `key`.", labels=["key", "alias", "team"])
        for key_hash, alias, team in known_keys():
            info.add_metric([key_label(key_hash), alias or "", team or ""], 1.0)
        yield info


def render(database_up) -> bytes:
    """The exposition text: this process's registry, or every worker's when multiprocess."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(ProcessCollector(database_up))
    return generate_latest(registry)


class _Forward(Collector):
    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self):
        yield from self.source.collect()
