"""The pre-fork supervisor on its own, with tiny stand-in workers (the real router's workers are in
test_workers_live.py): crash loops end, Ctrl-C drains and a second one hurries, a worker that will not stop is
killed once the grace and the margin are over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from routerproject import supervisor
from tests.live import ROOT

# A stand-in worker: says it is up, counts the SIGTERMs it gets, exits at the Nth (never when N is 0).
WORKER = textwrap.dedent("""
    import os, signal, sys, time
    marks, stop_at = sys.argv[1], int(sys.argv[2])
    got = 0
    def on_term(signum, frame):
        global got
        got += 1
        open(os.path.join(marks, f"{os.getpid()}.term"), "w").write(str(got))
        if got == stop_at:
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, lambda *a: open(os.path.join(marks, f"{os.getpid()}.int"), "w").close())
    open(os.path.join(marks, f"{os.getpid()}.up"), "w").close()
    while True:
        time.sleep(0.05)
""")

# The supervisor in its own process (it owns that process's signals), over stand-in workers.
PARENT = textwrap.dedent("""
    import logging, sys
    from routerproject import supervisor
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    marks, stop_at, grace, margin = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    supervisor.KILL_MARGIN = margin
    sock = supervisor.listen("127.0.0.1", 0)
    command = lambda fd: [sys.executable, "-c", sys.argv[5], marks, stop_at]
    sys.exit(supervisor.Supervisor(sock, 2, command, grace=grace).run())
""")


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def start_parent(tmp_path: Path, *, stop_at: int, grace: float, margin: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), str(stop_at), str(grace), str(margin),
                             WORKER], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as in a terminal
    wait_for(lambda: len(list(tmp_path.glob("*.up"))) == 2 or proc.poll() is not None)
    return proc


def test_ctrl_c_drains_the_workers_and_a_second_one_hurries_them(tmp_path):
    parent = start_parent(tmp_path, stop_at=2, grace=60, margin=60)  # workers drain until a second SIGTERM
    os.killpg(parent.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
    wait_for(lambda: len(list(tmp_path.glob("*.term"))) == 2)
    assert parent.poll() is None  # still draining: nothing is cut on the first signal
    os.killpg(parent.pid, signal.SIGINT)
    out, _ = parent.communicate(timeout=30)
    assert parent.returncode == 0, out
    assert sorted(p.read_text() for p in tmp_path.glob("*.term")) == ["2", "2"]
    assert not list(tmp_path.glob("*.int"))  # the workers heard it only from the supervisor, as SIGTERM
    assert "workers cut what is left now" in out and out.count("exited (exit status 0)") == 2


def test_a_worker_that_does_not_stop_is_killed_after_the_grace_and_the_margin(tmp_path):
    parent = start_parent(tmp_path, stop_at=0, grace=0.2, margin=0.3)
    parent.send_signal(signal.SIGTERM)
    out, _ = parent.communicate(timeout=30)
    assert parent.returncode == 0, out
    assert "still running" in out and out.count("exited (signal SIGKILL)") == 2
    assert sorted(p.read_text() for p in tmp_path.glob("*.term")) == ["1", "1"]


def test_workers_that_keep_dying_at_start_make_the_supervisor_give_up(monkeypatch, caplog):
    monkeypatch.setattr(supervisor, "MAX_QUICK_DEATHS", 3)
    sock = supervisor.listen("127.0.0.1", 0)
    started = []

    def command(fd: int) -> list[str]:
        started.append(fd)
        return [sys.executable, "-c", "raise SystemExit(3)"]
    with caplog.at_level("INFO", logger="routerproject.supervisor"):
        assert supervisor.Supervisor(sock, 1, command, grace=1).run() == 1
    assert len(started) == 3 and sock.fileno() == -1  # the socket is closed on the way out
    assert "died (exit status 3)" in caplog.text and "giving up" in caplog.text


def test_a_worker_that_cannot_be_started_is_tried_again(monkeypatch, caplog):
    monkeypatch.setattr(supervisor, "MAX_RESTART_DELAY", 0.1)
    monkeypatch.setattr(supervisor, "MAX_QUICK_DEATHS", 1)
    tries = []

    def command(fd: int) -> list[str]:
        tries.append(fd)
        return [str(Path(sys.executable).parent / "no-such-python")] if len(tries) < 3 else [
            sys.executable, "-c", "raise SystemExit(3)"]
    with caplog.at_level("INFO", logger="routerproject.supervisor"):
        assert supervisor.Supervisor(supervisor.listen("127.0.0.1", 0), 1, command, grace=1).run() == 1
    assert len(tries) == 3 and caplog.text.count("could not be started") == 2
    assert "died (exit status 3)" in caplog.text
