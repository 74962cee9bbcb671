"""What the benchmark measures, and in what order: every cell is a series of rounds, and in each round
every target takes the same load back to back (the direct baseline first, the others in an order that
rotates from round to round), so a burst of other load on the shared machine hits one round of several
targets rather than every round of one, and "added" and ratio figures compare runs made side by side.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from harness import MESSAGES, UPSTREAM_MODEL, LoadGen, Target, chat_body

CONCURRENCY = (1, 16)


@dataclass(frozen=True)
class Profile:
    rounds: int  # of the matrix and of the slow streams
    duration: float  # measured seconds per run
    warmup: float
    max_requests: int | None  # per run, smoke only
    slow_count: int
    slow_pieces: int
    slow_gap_ms: int
    pair_rounds: int  # of the two-sided comparisons (logging on/off, workers, messages vs chat)
    pair_duration: float

    @property
    def slow_model(self) -> str:
        return f"slow-{self.slow_pieces}-{self.slow_gap_ms}"


PROFILES = {
    "full": Profile(3, 2.0, 0.3, None, 500, 20, 100, 6, 1.5),
    "quick": Profile(1, 1.0, 0.2, None, 500, 20, 100, 2, 1.0),
    "smoke": Profile(1, 0.3, 0.0, 8, 20, 3, 20, 2, 0.3),
}


@dataclass
class Stat:
    """One figure over rounds: its median and its spread."""

    values: list[float]

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def lo(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def hi(self) -> float | None:
        return max(self.values) if self.values else None


def stat(values: list[float | None]) -> Stat:
    return Stat([v for v in values if v is not None])


@dataclass
class Series:
    """Rounds of runs: each round maps a target's name to the load generator's result for it."""

    label: str
    stream: bool = False
    concurrency: int = 0
    rounds: list[dict[str, dict]] = field(default_factory=list)

    def names(self) -> list[str]:
        return list(dict.fromkeys(name for row in self.rounds for name in row))

    def get(self, name: str, key: str) -> Stat:
        return stat([row[name][key] for row in self.rounds if name in row])

    def added(self, name: str, key: str, base: str = "direct") -> Stat:
        """Per round, ``name`` minus ``base``, measured side by side."""
        return stat([row[name][key] - row[base][key] for row in self.rounds
                     if name in row and base in row and row[name][key] is not None and row[base][key] is not None])

    def ratio(self, name: str, other: str, key: str) -> Stat:
        return stat([row[name][key] / row[other][key] for row in self.rounds
                     if name in row and other in row and row[name][key] is not None and row[other][key]])

    def errors(self, name: str | None = None) -> int:
        return sum(r["errors"] for row in self.rounds for n, r in row.items() if name in (None, n))

    def error_samples(self) -> list[str]:
        return [f"{n}: {e}" for row in self.rounds for n, r in row.items() for e in r["error_samples"]][:3]

    def raw(self) -> dict:
        return {"label": self.label, "stream": self.stream, "concurrency": self.concurrency, "rounds": self.rounds}


def rotated(targets: list[Target], i: int) -> list[Target]:
    """The first target (the baseline) stays first; the others take turns going first."""
    head, rest = targets[:1], targets[1:]
    k = i % len(rest) if rest else 0
    return head + rest[k:] + rest[:k]


@dataclass
class Bench:
    profile: Profile
    load: LoadGen
    # called after each run: waits for the target's own after-work (a router's usage rows, written up
    # to a flush interval later) so that it does not land in the next target's run
    settle: Callable[[Target], object] | None = None

    def closed(self, target: Target, *, stream: bool, concurrency: int, duration: float | None = None,
               messages: bool = False) -> dict:
        """A closed-loop run: ``concurrency`` clients each sending the next request as soon as one is answered."""
        p = self.profile
        if messages:  # the Anthropic-shaped ingress (native relay to the fake's /v1/messages)
            url, body = target.url + "/v1/messages", messages_body(stream=stream)
            headers = messages_headers(target.key)
        else:
            url, headers = target.url + "/v1/chat/completions", target.headers
            body = chat_body(target.model(UPSTREAM_MODEL), stream=stream)
        result = self.load.run(op="closed", url=url, headers=headers, body=body, stream=stream,
                               concurrency=concurrency, duration=duration or p.duration, warmup=p.warmup,
                               max_requests=p.max_requests, pid=target.pid)
        return self._ran(target, result)

    def _ran(self, target: Target, result: dict) -> dict:
        target.sent += result["sent"]
        if self.settle is not None:
            self.settle(target)
        return result

    def burst(self, target: Target) -> dict:
        """``slow_count`` slow streams opened at once."""
        p = self.profile
        result = self.load.run(op="burst", url=target.url + "/v1/chat/completions", headers=target.headers,
                               body=chat_body(target.model(p.slow_model), stream=True), count=p.slow_count,
                               pieces=p.slow_pieces, timeout=60, pid=target.pid)
        return self._ran(target, result)

    def rounds(self, series: list[Series], targets: list[Target], rounds: int,
               run: Callable[[Series, Target], dict], progress: bool = False) -> list[Series]:
        for i in range(rounds):
            for s in series:
                s.rounds.append({t.name: run(s, t) for t in rotated(targets, i)})
            if progress:
                print(f"  round {i + 1}/{rounds}: " + "; ".join(
                    f"{s.label} " + " ".join(f"{n} {r['rps']:.0f}" for n, r in s.rounds[-1].items())
                    for s in series) + " rps", flush=True)
        return series

    def matrix(self, targets: list[Target]) -> list[Series]:
        cells = [Series(f"{'stream' if stream else 'non-stream'} c={c}", stream, c)
                 for stream in (False, True) for c in CONCURRENCY]
        return self.rounds(cells, targets, self.profile.rounds,
                           lambda s, t: self.closed(t, stream=s.stream, concurrency=s.concurrency), progress=True)

    def slow_streams(self, targets: list[Target]) -> Series:
        p = self.profile
        label = f"{p.slow_count} concurrent slow streams ({p.slow_pieces} chunks x {p.slow_gap_ms} ms)"
        return self.rounds([Series(label, True, p.slow_count)], targets, p.rounds, lambda s, t: self.burst(t))[0]

    def pairs(self, label: str, targets: list[Target], *, stream: bool = False, concurrency: int = 16,
              run: Callable[[Target], dict] | None = None) -> Series:
        """Two (or more) targets alternating, round after round, the order flipping every round."""
        def one(s: Series, t: Target) -> dict:
            if run is not None:
                return run(t)
            return self.closed(t, stream=stream, concurrency=concurrency, duration=self.profile.pair_duration)

        series = Series(label, stream, concurrency)
        for i in range(self.profile.pair_rounds):
            order = targets if i % 2 == 0 else targets[::-1]
            series.rounds.append({t.name: one(series, t) for t in order})
        return series


def messages_headers(key: str) -> dict[str, str]:
    return {"content-type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"}


def messages_body(*, stream: bool) -> str:
    system, user = MESSAGES
    return json.dumps({"model": "bench-claude", "system": system["content"], "max_tokens": 64, "stream": stream,
                       "messages": [user]})
