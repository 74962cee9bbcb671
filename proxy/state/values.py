"""Values shared by both state backends: keys, cooldowns, admissions, rotation, limit windows."""


from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings

from ..config import Deployment
from ..redaction import redact

log = logging.getLogger(__name__)


BUCKETS = 60
MAX_RETRY_AFTER_BAN = 24 * 3600.0
FAILS_TTL = 3600


def dep_key(dep: Deployment) -> str:
    # "|" cannot appear in a credential name, so the key splits back unambiguously.
    return f"{dep.credential.name}|{dep.upstream_model}"


def split_key(key: str) -> tuple[str, str]:
    cred, _, model = key.partition("|")
    return cred, model



# ---- values ------------------------------------------------------------------------------


@dataclass(slots=True)
class Cooldown:
    key: str
    until: float  # math.inf: permanent
    status: int
    kind: str  # "rate" (429) or "error"
    since: float
    reason: str = ""
    failures: int = 0

    def active(self, now: float) -> bool:
        return self.until > now

    def remaining(self, now: float) -> float | None:
        return None if math.isinf(self.until) else max(0.0, self.until - now)

    @property
    def permanent(self) -> bool:
        return math.isinf(self.until)

    def to_dict(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        cred, model = split_key(self.key)
        remaining = self.remaining(now)
        return {"credential": cred, "model": model, "status": self.status, "kind": self.kind,
                "since": round(self.since, 3), "until": None if self.permanent else round(self.until, 3),
                "remaining_seconds": None if remaining is None else round(remaining, 3),
                "permanent": self.permanent, "failures": self.failures, "reason": redact(self.reason)}

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "kind": self.kind, "since": self.since,
                           "reason": redact(self.reason)[:300], "failures": self.failures}, separators=(",", ":"))

    @classmethod
    def from_json(cls, key: str, raw: str | bytes | None, until: float) -> Cooldown:
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        return cls(key, until, int(data.get("status") or 0), str(data.get("kind") or "error"),
                   float(data.get("since") or 0.0), str(data.get("reason") or ""), int(data.get("failures") or 0))


@dataclass(slots=True)
class Skip:
    """A candidate passed over without calling it."""

    dep: Deployment
    reason: str  # "cooldown" | "rpm" | "tpm"
    wait: float | None  # seconds until it is available again; None: not before an admin clears it
    rate: bool  # a rate limit (ours or the provider's 429): counts toward answering 429
    status: int = 0
    permanent: bool = False


@dataclass(slots=True)
class Admission:
    order: list[Deployment]  # the candidates after the pool rotation
    index: int | None  # the admitted one, or None when every candidate was skipped
    skipped: list[Skip] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rotation:
    """Rotate ``deps[:size]`` so the member ``seq[cursor % len(seq)]`` comes first (weighted round robin)."""

    key: str
    size: int
    seq: tuple[int, ...]


def rotate(deps: Sequence[Deployment], rotation: Rotation | None, cursor: int) -> tuple[list[Deployment], int]:
    if rotation is None or rotation.size < 2:
        return list(deps), 0
    start = rotation.seq[cursor % len(rotation.seq)]
    n = rotation.size
    return [*deps[start:n], *deps[:start], *deps[n:]], start


def limits(dep: Deployment) -> list[tuple[str, int, str]]:
    """(window key, limit, kind) for each limit that applies to ``dep``: per credential and per deployment."""
    cred = dep.credential
    out = []
    for scope, rpm, tpm in ((cred.name, cred.rpm, cred.tpm), (dep_key(dep), dep.rpm, dep.tpm)):
        if rpm:
            out.append((f"rpm|{scope}", rpm, "rpm"))
        if tpm:
            out.append((f"tpm|{scope}", tpm, "tpm"))
    return out


def has_limits(dep: Deployment) -> bool:
    cred = dep.credential
    return bool(cred.rpm or cred.tpm or dep.rpm or dep.tpm)


def has_tpm(dep: Deployment) -> bool:
    return bool(dep.credential.tpm or dep.tpm)


def window_seconds() -> float:
    return settings.ROUTER_LIMIT_WINDOW_SECONDS


class Window:
    """Usage over the sliding window, in ``BUCKETS`` buckets: (bucket number, amount), oldest first."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()
        self.total = 0

    def used(self, bucket: int) -> int:
        oldest = bucket - BUCKETS + 1
        while self.buckets and self.buckets[0][0] < oldest:
            self.total -= self.buckets.popleft()[1]
        return self.total

    def add(self, bucket: int, amount: int) -> None:
        if self.buckets and self.buckets[-1][0] == bucket:
            self.buckets[-1][1] += amount
        else:
            self.buckets.append([bucket, amount])
        self.total += amount

    def wait(self, limit: int, now: float, size: float) -> float:
        """Seconds until usage falls below ``limit`` as old buckets leave the window."""
        total = self.total
        for bucket, amount in self.buckets:
            total -= amount
            if total < limit:
                return max(0.0, (bucket + BUCKETS) * size - now)
        return size



def ban_for_retry_after(status: int, retry_after: float | None) -> float | None:
    if status == 429 and retry_after is not None and retry_after > 0:
        return min(retry_after, MAX_RETRY_AFTER_BAN)
    return None


def kind_of(status: int) -> str:
    return "rate" if status == 429 else "error"
