"""Nothing lost by design: rows the database cannot take go to a local spool and are replayed in order,
at the next start too, without writing anything twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import httpx
import pytest
from django.db import OperationalError, connection

from proxy.models import UsageRecord
from proxy.usage import BATCH, UsageWriter
from proxy.usage import rows as usage_rows
from proxy.usage.spool import Spool
from tests.live import LiveRouter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("usage_writers")]


def row(i: int) -> dict:
    return {"request_id": f"req_{i:04d}", "endpoint": "chat.completions", "status": 200, "latency_ms": 1.0}


def written_ids() -> list[str]:
    return list(UsageRecord.objects.order_by("id").values_list("request_id", flat=True))


@pytest.fixture
def outage(monkeypatch):
    """The database is unreachable from the writer's write function until ``outage.end()``."""
    real = usage_rows.write_rows

    class Outage:
        on = True

        def end(self) -> None:
            self.on = False

    state = Outage()

    def write(rows):
        if state.on:
            raise OperationalError("connection refused")
        real(rows)

    monkeypatch.setattr(usage_rows, "write_rows", write)
    return state


def test_an_outage_longer_than_the_memory_bound_loses_no_row(settings, outage):
    settings.ROUTER_USAGE_MAX_PENDING = 50
    writer = UsageWriter()
    writer._start = lambda: None  # drive the writer by hand
    for i in range(120):  # past the bound twice: the queue moves to the spool instead of dropping
        writer.record(row(i))
    assert not writer._write_all()  # the database is down: the rest goes to the spool too
    for i in range(120, 300):
        writer.record(row(i))
    assert not writer._write_all()
    stats = writer.stats()
    assert (stats["pending"], stats["spooled"], stats["dropped"], stats["state"]) == (0, 300, 0, "failing")
    outage.end()
    for i in range(300, 310):  # rows recorded after the database came back queue behind the spool
        writer.record(row(i))
    assert writer._write_all()
    assert written_ids() == [f"req_{i:04d}" for i in range(310)]
    stats = writer.stats()
    assert (stats["spooled"], stats["replayed"], stats["state"]) == (0, 310, "ok")  # the newer rows too, behind
    assert not list(writer.spool().dir.glob("usage-*.jsonl"))  # replayed files are deleted


def test_a_real_database_error_spools_and_replays_in_order(settings):
    """No patching: the table is really gone (PostgreSQL: UndefinedTable; SQLite: no such table)."""
    settings.ROUTER_USAGE_MAX_PENDING = 20
    writer = UsageWriter()
    writer._start = lambda: None
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE proxy_usagerecord RENAME TO usage_away")
    try:
        for i in range(50):
            writer.record(row(i))
        assert not writer._write_all()
        assert writer.stats()["spooled"] == 50 and writer.stats()["state"] == "failing"
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE usage_away RENAME TO proxy_usagerecord")
    assert writer._write_all()
    assert written_ids() == [f"req_{i:04d}" for i in range(50)]


def test_the_writer_thread_spools_every_interval_while_the_database_is_down(settings, outage):
    settings.ROUTER_USAGE_FLUSH_SECONDS = 0.05
    writer = UsageWriter()
    for i in range(5):
        writer.record(row(i))
    assert not writer.flush(0.5)  # the database is down
    writer.record(row(5))
    deadline = time.monotonic() + 2  # spooled within a flush interval, not after the retry backoff
    while writer.stats()["spooled"] < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert writer.stats()["pending"] == 0 and writer.stats()["spooled"] == 6
    outage.end()
    assert writer.flush(10)
    assert written_ids() == [f"req_{i:04d}" for i in range(6)]


def test_an_outage_is_logged_once_and_its_end_once(settings, outage, caplog):
    writer = UsageWriter()
    writer._start = lambda: None
    writer.record(row(0))
    with caplog.at_level("WARNING", logger="proxy.usage"):
        for _ in range(5):  # shutdown retries like this, in every worker
            assert not writer._write_all()
        outage.end()
        assert writer._write_all()
    assert caplog.text.count("usage write failed") == 1 and writer.stats()["write_failures"] == 5
    assert caplog.text.count("usage writes succeed again (5 failed") == 1
    assert written_ids() == ["req_0000"]


def test_replay_after_a_crash_mid_replay_writes_nothing_twice(settings):
    writer = UsageWriter()
    spool = writer.spool()
    rows = [usage_rows.clean(row(i)) for i in range(10)]
    spool.append(rows)
    spool.seal()
    usage_rows.write_rows(rows[:4])  # committed before the crash; the file was not deleted yet
    writer._start = lambda: None
    writer.start()  # the next process start finds the file
    assert writer.stats()["spooled"] == 10
    assert writer._write_all()
    assert sorted(written_ids()) == [f"req_{i:04d}" for i in range(10)]
    assert writer.stats()["replayed"] == 6 and not spool.files()


def test_a_torn_last_line_is_counted_and_the_rest_replayed(settings):
    writer = UsageWriter()
    spool = writer.spool()
    spool.append([usage_rows.clean(row(i)) for i in range(3)])
    spool.seal()
    [path] = spool.files()
    with path.open("ab") as f:
        f.write(b'{"request_id": "req_9999", "endp')  # killed mid-append
    writer._start = lambda: None
    writer.start()
    assert writer._write_all()
    assert written_ids() == [f"req_{i:04d}" for i in range(3)]
    assert writer.stats()["dropped"] == 1


def test_an_outage_in_the_middle_of_a_replay_resumes_where_it_stopped(settings, monkeypatch):
    writer = UsageWriter()
    spool = writer.spool()
    total = 2 * BATCH + 200  # three batches
    spool.append([usage_rows.clean(row(i)) for i in range(total)])
    spool.seal()
    [path] = spool.files()
    with path.open("ab") as f:
        f.write(b'{"torn')
    real = usage_rows.write_rows
    calls = {"n": 0}

    def write(rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OperationalError("server closed the connection unexpectedly")
        real(rows)

    monkeypatch.setattr(usage_rows, "write_rows", write)
    writer._start = lambda: None
    writer.start()
    assert not writer._write_all()
    assert UsageRecord.objects.count() == BATCH
    assert writer._write_all()
    assert written_ids() == [f"req_{i:04d}" for i in range(total)]
    stats = writer.stats()
    assert (stats["replayed"], stats["dropped"], stats["spooled"]) == (total, 1, 0)


def test_a_file_another_router_holds_is_left_to_it(settings, tmp_path):
    writer = UsageWriter()
    other = Spool(writer.spool().dir, writer.spool().tag)
    other.append([usage_rows.clean(row(1))])  # another live router, still appending (holds the lock)
    writer._start = lambda: None
    writer.start()
    assert writer._write_all()
    assert written_ids() == []
    other.seal()  # it stopped without replaying: the next scan takes the file
    writer._next_scan = 0
    writer.start()
    assert writer._write_all() and written_ids() == ["req_0001"]


def test_an_unwritable_spool_drops_only_then_and_counts(settings, outage, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool directory should be")
    settings.ROUTER_USAGE_SPOOL_DIR = str(blocked / "spool")
    settings.ROUTER_USAGE_MAX_PENDING = 3
    writer = UsageWriter()
    writer._start = lambda: None
    for i in range(5):
        writer.record(row(i))
    assert writer.stats()["dropped"] == 2
    assert [r["request_id"] for r in writer.pending] == ["req_0002", "req_0003", "req_0004"]
    assert not writer._write_all()
    assert writer.stats()["pending"] == 3  # no spool: still kept in memory
    writer.close(0.2)
    assert writer.stats()["dropped"] == 5


def test_rejected_rows_are_kept_in_the_spool_directory(settings, monkeypatch):
    from django.db import DataError

    real = usage_rows.write_rows

    def write(rows):
        if any(r["request_id"] == "req_0002" for r in rows):
            raise DataError("numeric field overflow")
        real(rows)

    monkeypatch.setattr(usage_rows, "write_rows", write)
    writer = UsageWriter()
    writer._start = lambda: None
    for i in range(4):
        writer.record(row(i))
    assert writer._write_all()
    [kept] = [json.loads(line) for line in
              (writer.spool().dir / f"rejected-{writer.spool().tag}.jsonl").read_text().splitlines()]
    assert kept["request_id"] == "req_0002" and "numeric field overflow" in kept["_error"]


# ---- a real router process ----------------------------------------------------------------------

DEMO = ("server: {master_key: sk-live}\ncredentials: [{name: demo, type: demo}]\n"
        "models: [{name: demo, credential: demo}]\n")


def _chat(router: LiveRouter) -> str:
    res = httpx.post(router.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-live"},
                     json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert res.status_code == 200
    return res.headers["x-request-id"]


def _health(router: LiveRouter) -> dict:
    return httpx.get(router.url + "/health", timeout=10).json()


def test_a_real_outage_then_kill_9_then_replay_at_the_next_start(tmp_path):
    """The usage table disappears under a running router (a real database error), the router is killed
    with SIGKILL, the table comes back: the next process start writes every row, once."""
    spool_dir = tmp_path / "spool"
    env = {"ROUTER_USAGE_SPOOL_DIR": str(spool_dir), "ROUTER_USAGE_FLUSH_SECONDS": "0.1"}
    router = LiveRouter(DEMO, tmp_path, env=env).start()
    try:
        first = _chat(router)
        assert [r["request_id"] for r in router.usage_rows(wait_for=1)] == [first]
        with sqlite3.connect(router.db) as conn:
            conn.execute("ALTER TABLE proxy_usagerecord RENAME TO usage_away")
        ids = [_chat(router) for _ in range(5)]
        for _ in range(100):
            health = _health(router)["usage_log"]
            if health["spooled"] == 5:
                break
            time.sleep(0.1)
        assert (health["spooled"], health["pending"], health["state"]) == (5, 0, "failing")
        assert _health(router)["status"] == "degraded"
        os.kill(router.proc.pid, signal.SIGKILL)
        router.proc.wait(10)
    finally:
        router.stop()
    assert list(spool_dir.glob("usage-*.jsonl"))
    with sqlite3.connect(router.db) as conn:
        conn.execute("ALTER TABLE usage_away RENAME TO proxy_usagerecord")
    again = LiveRouter(DEMO, tmp_path, env=env, db=router.db).start()
    try:
        rows = again.usage_rows(wait_for=6)
        assert [r["request_id"] for r in rows] == [first, *ids]
        assert _health(again)["usage_log"]["replayed"] == 5
    finally:
        again.stop()
    assert not list(spool_dir.glob("usage-*.jsonl"))
