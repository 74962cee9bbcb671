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
from observability.models import BUCKETS_MS, UsageHourly
from proxy import usage
from proxy.models import UsageRecord

pytestmark = pytest.mark.django_db(transaction=True)

NOW = dt.datetime.now(dt.UTC).replace(minute=30, second=0, microsecond=0)
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


def test_rebuild_from_raw_rows_gives_the_same_rollups(written):
    incremental = sorted(UsageHourly.objects.values_list(*rollups.DIMENSIONS, "requests", "prompt_tokens", "lat_3"))
    UsageHourly.objects.all().delete()
    rollups.rebuild(until=NOW + dt.timedelta(hours=1))
    rebuilt = sorted(UsageHourly.objects.values_list(*rollups.DIMENSIONS, "requests", "prompt_tokens", "lat_3"))
    assert rebuilt == incremental


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


def test_dashboard_reads_only_rollups(written, admin_client):
    with CaptureQueriesContext(connection) as queries:
        res = admin_client.get("/admin/observability/dashboard/?period=7d")
    assert res.status_code == 200
    assert not [q["sql"] for q in queries if UsageRecord._meta.db_table in q["sql"]]
    html = res.content.decode()
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"') == 6 and 'class="series"' in html
    assert f'id="total-requests">{UsageRecord.objects.count()}<' in html


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
    res = admin_client.get(url, {"q": one})
    assert res.context["cl"].result_count == 1 and one in res.content.decode()
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


def test_retention_prunes_old_rows_in_batches(written, settings, monkeypatch):
    from observability import retention

    settings.ROUTER_USAGE_RETENTION_DAYS = 1
    settings.ROUTER_ROLLUP_RETENTION_DAYS = 1
    monkeypatch.setattr(retention, "BATCH", 7)
    cutoff = NOW - dt.timedelta(days=1)
    old = UsageRecord.objects.filter(created_at__lt=cutoff).count()
    old_hours = UsageHourly.objects.filter(hour__lt=cutoff).count()
    assert old and old_hours
    assert retention.prune(now=NOW) == (old, old_hours)
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
