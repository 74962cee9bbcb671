"""Latency tail and CPU per request of one router process, for profiling the hot path.

    .venv/bin/python bench/profile_tail.py --server uvicorn --db sqlite --logging on,off --concurrency 1,16
    .venv/bin/python bench/profile_tail.py --env ROUTER_HTTP_TRANSPORT=httpx --rounds 3

Starts the fake upstream and, per ``--logging`` value, one router (Daphne or uvicorn) on a fresh
database; then, for each round and concurrency, a closed-loop run sent directly to the upstream and
the same run through the router, each in a load process of its own. Prints p50/p90/p99/max latency
(router and added over direct), requests per second and the router's CPU per request (utime+stime
from /proc). ``bench/run.py`` is the benchmark with targets; this is the quick tool for before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import PROFILES, messages_body, messages_headers
from harness import (
    MASTER_KEY,
    PYTHON,
    UPSTREAM_MODEL,
    Procs,
    Target,
    chat_body,
    create_client_key,
    free_port,
    manage,
    router_env,
    start_upstream,
    wait_key_accepted,
    wait_serving,
)
from load import Tally, cpu_ms, one_request
from run import config_yaml, router_aliases, workspace

SERVERS = {
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "routerproject.asgi:application"],
    "uvicorn": ["-m", "uvicorn", "routerproject.asgi:application", "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--host", "127.0.0.1", "--port", "{port}"],
}


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


async def load(cmd: dict) -> dict:
    """One closed-loop run (in its own process, so its CPU is not the router's nor the runner's)."""
    cmd["body"] = cmd["body"].encode()
    cmd["timeout"] = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        async def loop(seconds: float, tally: Tally) -> None:
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                while time.perf_counter() < deadline:
                    await one_request(session, cmd, tally)

            await asyncio.gather(*(worker() for _ in range(cmd["concurrency"])))

        await loop(cmd["warmup"], Tally())
        tally = Tally()
        before = cpu_ms(cmd["pid"])
        started = time.perf_counter()
        await loop(cmd["duration"], tally)
        elapsed = time.perf_counter() - started
        after = cpu_ms(cmd["pid"])
    lat, done = tally.latencies, len(tally.latencies)
    return {"done": done, "errors": tally.errors, "samples": tally.samples, "rps": done / elapsed,
            "p50": percentile(lat, 0.5), "p90": percentile(lat, 0.9), "p99": percentile(lat, 0.99),
            "max": max(lat, default=None), "ttfb_p50": percentile(tally.ttfbs, 0.5),
            "cpu": (after - before) / max(1, done + tally.errors) if before is not None else None}


def run_load(**cmd) -> dict:
    out = subprocess.run([PYTHON, __file__, "--load", json.dumps(cmd)], capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def start(procs: Procs, server: str, name: str, db_url: str, env: dict[str, str], cprofile: str = "",
          checkout: Path | None = None) -> Target:
    port = free_port()
    args = [a.replace("{port}", str(port)) for a in SERVERS[server]]
    if cprofile:
        args = [__file__, "--profiled", cprofile, *args[1:]]
    proc = procs.spawn(name, [PYTHON, *args], env=router_env(db_url, procs.tmp, env), stdout=subprocess.DEVNULL,
                       **({"cwd": checkout} if checkout else {}))
    headers = {"content-type": "application/json", "authorization": f"Bearer {MASTER_KEY}"}
    return Target(name, f"http://127.0.0.1:{port}", headers, aliases=router_aliases(PROFILES["quick"]), proc=proc)


def profiled(path: str, argv: list[str]) -> None:
    """Run the server module ``argv[0]`` under cProfile, timed in CPU time of the event loop's thread
    (a wall-clock profile on a busy machine charges preemption to whatever was running). Profiling
    starts at SIGUSR1 (once the server is up: start-up is not the hot path); the stats go to ``path``
    when the server exits (SIGINT)."""
    import cProfile
    import runpy

    sys.argv = argv
    profile = cProfile.Profile(time.thread_time)
    signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        profile.disable()
        profile.dump_stats(path)


def fmt(v: float | None, d: int = 2) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--load", help=argparse.SUPPRESS)
    p.add_argument("--profiled", help=argparse.SUPPRESS)
    p.add_argument("--server", choices=tuple(SERVERS), default="daphne")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--logging", default="on", help="comma-separated: on,off")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the routers")
    p.add_argument("--messages", action="store_true",
                   help="send /v1/messages (native relay to the fake Anthropic upstream; implies --key)")
    p.add_argument("--key", action="store_true",
                   help="send a client key with a budget and limits (as bench/run.py does), not the master key")
    p.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                   help="also run routers from another checkout (e.g. a worktree of main), interleaved")
    p.add_argument("--cprofile", metavar="PATH", default="",
                   help="run the (first) router under cProfile; stats written to PATH.<logging> at the end")
    args, rest = p.parse_known_args()
    if args.profiled:
        profiled(args.profiled, rest)
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.load:
        print(json.dumps(asyncio.run(load(json.loads(args.load)))))
        return
    args.key = args.key or args.messages
    ns = argparse.Namespace(db=args.db, postgres=args.postgres, keep=False)
    extra = dict(e.split("=", 1) for e in args.env)
    with workspace(ns) as (procs, db):
        upstream = start_upstream(procs)
        cfg = procs.tmp / "router.yaml"
        cfg.write_text(config_yaml(upstream, PROFILES["quick"]))
        manage(db.url, procs.tmp, "migrate", "--noinput", "-v0")
        manage(db.url, procs.tmp, "import_config", str(cfg))
        routers = {}
        for side in args.logging.split(","):
            env = {**extra, "ROUTER_USAGE_LOGGING": "true" if side == "on" else "false"}
            routers[side] = start(procs, args.server, f"router-{side}", db.url, env,
                                  f"{args.cprofile}.{side}" if args.cprofile else "")
            if args.baseline:
                routers[f"base-{side}"] = start(procs, args.server, f"base-{side}", db.url, env,
                                                checkout=args.baseline)
        for r in routers.values():
            wait_serving(r, procs)
            if args.key:
                r.key = f"sk-profile-key-for-{r.name}-0000"
                r.headers = {**r.headers, "authorization": f"Bearer {r.key}"}
                create_client_key(r, r)
                wait_key_accepted(r)
            if args.cprofile and r.proc is not None:
                r.proc.send_signal(signal.SIGUSR1)
        results: dict[tuple[str, int], list[tuple[dict, dict]]] = {}
        for i in range(args.rounds):
            for c in (int(x) for x in args.concurrency.split(",")):
                # alternate the order, so a burst of other load on the machine does not hit one side only
                for side, r in list(routers.items())[::1 if i % 2 == 0 else -1]:
                    kw = dict(concurrency=c, duration=args.duration, warmup=args.warmup, stream=args.stream)
                    direct = run_load(url=f"http://127.0.0.1:{upstream}/v1/chat/completions",
                                      headers={"content-type": "application/json"}, pid=None,
                                      body=chat_body(UPSTREAM_MODEL, stream=args.stream), **kw)
                    if args.messages:
                        via = run_load(url=r.url + "/v1/messages", pid=r.pid, body=messages_body(stream=args.stream),
                                       headers=messages_headers(r.key), **kw)
                    else:
                        via = run_load(url=r.url + "/v1/chat/completions", pid=r.pid, headers=r.headers,
                                       body=chat_body("bench", stream=args.stream), **kw)
                    results.setdefault((side, c), []).append((direct, via))
        for r in routers.values():
            if args.cprofile and r.proc is not None:
                r.proc.send_signal(signal.SIGINT)
                r.proc.wait(30)
    print(f"server {args.server}, db {db.kind}, stream {args.stream}, env {extra}, median of {args.rounds} round(s)")
    head = (f"{'logging':<8}{'c':>4}{'rps':>8}{'CPU ms':>8}{'p50':>7}{'p90':>7}{'p99':>7}{'max':>8}"
            f"{'+p50':>7}{'+p90':>7}{'+p99':>7}{'dir p99':>8}{'err':>5}")
    print(head)
    for (side, c), pairs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        def med(key: str, pairs=pairs) -> float | None:
            vals = [v[key] for _, v in pairs if v[key] is not None]
            return statistics.median(vals) if vals else None

        def added(key: str, pairs=pairs) -> float | None:
            vals = [v[key] - d[key] for d, v in pairs if v[key] is not None and d[key] is not None]
            return statistics.median(vals) if vals else None

        dp99 = statistics.median(d["p99"] for d, _ in pairs)
        errs = sum(v["errors"] for _, v in pairs)
        print(f"{side:<8}{c:>4}{fmt(med('rps'), 0):>8}{fmt(med('cpu'), 3):>8}{fmt(med('p50')):>7}{fmt(med('p90')):>7}"
              f"{fmt(med('p99')):>7}{fmt(med('max'), 1):>8}{fmt(added('p50')):>7}{fmt(added('p90')):>7}"
              f"{fmt(added('p99')):>7}{fmt(dp99):>8}{errs:>5}")
        for _, v in pairs:
            for s in v["samples"][:1]:
                print("   error:", s)


if __name__ == "__main__":
    main()
