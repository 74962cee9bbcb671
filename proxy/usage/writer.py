"""The background writer: batches of usage rows, one transaction each, nothing lost.

``record()`` only appends to an in-memory queue: the request never waits for
the database. The writer thread wakes every ``ROUTER_USAGE_FLUSH_SECONDS`` (or
at ``BATCH`` rows), cleans the rows (``rows.clean``) and writes each batch in
one ``transaction.atomic()``, calling every ``batch_hooks`` function inside the
same transaction with the rows written, so aggregates kept by hooks never
disagree with the rows.

Two kinds of failure are told apart. The database refusing the batch's data (a
value out of range, a constraint) splits the batch in halves until the refused
row is alone; the others are written (hooks run per sub-batch that commits) and
the refused row is set aside (``rejected``, and in the spool's rejected file),
never retried. The database being unavailable (connection refused, pool
timeout, locked, schema missing) moves the rows to the local spool
(``proxy.usage.spool``) at once and every flush interval after, while writes
are retried with backoff; once the database is back the spool is replayed in
order before newer rows, which queue behind it. Rows also go to the spool when
the queue reaches ``ROUTER_USAGE_MAX_PENDING`` and at shutdown. A row is
dropped only when the spool cannot be written either (``dropped``, logged).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from . import rows as rows_mod
from .spool import Spool, database_tag

log = logging.getLogger("proxy.usage")

# Rows per transaction. Each batch also pays fixed costs (the rollup upserts, the spend updates, the
# commit: ~3 ms), so at a few thousand requests per second a second's rows are one batch.
BATCH = 2000
REJECTED_KEPT = 100
SCAN_SECONDS = 60.0  # how often an idle writer looks for files other (dead) processes spooled

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
        self.spooled = 0  # rows in the spool now, waiting for the database
        self.replayed = 0
        self.failures = 0
        self.failing = False  # the database was unavailable at the last attempt
        self.last_error = ""
        self.rejected_rows: deque[dict[str, Any]] = deque(maxlen=REJECTED_KEPT)
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._inflight: list[dict[str, Any]] = []
        self._spool: Spool | None = None
        self._backlog = False  # the spool may hold rows: newer rows queue behind them
        self._progress: dict[str, int] = {}  # spool file -> rows of it committed by this process
        self._stopped = False
        self._next_scan = 0.0
        self._retry_at = 0.0
        self._backoff = 0.0

    # ---- request path -------------------------------------------------------------------

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row; never raises and never waits for the database."""
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
        """The queue is at its bound (the writer cannot keep up): move it to the spool, or drop the oldest."""
        if self._spill_pending():
            return
        self.pending.popleft()
        self._drop(1, "usage queue full and the spool cannot be written")

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        log.error("%s: %d usage row(s) lost; %d dropped so far", why, n, self.dropped)

    # ---- the spool ----------------------------------------------------------------------------

    def spool(self) -> Spool:
        directory = Path(settings.ROUTER_USAGE_SPOOL_DIR)
        tag = database_tag(connection.settings_dict)
        if self._spool is None or self._spool.dir != directory or self._spool.tag != tag:
            if self._spool is not None:
                self._spool.seal()
            self._spool = Spool(directory, tag)
        return self._spool

    def _spill(self, rows: list[dict[str, Any]]) -> bool:
        if not rows:
            return True
        try:
            self.spool().append(rows)
        except Exception as exc:
            log.error("usage spool %s cannot be written (%s: %s)", settings.ROUTER_USAGE_SPOOL_DIR,
                      type(exc).__name__, exc)
            return False
        self.spooled += len(rows)
        self._backlog = True
        return True

    def _spill_pending(self) -> bool:
        rows = [self.pending.popleft() for _ in range(len(self.pending))]
        if self._spill(rows):
            return True
        self.pending.extendleft(reversed(rows))
        return False

    def _scan(self) -> None:
        """Find rows spooled by an earlier (or another, dead) process for this database."""
        self._next_scan = time.monotonic() + SCAN_SECONDS
        if not self._backlog:
            count = self.spool().count()
            if count:
                log.warning("usage spool holds %d row(s) from earlier; replaying them", count)
                self.spooled += count
                self._backlog = True

    def start(self) -> None:
        """At process start: replay whatever an earlier process left in the spool."""
        if not settings.ROUTER_USAGE_LOGGING:
            return
        try:
            self._scan()
        except Exception:
            log.exception("usage spool scan failed")
        if self._backlog:
            self._start()

    def _replay(self) -> bool:
        """Write the spool, oldest file first; False when the database became unavailable."""
        spool = self.spool()
        spool.seal()
        for path in spool.files():
            with spool.claim(path) as claimed:
                if claimed is None:
                    continue
                rows, torn = claimed
                if torn and path.name not in self._progress:
                    self.spooled = max(0, self.spooled - torn)
                    self._drop(torn, f"unreadable lines in {path.name} (a crash mid-append)")
                # rows of this file this process already committed (an outage stopped an earlier pass)
                start = self._progress.setdefault(path.name, 0)
                for i in range(start, len(rows), BATCH):
                    batch = [rows_mod.clean(r) for r in rows[i:i + BATCH]]
                    try:
                        fresh = _not_yet_written(batch)
                    except Exception as exc:
                        if not unavailable(exc):
                            raise
                        self._failed(exc)
                        return False
                    left = self._commit(fresh)
                    if left:
                        return False
                    self.spooled = max(0, self.spooled - len(batch))
                    self.replayed += len(fresh)
                    self._progress[path.name] = i + len(batch)
                spool.done(path)
                del self._progress[path.name]
        # files still there are held by live routers on the same database: theirs to replay
        self._backlog = False
        self.spooled = 0
        return True

    # ---- writer thread --------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="usage-writer")
                self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(settings.ROUTER_USAGE_FLUSH_SECONDS)
            self._wake.clear()
            if self._stopped:
                break
            try:
                self._cycle()
            except Exception:  # a bug must not kill the thread: rows keep queueing behind it
                log.exception("usage writer cycle failed")
            finally:
                connection.close()  # back to the pool; a dead connection is replaced next time
            with self._idle:
                self._idle.notify_all()

    def _cycle(self) -> None:
        now = time.monotonic()
        if now < self._retry_at:
            self._spill_pending()  # the database is down: keep rows on disk, not only in memory
            return
        if now >= self._next_scan:
            self._scan()
        ok = self._write_all()
        self._backoff = 0.0 if ok else min(30.0, max(1.0, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff if not ok else 0.0

    def _write_all(self) -> bool:
        """Write everything queued (the spool first); False when the database was unavailable."""
        if self._backlog:
            self._spill_pending()  # newer rows queue behind the spooled ones (in memory if the disk fails)
            if not self._replay():
                return False
        return self._write_pending()

    def _write_pending(self) -> bool:
        # Only the rows queued when the cycle began: the ones arriving meanwhile wait for the next
        # interval. Chasing them wrote a handful of rows per transaction back to back under steady
        # traffic (each commit's fixed cost is milliseconds: hooks, round trips), never sleeping.
        due = len(self.pending)
        while due > 0 and self.pending:
            batch = [rows_mod.clean(self.pending.popleft()) for _ in range(min(BATCH, due, len(self.pending)))]
            due -= len(batch)
            self._inflight = batch
            try:
                left = self._commit(batch)
            finally:
                self._inflight = []
            if left:
                if not self._spill(left):
                    self.pending.extendleft(reversed(left))  # no spool either: keep them in memory
                    return False
                self._spill_pending()
                return False
        return True

    def _commit(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write ``batch``, isolating rows the database refuses; returns the rows left unwritten
        because the database became unavailable (parts already committed are not among them)."""
        parts = [batch] if batch else []
        while parts:
            part = parts.pop()
            try:
                with transaction.atomic():
                    rows_mod.write_rows(part)
                    for hook in batch_hooks:
                        hook(part)
            except Exception as exc:
                if unavailable(exc):
                    self._failed(exc)
                    return [row for p in (part, *reversed(parts)) for row in p]
                if len(part) == 1:
                    self._reject(part[0], exc)
                else:
                    half = len(part) // 2
                    parts += [part[half:], part[:half]]  # the first half is written first
                continue
            self.written += len(part)
            if self.failing:
                log.warning("usage writes succeed again (%d failed attempt(s) since start)", self.failures)
            self.failing = False
            self.last_error = ""
        return []

    def _failed(self, exc: Exception) -> None:
        """Count a failed write; said once per outage (shutdown retries in a loop, every worker at once)."""
        self.failures += 1
        if not self.failing:
            log.warning("usage write failed (%s: %s); rows go to the spool until the database is back",
                        type(exc).__name__, str(exc)[:200])
        self.failing = True
        self.last_error = type(exc).__name__

    def _reject(self, row: dict[str, Any], exc: Exception) -> None:
        self.rejected += 1
        error = f"{type(exc).__name__}: {exc}"[:500]
        self.rejected_rows.append({**row, "_error": error})
        log.error("usage row %s refused by the database and set aside (%s); %d rejected so far",
                  row.get("request_id"), error[:200], self.rejected)
        try:
            self.spool().reject(row, error)
        except Exception as spool_exc:
            log.error("rejected usage row not kept on disk (%s): %r", type(spool_exc).__name__, row)

    # ---- control ----------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything queued so far, the spool included, retrying at once; False if the database
        could not take it all within ``timeout`` (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        if self._thread is None:
            while self.pending or self._backlog:
                if not self._write_all() or time.monotonic() > deadline:
                    return False
            return True
        self._retry_at = 0.0
        while self.pending or self._inflight or self._backlog:
            self._wake.set()
            with self._idle:
                self._idle.wait(0.05)
            if time.monotonic() > deadline:
                return False
            if self.failing:
                time.sleep(0.05)  # the database is down: retry soon, not in a tight loop
                self._retry_at = 0.0
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Shutdown: write what the database takes within ``timeout``, spool the rest."""
        try:
            if self.flush(timeout):
                return
        except Exception:
            log.exception("usage flush at shutdown failed")
        # The writer thread may still hold a batch it is writing: spool it too. If that write does
        # commit before the process ends, replay skips its rows (already in the table).
        rows = [*self._inflight, *(self.pending.popleft() for _ in range(len(self.pending)))]
        if not self._spill(rows):
            self._drop(len(rows), "shutdown while the database and the spool were unavailable")
        elif rows:
            log.warning("shutdown: %d usage row(s) spooled for the next start", len(rows))
        if self._spool is not None:
            self._spool.seal()

    def stop(self, timeout: float = 5.0) -> None:
        """End the writer thread (tests: a second writer in one process would replay the first's spool)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def state(self) -> str:
        if self.failing:
            return "failing"
        if len(self.pending) + self.spooled > settings.ROUTER_USAGE_DEGRADED_PENDING:
            return "backlog"
        return "ok"

    def stats(self) -> dict[str, Any]:
        return {"state": self.state(), "pending": len(self.pending), "written": self.written,
                "spooled": self.spooled, "replayed": self.replayed, "rejected": self.rejected,
                "dropped": self.dropped, "unpriced": self.unpriced, "write_failures": self.failures,
                "last_error": self.last_error or None}


def _not_yet_written(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose request_id is not in the table yet: replaying a file twice (a crash after a commit,
    before the file was deleted) writes nothing twice."""
    from ..models import UsageRecord

    ids = {r["request_id"] for r in batch}
    seen = set(UsageRecord.objects.filter(request_id__in=ids).values_list("request_id", flat=True))
    return [r for r in batch if r["request_id"] not in seen] if seen else batch
