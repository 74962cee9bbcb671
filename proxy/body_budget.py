"""A process-wide byte budget for request bodies being read and parsed.

Parsing a JSON body costs several times its size in memory (a 31 MiB body of
tiny objects: ~900 MB of Python objects). Every authenticated request reserves
its body's size (``Content-Length``; the size limit for a chunked body, trimmed
once read) before the front reads it, and gives it back once ``parse_body`` is
done with it (or the request ends). When ``ROUTER_BODY_BUDGET_BYTES`` is
spoken for, a request waits up to ``ROUTER_BODY_BUDGET_WAIT`` seconds, then gets
503 + Retry-After. A body larger than the whole budget waits for an empty one.
"""

from __future__ import annotations

import asyncio
import time

from django.conf import settings

from .errors import ProxyError


class BodyBudget:
    def __init__(self) -> None:
        self.used = 0
        self.refused = 0
        self._waiters: list[asyncio.Future] = []

    async def reserve(self, size: int) -> Reservation:
        size = min(size, settings.ROUTER_BODY_BUDGET_BYTES)
        deadline = time.monotonic() + settings.ROUTER_BODY_BUDGET_WAIT
        while self.used and self.used + size > settings.ROUTER_BODY_BUDGET_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.refused += 1
                raise ProxyError(503, "The router is reading too many large request bodies at once; retry shortly.",
                                 code="server_busy", retry_after=1)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait((waiter,), timeout=remaining)
            finally:
                self._waiters.remove(waiter)
        self.used += size
        return Reservation(self, size)

    def _give_back(self, size: int) -> None:
        self.used -= size
        for waiter in self._waiters:
            if not waiter.done():
                waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    def stats(self) -> dict[str, int]:
        return {"bytes_in_use": self.used, "limit": settings.ROUTER_BODY_BUDGET_BYTES, "refused": self.refused}


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Reservation:
    __slots__ = ("_budget", "size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def shrink(self, size: int) -> None:
        if size < self.size:
            self._budget._give_back(self.size - size)
            self.size = size

    def release(self) -> None:
        self.shrink(0)


budget = BodyBudget()
