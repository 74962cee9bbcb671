"""Retention: raw usage rows older than ``ROUTER_USAGE_RETENTION_DAYS`` and hourly and daily rollups
older than ``ROUTER_ROLLUP_RETENTION_DAYS`` are deleted (0 keeps them forever; a day goes once it
is wholly past the cutoff).

Deletes go in small batches by the ``created_at`` index (one short transaction each), so the
writer and the admin never wait behind a long lock. A daemon thread in each serving process
prunes every ``ROUTER_RETENTION_INTERVAL_SECONDS``; several processes pruning at once only
find less to delete.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)

BATCH = 5000
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _delete_older(model, field: str, cutoff: dt.datetime) -> int:
    total = 0
    older = model.objects.filter(**{f"{field}__lt": cutoff})
    while True:
        ids = list(older.order_by(field).values_list("pk", flat=True)[:BATCH])
        if not ids:
            return total
        model.objects.filter(pk__in=ids).delete()
        total += len(ids)


def prune(now: dt.datetime | None = None) -> tuple[int, int]:
    """(raw rows, rollup rows) deleted."""
    from proxy.models import UsageRecord

    from .models import UsageDaily, UsageHourly

    now = now or dt.datetime.now(dt.UTC)
    raw = rolled = 0
    if settings.ROUTER_USAGE_RETENTION_DAYS > 0:
        raw = _delete_older(UsageRecord, "created_at", now - dt.timedelta(days=settings.ROUTER_USAGE_RETENTION_DAYS))
    if settings.ROUTER_ROLLUP_RETENTION_DAYS > 0:
        cutoff = now - dt.timedelta(days=settings.ROUTER_ROLLUP_RETENTION_DAYS)
        rolled = _delete_older(UsageHourly, "hour", cutoff)
        rolled += _delete_older(UsageDaily, "day", cutoff.astimezone(dt.UTC).replace(hour=0, minute=0, second=0,
                                                                                     microsecond=0))
    if raw or rolled:
        log.info("retention: deleted %d usage rows and %d hourly rollups", raw, rolled)
    return raw, rolled


def ensure_started() -> None:
    """Start this process's pruning thread once (from the usage writer, so only serving processes prune)."""
    global _thread
    if _thread is not None:
        return
    if settings.ROUTER_USAGE_RETENTION_DAYS <= 0 and settings.ROUTER_ROLLUP_RETENTION_DAYS <= 0:
        return
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_run, daemon=True, name="usage-retention")
            _thread.start()


def _run() -> None:
    while True:
        try:
            prune()
        except Exception:
            log.exception("retention: pruning failed; trying again next interval")
        finally:
            connection.close()
        time.sleep(settings.ROUTER_RETENTION_INTERVAL_SECONDS)
