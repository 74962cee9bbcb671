"""The benchmark's processes: the fake upstream, routers under a chosen ASGI server, the load generator.

Every process is its own, so CPU is attributed correctly, and every one is stopped by handle at the end.
A ``Target`` is what the load generator is pointed at: the fake upstream itself ("direct"), a router, or
the peer gateway; it carries the headers and model names that make the same request through each.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
MASTER_KEY = "sk-bench-router-key"
UPSTREAM_MODEL = "bench-upstream"
CHECK_MODEL = "slow-3-150"  # the fake upstream's 3 pieces 150 ms apart: is a stream relayed as it comes?
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant. Answer in one short paragraph."},
    {"role": "user", "content": "Explain in two sentences why a gateway should add as little latency as it can."},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_body(model: str, *, stream: bool) -> str:
    data: dict = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if stream:
        data.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(data)


class Procs:
    """Every process the benchmark starts, stopped (by handle) at the end; stderr goes to a log file each."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen] = []
        self.logs: list[IO[str]] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
              **kwargs) -> subprocess.Popen:
        self.logs.append((self.tmp / f"{name}.log").open("w"))
        kwargs.setdefault("stdout", self.logs[-1])
        proc = subprocess.Popen(args, cwd=cwd, env=env, stderr=self.logs[-1], **kwargs)
        self.started.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.started:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


@dataclass
class Target:
    """Where a run sends its requests, and how: the same request shape through each."""

    name: str
    url: str  # base, without /v1
    headers: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)  # upstream model -> the name this target knows it by
    proc: subprocess.Popen | None = None  # its CPU and RSS are sampled (the process tree)
    counts_usage: bool = False  # a router logging to the benchmark's database: its requests become rows
    key: str = ""  # a router's client key: one per router, so its usage rows can be counted apart
    sent: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def model(self, upstream: str) -> str:
        return self.aliases.get(upstream, upstream)


def direct_target(upstream_port: int) -> Target:
    return Target("direct", f"http://127.0.0.1:{upstream_port}", {"content-type": "application/json"})


def start_upstream(procs: Procs) -> int:
    proc = procs.spawn("upstream", [PYTHON, str(BENCH / "fake_upstream.py")], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("ready "):
        raise RuntimeError(f"fake upstream did not start:\n{procs.log('upstream')}")
    return int(line.split()[1])


# ---- routers ----------------------------------------------------------------------

def router_env(database_url: str, tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_", "ROUTER_"))}
    env.update({"DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "routerproject.settings",
                "ROUTER_ENCRYPTION_KEY": "bench-encryption-key", "ROUTER_MASTER_KEY": MASTER_KEY,
                "ROUTER_USAGE_SPOOL_DIR": str(tmp / "usage-spool"), "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "WARNING"})
    env.pop("REDIS_URL", None)
    env.update(extra or {})
    return env


def manage(database_url: str, tmp: Path, *args: str) -> None:
    out = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=router_env(database_url, tmp),
                         capture_output=True, text=True, timeout=180)
    if out.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")


def server_available(server: str) -> bool:
    if server == "daphne":
        return True
    try:
        import httptools  # noqa: F401
        import uvicorn  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def server_command(server: str, port: int, workers: int) -> list[str]:
    """As the router is started in production (one worker serves in that process; more are supervised)."""
    return [PYTHON, "manage.py", "serve", "--server", server, "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(port)]


def start_router(procs: Procs, name: str, server: str, database_url: str, extra_env: dict[str, str], *,
                 workers: int = 1, aliases: dict[str, str], key: str = "") -> Target:
    key = key or client_key(name)
    port = free_port()
    proc = procs.spawn(name, server_command(server, port, workers),
                       env=router_env(database_url, procs.tmp, extra_env))
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    return Target(name, f"http://127.0.0.1:{port}", headers, aliases, proc,
                  extra_env.get("ROUTER_USAGE_LOGGING", "true") == "true", key)


def client_key(name: str) -> str:
    return "sk-bench-" + "".join(c if c.isalnum() else "-" for c in name).ljust(24, "0")


def wait_serving(target: Target, procs: Procs, path: str = "/health", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.proc is not None and target.proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited:\n{procs.log(target.name)}")
        try:
            with urllib.request.urlopen(target.url + path, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer (a 503 "degraded", a 404) means it serves
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{target.name} did not start:\n{procs.log(target.name)}")


def post(url: str, payload: dict, headers: dict[str, str], timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def create_client_key(admin: Target, router: Target) -> None:
    """The client key a router's requests carry, made through the management API as an operator would:
    a budget that resets and limits of every kind, all far above what the benchmark sends, so they are
    checked and counted on every request but never throttle. Its alias is the router's name."""
    status, answer = post(admin.url + "/key/generate", {
        "key": router.key, "key_alias": router.name, "models": [], "max_budget": 1_000_000, "budget_duration": "30d",
        "rpm_limit": 1_000_000_000, "tpm_limit": 2_000_000_000, "max_parallel_requests": 1_000_000,
    }, {"authorization": f"Bearer {MASTER_KEY}"})
    if status != 200:
        raise RuntimeError(f"/key/generate answered {status}: {answer[:300]!r}")


def wait_key_accepted(router: Target, timeout: float = 30.0) -> None:
    """Routers load keys from an in-memory table each process refreshes on its own: wait until every worker
    knows the key, i.e. until batches of concurrent requests (on new connections, so they spread over the
    workers) are all accepted three times running."""
    payload = json.loads(chat_body(router.model(UPSTREAM_MODEL), stream=False))
    deadline = time.monotonic() + timeout
    streak = 0
    with ThreadPoolExecutor(8) as pool:
        while streak < 3:
            router.sent += 8
            answers = list(pool.map(lambda _: post(router.url + "/v1/chat/completions", payload, router.headers),
                                    range(8)))
            refused = [(status, answer) for status, answer in answers if status != 200]
            streak = 0 if refused else streak + 1
            if refused and time.monotonic() > deadline:
                status, answer = refused[0]
                raise RuntimeError(f"{router.name} still refuses the client key: {status} {answer[:300]!r}")
            if refused:
                time.sleep(0.25)


def check_streaming(target: Target) -> None:
    """The target relays a stream as it comes (not buffered whole): the first content arrives well
    before the last, which the fake upstream sends ``(pieces - 1) * gap_ms`` later."""
    model = target.model(CHECK_MODEL)
    request = urllib.request.Request(target.url + "/v1/chat/completions", data=chat_body(model, stream=True).encode(),
                                     headers=target.headers)
    pieces, gap_ms = 3, 150
    target.sent += 1
    started = time.perf_counter()
    arrivals: list[float] = []
    body = b""
    with urllib.request.urlopen(request, timeout=30) as response:
        while line := response.readline():
            body += line
            if b'"content":"word' in line:
                arrivals.append(time.perf_counter() - started)
    if len(arrivals) != pieces or not body.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"{target.name}: stream incomplete ({len(arrivals)} of {pieces} pieces): {body[-300:]!r}")
    if arrivals[-1] - arrivals[0] < (pieces - 1) * gap_ms / 1000 * 0.6:
        raise RuntimeError(f"{target.name} buffers streams: content arrived at {arrivals} s")


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
