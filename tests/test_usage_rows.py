"""Bad values upstreams report (10**13 tokens, negative or "12x" counts, NUL bytes) never stop usage logging:
they are clamped where recorded, a row the database still refuses is isolated and set aside, and batch hooks
see exactly the rows committed."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import DataError, OperationalError, connection, models

from proxy import usage
from proxy.models import UsageRecord
from proxy.usage import UsageLog, UsageWriter
from proxy.usage import rows as usage_rows
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.openai import completion, stream_frames
from tests.fakes.server import Reply

pytestmark = pytest.mark.usefixtures("usage_writers")

INT_MAX = 2**31 - 1


def row(i: int, **extra) -> dict:
    return {"request_id": f"req_{i}", "endpoint": "chat.completions", "status": 200, "latency_ms": 1.0, **extra}


# ---- cleaning by field metadata (no database) ----------------------------------------------


def test_counts_are_clamped_to_the_columns_range():
    cleaned = usage_rows.clean(row(1, prompt_tokens=10**13, completion_tokens=-5, cached_tokens="12x",
                                   reasoning_tokens=3.7, status=10**6, attempts=True))
    assert cleaned["prompt_tokens"] == INT_MAX
    assert cleaned["completion_tokens"] == 0
    assert cleaned["cached_tokens"] == 0  # unparseable: the field's default
    assert cleaned["reasoning_tokens"] == 3
    assert cleaned["status"] == 32767  # PositiveSmallIntegerField
    assert cleaned["attempts"] == 1


def test_strings_are_cut_to_their_column_and_made_storable():
    cleaned = usage_rows.clean(row(1, error_type="e" * 500, requested_model=12345, credential="a\x00b",
                                   error_message="x\ud800y" + "z" * 200_000))
    assert cleaned["error_type"] == "e" * 64
    assert cleaned["requested_model"] == "12345"
    assert cleaned["credential"] == "ab"
    assert cleaned["error_message"].startswith("x?y") and len(cleaned["error_message"]) == usage_rows.TEXT_LIMIT


def test_floats_booleans_dates_and_unknown_keys():
    cleaned = usage_rows.clean(row(1, latency_ms=math.inf, ttfb_ms=math.nan, stream="yes",
                                   created_at="2026-01-02T03:04:05+00:00", nonsense=1))
    assert cleaned["latency_ms"] == 0.0 and cleaned["ttfb_ms"] is None
    assert cleaned["stream"] is False
    assert cleaned["created_at"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert "nonsense" not in cleaned and "id" not in cleaned
    assert usage_rows.clean(cleaned) == cleaned  # idempotent: spooled rows are cleaned again on replay


def test_decimal_columns_follow_max_digits_and_decimal_places():
    field = models.DecimalField(max_digits=6, decimal_places=2, default=0)
    field.set_attributes_from_name("cost_usd")
    col = usage_rows._column(field)
    assert usage_rows._decimal("1.005", col) == Decimal("1.01")
    assert usage_rows._decimal(10**9, col) == Decimal("9999.99")
    assert usage_rows._decimal(-(10**9), col) == Decimal("-9999.99")
    assert usage_rows._decimal("12x", col) == 0
    assert usage_rows._decimal(float("nan"), col) == 0


@pytest.mark.django_db
@pytest.mark.parametrize("extreme", [True, False])
def test_cleaned_rows_are_stored_exactly_as_cleaned(extreme):
    """Every column at its edge (or ordinary) goes in with the writer's own statement (binary COPY on
    PostgreSQL, multi-row INSERT on SQLite) and reads back equal: the binary types match the columns."""
    when = datetime(2026, 12, 7, 23, 59, 59, 999999, tzinfo=UTC)
    # SQLite keeps a decimal as a double: 20 digits do not come back
    most = Decimal("99999999.999999999999") if connection.vendor == "postgresql" else Decimal("12345.678901234")
    values = row(1, created_at=when, prompt_tokens=10**13, completion_tokens=0, status=10**6, attempts=10**6,
                 cost_usd=most, ttfb_ms=1e300, latency_ms=-0.0, stream=True,
                 client_closed=True, credential="c" * 500, error_message="héllo \ud800 \U0001f600\t\\N",
                 key_id="k" * 500) if extreme else row(2, ttfb_ms=None, cost_usd=None, key_id="")
    cleaned = usage_rows.clean(values)
    usage_rows.write_rows([cleaned])
    stored = UsageRecord.objects.values(*cleaned).get(request_id=cleaned["request_id"])
    assert stored == cleaned


@pytest.mark.parametrize(("value", "expected", "estimated"), [
    (10**13, INT_MAX, False), (-5, 0, True), ("12x", 0, True), ("17", 17, False), (None, 0, False),
    (float("inf"), 0, True), ([1], 0, True),
])
def test_usage_log_parses_counts_without_raising(value, expected, estimated):
    log = UsageLog("req_x", "chat.completions")
    log.add_usage({"prompt_tokens": value, "completion_tokens": 2, "prompt_tokens_details": ["odd"]})
    assert (log.prompt, log.completion, log.estimated) == (expected, 2, estimated)


# ---- through the router: bad counts from a fake upstream -------------------------------------


@pytest.fixture
def upstream(router_db, openai_fake):
    async def make(*replies):
        fake = openai_fake(*replies)
        await sync_to_async(add_credential)("openai_main", "openai", models=["gpt-4o"],
                                            api_key="sk-upstream-secret", base_url=fake.url + "/v1")
        return fake
    return make


def _with_usage(body: dict, **counts) -> str:
    body["usage"].update(counts)
    return json.dumps(body)


def _stream_with_usage(**counts) -> list:
    frames = stream_frames(["Hel", "lo"])
    usage_frame = json.loads(frames[-2][len("data: "):])
    usage_frame["usage"].update(counts)
    frames[-2] = f"data: {json.dumps(usage_frame)}\n\n"
    return frames


@pytest.mark.django_db(transaction=True)
async def test_absurd_counts_from_upstream_are_clamped_and_later_rows_still_written(app, upstream):
    await upstream(
        Reply(body=_with_usage(completion(), prompt_tokens=10**13, total_tokens=10**13 + 3)),
        Reply(body=_with_usage(completion(), prompt_tokens=-7)),
        Reply(sse=_stream_with_usage(prompt_tokens="12x"), content_type="text/event-stream"),
        Reply(body=json.dumps(completion())),
    )
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
    for body in (chat, chat, {**chat, "stream": True}, chat):
        res = await call(app, "POST", "/v1/chat/completions", body, AUTH)
        assert res.status == 200
    assert await usage.aflush()
    rows = await sync_to_async(lambda: list(UsageRecord.objects.order_by("id")))()
    assert [(r.prompt_tokens, r.total_tokens, r.tokens_estimated) for r in rows] == [
        (INT_MAX, INT_MAX, False),  # 10**13 clamped, the row written
        (0, 3, True),  # a negative count is unknown
        (0, 2, True),  # "12x": unknown, the row says the count is estimated
        (9, 12, False),  # a later row is not blocked
    ]
    assert usage.writer.stats()["rejected"] == 0


# ---- a row the database refuses ---------------------------------------------------------------


@pytest.fixture
def poison_check(transactional_db):
    """A real constraint: the database refuses any row whose request_id is 'poison'."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE proxy_usagerecord ADD CONSTRAINT no_poison CHECK (request_id <> 'poison')")
        else:
            cursor.execute("CREATE TRIGGER no_poison BEFORE INSERT ON proxy_usagerecord "
                           "WHEN NEW.request_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poison row'); END")
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE proxy_usagerecord DROP CONSTRAINT no_poison")
        else:
            cursor.execute("DROP TRIGGER no_poison")


def test_a_refused_row_is_set_aside_and_the_rest_written(poison_check):
    writer = UsageWriter()
    hooked: list[list[str]] = []
    usage.batch_hooks.append(lambda rows: hooked.append([r["request_id"] for r in rows]))
    try:
        for i in range(40):
            writer.record(row(i) if i != 17 else {**row(i), "request_id": "poison"})
        assert writer.flush(10)
    finally:
        usage.batch_hooks.pop()
    written = list(UsageRecord.objects.order_by("id").values_list("request_id", flat=True))
    assert written == [f"req_{i}" for i in range(40) if i != 17]
    stats = writer.stats()
    assert (stats["written"], stats["rejected"], stats["pending"], stats["state"]) == (39, 1, 0, "ok")
    assert [r["request_id"] for r in writer.rejected_rows] == ["poison"]
    # hooks ran once per committed sub-batch, with exactly the rows committed
    assert sorted(r for part in hooked for r in part) == sorted(written)
    # and the writer is not stuck: the next rows go straight through
    writer.record(row(99))
    assert writer.flush(10) and UsageRecord.objects.filter(request_id="req_99").exists()


@pytest.mark.django_db(transaction=True)
def test_hooks_share_the_batch_transaction(monkeypatch):
    """A hook that fails for one row rolls back that row too: rows and aggregates never disagree."""
    writer = UsageWriter()

    def hook(rows):
        if any(r["request_id"] == "req_3" for r in rows):
            raise ValueError("cannot account this row")

    usage.batch_hooks.append(hook)
    try:
        for i in range(8):
            writer.record(row(i))
        assert writer.flush(10)
    finally:
        usage.batch_hooks.remove(hook)
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == [f"req_{i}" for i in range(8) if i != 3]
    assert writer.stats()["rejected"] == 1


@pytest.mark.django_db(transaction=True)
def test_refusal_then_outage_writes_nothing_twice(monkeypatch):
    """The database refuses a row, then goes away mid-bisection: the parts already committed are not retried."""
    writer = UsageWriter()
    real = usage_rows.write_rows
    down = {"on": False}

    def flaky(rows):
        if down["on"]:
            raise OperationalError("database is down")
        if any(r["request_id"] == "req_1" for r in rows):
            if len(rows) == 1:
                down["on"] = True  # the outage starts right after the row is isolated
            raise DataError("value out of range")
        real(rows)

    monkeypatch.setattr(usage_rows, "write_rows", flaky)
    for i in range(6):
        writer.record(row(i))
    assert not writer._write_all()
    assert writer.stats()["state"] == "failing"
    down["on"] = False
    monkeypatch.setattr(usage_rows, "write_rows", real)
    assert writer._write_all()
    ids = list(UsageRecord.objects.order_by("request_id").values_list("request_id", flat=True))
    assert ids == ["req_0", "req_2", "req_3", "req_4", "req_5"]
    assert writer.stats()["rejected"] == 1 and writer.stats()["state"] == "ok"


@pytest.mark.django_db(transaction=True)
async def test_health_is_degraded_while_the_writer_fails(app, router_db, monkeypatch, settings):
    monkeypatch.setattr(usage.writer, "failing", True)
    res = await call(app, "GET", "/health")
    assert res.json()["status"] == "degraded" and res.json()["usage_log"]["state"] == "failing"
    monkeypatch.setattr(usage.writer, "failing", False)
    settings.ROUTER_USAGE_DEGRADED_PENDING = -1  # any queue is past the threshold
    res = await call(app, "GET", "/health")
    assert res.json()["status"] == "degraded" and res.json()["usage_log"]["state"] == "backlog"
    settings.ROUTER_USAGE_DEGRADED_PENDING = 10_000
    res = await call(app, "GET", "/health")
    assert res.json()["status"] == "ok" and res.json()["usage_log"]["rejected"] == 0


def test_a_failing_price_lookup_still_records_the_row(monkeypatch):
    from pricing import cost as pricing_cost

    def broken(log):
        raise ArithmeticError("bad price row")

    monkeypatch.setattr(pricing_cost, "of_log", broken)
    recorded: list[dict] = []
    monkeypatch.setattr(usage, "record", recorded.append)
    log = UsageLog("req_price", "chat.completions")
    log.add_usage({"prompt_tokens": 5, "completion_tokens": 1})
    log.finish()
    assert [(r["request_id"], r["cost_usd"]) for r in recorded] == [("req_price", None)]
