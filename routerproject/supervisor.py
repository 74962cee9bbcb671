"""Several worker processes on one listening socket (``manage.py serve --workers N``).

The parent binds the socket once and starts N children that inherit it; each child
runs one server (``routerproject.servers``) with its own event loop, usage writer and
in-memory snapshots, and the kernel hands each new connection to one of them. With
``REDIS_URL`` set the children share limits, budgets, cooldowns and round-robin
through Redis; without it each keeps its own.

The parent only supervises:

* a child that dies while the router is serving is replaced; children that die soon
  after they start are restarted with a growing delay (a crash loop does not spin), and
  after ``MAX_QUICK_DEATHS`` such deaths in a row the parent gives up and exits 1;
* SIGTERM or SIGINT closes the parent's copy of the socket and sends SIGTERM to every
  child, which drains (``proxy.shutdown``: requests finish within
  ``ROUTER_SHUTDOWN_GRACE_SECONDS``, usage rows are flushed); a second signal is
  passed on (each child then cuts what is left at once); children still alive after
  the grace plus ``KILL_MARGIN`` are killed. The parent exits when every child is gone.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the serve command provides a fresh one) every
child's metrics go to that directory and any child answers ``/metrics`` with the
totals; the parent marks a dead child's live gauges gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("routerproject.supervisor")

BACKLOG = 2048
QUICK_DEATH_SECONDS = 10.0  # a child that dies sooner than this after its start counts as a crash loop
MAX_QUICK_DEATHS = 5
MAX_RESTART_DELAY = 30.0
KILL_MARGIN = 15.0  # after the grace: time for the children's cut requests and final usage flush
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket the children can inherit."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@dataclass
class Worker:
    slot: int
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Keep ``count`` children of ``command(fd)`` alive on ``sock`` until told to stop."""

    def __init__(self, sock: socket.socket, count: int, command: Callable[[int], list[str]], *,
                 grace: float, env: dict[str, str] | None = None) -> None:
        self.sock = sock
        self.count = count
        self.command = command
        self.grace = grace
        self.env = env
        self.workers: dict[int, Worker] = {}  # pid -> worker
        self.restart_at: dict[int, float] = {}  # slot -> when to start its replacement
        self.quick_deaths = 0
        self.stopping_since: float | None = None
        self.killed = False
        self.failed = False

    # ---- children ----------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        fd = self.sock.fileno()
        # its own process group: a terminal's Ctrl-C reaches only this process, which drains the workers
        # (were it to reach them too, a Daphne worker would stop at once, a uvicorn one take it as a hurry)
        try:
            proc = subprocess.Popen(self.command(fd), pass_fds=(fd,), env=self.env, process_group=0)
        except OSError as exc:  # out of processes or memory for now: the others serve meanwhile
            log.error("worker %d could not be started (%s); trying again in %gs", slot, exc, MAX_RESTART_DELAY)
            self.restart_at[slot] = time.monotonic() + MAX_RESTART_DELAY
            return
        self.workers[proc.pid] = Worker(slot, proc)
        log.info("worker %d started (pid %d)", slot, proc.pid)

    def _reap(self) -> None:
        now = time.monotonic()
        for pid, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None:
                continue
            del self.workers[pid]
            _mark_dead(pid)
            if self.stopping_since is not None:
                log.info("worker %d (pid %d) exited (%s)", worker.slot, pid, _describe(code))
                continue
            lived = now - worker.started
            self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            delay = 0.0 if not self.quick_deaths else min(MAX_RESTART_DELAY, 0.5 * 2 ** (self.quick_deaths - 1))
            log.error("worker %d (pid %d) died (%s) after %.1fs; replacing it%s", worker.slot, pid,
                      _describe(code), lived, f" in {delay:g}s" if delay else "")
            self.restart_at[worker.slot] = now + delay
        if self.quick_deaths >= MAX_QUICK_DEATHS and self.stopping_since is None:
            log.error("%d workers in a row died within %gs of starting: giving up", self.quick_deaths,
                      QUICK_DEATH_SECONDS)
            self.failed = True
            self._stop()

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[slot]
                self._spawn(slot)

    # ---- stopping ----------------------------------------------------------------------------

    def _stop(self) -> None:
        """First signal: stop accepting here and let every child drain."""
        self.stopping_since = time.monotonic()
        self.restart_at.clear()
        self.sock.close()  # the children's copies close as they drain: then new connections are refused
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return
        if self.stopping_since is None:
            log.warning("%s: stopping %d worker(s); requests in flight get up to %gs to finish",
                        signal.Signals(signum).name, len(self.workers), self.grace)
            self._stop()
        else:
            log.warning("%s again: workers cut what is left now", signal.Signals(signum).name)
            self._signal_all(signal.SIGTERM)  # a second SIGTERM makes a child skip the rest of its grace

    def _kill_stragglers(self) -> None:
        if self.killed or self.stopping_since is None:
            return
        if time.monotonic() - self.stopping_since > self.grace + KILL_MARGIN:
            log.error("%d worker(s) still running %gs after SIGTERM: killing them", len(self.workers),
                      self.grace + KILL_MARGIN)
            self._signal_all(signal.SIGKILL)
            self.killed = True

    # ---- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until every child is gone after a stop; the exit status for the parent."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {sig: signal.signal(sig, _noop) for sig in SIGNALS}
        previous_fd = signal.set_wakeup_fd(wake_w)
        try:
            for slot in range(self.count):
                self._spawn(slot)
            while self.workers or self.restart_at:
                with contextlib.suppress(InterruptedError):
                    select.select([wake_r], [], [], 0.5)
                with contextlib.suppress(BlockingIOError):
                    for signum in os.read(wake_r, 64):
                        self._on_signal(signum)
                self._reap()
                self._restart_due()
                self._kill_stragglers()
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            self.sock.close()
        log.info("all workers stopped")
        return 1 if self.failed else 0


def _noop(signum, frame) -> None:
    """The signal's number reaches the loop through the wake-up pipe."""


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def _mark_dead(pid: int) -> None:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid)
