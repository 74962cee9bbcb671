"""The benchmark's tables: every cell's figures per target (medians over rounds), then the peer ratios."""

from __future__ import annotations

from cells import Series, Stat

PEER = "portkey"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def spread(s: Stat, digits: int = 2, unit: str = "") -> str:
    """``median (min to max)`` over rounds; just the median when there was one round."""
    if s.median is None:
        return "-"
    if len(s.values) == 1:
        return f"{fmt(s.median, digits)}{unit}"
    return f"{fmt(s.median, digits)}{unit} ({fmt(s.lo, digits)} to {fmt(s.hi, digits)})"


def _table(head: list[tuple[str, int]], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column(s) (width < 0), right-aligned figures."""
    def line(cells: list[str]) -> str:
        return "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w) in zip(cells, head, strict=True))

    top = line([h for h, _ in head])
    return [top, "-" * len(top), *(line(r) for r in rows)]


def matrix_table(cells: list[Series]) -> list[str]:
    head = [("mode", -11), ("c", 3), ("  target", -12), ("rps", 7), ("p50", 8), ("p90", 8), ("p99", 8),
            ("+p50", 8), ("+p99", 8), ("TTFB p50", 10), ("+TTFB", 8), ("CPU/req", 9), ("rps/direct", 11),
            ("rps/PK", 8), ("CPU/PK", 8), ("errors", 7)]
    rows = []
    for cell in cells:
        for name in cell.names():
            base = name == "direct"
            peer = PEER in cell.names() and name not in ("direct", PEER)
            rows.append([
                "stream" if cell.stream else "non-stream", str(cell.concurrency), f"  {name}",
                fmt(cell.get(name, "rps").median, 0),
                *(fmt(cell.get(name, q).median) for q in ("p50", "p90", "p99")),
                *(("-" if base else fmt(cell.added(name, q).median)) for q in ("p50", "p99")),
                fmt(cell.get(name, "ttfb_p50").median) if cell.stream else "-",
                fmt(cell.added(name, "ttfb_p50").median) if cell.stream and not base else "-",
                "-" if base else fmt(cell.get(name, "cpu_ms_per_req").median),
                "-" if base else fmt(cell.ratio(name, "direct", "rps").median),
                fmt(cell.ratio(name, PEER, "rps").median) if peer else "-",
                fmt(cell.ratio(name, PEER, "cpu_ms_per_req").median) if peer else "-",
                str(cell.errors(name)),
            ])
    return _table(head, rows)


def slow_table(slow: Series) -> list[str]:
    head = [("  target", -12), ("complete", 9), ("errors", 7), ("TTFB p50", 10), ("p90", 8), ("p99", 8),
            ("TTFB/PK", 8), ("stream p50", 11), ("CPU/stream", 11), ("peak RSS MB", 12)]
    rows = []
    for name in slow.names():
        peer = PEER in slow.names() and name not in ("direct", PEER)
        rows.append([f"  {name}", fmt(slow.get(name, "done").median, 0), str(slow.errors(name)),
                     *(fmt(slow.get(name, f"ttfb_p{q}").median, 1) for q in (50, 90, 99)),
                     fmt(slow.ratio(name, PEER, "ttfb_p50").median) if peer else "-",
                     fmt(slow.get(name, "p50").median, 0),
                     "-" if name == "direct" else fmt(slow.get(name, "cpu_ms_per_req").median),
                     "-" if name == "direct" else fmt(slow.get(name, "peak_rss_mb").hi, 0)])
    return _table(head, rows)


def pairs_table(series: Series) -> list[str]:
    head = [("  target", -22), ("rps", 7), ("p50", 8), ("p90", 8), ("p99", 8), ("CPU/req", 9), ("errors", 7)]
    rows = [[f"  {name}", fmt(series.get(name, "rps").median, 0),
             *(fmt(series.get(name, q).median) for q in ("p50", "p90", "p99")),
             fmt(series.get(name, "cpu_ms_per_req").median, 3), str(series.errors(name))] for name in series.names()]
    return _table(head, rows)
