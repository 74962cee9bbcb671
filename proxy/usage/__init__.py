"""Usage rows: what each request did, queued on the request path and written by one background thread.

``UsageLog`` collects one request's facts and ``finish()`` queues its row
(``record``); ``writer`` (``proxy.usage.writer``) cleans and writes the rows in
batches. ``batch_hooks`` run inside each batch's transaction; ``finish_hooks``
run on the request path when a row is queued.
"""

from __future__ import annotations

import atexit
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pricing import cost as pricing_cost

from ..redaction import redact
from .writer import BATCH, UsageWriter, batch_hooks

__all__ = ["BATCH", "UsageLog", "UsageWriter", "aflush", "batch_hooks", "finish_hooks", "record", "writer"]

log = logging.getLogger(__name__)

MAX_TOKENS = 2**31 - 1  # beyond any real request; keeps a bogus count out of rate-limit windows too

writer = UsageWriter()
record = writer.record


async def aflush() -> bool:
    from asgiref.sync import sync_to_async

    return await sync_to_async(writer.flush, thread_sensitive=False)()


@atexit.register
def _flush_at_exit() -> None:
    try:
        writer.close(5.0)  # what the database does not take in time goes to the spool
    except Exception:
        log.exception("usage rows not flushed at exit")


def token_count(value: Any) -> int | None:
    """A token count from an upstream's usage block; None when it is not a sane count ("12x", -3, NaN)."""
    if type(value) is int:
        number = value
    elif (isinstance(value, float) and math.isfinite(value)) or (isinstance(value, str) and value.strip().isdigit()):
        number = int(value)
    else:
        return None
    return min(number, MAX_TOKENS) if number >= 0 else None


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
        "team_id",
        "ticket",
        "ttfb",
        "ttft",
    )

    def __init__(self, request_id: str, endpoint: str, *, stream: bool = False) -> None:
        self.request_id = request_id
        self.endpoint = endpoint
        self.stream = stream
        self.started = time.perf_counter()
        self.key_id = self.team_id = self.requested_model = self.resolved_model = self.credential = self.provider = ""
        self.ticket = None  # a client key's hold on its limits and budget (``keys.admission``), settled at finish
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
        details = usage.get("prompt_tokens_details")
        details = details if isinstance(details, dict) else {}
        completion_details = usage.get("completion_tokens_details")
        counts = [usage.get("prompt_tokens"), usage.get("completion_tokens"), details.get("cached_tokens"),
                  completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None,
                  details.get("cache_write_tokens"), details.get("cache_write_1h_tokens")]
        parsed = [token_count(c) for c in counts]
        self.prompt, self.completion, self.cached, self.reasoning, writes, self.cache_write_1h = (
            n or 0 for n in parsed)
        self.cache_write_5m = max(0, writes - self.cache_write_1h)
        # a count present but unusable is unknown, not zero: the row says so (and is estimated from the text)
        self.estimated = any(n is None and c not in (None, "") for n, c in zip(parsed, counts, strict=True))

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
        except Exception:  # the row matters more than its price: record it unpriced
            log.exception("cost of request %s not computed", self.request_id)
        if self.cost is None and (self.prompt or self.completion or self.images):
            writer.unpriced += 1
        record({
            "request_id": self.request_id, "key_id": self.key_id, "team_id": self.team_id, "endpoint": self.endpoint,
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
