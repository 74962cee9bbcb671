"""The router's benchmark: one command, bounded in time, figures printed next to the targets.

    .venv/bin/python bench/run.py            # full run, 2-3 minutes
    .venv/bin/python bench/run.py --quick    # under a minute
    .venv/bin/python bench/run.py --smoke    # seconds: checks the harness, the figures mean nothing
    .venv/bin/python bench/run.py --events 175000   # only: the router's CPU per relayed stream event

Processes (each its own, so CPU is attributed correctly): the fake upstream (``bench/fake_upstream.py``),
two routers under Daphne (``daphne routerproject.asgi:application``; usage logging on and off, same
database), and the load generator (``bench/load.py``, an aiohttp client). Every router cell is
measured right after the same load against the fake upstream directly, so "added" figures compare
like with like on this shared machine. The database is a throwaway PostgreSQL database when one is
reachable (``--postgres``), else a SQLite file; it is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
MASTER_KEY = "sk-bench-router-key"
DEFAULT_POSTGRES = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CONCURRENCY = (1, 16, 64)

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant. Answer in one short paragraph."},
    {"role": "user", "content": "Explain in two sentences why a gateway should add as little latency as it can."},
]


@dataclass(frozen=True)
class Profile:
    rounds: int  # of the whole matrix
    duration: float  # measured seconds per run
    warmup: float
    max_requests: int | None  # per run, smoke only
    slow_count: int
    slow_pieces: int
    slow_gap_ms: int
    onoff_rounds: int
    onoff_duration: float


PROFILES = {
    "full": Profile(3, 2.0, 0.3, None, 500, 20, 100, 8, 2.0),
    "quick": Profile(1, 1.2, 0.3, None, 500, 20, 100, 4, 1.0),
    "smoke": Profile(1, 0.3, 0.0, 8, 20, 3, 20, 2, 0.3),
}


# ---- processes ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def router_env(database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_", "ROUTER_"))}
    env.update({"DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "routerproject.settings",
                "ROUTER_ENCRYPTION_KEY": "bench-encryption-key", "ROUTER_MASTER_KEY": MASTER_KEY,
                "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING"})
    env.pop("REDIS_URL", None)
    env.update(extra or {})
    return env


def manage(database_url: str, *args: str) -> None:
    out = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=router_env(database_url),
                         capture_output=True, text=True, timeout=180)
    if out.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")


class Procs:
    """Every process the benchmark starts, stopped (by handle) at the end; stderr goes to a log file each."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen] = []
        self.logs: list[IO[str]] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        self.logs.append((self.tmp / f"{name}.log").open("w"))
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=self.logs[-1], **kwargs)
        self.started.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


def start_upstream(procs: Procs) -> int:
    proc = procs.spawn("upstream", [PYTHON, str(BENCH / "fake_upstream.py")], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("ready "):
        raise RuntimeError(f"fake upstream did not start:\n{procs.log('upstream')}")
    return int(line.split()[1])


@dataclass
class Router:
    name: str
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_router(procs: Procs, name: str, database_url: str, extra_env: dict[str, str]) -> Router:
    port = free_port()
    proc = procs.spawn(name, [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                              "routerproject.asgi:application"], env=router_env(database_url, extra_env),
                       stdout=subprocess.DEVNULL)
    return Router(name, port, proc)


def wait_healthy(router: Router, procs: Procs, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if router.proc.poll() is not None:
            raise RuntimeError(f"router {router.name} exited:\n{procs.log(router.name)}")
        try:
            with urllib.request.urlopen(router.url + "/health", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # 503 "degraded" still means it serves
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"router {router.name} did not start:\n{procs.log(router.name)}")


class LoadGen:
    """The load generator process; one JSON command and one JSON result per line."""

    def __init__(self, procs: Procs) -> None:
        self.proc = procs.spawn("loadgen", [PYTHON, str(BENCH / "load.py")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        self.procs = procs

    def run(self, **cmd) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator died:\n{self.procs.log('loadgen')}")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(10)


# ---- database -------------------------------------------------------------------

@dataclass
class Database:
    """The routers' database: a throwaway PostgreSQL database (dropped at the end), or a SQLite file."""

    kind: str
    url: str
    admin_url: str = ""  # PostgreSQL: where the throwaway database was created
    name: str = ""

    @classmethod
    def create(cls, choice: str, postgres_url: str, tmp: Path) -> Database:
        if choice != "sqlite":
            try:
                return cls._create_postgres(postgres_url)
            except Exception as exc:
                if choice == "postgres":
                    raise
                print(f"(PostgreSQL at {postgres_url} not usable: {type(exc).__name__}; using SQLite)")
        return cls("SQLite", f"sqlite:///{tmp / 'bench.sqlite3'}")

    @classmethod
    def _create_postgres(cls, admin_url: str) -> Database:
        import psycopg

        name = f"bench_router_{os.getpid()}"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return cls("PostgreSQL", urlunsplit(urlsplit(admin_url)._replace(path="/" + name)), admin_url, name)

    def count_usage_rows(self) -> int:
        query = "SELECT count(*) FROM proxy_usagerecord"
        if self.kind == "SQLite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return conn.execute(query).fetchone()[0]
        import psycopg

        with psycopg.connect(self.url, connect_timeout=3) as conn:
            return conn.execute(query).fetchone()[0]

    def wait_rows(self, expected: int, timeout: float = 20.0) -> int:
        """Rows written so far, waiting for the routers' batched writers to catch up with ``expected``."""
        deadline = time.monotonic() + timeout
        while (rows := self.count_usage_rows()) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        return rows

    def drop(self) -> None:
        if self.kind != "PostgreSQL":
            return
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def config_yaml(upstream_port: int, profile: Profile) -> str:
    return f"""
server:
  master_key: {MASTER_KEY}
credentials:
  - name: bench_fake
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: sk-bench-upstream
  - name: bench_anthropic
    type: anthropic
    base_url: http://127.0.0.1:{upstream_port}
    api_key: sk-bench-upstream
models:
  - name: bench
    credential: bench_fake
    model: bench-upstream
  - name: bench-slow
    credential: bench_fake
    model: {slow_model(profile)}
  - name: bench-claude
    credential: bench_anthropic
    model: bench-upstream
"""


def events_yaml(upstream_port: int, events: int) -> str:
    return f"""
server:
  master_key: {MASTER_KEY}
credentials:
  - {{name: bench_fake, type: openai, base_url: "http://127.0.0.1:{upstream_port}/v1", api_key: sk-bench-upstream}}
models:
  - {{name: bench-many, credential: bench_fake, model: many-{events}}}
"""


def slow_model(profile: Profile) -> str:
    return f"slow-{profile.slow_pieces}-{profile.slow_gap_ms}"


# ---- measurements ---------------------------------------------------------------

def messages_body(*, stream: bool) -> str:
    system, user = MESSAGES
    return json.dumps({"model": "bench-claude", "system": system["content"], "max_tokens": 64, "stream": stream,
                       "messages": [user]})


def body(model: str, *, stream: bool) -> str:
    data: dict = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if stream:
        data.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(data)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Cell:
    """One (mode, concurrency) cell: a (direct, router) pair of runs per round."""

    stream: bool
    concurrency: int
    pairs: list[tuple[dict, dict]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{'stream' if self.stream else 'non-stream'} c={self.concurrency}"

    def router(self, key: str) -> float | None:
        return median([r[key] for _, r in self.pairs])

    def direct(self, key: str) -> float | None:
        return median([d[key] for d, _ in self.pairs])

    def added(self, key: str) -> float | None:
        """Median over rounds of router minus direct, each pair measured back to back."""
        return median([r[key] - d[key] if r[key] is not None and d[key] is not None else None
                       for d, r in self.pairs])

    def errors(self) -> int:
        return sum(d["errors"] + r["errors"] for d, r in self.pairs)

    def error_samples(self) -> list[str]:
        return [e for d, r in self.pairs for e in d["error_samples"] + r["error_samples"]][:3]


@dataclass
class OnOff:
    """Interleaved runs of the logging-on and logging-off routers."""

    on: list[dict] = field(default_factory=list)
    off: list[dict] = field(default_factory=list)

    def rps(self, side: str) -> float | None:
        return median([r["rps"] for r in getattr(self, side)])

    def cpu(self, side: str) -> float | None:
        return median([r["cpu_ms_per_req"] for r in getattr(self, side)])

    def rps_cost(self) -> float | None:
        on, off = self.rps("on"), self.rps("off")
        return (1 - on / off) * 100 if on is not None and off else None

    def capacity_cost(self) -> float | None:
        """Throughput lost when the router is CPU-bound: 1 - (1/cpu_on) / (1/cpu_off)."""
        on, off = self.cpu("on"), self.cpu("off")
        return (1 - off / on) * 100 if on and off is not None else None


@dataclass
class Bench:
    profile: Profile
    load: LoadGen
    upstream_url: str
    sent_to_logging_router: int = 0
    cells: list[Cell] = field(default_factory=list)

    def closed(self, target: Router | None, *, stream: bool, concurrency: int, duration: float) -> dict:
        url = (target.url if target else self.upstream_url) + "/v1/chat/completions"
        headers = {"content-type": "application/json"}
        if target:
            headers["authorization"] = f"Bearer {MASTER_KEY}"
        model = "bench" if target else "bench-upstream"
        result = self.load.run(op="closed", url=url, headers=headers, body=body(model, stream=stream),
                               stream=stream, concurrency=concurrency, duration=duration,
                               warmup=self.profile.warmup, max_requests=self.profile.max_requests,
                               pid=target.proc.pid if target else None)
        self._count(target, result)
        return result

    def _count(self, target: Router | None, result: dict) -> None:
        if target is not None and target.name == "router-logging-on":
            self.sent_to_logging_router += result["sent"]

    def matrix(self, router: Router) -> None:
        """Rounds go over every cell in turn, so a burst of other load on the machine hits one round of
        several cells rather than every round of one."""
        self.cells = [Cell(stream, c) for stream in (False, True) for c in CONCURRENCY]
        for i in range(self.profile.rounds):
            for cell in self.cells:
                kw = {"stream": cell.stream, "concurrency": cell.concurrency, "duration": self.profile.duration}
                direct = self.closed(None, **kw)
                cell.pairs.append((direct, self.closed(router, **kw)))
            print(f"  round {i + 1}/{self.profile.rounds}: " + ", ".join(
                f"{cell.label} {cell.pairs[-1][1]['rps']:.0f} rps" for cell in self.cells), flush=True)

    def slow_streams(self, router: Router) -> dict:
        p = self.profile
        result = self.load.run(op="burst", url=router.url + "/v1/chat/completions",
                               headers={"content-type": "application/json", "authorization": f"Bearer {MASTER_KEY}"},
                               body=body("bench-slow", stream=True), count=p.slow_count, pieces=p.slow_pieces,
                               timeout=60, pid=router.proc.pid)
        self._count(router, result)
        return result

    def logging_on_off(self, on: Router, off: Router) -> OnOff:
        """Alternate the two routers (on, off, off, on, ...) so drift in the machine's load cancels out."""
        result = OnOff()
        for i in range(self.profile.onoff_rounds):
            for router in (on, off) if i % 2 == 0 else (off, on):
                run = self.closed(router, stream=False, concurrency=16, duration=self.profile.onoff_duration)
                (result.on if router is on else result.off).append(run)
        return result


@dataclass
class MessagesVsChat:
    """Interleaved streaming runs (c=16) of ``/v1/messages`` (native relay to an Anthropic upstream) and
    ``/v1/chat/completions`` (relay to an OpenAI upstream) on the same router: CPU per request compared."""

    messages: list[dict] = field(default_factory=list)
    chat: list[dict] = field(default_factory=list)

    def cpu(self, side: str) -> float | None:
        return median([r["cpu_ms_per_req"] for r in getattr(self, side)])

    def errors(self) -> list[str]:
        return [e for r in self.messages + self.chat for e in r["error_samples"]][:3]


def messages_vs_chat(bench: Bench, router: Router) -> MessagesVsChat:
    result = MessagesVsChat()
    p = bench.profile
    for i in range(p.onoff_rounds):
        for side in ("messages", "chat") if i % 2 == 0 else ("chat", "messages"):
            if side == "chat":
                run = bench.closed(router, stream=True, concurrency=16, duration=p.onoff_duration)
            else:
                run = bench.load.run(op="closed", url=router.url + "/v1/messages",
                                     headers={"content-type": "application/json", "x-api-key": MASTER_KEY,
                                              "anthropic-version": "2023-06-01"},
                                     body=messages_body(stream=True), stream=True, concurrency=16,
                                     duration=p.onoff_duration, warmup=p.warmup, max_requests=p.max_requests,
                                     pid=router.proc.pid)
            getattr(result, side).append(run)
    return result


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


# ---- report -----------------------------------------------------------------------

def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def matrix_table(cells: list[Cell]) -> list[str]:
    head = (f"{'mode':<11}{'c':>3}{'direct rps':>12}{'router rps':>12}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'+p50 ms':>9}{'TTFB p50':>10}{'+TTFB ms':>10}{'CPU ms/req':>12}{'errors':>8}")
    lines = [head, "-" * len(head)]
    for cell in cells:
        ttfb = (fmt(cell.router("ttfb_p50")), fmt(cell.added("ttfb_p50"))) if cell.stream else ("-", "-")
        lines.append(
            f"{'stream' if cell.stream else 'non-stream':<11}{cell.concurrency:>3}{fmt(cell.direct('rps'), 0):>12}"
            f"{fmt(cell.router('rps'), 0):>12}{fmt(cell.router('p50')):>9}{fmt(cell.router('p99')):>9}"
            f"{fmt(cell.added('p50')):>9}{ttfb[0]:>10}{ttfb[1]:>10}{fmt(cell.router('cpu_ms_per_req')):>12}"
            f"{cell.errors():>8}")
    return lines


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def at_most(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def targets_table(bench: Bench, slow: dict, onoff: OnOff, mvc: MessagesVsChat, rows: int) -> list[str]:
    def cell(stream: bool, c: int) -> Cell:
        return next(x for x in bench.cells if x.stream == stream and x.concurrency == c)

    cpu = [cell(False, c).router("cpu_ms_per_req") for c in CONCURRENCY]
    added_p50 = cell(False, 1).added("p50")
    added_ttfb = cell(True, 1).added("ttfb_p50")
    capacity, measured = onoff.capacity_cost(), onoff.rps_cost()
    n = bench.profile.slow_count
    checks = [
        ("CPU per non-streaming request (c=1/16/64)", " / ".join(fmt(v) for v in cpu) + " ms", "<= 1.5 ms",
         all(at_most(v, 1.5) for v in cpu)),
        ("added p50 latency, non-streaming c=1", f"{fmt(added_p50)} ms", "<= 1.5 ms", at_most(added_p50, 1.5)),
        ("added time to first streamed byte, c=1", f"{fmt(added_ttfb)} ms", "<= 2 ms", at_most(added_ttfb, 2.0)),
        (f"{n} concurrent slow streams: errors", str(slow["errors"]), "0", slow["errors"] == 0),
        (f"{n} concurrent slow streams: peak RSS", f"{slow['peak_rss_mb']:.0f} MB", "<= 150 MB",
         slow["peak_rss_mb"] <= 150),
        ("usage logging on: throughput cost (*)", f"{fmt(capacity, 1)} % (rps: {fmt(measured, 1)} %)", "<= 5 %",
         at_most(capacity, 5.0)),
        ("usage rows written == requests", f"{rows} / {bench.sent_to_logging_router}", "equal",
         rows == bench.sent_to_logging_router),
        ("CPU/request: /v1/messages relay vs chat relay", f"{fmt(mvc.cpu('messages'))} vs {fmt(mvc.cpu('chat'))} ms",
         "<= chat", at_most(mvc.cpu("messages"), mvc.cpu("chat") or 0.0) and not mvc.errors()),
    ]
    head = f"{'target':<44}{'measured':>30}  {'target':<10}{'result':>6}"
    lines = [head, "-" * len(head)]
    lines += [f"{name:<44}{value:>30}  {goal:<10}{verdict(ok):>6}" for name, value, goal, ok in checks]
    lines.append("(*) judged on CPU per request (the router is CPU-bound at c=16, so capacity = 1 / CPU); the "
                 "measured rps ratio is shown too but moves with the machine's other load")
    return lines


def report(bench: Bench, slow: dict, onoff: OnOff, mvc: MessagesVsChat, rows: int, db: Database,
           mode: str) -> str:
    p = bench.profile
    lines = ["", f"Chat completions through the router (usage logging on), median of {p.rounds} round(s); "
             "'+' = router minus direct, paired runs", *matrix_table(bench.cells), ""]
    lines.append(f"{p.slow_count} concurrent slow streams ({p.slow_pieces} chunks x {p.slow_gap_ms} ms): "
                 f"{slow['done']} complete, {slow['errors']} errors, wall {slow['elapsed']:.2f} s, "
                 f"stream p50 {fmt(slow['p50'], 0)} ms / p99 {fmt(slow['p99'], 0)} ms, "
                 f"TTFB p99 {fmt(slow['ttfb_p99'], 1)} ms, router CPU {fmt(slow['cpu_ms_per_req'])} ms/stream, "
                 f"peak router RSS {slow['peak_rss_mb']:.0f} MB")
    lines += [f"    error: {err}" for err in slow["error_samples"]]
    lines.append(f"Usage logging to {db.kind} on vs off, non-streaming c=16, {p.onoff_rounds} alternating round(s): "
                 f"on {fmt(onoff.rps('on'), 0)} rps / {fmt(onoff.cpu('on'), 3)} ms CPU, "
                 f"off {fmt(onoff.rps('off'), 0)} rps / {fmt(onoff.cpu('off'), 3)} ms CPU; "
                 f"{rows} usage rows for {bench.sent_to_logging_router} requests")
    lines.append(f"/v1/messages native relay vs /v1/chat/completions relay, streaming c=16, {p.onoff_rounds} "
                 f"alternating round(s): messages {fmt(mvc.cpu('messages'), 3)} ms CPU/request, "
                 f"chat {fmt(mvc.cpu('chat'), 3)} ms CPU/request")
    lines += [f"    error (messages vs chat): {err}" for err in mvc.errors()]
    lines += [f"    error ({cell.label}): {err}" for cell in bench.cells for err in cell.error_samples()]
    smoke = " -- smoke run: the figures mean nothing" if mode == "smoke" else ""
    lines += ["", f"Targets (issues 3 and 14, under Daphne){smoke}", *targets_table(bench, slow, onoff, mvc, rows)]
    return "\n".join(lines)


def raw_figures(bench: Bench, slow: dict, onoff: OnOff, mvc: MessagesVsChat, rows: int) -> dict:
    return {"cells": [{"stream": c.stream, "concurrency": c.concurrency, "pairs": c.pairs} for c in bench.cells],
            "slow_streams": slow, "logging_on": onoff.on, "logging_off": onoff.off, "usage_rows": rows,
            "messages_passthrough": mvc.messages, "chat_relay": mvc.chat,
            "requests_to_logging_router": bench.sent_to_logging_router}


# ---- main ---------------------------------------------------------------------------

@contextmanager
def workspace(args: argparse.Namespace) -> Iterator[tuple[Procs, Database]]:
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp)
        db = Database.create(args.db, args.postgres, tmp)
        try:
            yield procs, db
        finally:
            procs.stop_all()
            with suppress(Exception):
                db.drop()


def start_routers(args: argparse.Namespace, procs: Procs, db: Database, profile: Profile) -> tuple[Router, Router, int]:
    """The fake upstream, the database loaded with a config pointing at it, and the two routers."""
    upstream_port = start_upstream(procs)
    cfg = procs.tmp / "router.yaml"
    cfg.write_text(config_yaml(upstream_port, profile))
    manage(db.url, "migrate", "--noinput", "-v0")
    manage(db.url, "import_config", str(cfg))
    env = {"ROUTER_HTTP_TRANSPORT": args.transport}
    on = start_router(procs, "router-logging-on", db.url, {**env, "ROUTER_USAGE_LOGGING": "true"})
    off = start_router(procs, "router-logging-off", db.url, {**env, "ROUTER_USAGE_LOGGING": "false"})
    for router in (on, off):
        wait_healthy(router, procs)
    return on, off, upstream_port


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
        cfg = procs.tmp / "router.yaml"
        cfg.write_text(events_yaml(upstream_port, n))
        manage(db.url, "migrate", "--noinput", "-v0")
        manage(db.url, "import_config", str(cfg))
        router = start_router(procs, "router", db.url, {"ROUTER_HTTP_TRANSPORT": args.transport})
        wait_healthy(router, procs)
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


def run(args: argparse.Namespace) -> tuple[str, dict]:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    profile = PROFILES[mode]
    machine = MachineLoad()
    with workspace(args) as (procs, db):
        print(f"[{mode}] database {db.kind}: migrate, import_config, start the routers ...", flush=True)
        on, off, upstream_port = start_routers(args, procs, db, profile)
        bench = Bench(profile, LoadGen(procs), f"http://127.0.0.1:{upstream_port}")
        # On/off first, while both routers are fresh: after the matrix and 500 streams the logging router
        # carries a bigger heap and connection pool, which would be charged to logging.
        onoff = bench.logging_on_off(on, off)
        mvc = messages_vs_chat(bench, off)
        db.wait_rows(bench.sent_to_logging_router)  # its queued rows must not be written during the matrix
        print("matrix (each router run right after the same load sent directly to the fake upstream):", flush=True)
        bench.matrix(on)
        slow = bench.slow_streams(on)
        print(f"  slow streams: {slow['errors']} errors", flush=True)
        rows = db.wait_rows(bench.sent_to_logging_router)
        bench.load.close()
    others = machine.others()
    header = (f"Auto AI Router benchmark ({mode}, {time.monotonic() - machine.started:.0f} s): Daphne, "
              f"{os.cpu_count()} CPUs (other processes, PostgreSQL included, used {others:.2f} CPU on average "
              f"meanwhile), database {db.kind}, HTTP transport {args.transport}; load: aiohttp client in its own "
              f"process, closed loop, {profile.duration:g} s per run after {profile.warmup:g} s warm-up; "
              f"CPU = router process utime+stime / requests")
    keys = keys_overhead(mode)
    text = report(bench, slow, onoff, mvc, rows, db, mode) + "\n" + keys_row(keys)
    return header + "\n" + text, {**raw_figures(bench, slow, onoff, mvc, rows), "client_keys": keys}


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


def keys_row(keys: dict) -> str:
    added = keys["added_ms"]
    return (f"{'client key: lookup + limits + budget admission, added CPU':<58}{fmt(added * 1000, 0) + ' us':>16}  "
            f"{'<= 100 us':<10}{verdict(at_most(added, 0.1)):>6}   (in-process limits; master path "
            f"{keys['master_ms'] * 1000:.0f} us, client {keys['client_ms'] * 1000:.0f} us; with REDIS_URL add one "
            "Redis round trip to admit, settlements pipelined: bench/keys_overhead.py --redis URL)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the router against a fast fake upstream.")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--quick", action="store_true", help="shorter cells (under a minute)")
    speed.add_argument("--smoke", action="store_true", help="a few requests per cell: checks the harness only")
    parser.add_argument("--db", choices=("auto", "postgres", "sqlite"), default="auto",
                        help="auto: PostgreSQL when reachable, else SQLite")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES,
                        help="an admin URL; a throwaway database is created beside it (env BENCH_POSTGRES_URL)")
    parser.add_argument("--transport", choices=("aiohttp", "httpx"), default="aiohttp",
                        help="the routers' ROUTER_HTTP_TRANSPORT")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--events", type=int, metavar="N", default=0,
                        help="only measure one stream of N tiny events (e.g. 175000), direct vs through the router")
    args = parser.parse_args(argv)
    text, figures = run_events(args) if args.events else run(args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
