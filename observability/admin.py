"""Admin pages: the usage explorer (read-only usage rows, filters, CSV export) and the dashboard.

Both are built for tens of millions of usage rows: the explorer never counts the whole table
(PostgreSQL's planner estimate past ``EXACT_COUNT_LIMIT``), offers filter values from the
daily rollups (one query for every filter) instead of ``DISTINCT`` over raw rows, builds its
date hierarchy from them too, and filters on (value, time) indexes; the dashboard reads only
the rollups.
"""

from __future__ import annotations

import csv
import datetime as dt
import json

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.functional import cached_property

from proxy import config as config_mod
from proxy import state
from proxy.models import UsageRecord

from . import charts, dashboard
from .models import Dashboard

EXACT_COUNT_LIMIT = 10_000


class EstimatedCountPaginator(Paginator):
    """Exact counts for small results; the planner's estimate for large ones (no ``COUNT(*)`` over millions).

    The exact count is capped (``COUNT`` over at most ``EXACT_COUNT_LIMIT + 1`` rows), so an estimate
    that was too low costs no more than counting that many rows.
    """

    @cached_property
    def count(self) -> int:
        if connection.vendor != "postgresql":
            return super().count
        sql, params = self.object_list.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0]
        estimate = int((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]["Plan Rows"])
        if estimate > EXACT_COUNT_LIMIT:
            return estimate
        counted = self.object_list.order_by()[:EXACT_COUNT_LIMIT + 1].count()
        return counted if counted <= EXACT_COUNT_LIMIT else max(estimate, counted)


class _RollupValues(admin.SimpleListFilter):
    """A filter whose choices are the values seen in the last 30 days' daily rollups."""

    column = ""

    def lookups(self, request, model_admin):
        return [(v, v) for v in _seen(request)[self.column][:200]]

    def queryset(self, request, queryset):
        return queryset.filter(**{self.column: self.value()}) if self.value() else queryset


ROLLUP_FILTERS = {"key_id": "key", "team_id": "team", "requested_model": "public model",
                  "resolved_model": "upstream model", "credential": "credential", "provider": "provider",
                  "endpoint": "endpoint"}


def _seen(request: HttpRequest) -> dict[str, list[str]]:
    """Every filter's choices from one pass over the daily rollups, once per request."""
    seen = getattr(request, "_usage_filter_choices", None)
    if seen is None:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        with dashboard.small_queries():
            seen = request._usage_filter_choices = dashboard.seen_values(ROLLUP_FILTERS, since)
    return seen


def _rollup_filter(column: str, title: str) -> type[_RollupValues]:
    return type(f"{column.title().replace('_', '')}Filter", (_RollupValues,),
                {"column": column, "title": title, "parameter_name": column})


class StatusClassFilter(admin.SimpleListFilter):
    title = "status class"
    parameter_name = "status_class"

    def lookups(self, request, model_admin):
        return [("2xx", "2xx success"), ("4xx", "4xx client error"), ("5xx", "5xx server/upstream error")]

    def queryset(self, request, queryset):
        value = self.value()
        if value in ("2xx", "4xx", "5xx"):
            low = int(value[0]) * 100
            return queryset.filter(status__gte=low, status__lt=low + 100)
        return queryset


class TimeRangeFilter(admin.SimpleListFilter):
    title = "time range"
    parameter_name = "since"

    def lookups(self, request, model_admin):
        return [("1h", "Last hour"), ("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days")]

    def queryset(self, request, queryset):
        span = dashboard.PERIODS.get(self.value() or "")
        return queryset.filter(created_at__gte=dt.datetime.now(dt.UTC) - span) if span else queryset


EXPORT_FIELDS = ("created_at", "request_id", "key_id", "endpoint", "requested_model", "resolved_model", "credential",
                 "provider", "status", "stream", "prompt_tokens", "cached_tokens", "completion_tokens",
                 "reasoning_tokens", "total_tokens", "tokens_estimated", "ttfb_ms", "latency_ms", "attempts",
                 "client_closed", "error_type")


class _Echo:
    def write(self, value: str) -> str:
        return value


class ReadOnlyAdmin(admin.ModelAdmin):
    """Pages to look at, never to edit: usage is written by the router alone."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "request_id", "key_id", "endpoint", "requested_model", "resolved_model",
                    "credential", "status", "stream", "prompt_tokens", "completion_tokens", "latency")
    list_filter = (TimeRangeFilter, StatusClassFilter,
                   *(_rollup_filter(column, title) for column, title in ROLLUP_FILTERS.items()),
                   "stream", "client_closed")
    search_fields = ("request_id",)  # matched exactly, on its index (get_search_results)
    search_help_text = "Exact request id (the x-request-id header), e.g. req_0123abcd…"
    date_hierarchy = "created_at"
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    list_per_page = 50  # rendering the rows is most of the page's time
    change_list_template = "admin/observability/usagerecord_change_list.html"

    def get_search_results(self, request, queryset, search_term):
        """The exact request id on its index: the default ``UPPER(request_id) = UPPER(…)`` scans every row."""
        term = search_term.strip()
        return (queryset.filter(request_id=term) if term else queryset), False

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj: UsageRecord) -> str:
        return f"{obj.latency_ms:.0f} ms"

    def get_urls(self):
        return [path("export.csv", self.admin_site.admin_view(self.export_csv), name="proxy_usagerecord_export"),
                *super().get_urls()]

    def export_csv(self, request: HttpRequest) -> StreamingHttpResponse:
        """The rows the change list shows with the same filters, all of them, streamed (constant memory)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        queryset = self.get_changelist_instance(request).get_queryset(request).order_by("created_at", "id")
        writer = csv.writer(_Echo())

        def lines():
            yield writer.writerow(EXPORT_FIELDS)
            for values in queryset.values_list(*EXPORT_FIELDS).iterator(chunk_size=5000):
                yield writer.writerow(values)

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="usage-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M}.csv"'
        return response


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


@admin.register(Dashboard)
class DashboardAdmin(ReadOnlyAdmin):
    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        window = dashboard.Window.from_query(request.GET)
        points = window.points()
        with dashboard.small_queries():
            totals, per_bucket = dashboard.summary(window)
            tops = dashboard.tops(window)
            options = dashboard.options(window)
        empty = dashboard._figures({})
        per = "hour" if window.step == dashboard.HOUR else "day"

        def line(get) -> list[float | None]:
            return [get(per_bucket.get(p, empty)) for p in points]

        graphs = [
            charts.line_chart(f"Requests per {per} by status class", points, [
                charts.Series(klass, line(lambda f, k=klass: f["by_class"][k])) for klass in dashboard.CLASSES]),
            charts.line_chart("Error rate (4xx + 5xx)", points, [charts.Series("errors", line(
                lambda f: None if f["error_rate"] is None else f["error_rate"] * 100))],
                fmt=lambda v: f"{v:.0f}%"),
            charts.line_chart(f"Tokens per {per}", points, [
                charts.Series(name, line(lambda f, n=name: f["tokens"][n])) for name, _ in dashboard.TOKEN_TYPES]),
            charts.line_chart(f"Cost per {per} (USD)", points,
                              [charts.Series("cost", line(lambda f: float(f["cost"])))], fmt=lambda v: f"${v:.3g}"),
            charts.line_chart("Latency (ms)", points, [charts.Series("p50", line(lambda f: f["latency_p50"])),
                                                      charts.Series("p95", line(lambda f: f["latency_p95"]))]),
            charts.line_chart("Time to first byte (ms)", points, [charts.Series("p50", line(lambda f: f["ttfb_p50"])),
                                                                 charts.Series("p95", line(lambda f: f["ttfb_p95"]))]),
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Dashboard",
            "opts": self.model._meta,
            "window": window,
            "periods": [*dashboard.PERIODS, "custom"],
            "filters": [(name, values, window.filters.get(name, ""))
                        for name, values in options.items()],
            "totals": totals,
            "error_rate": _percent(totals["error_rate"]),
            "latency": {k: _ms(totals[k]) for k in ("latency_p50", "latency_p95", "ttfb_p50", "ttfb_p95")},
            "graphs": graphs,
            "tops": [(dashboard.TOPS[column], entries) for column, entries in tops.items()],
            **_routing_state(),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/observability/dashboard.html", context)


def _routing_state() -> dict:
    from proxy.admin import _limit_rows, _when

    config = config_mod.load()
    deps = [d for pool in config.pools.values() for d in pool if state.has_limits(d)]
    health, cooldowns, usage = state.admin_view(deps)
    return {"cooldowns": [{**cd.to_dict(), "until_text": _when(None if cd.permanent else cd.until)}
                          for cd in cooldowns],
            "limits": _limit_rows(config, usage), "routing_health": health}
