"""The router's benchmark: one command, bounded in time, figures printed next to the targets.

    .venv/bin/python bench/run.py                    # full run (about 6 minutes with Portkey)
    .venv/bin/python bench/run.py --portkey          # install the peer gateway first if needed (npm)
    .venv/bin/python bench/run.py --quick            # about 2 minutes
    .venv/bin/python bench/run.py --smoke            # seconds: checks the harness, the figures mean nothing
    .venv/bin/python bench/run.py --server uvicorn   # only some servers (default: uvicorn,daphne)
    .venv/bin/python bench/run.py --events 175000    # only: the router's CPU per relayed stream event

Processes (each its own, so CPU is attributed correctly): the fake upstream (``bench/fake_upstream.py``),
the router under each ASGI server (as it runs in production: every request carries a client key with a
budget and limits, usage is logged to the database), Portkey's gateway when installed (``bench/portkey.py``),
and the load generator (``bench/load.py``, an aiohttp client). In every round each target takes the same
load right after the fake upstream took it directly (``bench/cells.py``), so "added" figures and ratios
compare runs made side by side on this shared machine. The database is a throwaway PostgreSQL database
when one is reachable, else a SQLite file; a second SQLite database measures the local default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import portkey
from cells import PROFILES, Bench, Profile, Series
from database import Database
from harness import (
    BENCH,
    CHECK_MODEL,
    MASTER_KEY,
    MESSAGES,
    PYTHON,
    ROOT,
    UPSTREAM_MODEL,
    LoadGen,
    Procs,
    Target,
    check_streaming,
    create_client_key,
    direct_target,
    manage,
    server_available,
    start_router,
    start_upstream,
    wait_key_accepted,
    wait_serving,
)
from report import matrix_table, pairs_table, slow_table
from targets import Results, evaluate, targets_table, verdict

DEFAULT_POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
SERVERS = ("uvicorn", "daphne")  # the first available is the default, as in ROUTER_SERVER


def config_yaml(upstream_port: int, profile: Profile) -> str:
    """Every model priced, so budgets are reserved and settled on every request as in production."""
    price = "{input_cost_per_token: 1.0e-07, output_cost_per_token: 2.0e-07}"
    return f"""
server:
  master_key: {MASTER_KEY}
credentials:
  - {{name: bench_fake, type: openai, base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: sk-bench-upstream}}
  - {{name: bench_anthropic, type: anthropic, base_url: "http://127.0.0.1:{upstream_port}", api_key: sk-bench-upstream}}
models:
  - {{name: bench, credential: bench_fake, model: {UPSTREAM_MODEL}}}
  - {{name: bench-slow, credential: bench_fake, model: {profile.slow_model}}}
  - {{name: bench-check, credential: bench_fake, model: {CHECK_MODEL}}}
  - {{name: bench-claude, credential: bench_anthropic, model: {UPSTREAM_MODEL}}}
model_prices:
  bench: {price}
  bench-slow: {price}
  bench-check: {price}
  bench-claude: {price}
"""


def router_aliases(profile: Profile) -> dict[str, str]:
    return {UPSTREAM_MODEL: "bench", profile.slow_model: "bench-slow", CHECK_MODEL: "bench-check"}


@contextmanager
def workspace(args: argparse.Namespace) -> Iterator[tuple[Procs, Database]]:
    tmp = Path(tempfile.mkdtemp(prefix="router-bench-"))
    procs = Procs(tmp)
    db = Database.create(args.db, args.postgres, tmp)
    try:
        yield procs, db
    finally:
        procs.stop_all()
        with suppress(Exception):
            db.drop()
        if args.keep:
            print(f"(logs, SQLite files and the usage spool kept in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def spooled(tmp: Path) -> dict[str, int]:
    """Usage rows the routers could not write yet (spooled) or had refused (rejected): none, if all is well."""
    lines = {"spooled": 0, "rejected": 0}
    for path in (tmp / "usage-spool").glob("*.jsonl"):
        kind = "rejected" if path.name.startswith("rejected") else "spooled"
        lines[kind] += sum(1 for line in path.read_text(errors="replace").splitlines() if line.strip())
    return lines


def load_config(procs: Procs, db: Database, text: str) -> None:
    cfg = procs.tmp / f"router-{db.kind}.yaml"
    cfg.write_text(text)
    manage(db.url, procs.tmp, "migrate", "--noinput", "-v0")
    manage(db.url, procs.tmp, "import_config", str(cfg))


@dataclass
class Setup:
    direct: Target
    routers: list[Target]  # one per server, logging on: the matrix's
    logging_off: Target
    doubles: list[Target]  # per server, the same router with two workers
    sqlite_on: Target
    sqlite_off: Target
    peer: Target | None
    sqlite: Database

    @property
    def logging(self) -> list[Target]:
        """The routers logging to the main database."""
        return [*self.routers, *self.doubles]

    @property
    def measured(self) -> list[Target]:
        return [self.direct, *self.routers, *([self.peer] if self.peer else [])]


def start_all(args: argparse.Namespace, procs: Procs, db: Database, profile: Profile) -> Setup:
    upstream_port = start_upstream(procs)
    config = config_yaml(upstream_port, profile)
    aliases = router_aliases(profile)
    load_config(procs, db, config)
    sqlite = Database.sqlite(procs.tmp / "default.sqlite3", label="SQLite default")
    load_config(procs, sqlite, config)
    local = {"ROUTER_HTTP_TRANSPORT": args.transport, "ROUTER_USAGE_LOGGING": "true"}
    # production shares limits, budgets and cooldowns through Redis; the SQLite pair is the local default
    env = {**local, **({"REDIS_URL": args.redis, "ROUTER_REDIS_PREFIX": f"{{bench-{os.getpid()}}}:"}
                       if args.redis else {})}
    off = {**env, "ROUTER_USAGE_LOGGING": "false"}
    routers = [start_router(procs, s, s, db.url, env, aliases=aliases) for s in args.servers]
    doubles = [start_router(procs, f"{s} x2", s, db.url, env, workers=2, aliases=aliases) for s in args.servers]
    logging_off = start_router(procs, "logging-off", args.servers[0], db.url, off, aliases=aliases)
    # the local default: SQLite under the default server, as a fresh clone runs
    sqlite_on = start_router(procs, "sqlite-on", args.servers[0], sqlite.url, local, aliases=aliases)
    sqlite_off = start_router(procs, "sqlite-off", args.servers[0], sqlite.url,
                              {**local, "ROUTER_USAGE_LOGGING": "false"}, aliases=aliases)
    peer = portkey.start(procs, upstream_port) if use_portkey(args) else None
    everyone = [*routers, *doubles, logging_off, sqlite_on, sqlite_off]
    for target in everyone:
        wait_serving(target, procs)
    if peer is not None:
        wait_serving(peer, procs, path="/")
    for target in everyone:
        create_client_key(sqlite_on if target.name.startswith("sqlite") else routers[0], target)
    for target in everyone:
        wait_key_accepted(target)
    direct = direct_target(upstream_port)
    for target in [direct, *everyone, *([peer] if peer else [])]:
        check_streaming(target)
    return Setup(direct, routers, logging_off, doubles, sqlite_on, sqlite_off, peer, sqlite)


def settled_rows(db: Database, targets: list[Target]) -> dict[str, int]:
    """The rows the setup's requests left (refused ones included or not), once written; the counts restart
    from here, so the check is that every measured request became exactly one row."""
    time.sleep(1.5)  # past the writers' flush interval
    rows = db.wait_rows({}, stall=0)
    for target in targets:
        target.sent = 0
    return rows


def new_rows(db: Database, base: dict[str, int], targets: list[Target]) -> dict[str, tuple[int, int]]:
    """Per router ("database: router"): (rows written since ``base``, requests sent)."""
    rows = db.wait_rows({t.name: base.get(t.name, 0) + t.sent for t in targets})
    return {f"{db.label}: {t.name}": (rows.get(t.name, 0) - base.get(t.name, 0), t.sent) for t in targets}


def rows_settled(db: Database, sqlite: Database, base: tuple[dict[str, int], dict[str, int]],
                 sqlite_targets: list[Target]) -> Callable[[Target], object]:
    """After a router's run, wait until its rows are written. Its writer flushes up to a second later:
    on this two-core machine that flush (and PostgreSQL's share of it) would run during the next
    target's run and show in that target's tail, whichever it is."""
    def settle(target: Target) -> None:
        if target.counts_usage:
            where, since = (sqlite, base[1]) if target in sqlite_targets else (db, base[0])
            where.wait_rows({target.name: since.get(target.name, 0) + target.sent}, stall=3.0)
    return settle


def use_portkey(args: argparse.Namespace) -> bool:
    if args.portkey is None:  # neither --portkey nor --no-portkey: when installed already
        return portkey.installed()
    return args.portkey


def run(args: argparse.Namespace) -> tuple[str, dict]:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    profile = PROFILES[mode]
    machine = MachineLoad()
    with workspace(args) as (procs, db):
        print(f"[{mode}] database {db.kind}; servers {', '.join(args.servers)}; start everything ...", flush=True)
        s = start_all(args, procs, db, profile)
        base = settled_rows(db, s.logging), settled_rows(s.sqlite, [s.sqlite_on])
        bench = Bench(profile, LoadGen(procs), rows_settled(db, s.sqlite, base, [s.sqlite_on]))
        default = s.routers[0]
        # The logging comparisons first, while the routers are fresh: after the matrix and the slow streams
        # a router carries a bigger heap and connection pool, which would be charged to logging.
        print("usage logging on/off (PostgreSQL, SQLite), /v1/messages vs chat ...", flush=True)
        pg_logging = bench.pairs(f"usage logging to {db.kind} on vs off, non-stream c=16", [default, s.logging_off])
        sqlite_logging = bench.pairs("usage logging to SQLite on vs off, non-stream c=16", [s.sqlite_on, s.sqlite_off])
        mvc = messages_vs_chat(bench, default)
        new_rows(db, base[0], s.logging)  # the queued rows must not be written during the matrix
        print("matrix (every round: direct, then each target in turn):", flush=True)
        cells = bench.matrix(s.measured)
        workers = [bench.pairs(f"{one.name}: 1 vs 2 workers, non-stream c=16", [one, two])
                   for one, two in zip(s.routers, s.doubles, strict=True)]
        print("slow streams ...", flush=True)
        slow = bench.slow_streams(s.measured)
        rows = new_rows(db, base[0], s.logging) | new_rows(s.sqlite, base[1], [s.sqlite_on])
        spool = spooled(procs.tmp)
        for where, (written, sent) in rows.items():  # what the router said, when rows went missing
            if written != sent:
                name = where.split(": ", 1)[1]
                spool[f"log of {name}"] = procs.log(name)[-1500:]
        bench.load.close()
    keys = keys_overhead(mode)
    results = Results(args.servers, db.kind, cells, slow, pg_logging, sqlite_logging, mvc, rows, keys)
    others = machine.others()
    header = (f"Auto AI Router benchmark ({mode}, {time.monotonic() - machine.started:.0f} s): servers "
              f"{', '.join(args.servers)}{' vs Portkey ' + portkey.VERSION if s.peer else ''}; {os.cpu_count()} "
              f"CPUs (other processes, PostgreSQL included, used {others:.2f} CPU on average meanwhile); database "
              f"{db.kind}; limits {'in Redis' if args.redis else 'in-process (no REDIS_URL)'}; HTTP transport "
              f"{args.transport}; client key with budget and limits on every router "
              f"request; load: aiohttp client in its own process, closed loop, {profile.duration:g} s per run "
              f"after {profile.warmup:g} s warm-up, {profile.rounds} round(s); CPU = utime+stime of the target's "
              "process tree / requests")
    text = report(results, workers, spool, profile, mode)
    figures = {"cells": [c.raw() for c in cells], "slow_streams": slow.raw(), "workers": [w.raw() for w in workers],
               "logging_postgres": pg_logging.raw(), "logging_sqlite": sqlite_logging.raw(),
               "messages_vs_chat": mvc.raw(), "usage_rows": rows, "usage_spool": spool, "client_keys": keys}
    return header + "\n" + text, figures


def messages_vs_chat(bench: Bench, router: Target) -> Series:
    """Streaming c=16 on one router: ``/v1/messages`` (native relay to an Anthropic upstream) against
    ``/v1/chat/completions`` (relay to an OpenAI upstream), alternating."""
    messages = Target("messages", router.url, router.headers, router.aliases, router.proc, key=router.key)
    chat = Target("chat", router.url, router.headers, router.aliases, router.proc, key=router.key)

    def one(t: Target) -> dict:
        result = bench.closed(t, stream=True, concurrency=16, duration=bench.profile.pair_duration,
                              messages=t is messages)
        router.sent += result["sent"]
        return result

    return bench.pairs("/v1/messages native relay vs /v1/chat/completions relay, streaming c=16",
                       [messages, chat], run=one)


def report(r: Results, workers: list[Series], spool: dict, profile: Profile, mode: str) -> str:
    lines = ["", f"Chat completions, median of {profile.rounds} round(s); latencies in ms; '+' = target minus "
             "direct in the same round; CPU in ms per request; PK = Portkey", *matrix_table(r.cells)]
    lines += [f"    error ({cell.label}): {e}" for cell in r.cells for e in cell.error_samples()]
    lines += ["", f"{r.slow.label}, {profile.rounds} round(s); TTFB in ms (from opening the stream)",
              *slow_table(r.slow), *(f"    error: {e}" for e in r.slow.error_samples())]
    for series in [*workers, r.pg_logging, r.sqlite_logging, r.messages_vs_chat]:
        lines += ["", f"{series.label}, {len(series.rounds)} alternating round(s)", *pairs_table(series)]
        lines += [f"    error: {e}" for e in series.error_samples()]
    lines += ["Usage rows written / requests sent, per router: " + ", ".join(
        f"{where} {rows} / {sent}" for where, (rows, sent) in r.rows.items())
        + f"; rows in the routers' spool: {spool['spooled']} waiting, {spool['rejected']} rejected"]
    lines += [f"    {name} (its rows differ from its requests):\n{text}" for name, text in spool.items()
              if name.startswith("log of ")]
    smoke = " -- smoke run: the figures mean nothing" if mode == "smoke" else ""
    lines += ["", f"Targets{smoke}", *targets_table(evaluate(r)), keys_note(r.keys)]
    return "\n".join(lines)


class MachineLoad:
    """CPU used on this machine by processes other than the benchmark's (they add noise)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy, self.ours = self._busy_s(), self._ours_s()

    @staticmethod
    def _busy_s() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    @staticmethod
    def _ours_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others(self) -> float:
        """Average CPUs used by other processes; call once every child process has been waited for."""
        elapsed = time.monotonic() - self.started
        return max(0.0, (self._busy_s() - self.busy) - (self._ours_s() - self.ours)) / elapsed


# ---- client keys (in-process) ------------------------------------------------------------

KEYS_RUNS = {"full": (3000, 5), "quick": (2000, 3), "smoke": (100, 1)}


def keys_overhead(mode: str) -> dict:
    """bench/keys_overhead.py in its own process: the CPU a client key (lookup, access, limits, budget) adds."""
    requests, rounds = KEYS_RUNS[mode]
    out = subprocess.run([PYTHON, str(BENCH / "keys_overhead.py"), "--json", "--requests", str(requests),
                          "--rounds", str(rounds)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_"))})
    if out.returncode:
        raise RuntimeError(f"keys_overhead.py failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def keys_note(keys: dict) -> str:
    return (f"(client key, measured in-process by bench/keys_overhead.py: master path {keys['master_ms'] * 1000:.0f} "
            f"us, client {keys['client_ms'] * 1000:.0f} us, in-process limits; with REDIS_URL add one Redis round "
            f"trip to admit: bench/keys_overhead.py --redis URL) {verdict(keys['added_ms'] <= 0.1)}")


# ---- per-event cost ----------------------------------------------------------------------

def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_stream(url: str, data: bytes, headers: dict[str, str]) -> tuple[float, int]:
    """Seconds to read the whole streamed answer, and its size."""
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **headers})
    started = time.perf_counter()
    size = 0
    with urllib.request.urlopen(request, timeout=300) as response:
        while chunk := response.read(1 << 20):
            size += len(chunk)
    return time.perf_counter() - started, size


def run_events(args: argparse.Namespace) -> tuple[str, dict]:
    """One stream of ``args.events`` tiny events, direct and through a router: the router's cost per event."""
    n, rounds = args.events, 3
    with workspace(args) as (procs, db):
        upstream_port = start_upstream(procs)
        load_config(procs, db, f"""
server: {{master_key: {MASTER_KEY}}}
credentials:
  - {{name: bench_fake, type: openai, base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: sk-bench-upstream}}
models:
  - {{name: bench-many, credential: bench_fake, model: many-{n}}}
""")
        router = start_router(procs, "router", args.servers[0], db.url, {"ROUTER_HTTP_TRANSPORT": args.transport},
                              aliases={}, key=MASTER_KEY)
        wait_serving(router, procs)
        payload = json.dumps({"model": "bench-many", "stream": True, "messages": MESSAGES}).encode()
        direct_payload = payload.replace(b'"bench-many"', f'"many-{n}"'.encode())
        direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        auth = {"authorization": f"Bearer {MASTER_KEY}"}
        timed_stream(router.url + "/v1/chat/completions", payload, auth)  # warm-up (and the upstream's cache)
        direct, through, cpu = [], [], []
        for _ in range(rounds):
            direct.append(timed_stream(direct_url, direct_payload, {})[0])
            before = process_cpu_s(router.proc.pid)
            seconds, size = timed_stream(router.url + "/v1/chat/completions", payload, auth)
            cpu.append(process_cpu_s(router.proc.pid) - before)
            through.append(seconds)
    d, r, c = statistics.median(direct), statistics.median(through), statistics.median(cpu)
    text = (f"{n} tiny events in one stream ({size / 1e6:.1f} MB relayed; median of {rounds}): "
            f"upstream direct {d:.2f} s, through the router {r:.2f} s; "
            f"router CPU {c:.2f} s = {c / n * 1e6:.1f} us per event")
    return text, {"events": n, "direct_s": d, "router_s": r, "router_cpu_s": c, "router_us_per_event": c / n * 1e6}


def servers(value: str) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SERVERS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"servers are {', '.join(SERVERS)}; got {value!r}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the router against a fast fake upstream and Portkey.")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="one round, shorter runs (about 2 minutes)")
    speed.add_argument("--smoke", action="store_true", help="a few requests per cell: checks the harness only")
    parser.add_argument("--server", dest="servers", type=servers,
                        default=[s for s in SERVERS if server_available(s)],
                        help="comma-separated ASGI servers to run the router under, the first being the default "
                             "(default: uvicorn,daphne; daphne alone when uvicorn is not installed)")
    peer = parser.add_mutually_exclusive_group()
    peer.add_argument("--portkey", action="store_true", default=None,
                      help=f"measure Portkey {portkey.VERSION} too, installing it with npm first if needed "
                           "(default: measured when already installed)")
    peer.add_argument("--no-portkey", dest="portkey", action="store_false")
    parser.add_argument("--db", choices=("auto", "postgres", "sqlite"), default="auto",
                        help="auto: PostgreSQL when reachable, else SQLite")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="an admin URL; a throwaway database is created beside it (env BENCH_POSTGRES_URL)")
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"), metavar="URL",
                        help="REDIS_URL for the PostgreSQL routers, as in production (limits and budgets shared "
                             "through Redis; keys under a per-run prefix); env BENCH_REDIS_URL; default: none")
    parser.add_argument("--transport", choices=("aiohttp", "httpx"), default="aiohttp",
                        help="the routers' ROUTER_HTTP_TRANSPORT")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (process logs, usage spool)")
    parser.add_argument("--events", type=int, metavar="N", default=0,
                        help="only measure one stream of N tiny events (e.g. 175000), direct vs through the router")
    args = parser.parse_args(argv)
    if unavailable := [s for s in args.servers if not server_available(s)]:
        parser.error(f"not installed: {', '.join(unavailable)} (pip install -r requirements.txt)")
    text, figures = run_events(args) if args.events else run(args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    sys.exit(main())
