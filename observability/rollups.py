"""Hourly and daily usage aggregates, maintained by the usage writer in the same transaction as the rows.

``add_rows`` is a ``proxy.usage.batch_hooks`` entry: the writer thread calls it with every
batch it writes, inside the batch's transaction, so a batch's rows and its aggregates commit
or roll back together. Rows are summed in memory per (hour, dimensions), those sums per
(day, dimensions), and each set is upserted with ``INSERT … ON CONFLICT DO UPDATE SET
x = x + excluded.x`` (PostgreSQL and SQLite alike), hourly table first, each in a fixed order,
so two router processes updating the same hours cannot deadlock.

``rebuild`` recomputes whole hours from the raw rows and the days they fall in from those
hours (``manage.py rebuild_rollups``).
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, CharField, Count, F, FloatField, IntegerField, Q, Sum, Value, When
from django.db.models.functions import Coalesce, TruncDay, TruncHour

from . import models as m
from .metrics import status_class
from .models import BUCKETS_MS, DIMENSIONS, LATENCY_BUCKETS, SUMS, TTFB_BUCKETS, UsageDaily, UsageHourly

_UPSERT_ROWS = 200  # rows per statement: 51 parameters each stays under SQLite's variable limit
_FINITE_BOUNDS = BUCKETS_MS[:-1]


def bucket(ms: float) -> int:
    """Index of the histogram bucket holding ``ms`` (upper bounds inclusive)."""
    return bisect.bisect_left(_FINITE_BOUNDS, ms)


def cache_write_fields() -> tuple[str, ...]:
    """The usage row's cache-write token columns (Anthropic's 5-minute and 1-hour writes)."""
    from proxy.models import UsageRecord

    return tuple(f.name for f in UsageRecord._meta.concrete_fields
                 if f.name.startswith(("cache_write", "cache_creation")) and f.name.endswith("tokens"))


def _hour(value: Any) -> dt.datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _day(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _next_day(value: dt.datetime) -> dt.datetime:
    day = _day(value)
    return day if day == value else day + dt.timedelta(days=1)


def summarize(rows: Iterable[dict[str, Any]]) -> dict[tuple, list]:
    """Sum usage rows (the writer's dicts) per (hour, dimensions)."""
    writes = cache_write_fields()
    n_sums, n_buckets = len(SUMS), len(BUCKETS_MS)
    ttfb_base = n_sums + n_buckets
    groups: dict[tuple, list] = {}
    for row in rows:
        get = row.get
        key = (_hour(get("created_at")), get("key_id") or "", get("team_id") or "", get("requested_model") or "",
               get("resolved_model") or "", get("credential") or "", get("provider") or "", get("endpoint") or "",
               status_class(int(get("status") or 0)))
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = [0, 0, 0, 0, 0, 0, 0, 0, 0, Decimal(0), 0.0, 0.0, 0, 0] + [0] * (2 * n_buckets)
        cost = get("cost_usd")
        ttfb = get("ttfb_ms")
        latency = float(get("latency_ms") or 0.0)
        acc[0] += 1
        if get("stream"):
            acc[1] += 1
        if get("client_closed"):
            acc[2] += 1
        acc[3] += int(get("prompt_tokens") or 0)
        acc[4] += int(get("cached_tokens") or 0)
        for name in writes:
            acc[5] += int(get(name) or 0)
        acc[6] += int(get("completion_tokens") or 0)
        acc[7] += int(get("reasoning_tokens") or 0)
        acc[13] += int(get("images") or 0)
        if cost is not None:
            acc[8] += 1
            acc[9] += cost if type(cost) is Decimal else Decimal(cost)
        acc[10] += latency
        acc[n_sums + bucket(latency)] += 1
        if ttfb is not None:
            ttfb = float(ttfb)
            acc[11] += ttfb
            acc[12] += 1
            acc[ttfb_base + bucket(ttfb)] += 1
    return groups


def by_day(groups: dict[tuple, list]) -> dict[tuple, list]:
    """``summarize``'s hourly sums summed again per (day, dimensions)."""
    days: dict[tuple, list] = {}
    for (hour, *rest), sums in groups.items():
        key = (_day(hour), *rest)
        acc = days.get(key)
        if acc is None:
            days[key] = list(sums)
        else:
            for i, value in enumerate(sums):
                acc[i] += value
    return days


def add_rows(rows: Sequence[dict[str, Any]]) -> None:
    """``proxy.usage`` batch hook: fold a written batch into the hourly and daily tables (same transaction)."""
    from . import retention

    retention.ensure_started()
    groups = summarize(rows)
    if groups:
        upsert(groups)
        upsert(by_day(groups), UsageDaily)


def upsert(groups: dict[tuple, list], model: type = UsageHourly) -> None:
    dimensions = DIMENSIONS if model is UsageHourly else m.DAILY_DIMENSIONS
    table = connection.ops.quote_name(model._meta.db_table)
    fields = [model._meta.get_field(name) for name in (*dimensions, *m.MEASURES)]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    conflict = ", ".join(connection.ops.quote_name(name) for name in dimensions)
    updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}"
                        for c in (connection.ops.quote_name(name) for name in m.MEASURES))
    placeholder = "(" + ", ".join(["%s"] * len(fields)) + ")"
    items = sorted(groups.items(), key=lambda item: item[0])  # one lock order for every process
    with connection.cursor() as cursor:
        for start in range(0, len(items), _UPSERT_ROWS):
            chunk = items[start:start + _UPSERT_ROWS]
            params: list[Any] = []
            for key, sums in chunk:
                params.extend(f.get_db_prep_value(v, connection) for f, v in zip(fields, (*key, *sums), strict=True))
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {', '.join([placeholder] * len(chunk))} "
                           f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}", params)


def _class_expression() -> Case:
    return Case(*(When(status__gte=c * 100, status__lt=c * 100 + 100, then=Value(f"{c}xx")) for c in range(1, 6)),
                default=Value("other"), output_field=CharField())


def _bucket_sums(field: str, prefix: str) -> dict[str, Sum]:
    out = {}
    low = None
    for i, high in enumerate(BUCKETS_MS):
        cond = Q(**{f"{field}__isnull": False})
        if low is not None:
            cond &= Q(**{f"{field}__gt": low})
        if high != float("inf"):
            cond &= Q(**{f"{field}__lte": high})
        out[f"{prefix}{i}"] = Sum(Case(When(cond, then=1), default=0, output_field=IntegerField()))
        low = high
    return out


def rebuild(since: dt.datetime | None = None, until: dt.datetime | None = None) -> int:
    """Recompute the hours in [since, until) from the raw rows, then the days holding them from the
    hours; returns the hourly rows written.

    ``until`` defaults to the start of the current hour: the writer is still adding to that one.
    """
    from proxy.models import UsageRecord

    until = _hour(until or dt.datetime.now(dt.UTC))
    raw = UsageRecord.objects.filter(created_at__lt=until)
    hourly = UsageHourly.objects.filter(hour__lt=until)
    if since is not None:
        since = _hour(since)
        raw, hourly = raw.filter(created_at__gte=since), hourly.filter(hour__gte=since)
    writes = cache_write_fields()
    zero = Value(0)
    grouped = (
        raw.annotate(hour=TruncHour("created_at", tzinfo=dt.UTC), status_class=_class_expression())
        .values("hour", "key_id", *(("team_id",) if _has_field("team_id") else ()), "requested_model",
                "resolved_model", "credential", "provider", "endpoint", "status_class")
        .annotate(
            requests=Count("id"),
            streams=Sum(Case(When(stream=True, then=1), default=0, output_field=IntegerField())),
            client_closed_n=Sum(Case(When(client_closed=True, then=1), default=0, output_field=IntegerField())),
            prompt=Sum("prompt_tokens"), cached=Sum("cached_tokens"),
            writes=Sum(sum((F(name) for name in writes), zero)) if writes else Sum(zero),
            completion=Sum("completion_tokens"), reasoning=Sum("reasoning_tokens"),
            images_n=Sum("images") if _has_field("images") else Sum(zero),
            priced=Count("cost_usd") if _has_field("cost_usd") else Count(None),
            cost=Sum("cost_usd") if _has_field("cost_usd") else Sum(zero),
            latency=Coalesce(Sum("latency_ms"), 0.0, output_field=FloatField()),
            ttfb=Coalesce(Sum("ttfb_ms"), 0.0, output_field=FloatField()), ttfb_n=Count("ttfb_ms"),
            **_bucket_sums("latency_ms", "l"), **_bucket_sums("ttfb_ms", "t"),
        )
        .order_by()
    )

    def items():
        for g in grouped.iterator(chunk_size=2000):
            item = UsageHourly(
                hour=g["hour"], key_id=g["key_id"], team_id=g.get("team_id") or "",
                requested_model=g["requested_model"], resolved_model=g["resolved_model"],
                credential=g["credential"], provider=g["provider"], endpoint=g["endpoint"],
                status_class=g["status_class"], requests=g["requests"], streams=g["streams"] or 0,
                client_closed=g["client_closed_n"] or 0, prompt_tokens=g["prompt"] or 0,
                cached_tokens=g["cached"] or 0, cache_write_tokens=g["writes"] or 0,
                completion_tokens=g["completion"] or 0, reasoning_tokens=g["reasoning"] or 0,
                images=g["images_n"] or 0, priced_requests=g["priced"] or 0, cost_usd=g["cost"] or 0,
                latency_ms_sum=g["latency"], ttfb_ms_sum=g["ttfb"], ttfb_count=g["ttfb_n"])
            for i in range(len(BUCKETS_MS)):
                setattr(item, LATENCY_BUCKETS[i], g[f"l{i}"] or 0)
                setattr(item, TTFB_BUCKETS[i], g[f"t{i}"] or 0)
            yield item

    with transaction.atomic():
        hourly.delete()
        written = _bulk_create(UsageHourly, items())
        rebuild_days(since, until)
    return written


def rebuild_days(since: dt.datetime | None = None, until: dt.datetime | None = None,
                 hourly: type = UsageHourly, daily: type = UsageDaily) -> int:
    """Recompute the daily rollups of the UTC days touching [since, until) from the hourly ones.

    On PostgreSQL the daily table is locked against writes until the caller's transaction ends, so
    a batch the writer commits meanwhile lands either in the hours summed here or on top of them.
    """
    end = _next_day(until or dt.datetime.now(dt.UTC))
    days, hours = daily.objects.filter(day__lt=end), hourly.objects.filter(hour__lt=end)
    if since is not None:
        days, hours = days.filter(day__gte=_day(since)), hours.filter(hour__gte=_day(since))
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {connection.ops.quote_name(daily._meta.db_table)} IN EXCLUSIVE MODE")
        days.delete()
        grouped = (hours.annotate(d=TruncDay("hour", tzinfo=dt.UTC)).values("d", *m.GROUPS)
                   .annotate(**{f"s_{name}": Sum(name) for name in m.MEASURES}).order_by())
        return _bulk_create(daily, (
            daily(day=g["d"], **{name: g[name] for name in m.GROUPS}, **{name: g[f"s_{name}"] for name in m.MEASURES})
            for g in grouped.iterator(chunk_size=2000)))


def _bulk_create(model: type, items: Iterable) -> int:
    written = 0
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= 1000:
            model.objects.bulk_create(batch)
            written += len(batch)
            batch = []
    model.objects.bulk_create(batch)
    return written + len(batch)


def _has_field(name: str) -> bool:
    from proxy.models import UsageRecord

    return any(f.name == name for f in UsageRecord._meta.concrete_fields)


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) from histogram bucket counts, interpolated inside its bucket (ms)."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            low = BUCKETS_MS[i - 1] if i else 0.0
            high = BUCKETS_MS[i]
            if high == float("inf"):
                return float(low)
            return low + (high - low) * (rank - seen) / count
        seen += count
    return float(BUCKETS_MS[-2])
