"""The batched usage writer: off the request path, survives a database outage, bounded, flushed at exit,
never stopped by one row the database refuses."""

from __future__ import annotations

import httpx
import pytest
from django.db import OperationalError

from proxy.models import UsageRecord
from proxy.usage import UsageWriter
from proxy.usage import rows as usage_rows
from tests.live import LiveRouter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("usage_writers")]


def row(i: int) -> dict:
    return {"request_id": f"req_{i}", "endpoint": "chat.completions", "status": 200, "latency_ms": 1.0}


def test_rows_are_written_in_batches_by_the_thread():
    writer = UsageWriter()
    for i in range(1200):
        writer.record(row(i))
    assert writer.flush(10)
    assert UsageRecord.objects.count() == 1200
    assert writer.stats()["written"] == 1200


def test_rows_arriving_during_a_write_wait_for_the_next_interval(monkeypatch):
    """A cycle writes what was queued when it began, in one transaction; rows finishing meanwhile wait
    for the next interval. Chasing them wrote a few rows per transaction back to back under steady
    traffic, which cost more than the requests themselves."""
    writer = UsageWriter()
    monkeypatch.setattr(writer, "_start", lambda: None)  # no thread: the test drives the cycles
    real = usage_rows.write_rows
    batches: list[int] = []

    def writing(rows):
        batches.append(len(rows))
        if len(batches) <= 5:
            writer.record(row(1000 + len(batches)))  # a request finished while the batch was written
        return real(rows)

    monkeypatch.setattr(usage_rows, "write_rows", writing)
    for i in range(3):
        writer.record(row(i))
    assert writer._write_all()
    assert batches == [3] and [r["request_id"] for r in writer.pending] == ["req_1001"]
    assert writer._write_all()
    assert batches == [3, 1] and [r["request_id"] for r in writer.pending] == ["req_1002"]
    assert writer.flush(10) and UsageRecord.objects.count() == 3 + 5


def test_database_outage_keeps_rows_and_retries(monkeypatch):
    writer = UsageWriter()
    real = usage_rows.write_rows
    calls = {"n": 0}

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OperationalError("database is down")
        return real(rows)

    monkeypatch.setattr(usage_rows, "write_rows", flaky)
    for i in range(5):
        writer.record(row(i))
    assert not writer._write_all()  # first attempt fails: rows kept (in the spool)
    assert writer.stats()["spooled"] == 5 and writer.stats()["write_failures"] == 1
    assert not writer._write_all()
    assert writer._write_all()
    assert list(UsageRecord.objects.order_by("id").values_list("request_id", flat=True)) == [
        f"req_{i}" for i in range(5)]


def test_at_the_bound_the_queue_moves_to_the_spool(settings, monkeypatch):
    settings.ROUTER_USAGE_MAX_PENDING = 3
    writer = UsageWriter()
    monkeypatch.setattr(writer, "_start", lambda: None)  # no thread: the database "never comes back"
    for i in range(5):
        writer.record(row(i))
    assert writer.stats()["dropped"] == 0 and writer.stats()["spooled"] == 3
    assert [r["request_id"] for r in writer.pending] == ["req_3", "req_4"]


def test_logging_off_records_nothing(settings):
    settings.ROUTER_USAGE_LOGGING = False
    writer = UsageWriter()
    writer.record(row(1))
    assert writer.stats()["pending"] == 0


def test_pending_rows_are_flushed_when_the_router_stops(tmp_path):
    yaml = ("server: {master_key: sk-live}\ncredentials: [{name: demo, type: demo}]\n"
            "models: [{name: demo, credential: demo}]\n")
    router = LiveRouter(yaml, tmp_path, env={"ROUTER_USAGE_FLUSH_SECONDS": "600"}).start()
    try:
        res = httpx.post(router.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-live"},
                         json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert res.status_code == 200
        assert router.usage_rows(wait_for=1, timeout=0.5) == []  # still queued (flush interval is long)
    finally:
        router.stop()
    [written] = router.usage_rows(wait_for=1, timeout=2)
    assert written["request_id"] == res.headers["x-request-id"]
