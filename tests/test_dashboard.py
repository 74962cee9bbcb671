"""Hourly rollups, the dashboard's figures and the usage explorer, checked against SQL over the raw rows."""

from __future__ import annotations

import datetime as dt
import random
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Sum
from django.test.utils import CaptureQueriesContext

from observability import dashboard, rollups
from observability.models import BUCKETS_MS, GROUPS, MEASURES, UsageDaily, UsageHourly
from proxy import usage
from proxy.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)


def _anchor() -> dt.datetime:
    """The current hour's :30, or yesterday's 23:30 before 06:00 UTC: the rows, spread over the 30 hours
    before it, then fall on exactly two dates whatever the time the suite runs."""
    now = dt.datetime.now(dt.UTC).replace(minute=30, second=0, microsecond=0)
    return now if now.hour >= 6 else now.replace(hour=0, minute=0) - dt.timedelta(minutes=30)


NOW = _anchor()
MODELS = ("gpt-4o", "claude-sonnet-4-6", "gemini-2.5-flash")
CREDENTIALS = {"gpt-4o": "openai_main", "claude-sonnet-4-6": "anthropic_main", "gemini-2.5-flash": "gemini_main"}


def make_rows(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        model = rng.choice(MODELS)
        status = rng.choice((200, 200, 200, 200, 400, 429, 502))
        ttfb = None if status != 200 or rng.random() < 0.2 else rng.uniform(20, 4000)
        rows.append({
            "created_at": NOW - dt.timedelta(hours=rng.randrange(0, 30), minutes=rng.randrange(0, 29)),
            "request_id": f"req_{i:06d}", "key_id": rng.choice(("master", "k1", "k2")), "endpoint": rng.choice(
                ("chat.completions", "responses")), "requested_model": model, "resolved_model": model + "-up",
            "credential": CREDENTIALS[model], "provider": model.split("-")[0], "status": status,
            "stream": rng.random() < 0.5, "prompt_tokens": rng.randrange(0, 5000),
            "cached_tokens": rng.randrange(0, 50),
            "completion_tokens": rng.randrange(0, 800), "reasoning_tokens": rng.randrange(0, 20),
            "ttfb_ms": ttfb, "latency_ms": (ttfb or 0) + rng.uniform(1, 20000), "client_closed": rng.random() < 0.05,
            "cost_usd": None if model.startswith("gemini") else Decimal(rng.randrange(0, 10**6)) / 10**8,
            "cache_write_5m_tokens": rng.randrange(0, 30), "cache_write_1h_tokens": rng.randrange(0, 5),
            "images": rng.choice((0, 0, 0, 1, 4)), "team_id": rng.choice(("", "t1")),
        })
    return rows


@pytest.fixture
def written(router_db):
    rows = make_rows(400)
    for row in rows:
        usage.record(dict(row))
    assert usage.writer.flush(30)
    assert UsageRecord.objects.count() == len(rows)
    return rows


def raw_by_hour_and_model() -> dict:
    from django.db.models.functions import TruncHour

    out = {}
    for r in (UsageRecord.objects.annotate(h=TruncHour("created_at", tzinfo=dt.UTC)).values("h", "requested_model")
              .annotate(n=Count("id"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"), k=Sum("cached_tokens"),
                        r=Sum("reasoning_tokens"), lat=Sum("latency_ms"))):
        out[(r["h"], r["requested_model"])] = (r["n"], r["p"], r["c"], r["k"], r["r"], round(r["lat"], 3))
    return out


def rollup_by_hour_and_model() -> dict:
    out = {}
    for r in (UsageHourly.objects.values("hour", "requested_model")
              .annotate(n=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"),
                        k=Sum("cached_tokens"), r=Sum("reasoning_tokens"), lat=Sum("latency_ms_sum"))):
        out[(r["hour"], r["requested_model"])] = (r["n"], r["p"], r["c"], r["k"], r["r"], round(r["lat"], 3))
    return out


def test_writer_keeps_rollups_equal_to_the_raw_rows(written):
    assert UsageHourly.objects.exists()
    assert rollup_by_hour_and_model() == raw_by_hour_and_model()
    # histogram buckets hold every row once
    lat = sum(sum(getattr(h, f"lat_{i}") for i in range(len(BUCKETS_MS))) for h in UsageHourly.objects.all())
    assert lat == len(written)
    ttfb = UsageHourly.objects.aggregate(n=Sum("ttfb_count"))["n"]
    assert ttfb == sum(1 for r in written if r["ttfb_ms"] is not None)


def raw_by_day_and_key(**filters) -> dict:
    from django.db.models.functions import TruncDay

    out = {}
    for r in (UsageRecord.objects.filter(**filters).annotate(d=TruncDay("created_at", tzinfo=dt.UTC))
              .values("d", "key_id").annotate(n=Count("id"), p=Sum("prompt_tokens"), i=Sum("images"),
                                              cost=Sum("cost_usd"), lat=Sum("latency_ms"))):
        out[(r["d"], r["key_id"])] = (r["n"], r["p"], r["i"], r["cost"] or 0, round(r["lat"], 3))
    return out


def daily_by_day_and_key() -> dict:
    out = {}
    for r in (UsageDaily.objects.values("day", "key_id").annotate(
            n=Sum("requests"), p=Sum("prompt_tokens"), i=Sum("images"), cost=Sum("cost_usd"),
            lat=Sum("latency_ms_sum"))):
        out[(r["day"], r["key_id"])] = (r["n"], r["p"], r["i"], r["cost"], round(r["lat"], 3))
    return out


def test_writer_keeps_daily_rollups_equal_to_the_raw_rows(written):
    days = {r["created_at"].date() for r in written}
    assert len(days) == 2, "the rows span midnight"  # NOW - 30 h .. NOW
    assert daily_by_day_and_key() == raw_by_day_and_key()
    assert sum(r["images"] for r in written) == UsageDaily.objects.aggregate(n=Sum("images"))["n"] == (
        UsageHourly.objects.aggregate(n=Sum("images"))["n"]) > 0
    # every measure of a day is the sum of its hours
    hours = {}
    for h in UsageHourly.objects.all():
        key = (h.hour.replace(hour=0), *(getattr(h, g) for g in GROUPS))
        hours[key] = [a + getattr(h, name) for a, name in zip(hours.get(key, [0] * len(MEASURES)), MEASURES,
                                                               strict=True)]
    days_ = {(d.day, *(getattr(d, g) for g in GROUPS)): [getattr(d, name) for name in MEASURES]
             for d in UsageDaily.objects.all()}
    assert days_.keys() == hours.keys()
    for key, sums in days_.items():
        assert sums == pytest.approx(hours[key]), key


def test_rebuild_from_raw_rows_gives_the_same_rollups(written):
    incremental = sorted(UsageHourly.objects.values_list(*rollups.DIMENSIONS, "requests", "prompt_tokens", "lat_3",
                                                         "images"))
    daily = sorted(UsageDaily.objects.values_list("day", *GROUPS, "requests", "prompt_tokens", "ttfb_5", "images"))
    UsageHourly.objects.all().delete()
    UsageDaily.objects.update(requests=0, images=0)  # wrong figures a rebuild must replace
    UsageDaily.objects.create(day=NOW.replace(hour=0, minute=0) - dt.timedelta(days=1), key_id="stale",
                              status_class="2xx", requests=5)
    rollups.rebuild(until=NOW + dt.timedelta(hours=1))
    rebuilt = sorted(UsageHourly.objects.values_list(*rollups.DIMENSIONS, "requests", "prompt_tokens", "lat_3",
                                                     "images"))
    assert rebuilt == incremental
    assert sorted(UsageDaily.objects.values_list("day", *GROUPS, "requests", "prompt_tokens", "ttfb_5",
                                                 "images")) == daily
    # a partial rebuild (the last hours only) keeps the days equal to the raw rows too
    UsageHourly.objects.filter(hour__gte=NOW - dt.timedelta(hours=3)).delete()
    rollups.rebuild(since=NOW - dt.timedelta(hours=3), until=NOW + dt.timedelta(hours=1))
    assert daily_by_day_and_key() == raw_by_day_and_key()


def test_dashboard_figures_equal_sql_over_raw_rows(written):
    window = dashboard.Window.from_query({"period": "24h"}, now=NOW)
    raw = UsageRecord.objects.filter(created_at__gte=window.start, created_at__lt=window.end)
    totals = dashboard.totals(window)
    assert totals["requests"] == raw.count()
    assert totals["by_class"]["2xx"] == raw.filter(status__lt=300).count()
    assert totals["by_class"]["4xx"] == raw.filter(status__gte=400, status__lt=500).count()
    assert totals["by_class"]["5xx"] == raw.filter(status__gte=500).count()
    sums = raw.aggregate(p=Sum("prompt_tokens"), c=Sum("completion_tokens"), k=Sum("cached_tokens"))
    assert (totals["tokens"]["input"], totals["tokens"]["output"], totals["tokens"]["cached"]) == (
        sums["p"], sums["c"], sums["k"])
    money = raw.aggregate(cost=Sum("cost_usd"), w5=Sum("cache_write_5m_tokens"), w1=Sum("cache_write_1h_tokens"))
    assert totals["cost"] == pytest.approx(money["cost"], abs=Decimal("1e-9"))
    assert totals["unpriced"] == raw.filter(cost_usd__isnull=True).count() > 0
    assert totals["tokens"]["cache writes"] == money["w5"] + money["w1"]

    # percentiles from the buckets land in the bucket of the exact percentile
    latencies = sorted(raw.values_list("latency_ms", flat=True))
    exact = latencies[int(0.95 * len(latencies)) - 1]
    assert rollups.bucket(totals["latency_p95"]) == rollups.bucket(exact)

    top_models = dashboard.top(window, "requested_model")
    expected = list(raw.values("requested_model").annotate(n=Count("id")).order_by("-n", "requested_model")
                    .values_list("requested_model", "n"))
    assert [(t["name"], t["requests"]) for t in top_models] == expected

    filtered = dashboard.totals(dashboard.Window.from_query({"period": "24h", "model": "gpt-4o"}, now=NOW))
    assert filtered["requests"] == raw.filter(requested_model="gpt-4o").count()
    per_hour = dashboard.series(window)
    assert sum(f["requests"] for f in per_hour.values()) == totals["requests"]


@pytest.mark.parametrize("period", ["7d", "30d", "custom", "hours at both edges"])
def test_long_periods_read_whole_days_and_equal_sql_over_raw_rows(written, period):
    query = {"period": period, "start": (NOW - dt.timedelta(days=3)).date().isoformat(),
             "end": NOW.date().isoformat()}
    if period == "hours at both edges":  # a window that starts and ends inside a day
        window = dashboard.Window(NOW - dt.timedelta(days=3, hours=5), NOW + dt.timedelta(hours=1), "custom")
    else:
        window = dashboard.Window.from_query(query, now=NOW)
        assert window.start.hour == window.end.hour == 0 and window.end > NOW  # whole days, today's included
    assert window.step == dashboard.DAY
    tables = [segment.rows.model for segment in dashboard.segments(window)]
    # both edges of a window inside days come from the hours, in one query
    assert tables == ([UsageDaily, UsageHourly] if period == "hours at both edges" else [UsageDaily])
    raw = UsageRecord.objects.filter(created_at__gte=window.start, created_at__lt=window.end)
    totals, per_day = dashboard.summary(window)
    assert totals["requests"] == raw.count() == len(written)
    sums = raw.aggregate(p=Sum("prompt_tokens"), i=Sum("images"), cost=Sum("cost_usd"))
    assert (totals["tokens"]["input"], totals["images"]) == (sums["p"], sums["i"])
    assert totals["cost"] == pytest.approx(sums["cost"], abs=Decimal("1e-9"))
    assert totals["by_class"]["5xx"] == raw.filter(status__gte=500).count()
    assert {day: f["requests"] for day, f in per_day.items()} == {
        day: sum(n for (d, _key), (n, *_rest) in raw_by_day_and_key().items() if d == day)
        for day in {d for d, _key in raw_by_day_and_key()}}
    assert set(per_day) <= set(window.points()) and window.points()[0].hour == 0
    latencies = sorted(raw.values_list("latency_ms", flat=True))
    assert rollups.bucket(totals["latency_p95"]) == rollups.bucket(latencies[int(0.95 * len(latencies)) - 1])
    for dimension in ("key_id", "credential"):
        expected = list(raw.values(dimension).annotate(n=Count("id")).order_by("-n", dimension)
                        .values_list(dimension, "n"))
        assert [(t["name"], t["requests"]) for t in dashboard.top(window, dimension)] == expected
    key = dashboard.Window(window.start, window.end, window.period, {"key": "k1"})
    assert dashboard.totals(key)["requests"] == raw.filter(key_id="k1").count()


def test_dashboard_reads_only_rollups(written, admin_client):
    with CaptureQueriesContext(connection) as queries:
        res = admin_client.get("/admin/observability/dashboard/?period=7d")
    assert res.status_code == 200
    assert not [q["sql"] for q in queries if UsageRecord._meta.db_table in q["sql"]]
    html = res.content.decode()
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 6 and 'class="series"' in html
    assert f'id="total-requests">{UsageRecord.objects.count()}<' in html
    assert f'id="total-images">{sum(r["images"] for r in written)}<' in html


def test_percentile_interpolates_within_buckets():
    assert rollups.percentile([0] * len(BUCKETS_MS), 0.5) is None
    counts = [0] * len(BUCKETS_MS)
    counts[3] = 10  # all in (100, 250]
    assert 100 < rollups.percentile(counts, 0.5) <= 250
    assert rollups.bucket(100) == 2 and rollups.bucket(100.1) == 3 and rollups.bucket(10**9) == len(BUCKETS_MS) - 1


def test_explorer_filters_search_and_date_hierarchy(written, admin_client):
    url = "/admin/proxy/usagerecord/"
    res = admin_client.get(url)
    assert res.status_code == 200
    res = admin_client.get(url, {"status_class": "5xx", "requested_model": "gpt-4o"})
    expected = UsageRecord.objects.filter(status__gte=500, requested_model="gpt-4o").count()
    assert res.context["cl"].result_count == expected
    one = written[17]["request_id"]
    with CaptureQueriesContext(connection) as queries:
        res = admin_client.get(url, {"q": f" {one} "})
    assert res.context["cl"].result_count == 1 and one in res.content.decode()
    searched = [q["sql"] for q in queries if "request_id" in q["sql"] and one in q["sql"]]
    assert searched and not [s for s in searched if "UPPER" in s.upper() or "LIKE" in s.upper()]  # on its index
    assert admin_client.get(url, {"q": one.upper()}).context["cl"].result_count == 0  # ids are exact
    res = admin_client.get(url, {"team_id": "t1"})
    assert res.context["cl"].result_count == UsageRecord.objects.filter(team_id="t1").count() > 0
    res = admin_client.get(url, {"created_at__year": NOW.year, "created_at__month": NOW.month})
    html = res.content.decode()
    assert res.status_code == 200 and 'id="date-hierarchy-label"' in html
    days = {r["created_at"].day for r in written
            if (r["created_at"].year, r["created_at"].month) == (NOW.year, NOW.month)}
    for day in days:  # every day with traffic is offered, from the rollups
        assert re.search(rf'created_at__day={day}(&|")', html), day


def test_csv_export_streams_every_filtered_row(written, admin_client):
    res = admin_client.get("/admin/proxy/usagerecord/export.csv", {"status_class": "2xx"})
    assert res.status_code == 200 and res.streaming
    lines = b"".join(res.streaming_content).decode().strip().splitlines()
    assert lines[0].startswith("created_at,request_id,")
    assert len(lines) - 1 == UsageRecord.objects.filter(status__lt=300).count()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the planner estimate is PostgreSQL's")
def test_explorer_uses_the_planner_estimate_past_the_limit(written, admin_client, monkeypatch):
    from observability import admin as explorer

    monkeypatch.setattr(explorer, "EXACT_COUNT_LIMIT", 10)
    with CaptureQueriesContext(connection) as queries:
        res = admin_client.get("/admin/proxy/usagerecord/")
    assert res.status_code == 200
    sql = [q["sql"] for q in queries]
    assert any(s.startswith("EXPLAIN") for s in sql)
    assert not any("COUNT(" in s.upper() and UsageRecord._meta.db_table in s for s in sql)
    assert res.context["cl"].result_count > 10
    # a small estimate is counted exactly, but never past the limit (a low estimate stays cheap)
    with CaptureQueriesContext(connection) as queries:
        res = admin_client.get("/admin/proxy/usagerecord/", {"q": written[3]["request_id"]})
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert res.context["cl"].result_count == 1 and counts and all("LIMIT 11" in s for s in counts)


def test_retention_prunes_old_rows_in_batches(written, settings, monkeypatch):
    from observability import retention

    settings.ROUTER_USAGE_RETENTION_DAYS = 1
    settings.ROUTER_ROLLUP_RETENTION_DAYS = 1
    monkeypatch.setattr(retention, "BATCH", 7)
    cutoff = NOW - dt.timedelta(days=1)
    old = UsageRecord.objects.filter(created_at__lt=cutoff).count()
    old_hours = UsageHourly.objects.filter(hour__lt=cutoff).count()
    cutoff_day = cutoff.replace(hour=0, minute=0)
    UsageDaily.objects.create(day=cutoff_day - dt.timedelta(days=2), status_class="2xx", requests=3)
    old_days = UsageDaily.objects.filter(day__lt=cutoff_day).count()
    kept_days = UsageDaily.objects.filter(day__gte=cutoff_day).count()  # the cutoff's day is partly kept
    assert old and old_hours and old_days == 1 and kept_days
    assert retention.prune(now=NOW) == (old, old_hours + old_days)
    assert UsageDaily.objects.count() == kept_days
    assert not UsageRecord.objects.filter(created_at__lt=cutoff).exists()
    assert UsageRecord.objects.count() == len(written) - old


def test_unpriced_and_priced_cost_sums():
    rows = [{"created_at": NOW, "status": 200, "requested_model": "m", "latency_ms": 5.0, "cost_usd": Decimal("0.25")},
            {"created_at": NOW, "status": 200, "requested_model": "m", "latency_ms": 5.0, "cost_usd": None}]
    [(_key, sums)] = rollups.summarize(rows).items()
    assert sums[0] == 2 and sums[8] == 1 and sums[9] == Decimal("0.25")


def test_dashboard_charts_render_in_headless_chromium(written, browser, live_server, django_user_model, tmp_path):
    import io

    from PIL import Image
    from selenium.webdriver.common.by import By

    from tests.browser import admin_login

    django_user_model.objects.create_superuser("ops", "ops@example.com", "dash-pass-123")
    admin_login(browser, live_server.url, "ops", "dash-pass-123")
    browser.get(live_server.url + "/admin/observability/dashboard/?period=7d")
    assert browser.find_element(By.ID, "total-requests").text == str(len(written))
    charts_ = browser.find_elements(By.CSS_SELECTOR, "#dashboard-charts svg.chart")
    assert len(charts_) == 6
    lines = charts_[0].find_elements(By.CSS_SELECTOR, "polyline.series")  # requests: a point every hour
    assert [line.get_attribute("data-series") for line in lines] == ["2xx", "4xx", "5xx"]
    assert all(line.size["width"] > 500 for line in lines)
    # the admin's own stylesheet loaded (served locally): the header is styled, not raw HTML
    assert browser.find_element(By.ID, "header").value_of_css_property("background-color") != "rgba(0, 0, 0, 0)"

    page = tmp_path / "dashboard.png"
    browser.save_screenshot(str(page))
    chart = Image.open(io.BytesIO(charts_[0].screenshot_as_png)).convert("RGB")
    colours = chart.getcolors(maxcolors=1 << 24)
    blue = sum(n for n, (r, g, b) in colours if abs(r - 0x25) < 40 and abs(g - 0x63) < 40 and abs(b - 0xEB) < 40)
    assert chart.width >= 600 and blue > 200  # the 2xx line is drawn, in its colour
    assert len(Image.open(page).convert("L").getcolors(maxcolors=256)) > 10  # a real page, not a blank one
