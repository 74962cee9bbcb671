"""The dashboard's figures, read from the hourly rollups only (never the raw usage rows)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Case, DecimalField, F, IntegerField, Q, QuerySet, Sum, When

from .models import BUCKETS_MS, LATENCY_BUCKETS, TTFB_BUCKETS, UsageHourly
from .rollups import percentile

PERIODS = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7),
           "30d": dt.timedelta(days=30)}
FILTERS = {"key": "key_id", "team": "team_id", "model": "requested_model", "credential": "credential"}
CLASSES = ("2xx", "4xx", "5xx")
TOKEN_TYPES = (("input", "prompt_tokens"), ("cached", "cached_tokens"), ("cache writes", "cache_write_tokens"),
               ("output", "completion_tokens"), ("reasoning", "reasoning_tokens"))
TOP_N = 10


@dataclass
class Window:
    start: dt.datetime
    end: dt.datetime
    period: str
    filters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_query(cls, query: Any, now: dt.datetime | None = None) -> Window:
        now = now or dt.datetime.now(dt.UTC)
        period = query.get("period") or "24h"
        filters = {name: query.get(name) for name in FILTERS if query.get(name)}
        if period == "custom":
            start, end = _day(query.get("start")), _day(query.get("end"))
            if start and end and start <= end:
                return cls(start, end + dt.timedelta(days=1), period, filters)
            period = "24h"
        period = period if period in PERIODS else "24h"
        end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        start = end - max(PERIODS[period], dt.timedelta(hours=1))
        return cls(start, end, period, filters)

    def hours(self) -> list[dt.datetime]:
        count = int((self.end - self.start).total_seconds() // 3600)
        return [self.start + dt.timedelta(hours=i) for i in range(count)]


def _day(value: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC) if value else None
    except ValueError:
        return None


def rows(window: Window) -> QuerySet:
    qs = UsageHourly.objects.filter(hour__gte=window.start, hour__lt=window.end)
    return qs.filter(**{FILTERS[name]: value for name, value in window.filters.items()})


def _sums() -> dict[str, Any]:
    """Aggregates over rollup rows, named ``x_<column>`` (an alias may not shadow the column it sums)."""
    sums: dict[str, Any] = {f"x_{column}": Sum(column) for column in (
        "requests", "priced_requests", "latency_ms_sum", "ttfb_ms_sum", "ttfb_count", "streams", "client_closed",
        *(column for _, column in TOKEN_TYPES), *LATENCY_BUCKETS, *TTFB_BUCKETS)}
    sums["x_cost_usd"] = Sum("cost_usd", output_field=DecimalField())
    for klass in CLASSES:
        sums[f"x_{klass}"] = Sum(Case(When(status_class=klass, then=F("requests")), default=0,
                                      output_field=IntegerField()))
    return sums


def _figures(agg: dict[str, Any]) -> dict[str, Any]:
    def get(name: str) -> Any:
        return agg.get(f"x_{name}") or 0

    requests = get("requests")
    errors = get("4xx") + get("5xx")
    lat = [get(c) for c in LATENCY_BUCKETS]
    ttfb = [get(c) for c in TTFB_BUCKETS]
    return {
        "requests": requests,
        "by_class": {klass: get(klass) for klass in CLASSES},
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "server_error_rate": get("5xx") / requests if requests else None,
        "tokens": {name: get(column) for name, column in TOKEN_TYPES},
        "cost": agg.get("x_cost_usd") or Decimal(0),
        "unpriced": requests - get("priced_requests"),
        "latency_p50": percentile(lat, 0.5), "latency_p95": percentile(lat, 0.95),
        "ttfb_p50": percentile(ttfb, 0.5), "ttfb_p95": percentile(ttfb, 0.95),
        "latency_avg": get("latency_ms_sum") / requests if requests else None,
        "streams": get("streams"), "client_closed": get("client_closed"),
    }


def totals(window: Window) -> dict[str, Any]:
    return _figures(rows(window).aggregate(**_sums()))


def series(window: Window) -> dict[dt.datetime, dict[str, Any]]:
    """Figures per hour of the window (hours without traffic are absent)."""
    per_hour = rows(window).values("hour").annotate(**_sums()).order_by("hour")
    return {r["hour"]: _figures(r) for r in per_hour}


def top(window: Window, dimension: str, n: int = TOP_N) -> list[dict[str, Any]]:
    qs = (rows(window).values(dimension)
          .annotate(n=Sum("requests"), cost=Sum("cost_usd", output_field=DecimalField()),
                    errors=Sum(Case(When(~Q(status_class="2xx"), then=F("requests")), default=0,
                                    output_field=IntegerField())),
                    input=Sum("prompt_tokens"), output=Sum("completion_tokens"))
          .order_by("-n", dimension)[:n])
    return [{"name": r[dimension], "requests": r["n"], "errors": r["errors"], "input": r["input"],
             "output": r["output"], "cost": r["cost"] or Decimal(0),
             "error_rate": r["errors"] / r["n"] if r["n"] else None} for r in qs]


def options(window: Window) -> dict[str, list[str]]:
    """Values the filters offer: what the rollups of the last 30 days contain (small, indexed by hour)."""
    recent = UsageHourly.objects.filter(hour__gte=window.end - dt.timedelta(days=30))
    return {name: [v for v in recent.values_list(column, flat=True).distinct().order_by(column) if v][:500]
            for name, column in FILTERS.items()}


__all__ = ["BUCKETS_MS", "PERIODS", "Window", "options", "series", "top", "totals"]
