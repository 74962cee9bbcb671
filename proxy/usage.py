"""Usage rows, written in batches by one background thread.

``record()`` only appends to a bounded in-memory queue: the request never
waits for the database. The writer thread flushes every
``ROUTER_USAGE_FLUSH_SECONDS`` (or at 500 rows) with one ``COPY`` on PostgreSQL
(``bulk_create`` elsewhere). When the database is down, rows stay queued and
the write is retried with backoff; if the queue reaches
``ROUTER_USAGE_MAX_PENDING`` rows the OLDEST are discarded and counted
(``dropped``, shown in /health) so memory stays bounded.
Pending rows are flushed at interpreter exit (Daphne has no lifespan hook).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from django.conf import settings
from django.db import connection

from pricing import cost as pricing_cost

from .redaction import redact

log = logging.getLogger(__name__)

BATCH = 500


class UsageWriter:
    def __init__(self) -> None:
        self.pending: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.unpriced = 0  # rows with usage but no price for their model (cost_usd null)
        self.written = 0
        self.failures = 0
        self.last_error = ""
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._inflight = 0

    def record(self, row: dict[str, Any]) -> None:
        if not settings.ROUTER_USAGE_LOGGING:
            return
        row.setdefault("created_at", datetime.now(UTC))
        if len(self.pending) >= settings.ROUTER_USAGE_MAX_PENDING:
            self.pending.popleft()
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("usage queue full (%d rows): dropping the oldest rows; %d dropped so far",
                          len(self.pending), self.dropped)
        self.pending.append(row)
        if self._thread is None:
            self._start()
        elif len(self.pending) >= BATCH:
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="usage-writer")
                self._thread.start()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            self._wake.wait(backoff or settings.ROUTER_USAGE_FLUSH_SECONDS)
            self._wake.clear()
            backoff = 0.0 if self._write_all() else min(30.0, max(1.0, backoff * 2))

    def _write_all(self) -> bool:
        """Write everything queued; False when the database refused (rows kept for a retry)."""
        while self.pending:
            batch = [self.pending.popleft() for _ in range(min(BATCH, len(self.pending)))]
            self._inflight = len(batch)
            try:
                write_rows(batch)
            except Exception as exc:  # the database is down or refused: keep the rows
                self.pending.extendleft(reversed(batch))
                self.failures += 1
                self.last_error = type(exc).__name__
                log.warning("usage write failed (%s); %d rows kept for retry", type(exc).__name__, len(self.pending))
                return False
            finally:
                self._inflight = 0
                connection.close()  # back to the pool; a dead connection is replaced next time
            self.written += len(batch)
            self.last_error = ""
        with self._idle:
            self._idle.notify_all()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        if self._thread is None:
            return self._write_all() if self.pending else True
        while self.pending or self._inflight:
            self._wake.set()
            with self._idle:
                self._idle.wait(0.05)
            if time.monotonic() > deadline:
                return False
        return True

    def stats(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "written": self.written, "dropped": self.dropped,
                "unpriced": self.unpriced,
                "write_failures": self.failures, "last_error": self.last_error or None}


def write_rows(rows: list[dict[str, Any]]) -> None:
    """Insert usage rows in one statement (fields a row leaves out get the model's default)."""
    from .models import UsageRecord

    if connection.vendor != "postgresql":
        UsageRecord.objects.bulk_create([UsageRecord(**row) for row in rows])
        return
    # COPY skips model instances and SQL compilation: ~8 us of CPU per row against ~60 us for
    # bulk_create, and this thread shares the GIL with the event loop serving requests.
    fields = _fields(UsageRecord)
    columns = ", ".join(column for _, column, _, _ in fields)
    sql = f"COPY {UsageRecord._meta.db_table} ({columns}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row([_storable(row.get(name, default), limit) for name, _, default, limit in fields])


def _storable(value: Any, limit: int | None) -> Any:
    # PostgreSQL refuses NUL characters and over-long varchars; one such row (an odd upstream
    # error code or message) would fail its whole batch on every retry.
    if isinstance(value, str):
        value = value.replace("\x00", "")
        return value[:limit] if limit else value
    return value


@cache
def _fields(model) -> tuple[tuple[str, str, Any, int | None], ...]:
    """(attribute, column, default, max_length) of every field but the primary key."""
    return tuple((f.attname, f.column, f.get_default(), f.max_length)
                 for f in model._meta.concrete_fields if not f.primary_key)


writer = UsageWriter()
record = writer.record


async def aflush() -> bool:
    from asgiref.sync import sync_to_async

    return await sync_to_async(writer.flush, thread_sensitive=False)()


@atexit.register
def _flush_at_exit() -> None:
    if writer.pending:
        try:
            writer.flush(5.0)
        except Exception:
            log.exception("usage rows lost at shutdown")


#: called with every finished ``UsageLog`` (routing counts its tokens against TPM limits)
finish_hooks: list[Callable[[UsageLog], None]] = []


class UsageLog:
    """What one client request did; ``finish()`` queues its row exactly once."""

    __slots__ = (
        "_done",
        "attempts",
        "cache_write_1h",
        "cache_write_5m",
        "cached",
        "client_closed",
        "completion",
        "cost",
        "credential",
        "dep",
        "endpoint",
        "error_message",
        "error_type",
        "estimated",
        "finish_reasons",
        "finished_at",
        "images",
        "key_id",
        "prompt",
        "provider",
        "reasoning",
        "request_id",
        "requested_model",
        "resolved_model",
        "started",
        "status",
        "stream",
        "ttfb",
        "ttft",
    )

    def __init__(self, request_id: str, endpoint: str, *, stream: bool = False) -> None:
        self.request_id = request_id
        self.endpoint = endpoint
        self.stream = stream
        self.started = time.perf_counter()
        self.key_id = self.requested_model = self.resolved_model = self.credential = self.provider = ""
        self.error_type = self.error_message = ""
        self.status = 200
        self.prompt = self.completion = self.cached = self.reasoning = 0
        self.cache_write_5m = self.cache_write_1h = self.images = 0
        self.cost: Decimal | None = None  # set by finish(), before the hooks run
        self.finished_at: datetime | None = None
        self.estimated = self.client_closed = self._done = False
        self.ttfb: float | None = None
        self.ttft: float | None = None  # to the first content delta of a stream (metrics, not the row)
        self.finish_reasons: set[str] | None = None
        self.attempts = 0
        self.dep = None

    def use(self, dep) -> None:
        self.dep = dep
        self.resolved_model = dep.upstream_model
        self.credential = dep.credential.name
        self.provider = dep.credential.type

    def first_byte(self) -> None:
        if self.ttfb is None:
            self.ttfb = (time.perf_counter() - self.started) * 1000

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = (time.perf_counter() - self.started) * 1000

    def finish_reason(self, reason: object) -> None:
        if isinstance(reason, str) and reason:
            if self.finish_reasons is None:
                self.finish_reasons = set()
            self.finish_reasons.add(reason)

    def add_usage(self, usage: dict | None) -> None:
        """Chat-shaped usage (``prompt_tokens``...); ``prompt_tokens_details.cache_write_tokens`` counts
        every cache write, ``cache_write_1h_tokens`` the part written to a 1-hour cache."""
        if not isinstance(usage, dict):
            return
        self.prompt = int(usage.get("prompt_tokens") or 0)
        self.completion = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        self.cached = int(details.get("cached_tokens") or 0)
        self.cache_write_1h = int(details.get("cache_write_1h_tokens") or 0)
        self.cache_write_5m = max(0, int(details.get("cache_write_tokens") or 0) - self.cache_write_1h)
        self.reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
        self.estimated = False

    def fail(self, err) -> None:
        self.status = err.status
        self.error_type = err.code or err.type
        self.error_message = redact(err.message)[:1000]

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        self.finished_at = datetime.now(UTC)
        try:
            self.cost = pricing_cost.of_log(self)
        except Exception:  # a pricing bug must not lose the row
            log.exception("cannot price request %s", self.request_id)
        if self.cost is None and (self.prompt or self.completion or self.images):
            writer.unpriced += 1
        record({
            "request_id": self.request_id, "key_id": self.key_id, "endpoint": self.endpoint,
            "requested_model": self.requested_model, "resolved_model": self.resolved_model,
            "credential": self.credential, "provider": self.provider, "status": self.status, "stream": self.stream,
            "prompt_tokens": self.prompt, "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion, "cached_tokens": self.cached,
            "reasoning_tokens": self.reasoning, "cache_write_5m_tokens": self.cache_write_5m,
            "cache_write_1h_tokens": self.cache_write_1h, "images": self.images, "cost_usd": self.cost,
            "created_at": self.finished_at, "tokens_estimated": self.estimated, "ttfb_ms": self.ttfb,
            "latency_ms": (time.perf_counter() - self.started) * 1000, "attempts": max(1, self.attempts),
            "client_closed": self.client_closed, "error_type": self.error_type, "error_message": self.error_message,
        })
        for hook in finish_hooks:
            try:
                hook(self)
            except Exception:
                log.exception("usage finish hook failed")
