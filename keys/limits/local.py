"""Key and team limits in this process (no ``REDIS_URL``, or while Redis is unreachable).

Everything happens between two awaits of the event loop, so admission is atomic here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from proxy.state.values import BUCKETS, Window, window_seconds

from ..snapshot import Scope
from .values import Verdict, refusal, reservation_seconds


class LocalLimits:
    backend = "local"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.windows: dict[str, Window] = {}
        self.inflight: dict[str, dict[str, tuple[float, int]]] = {}  # scope -> request -> (expiry, reserved)
        self.spend: dict[str, int] = {}  # spend key -> nano-dollars

    def _flight(self, name: str, now: float) -> dict[str, tuple[float, int]]:
        flight = self.inflight.setdefault(name, {})
        for rid in [r for r, (expiry, _) in flight.items() if expiry <= now]:
            del flight[rid]  # a request that never finished (a crash, a bug) stops holding its slot
        return flight

    def _window(self, key: str) -> Window:
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = Window()
        return window

    async def admit(self, scopes: Sequence[Scope], rid: str, estimate: int,
                    spend_keys: Sequence[str | None]) -> Verdict:
        return self.admit_now(scopes, rid, estimate, spend_keys)

    def admit_now(self, scopes: Sequence[Scope], rid: str, estimate: int,
                  spend_keys: Sequence[str | None]) -> Verdict:
        missing = [i for i, k in enumerate(spend_keys) if k is not None and k not in self.spend]
        if missing:
            return Verdict(False, seed=missing)
        now = self.clock()
        size = window_seconds() / BUCKETS
        bucket = int(now // size)
        for i, scope in enumerate(scopes):
            if scope.rpm:
                window = self._window("rpm|" + scope.name)
                if window.used(bucket) >= scope.rpm:
                    return refusal(i, "rpm", window.wait(scope.rpm, now, size))
            if scope.tpm:
                window = self._window("tpm|" + scope.name)
                if window.used(bucket) >= scope.tpm:
                    return refusal(i, "tpm", window.wait(scope.tpm, now, size))
            flight = self._flight(scope.name, now)
            if scope.parallel and len(flight) >= scope.parallel:
                return refusal(i, "parallel", 1.0)
            key = spend_keys[i]
            if key is not None:
                spend, reserved = self.spend[key], sum(amount for _, amount in flight.values())
                if spend + reserved >= scope.budget_nano:
                    return refusal(i, "budget", 0.0, spend, reserved)
        verdict = Verdict(True)
        expiry = now + reservation_seconds()
        for i, scope in enumerate(scopes):
            if scope.rpm:
                self._window("rpm|" + scope.name).add(bucket, 1)
            if scope.parallel or spend_keys[i] is not None:
                self.inflight[scope.name][rid] = (expiry, estimate if spend_keys[i] is not None else 0)
            verdict.windows.append((*self._usage("rpm|" + scope.name, scope.rpm, now, size, bucket),
                                    *self._usage("tpm|" + scope.name, scope.tpm, now, size, bucket)))
        return verdict

    def _usage(self, key: str, limit: int | None, now: float, size: float, bucket: int) -> tuple[int, float]:
        window = self.windows.get(key) if limit else None
        if window is None or not window.used(bucket):
            return 0, 0.0
        return window.total, window.wait(window.total, now, size)

    async def seed(self, spend_key: str, value: int) -> None:
        self.spend.setdefault(spend_key, value)

    def settle(self, scopes: Sequence[Scope], rid: str, spend_keys: Sequence[str | None], cost: int,
               tokens: int) -> None:
        bucket = int(self.clock() // (window_seconds() / BUCKETS))
        for scope, key in zip(scopes, spend_keys, strict=True):
            flight = self.inflight.get(scope.name)
            if flight:
                flight.pop(rid, None)
            if key is not None and cost and key in self.spend:
                self.spend[key] += cost
            if scope.tpm and tokens > 0:
                self._window("tpm|" + scope.name).add(bucket, tokens)

    def health(self) -> dict:
        return {"backend": self.backend}
