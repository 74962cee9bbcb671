"""The dashboard's figures, read from the rollups only (never the raw usage rows).

Short windows read the hourly table and chart per hour. Longer ones (7 and 30 days: whole UTC
days, today's included) read the daily table and chart per day: 30 days are a few thousand rollup
rows, whatever the traffic. A window that starts or ends inside a day reads those hours from the
hourly table. Totals are the sum of the chart's buckets
(one query less); top-N tables merge the segments' groups.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, CharField, DecimalField, F, IntegerField, Q, QuerySet, Sum, Value, When
from django.db.models.functions import TruncDay

from .models import BUCKETS_MS, LATENCY_BUCKETS, TTFB_BUCKETS, UsageDaily, UsageHourly
from .rollups import percentile

PERIODS = {"1h": dt.timedelta(hours=1), "24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7),
           "30d": dt.timedelta(days=30)}
FILTERS = {"key": "key_id", "team": "team_id", "model": "requested_model", "credential": "credential"}
CLASSES = ("2xx", "4xx", "5xx")
TOKEN_TYPES = (("input", "prompt_tokens"), ("cached", "cached_tokens"), ("cache writes", "cache_write_tokens"),
               ("output", "completion_tokens"), ("reasoning", "reasoning_tokens"))
TOP_N = 10
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)
#: windows longer than this chart per day and read whole days from the daily table
HOURLY_UP_TO = dt.timedelta(days=2)


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
        span = PERIODS[period]
        if span > HOURLY_UP_TO:
            # charted per day: whole UTC days, today's included (a partial first day would chart as a dip)
            end = _midnight(now) + DAY
            return cls(end - span, end, period, filters)
        end = now.replace(minute=0, second=0, microsecond=0) + HOUR
        return cls(end - span, end, period, filters)

    @property
    def step(self) -> dt.timedelta:
        return HOUR if self.end - self.start <= HOURLY_UP_TO else DAY

    def points(self) -> list[dt.datetime]:
        """The chart's buckets: every hour of the window, or every UTC day it touches."""
        if self.step == HOUR:
            first, count = self.start, int((self.end - self.start) / HOUR)
        else:
            first = _midnight(self.start)
            count = int((_midnight(self.end - dt.timedelta(microseconds=1)) - first) / DAY) + 1
        return [first + i * self.step for i in range(count)]


def _day(value: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC) if value else None
    except ValueError:
        return None


def _midnight(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Segment:
    """Rollup rows covering part of the window, and the expression of their chart bucket."""

    rows: QuerySet
    bucket: Any


def segments(window: Window) -> Iterator[Segment]:
    """The daily rows of the window's whole days, then the hourly rows of the rest (its edges), if any."""
    filters = {FILTERS[name]: value for name, value in window.filters.items()}
    hourly = UsageHourly.objects.filter(**filters)
    if window.step == HOUR:
        yield Segment(hourly.filter(hour__gte=window.start, hour__lt=window.end), F("hour"))
        return
    first = _midnight(window.start)
    first = first if first == window.start else first + DAY
    last = max(_midnight(window.end), first)
    if first < last:
        yield Segment(UsageDaily.objects.filter(**filters, day__gte=first, day__lt=last), F("day"))
    edges = Q()
    if window.start < first:
        edges |= Q(hour__gte=window.start, hour__lt=min(first, window.end))
    if last < window.end:
        edges |= Q(hour__gte=max(last, window.start), hour__lt=window.end)
    if edges:
        yield Segment(hourly.filter(edges), TruncDay("hour", tzinfo=dt.UTC))


def _sums() -> dict[str, Any]:
    """Aggregates over rollup rows, named ``x_<column>`` (an alias may not shadow the column it sums)."""
    sums: dict[str, Any] = {f"x_{column}": Sum(column) for column in (
        "requests", "priced_requests", "latency_ms_sum", "ttfb_ms_sum", "ttfb_count", "streams", "client_closed",
        "images", *(column for _, column in TOKEN_TYPES), *LATENCY_BUCKETS, *TTFB_BUCKETS)}
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
        "streams": get("streams"), "client_closed": get("client_closed"), "images": get("images"),
    }


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for name, value in more.items():
        if value is not None:
            into[name] = into.get(name, 0) + value


def sums_per_bucket(window: Window) -> dict[dt.datetime, dict[str, Any]]:
    out: dict[dt.datetime, dict[str, Any]] = {}
    for segment in segments(window):
        for r in segment.rows.values(b=segment.bucket).annotate(**_sums()).order_by():
            _merge(out.setdefault(r.pop("b"), {}), r)
    return dict(sorted(out.items()))


def summary(window: Window) -> tuple[dict[str, Any], dict[dt.datetime, dict[str, Any]]]:
    """(totals, figures per chart bucket): buckets without traffic are absent."""
    per_bucket = sums_per_bucket(window)
    whole: dict[str, Any] = {}
    for sums in per_bucket.values():
        _merge(whole, sums)
    return _figures(whole), {when: _figures(sums) for when, sums in per_bucket.items()}


def totals(window: Window) -> dict[str, Any]:
    return summary(window)[0]


def series(window: Window) -> dict[dt.datetime, dict[str, Any]]:
    return summary(window)[1]


TOPS = {"requested_model": "Models", "credential": "Credentials", "key_id": "Keys", "team_id": "Teams"}


def tops(window: Window, n: int = TOP_N) -> dict[str, list[dict[str, Any]]]:
    """The top ``n`` of every dimension in ``TOPS`` by requests: one query per segment (a UNION ALL)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for segment in segments(window):
        parts = [segment.rows.annotate(dim=Value(dimension, output_field=CharField()), name=F(dimension))
                 .values("dim", "name").annotate(n=Sum("requests"), cost=Sum("cost_usd", output_field=DecimalField()),
                           errors=Sum(Case(When(~Q(status_class="2xx"), then=F("requests")), default=0,
                                           output_field=IntegerField())),
                           input=Sum("prompt_tokens"), output=Sum("completion_tokens"), images_n=Sum("images"))
                 .order_by() for dimension in TOPS]
        for r in parts[0].union(*parts[1:], all=True):
            _merge(merged.setdefault((r.pop("dim"), r.pop("name")), {}), r)
    out: dict[str, list[dict[str, Any]]] = {dimension: [] for dimension in TOPS}
    for (dimension, name), r in sorted(merged.items(), key=lambda item: (-item[1]["n"], item[0][1])):
        if len(out[dimension]) < n:
            out[dimension].append({
                "name": name, "requests": r["n"], "errors": r.get("errors", 0), "input": r.get("input", 0),
                "output": r.get("output", 0), "images": r.get("images_n", 0), "cost": r.get("cost") or Decimal(0),
                "error_rate": r.get("errors", 0) / r["n"] if r["n"] else None})
    return out


def top(window: Window, dimension: str, n: int = TOP_N) -> list[dict[str, Any]]:
    return tops(window, n)[dimension]


@contextmanager
def small_queries() -> Iterator[None]:
    """Rollup queries read a few thousand rows: on PostgreSQL, starting parallel workers or JIT-compiling
    them costs more than they save (tens of milliseconds per query on a busy machine)."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('max_parallel_workers_per_gather', '0', true), "
                               "set_config('jit', 'off', true)")
        yield


def seen_values(columns: Iterable[str], since: dt.datetime) -> dict[str, list[str]]:
    """The non-empty values of each rollup column since ``since``: one pass over the daily table."""
    columns = tuple(columns)
    values: dict[str, set[str]] = {column: set() for column in columns}
    for row in UsageDaily.objects.filter(day__gte=_midnight(since)).values_list(*columns).distinct().order_by():
        for column, value in zip(columns, row, strict=True):
            if value:
                values[column].add(value)
    return {column: sorted(found) for column, found in values.items()}


def options(window: Window) -> dict[str, list[str]]:
    """Values the filters offer: what the rollups of the last 30 days contain."""
    seen = seen_values(FILTERS.values(), window.end - dt.timedelta(days=30))
    return {name: seen[column][:500] for name, column in FILTERS.items()}


__all__ = ["BUCKETS_MS", "PERIODS", "Window", "options", "series", "summary", "top", "tops", "totals"]
