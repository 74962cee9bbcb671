"""The targets (issues 3, 14 and 15), judged on medians over rounds and printed with their spread.

Peer targets are ratios to Portkey measured in the same rounds (router / Portkey per round, then the
median of those ratios), for every server the router ran under. Without Portkey they read SKIP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cells import Series, Stat
from report import PEER, fmt, spread


@dataclass
class Results:
    servers: list[str]
    db_kind: str  # of the main database (PostgreSQL unless none was reachable)
    cells: list[Series]
    slow: Series
    pg_logging: Series  # "<server>" (logging on) vs "logging-off"
    sqlite_logging: Series  # "sqlite-on" vs "sqlite-off"
    messages_vs_chat: Series
    rows: dict[str, tuple[int, int]]  # "database: router" -> (usage rows written, requests sent)
    keys: dict

    def cell(self, stream: bool, c: int) -> Series:
        return next(x for x in self.cells if x.stream == stream and x.concurrency == c)

    @property
    def has_peer(self) -> bool:
        return PEER in self.cell(False, 1).names()


INFO = "info"  # shown, not judged


@dataclass
class Check:
    name: str
    server: str
    measured: str
    goal: str
    ok: bool | str | None  # None: not measured in this run (SKIP); INFO: not judged


def at_most(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def at_least(value: float | None, limit: float) -> bool:
    return value is not None and value >= limit


def peer_checks(r: Results, server: str) -> list[Check]:
    """Ratios to Portkey. Judged for the default (first) server: the issue sets them for the faster
    server, since Daphne alone costs about Portkey's CPU per request; other servers' are shown ("info")."""
    judged = server == r.servers[0]

    def ratio(series: Series, key: str, goal: str, judge: Callable[[float | None], bool], name: str) -> Check:
        if not r.has_peer:
            return Check(name, server, "(no Portkey in this run)", goal, None)
        s = series.ratio(server, PEER, key)
        return Check(name, server, spread(s, unit="x"), goal, judge(s.median) if judged else INFO)

    ns1, ns16, st16 = r.cell(False, 1), r.cell(False, 16), r.cell(True, 16)
    return [
        ratio(ns1, "cpu_ms_per_req", "<= 0.7x", lambda v: at_most(v, 0.7), "CPU/non-stream request vs Portkey, c=1"),
        ratio(ns16, "cpu_ms_per_req", "<= 0.7x", lambda v: at_most(v, 0.7), "CPU/non-stream request vs Portkey, c=16"),
        ratio(ns16, "rps", ">= 1.4x", lambda v: at_least(v, 1.4), "req/s vs Portkey, non-stream c=16"),
        ratio(st16, "cpu_ms_per_req", "<= 0.7x", lambda v: at_most(v, 0.7), "CPU per stream vs Portkey, c=16"),
        ratio(r.slow, "ttfb_p50", "<= 0.5x", lambda v: at_most(v, 0.5),
              f"{r.slow.concurrency} slow streams: TTFB p50 vs Portkey"),
    ]


def absolute_checks(r: Results, server: str) -> list[Check]:
    p99 = r.cell(False, 1).added(server, "p99")
    peer_p99 = r.cell(False, 1).added(PEER, "p99") if r.has_peer else Stat([])
    ttfb = r.cell(True, 1).added(server, "ttfb_p50")
    rss = r.slow.get(server, "peak_rss_mb")
    n = r.slow.concurrency
    return [
        Check("added p99, non-stream c=1", server,
              spread(p99, unit=" ms") + (f"; Portkey {fmt(peer_p99.median)} ms" if r.has_peer else ""),
              "<= 5 ms", at_most(p99.median, 5.0)),
        Check("added time to first streamed byte, c=1", server, spread(ttfb, unit=" ms"), "<= 2 ms",
              at_most(ttfb.median, 2.0)),
        Check(f"{n} slow streams: peak RSS (max of rounds)", server, f"{fmt(rss.hi, 0)} MB", "<= 150 MB",
              at_most(rss.hi, 150)),
        Check(f"{n} slow streams: errors", server, str(r.slow.errors(server)), "0", r.slow.errors(server) == 0),
    ]


def shared_checks(r: Results) -> list[Check]:
    default = r.servers[0]
    sqlite = r.sqlite_logging.added("sqlite-on", "cpu_ms_per_req", base="sqlite-off")
    pg_on, pg_off = r.pg_logging.get(default, "cpu_ms_per_req"), r.pg_logging.get("logging-off", "cpu_ms_per_req")
    pg_cost = r.pg_logging.added(default, "cpu_ms_per_req", base="logging-off")
    pg_pct = pg_cost.median / pg_off.median * 100 if pg_cost.median is not None and pg_off.median else None
    mvc = r.messages_vs_chat
    msg, chat = mvc.get("messages", "cpu_ms_per_req").median, mvc.get("chat", "cpu_ms_per_req").median
    keys_added = r.keys["added_ms"]
    written, sent = (sum(counts) for counts in zip(*r.rows.values(), strict=True))
    checks = [
        Check("usage logging to SQLite (default): CPU/request", default, spread(sqlite, 3, " ms"), "<= 0.1 ms",
              at_most(sqlite.median, 0.1)),
        Check(f"usage logging to {r.db_kind}: CPU/request", default,
              f"{spread(pg_cost, 3, ' ms')} = {fmt(pg_pct, 1)} % of {fmt(pg_on.median, 3)}", "<= 5 %",
              at_most(pg_pct, 5.0)),
        Check("usage rows written == requests sent", "all", f"{written} / {sent}", "equal",
              all(rows == n for rows, n in r.rows.values())),
        Check("client key: lookup + limits + budget, added CPU", "in-process", f"{keys_added * 1000:.0f} us",
              "<= 100 us", at_most(keys_added, 0.1)),
        Check("CPU/request: /v1/messages relay vs chat relay", default, f"{fmt(msg)} vs {fmt(chat)} ms", "<= chat",
              at_most(msg, chat or 0.0) and not mvc.error_samples()),
    ]
    return checks


def evaluate(r: Results) -> list[Check]:
    return [c for server in r.servers for c in peer_checks(r, server) + absolute_checks(r, server)] + shared_checks(r)


def verdict(ok: bool | str | None) -> str:
    return "SKIP" if ok is None else "info" if ok == INFO else "PASS" if ok else "FAIL"


def targets_table(checks: list[Check]) -> list[str]:
    head = f"{'target':<49}{'server':<12}{'measured: median (min to max over rounds)':<46}{'goal':<11}result"
    lines = [head, "-" * len(head)]
    lines += [f"{c.name:<48} {c.server:<11} {c.measured:<45} {c.goal:<10} {verdict(c.ok)}" for c in checks]
    lines.append("(ratios: router / Portkey per round; added: minus the direct call in the same round; CPU: the "
                 "server's whole process tree; info: a ratio target shown for a server other than the default, "
                 "not judged)")
    return lines
