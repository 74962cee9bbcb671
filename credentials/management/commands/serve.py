"""``manage.py serve``: the router on ``ROUTER_HOST``:``ROUTER_PORT`` with one worker process per core.

``--workers 1`` serves in this process. More workers: this process binds the socket and
supervises that many children on it (``routerproject.supervisor``); each child is
``manage.py serve --worker-fd FD``. Migrations are not this command's job (``scripts/run`` and
the compose file run them first).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from routerproject import servers, supervisor
from routerproject.exposure import SUPERVISED_ENV, addrport, warn_if_exposed

PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    if settings.ROUTER_WORKERS > 0:
        return settings.ROUTER_WORKERS
    counter = getattr(os, "process_cpu_count", os.cpu_count)  # 3.13+: the cores this process may use
    return counter() or 1


class Command(BaseCommand):
    help = "Serve the router: N worker processes on one socket (default: one per core)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--server", choices=servers.SERVERS, default=None,
                            help="HTTP server each worker runs (default: ROUTER_SERVER, else uvicorn)")
        parser.add_argument("--workers", type=int, default=None,
                            help="worker processes (default: ROUTER_WORKERS, else the number of cores)")
        parser.add_argument("--host", default=None, help="address to listen on (default: ROUTER_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port to listen on (default: ROUTER_PORT)")
        parser.add_argument("--worker-fd", type=int, default=None, help="(internal) serve on this inherited socket")

    def handle(self, *args, **options) -> None:
        server = options["server"] or settings.ROUTER_SERVER
        if options["worker_fd"] is not None:
            _follow_parent()
            servers.run(server, fd=options["worker_fd"])
            return
        workers = options["workers"] if options["workers"] is not None else default_workers()
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        host = options["host"] or settings.ROUTER_HOST
        port = options["port"] if options["port"] is not None else settings.ROUTER_PORT
        if workers == 1:  # each server process says when its address is exposed (servers.run)
            servers.run(server, host=host, port=port)
            return
        warn_if_exposed(host)  # once here, not in every worker
        _close_database_pools()  # the workers open their own; this process needs none
        if not settings.REDIS_URL:
            sys.stderr.write(
                f"*** WARNING: {workers} workers without REDIS_URL: rate limits, budgets, cooldowns and "
                "round-robin are kept per worker, not shared (a limit of N allows up to N per worker). "
                "Set REDIS_URL, or --workers 1.\n")
            sys.stderr.flush()
        try:
            sock = supervisor.listen(host, port)
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        self.stdout.write(f"Serving on http://{addrport(host, port)}/ with {workers} {server} workers")
        self.stdout.flush()
        grace = settings.ROUTER_SHUTDOWN_GRACE_SECONDS
        with _worker_env() as env:
            code = supervisor.Supervisor(sock, workers, _worker_command(server), grace=grace, env=env).run()
        if code:
            sys.exit(code)


def _worker_command(server: str):
    manage = str(Path(settings.BASE_DIR) / "manage.py")

    def command(fd: int) -> list[str]:
        return [sys.executable, manage, "serve", "--server", server, "--worker-fd", str(fd)]
    return command


@contextlib.contextmanager
def _worker_env():
    """The workers' environment: this process's pid (they follow it), and one PROMETHEUS_MULTIPROC_DIR
    shared by all, emptied at start, so /metrics from any worker sums every worker (a directory made
    here is removed at exit, an operator's is kept)."""
    env = {**os.environ, SUPERVISED_ENV: str(os.getpid())}
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="router-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # values of an earlier run would be added to this one's
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # mark_process_dead reads it in this process
    try:
        yield env
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _close_database_pools() -> None:
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.close()
        if hasattr(conn, "close_pool"):
            conn.close_pool()


def _follow_parent() -> None:
    """A worker drains (SIGTERM) when its supervisor dies without stopping it (SIGKILL, a crash)."""
    parent = os.environ.get(SUPERVISED_ENV)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent and os.getppid() != int(parent):  # the parent died before the line above took effect
        raise CommandError("the supervising process is gone")
