"""The benchmark's load generator: an aiohttp client in its own process, driven by JSON lines on stdin.

It runs in a separate process so its CPU is never counted as the router's, and it samples the
router's CPU (utime+stime of the process tree, from /proc) and RSS itself, right around the
measured phase, so warm-up requests and the runner's own work fall outside the window.

Commands (one JSON object per line; one JSON result line each):

* ``{"op": "closed", "url", "headers", "body", "stream", "concurrency", "duration", "warmup",
  "max_requests", "pid"}``: closed loop, ``concurrency`` workers each sending the next request as
  soon as the previous one is answered, for ``duration`` seconds (or ``max_requests``).
* ``{"op": "burst", "url", "headers", "body", "count", "pieces", "timeout", "pid"}``: ``count``
  streams opened at once; each must deliver ``pieces`` content chunks and ``[DONE]``.
* ``{"op": "quit"}``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

DONE = b"data: [DONE]\n\n"
MESSAGE_STOP = b'data: {"type":"message_stop"}\n\n'  # the end of an Anthropic Messages stream
PIECE = b'"content":"word'
_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


# ---- /proc sampling -------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # the command name may contain spaces


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_ms(pid: int | None) -> float | None:
    """utime+stime of the process tree in milliseconds (all threads included)."""
    if not pid:
        return None
    total = 0
    for p in process_tree(pid):
        fields = _stat_fields(p)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total * _TICK_MS


def rss_mb(pid: int | None) -> float:
    if not pid:
        return 0.0
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# ---- requests ---------------------------------------------------------------------

@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(what[:300])


async def one_request(session: aiohttp.ClientSession, cmd: dict, tally: Tally) -> None:
    started = time.perf_counter()
    ttfb = None
    try:
        async with session.post(cmd["url"], data=cmd["body"], headers=cmd["headers"], timeout=cmd["timeout"]) as resp:
            parts = []
            async for data in resp.content.iter_any():
                if ttfb is None:
                    ttfb = time.perf_counter() - started
                parts.append(data)
            body = b"".join(parts)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        tally.error(f"{type(exc).__name__}: {exc}")
        return
    elapsed = time.perf_counter() - started
    problem = check(resp.status, body, cmd)
    if problem:
        tally.error(problem)
        return
    tally.latencies.append(elapsed * 1000)
    if ttfb is not None:
        tally.ttfbs.append(ttfb * 1000)


def check(status: int, body: bytes, cmd: dict) -> str:
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    if cmd.get("stream"):
        if not body.endswith((DONE, MESSAGE_STOP)):
            return f"stream did not end with [DONE] or message_stop: ...{body[-120:]!r}"
        if cmd.get("pieces") is not None and body.count(PIECE) != cmd["pieces"]:
            return f"stream had {body.count(PIECE)} content chunks, expected {cmd['pieces']}"
    elif not body.startswith(b"{") or (b'"choices"' not in body and b'"type":"message"' not in body):
        return f"not a completion: {body[:200]!r}"
    return ""


async def closed_loop(session: aiohttp.ClientSession, cmd: dict, seconds: float, max_requests: int | None,
                      tally: Tally) -> None:
    deadline = time.perf_counter() + seconds
    remaining = max_requests if max_requests is not None else math.inf

    async def worker() -> None:
        nonlocal remaining
        while time.perf_counter() < deadline and remaining > 0:
            remaining -= 1
            await one_request(session, cmd, tally)

    await asyncio.gather(*(worker() for _ in range(cmd["concurrency"])))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(tally: Tally, elapsed: float, cpu: float | None) -> dict:
    done = len(tally.latencies)
    return {
        "done": done, "errors": tally.errors, "sent": done + tally.errors, "error_samples": tally.samples,
        "elapsed": elapsed,
        "rps": done / elapsed if elapsed else 0.0,
        **{f"p{q}": percentile(tally.latencies, q / 100) for q in (50, 90, 99)},
        **{f"ttfb_p{q}": percentile(tally.ttfbs, q / 100) for q in (50, 90, 99)},
        "cpu_ms_per_req": cpu / (done + tally.errors) if cpu is not None and done + tally.errors else None,
    }


def cpu_since(pid: int | None, before: float | None) -> float | None:
    after = cpu_ms(pid)
    return after - before if after is not None and before is not None else None


async def run_closed(session: aiohttp.ClientSession, cmd: dict) -> dict:
    warm = Tally()
    if cmd.get("warmup"):
        await closed_loop(session, cmd, cmd["warmup"], cmd.get("max_requests"), warm)
    tally = Tally()
    cpu_before = cpu_ms(cmd.get("pid"))
    started = time.perf_counter()
    await closed_loop(session, cmd, cmd["duration"], cmd.get("max_requests"), tally)
    elapsed = time.perf_counter() - started
    result = summary(tally, elapsed, cpu_since(cmd.get("pid"), cpu_before))
    result["sent"] += len(warm.latencies) + warm.errors
    return result


async def run_burst(session: aiohttp.ClientSession, cmd: dict) -> dict:
    pid = cmd.get("pid")
    peak = [rss_mb(pid)]
    stop = asyncio.Event()

    async def sample_rss() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass

    sampler = asyncio.ensure_future(sample_rss())
    tally = Tally()
    started = time.perf_counter()
    cpu_before = cpu_ms(pid)
    await asyncio.gather(*(one_request(session, cmd, tally) for _ in range(cmd["count"])))
    elapsed = time.perf_counter() - started
    cpu = cpu_since(pid, cpu_before)
    stop.set()
    await sampler
    result = summary(tally, elapsed, cpu)
    result["peak_rss_mb"] = peak[0]
    return result


async def main() -> None:
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False, enable_cleanup_closed=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                return
            cmd["body"] = cmd["body"].encode()
            cmd["timeout"] = aiohttp.ClientTimeout(total=cmd.get("timeout") or 120)
            if cmd["op"] == "burst":
                cmd["stream"] = True
            result = await (run_burst(session, cmd) if cmd["op"] == "burst" else run_closed(session, cmd))
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
