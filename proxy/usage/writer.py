"""The background writer: batches of usage rows, one transaction each, never stopped by one row.

``record()`` only appends to an in-memory queue: the request never waits for
the database. The writer thread wakes every ``ROUTER_USAGE_FLUSH_SECONDS`` (or
at ``BATCH`` rows), cleans the rows (``rows.clean``) and writes each batch in
one ``transaction.atomic()``, calling every ``batch_hooks`` function inside the
same transaction with the rows written, so aggregates kept by hooks never
disagree with the rows.

Two kinds of failure are told apart. The database being unavailable
(connection refused, pool timeout, locked, schema missing) keeps the rows for a
retry with backoff. The database refusing the batch's data (a value out of
range, a constraint) splits the batch in halves until the refused row is alone;
the others are written (hooks run per sub-batch that commits) and the refused
row is set aside and counted as ``rejected``, never retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from . import rows as rows_mod

log = logging.getLogger("proxy.usage")

BATCH = 500
REJECTED_KEPT = 100

#: called inside each batch's transaction with the cleaned row dicts written (spend, rollups)
batch_hooks: list[Callable[[list[dict[str, Any]]], None]] = []

# Errors that mean "the database cannot take anything now", not "this data is bad". Matched by
# class name so Django's wrappers, psycopg's own classes (COPY bypasses Django's wrapper) and
# psycopg_pool's PoolTimeout are all covered. ProgrammingError: a missing table or column is a
# deployment not yet migrated, not a bad row.
_UNAVAILABLE = frozenset({"OperationalError", "InterfaceError", "ProgrammingError", "PoolTimeout",
                          "ConnectionFailure", "InternalError"})


def unavailable(exc: BaseException) -> bool:
    return any(cls.__name__ in _UNAVAILABLE for cls in type(exc).__mro__)


class UsageWriter:
    def __init__(self) -> None:
        self.pending: deque[dict[str, Any]] = deque()
        self.written = 0
        self.dropped = 0
        self.unpriced = 0  # rows with usage but no price for their model (cost_usd null)
        self.rejected = 0
        self.failures = 0
        self.failing = False  # the database was unavailable at the last attempt
        self.last_error = ""
        self.rejected_rows: deque[dict[str, Any]] = deque(maxlen=REJECTED_KEPT)
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._inflight = 0

    # ---- request path -------------------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row; never raises and never blocks on the database."""
        if not settings.ROUTER_USAGE_LOGGING:
            return
        try:
            row.setdefault("created_at", datetime.now(UTC))
            if len(self.pending) >= settings.ROUTER_USAGE_MAX_PENDING:
                self._overflow()
            self.pending.append(row)
            if self._thread is None:
                self._start()
            elif len(self.pending) >= BATCH:
                self._wake.set()
        except Exception:
            log.exception("usage row not queued")

    def _overflow(self) -> None:
        self.pending.popleft()
        self.dropped += 1
        if self.dropped % 1000 == 1:
            log.error("usage queue full (%d rows): dropping the oldest rows; %d dropped so far",
                      len(self.pending), self.dropped)

    # ---- writer thread --------------------------------------------------------------------

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
            try:
                ok = self._write_all()
            except Exception:  # a bug must not kill the thread: rows keep queueing behind it
                log.exception("usage writer cycle failed")
                ok = False
            backoff = 0.0 if ok else min(30.0, max(1.0, backoff * 2))

    def _write_all(self) -> bool:
        """Write everything queued; False when the database was unavailable (rows kept for a retry)."""
        while self.pending:
            batch = [rows_mod.clean(self.pending.popleft()) for _ in range(min(BATCH, len(self.pending)))]
            self._inflight = len(batch)
            try:
                left = self._commit(batch)
            finally:
                self._inflight = 0
                connection.close()  # back to the pool; a dead connection is replaced next time
            if left:
                self.pending.extendleft(reversed(left))
                log.warning("usage write failed (%s); %d rows kept for retry", self.last_error, len(self.pending))
                return False
        with self._idle:
            self._idle.notify_all()
        return True

    def _commit(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write ``batch``, isolating rows the database refuses; returns the rows left unwritten
        because the database became unavailable (nothing written twice: parts already committed
        are not among them)."""
        parts = [batch]
        while parts:
            part = parts.pop()
            try:
                with transaction.atomic():
                    rows_mod.write_rows(part)
                    for hook in batch_hooks:
                        hook(part)
            except Exception as exc:
                if unavailable(exc):
                    self.failures += 1
                    self.failing = True
                    self.last_error = type(exc).__name__
                    return [row for p in (part, *reversed(parts)) for row in p]
                if len(part) == 1:
                    self._reject(part[0], exc)
                else:
                    half = len(part) // 2
                    parts += [part[half:], part[:half]]  # the first half is written first
                continue
            self.written += len(part)
            self.failing = False
            self.last_error = ""
        return []

    def _reject(self, row: dict[str, Any], exc: Exception) -> None:
        self.rejected += 1
        self.rejected_rows.append({**row, "_error": f"{type(exc).__name__}: {exc}"[:500]})
        log.error("usage row %s refused by the database and set aside (%s: %s); %d rejected so far",
                  row.get("request_id"), type(exc).__name__, str(exc)[:200], self.rejected)

    # ---- control ----------------------------------------------------------------------------

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

    def state(self) -> str:
        if self.failing:
            return "failing"
        if len(self.pending) > settings.ROUTER_USAGE_DEGRADED_PENDING:
            return "backlog"
        return "ok"

    def stats(self) -> dict[str, Any]:
        return {"state": self.state(), "pending": len(self.pending), "written": self.written,
                "rejected": self.rejected, "dropped": self.dropped, "unpriced": self.unpriced,
                "write_failures": self.failures,
                "last_error": self.last_error or None}
