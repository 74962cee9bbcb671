"""``routerproject.servers.run``: which server, where, with what; and a real process per server serving an
inherited listening socket (what a pre-forking supervisor hands its children), stopped by SIGTERM."""

from __future__ import annotations

import gc
import signal
import socket
import subprocess
import time

import httpx
import pytest

from proxy.logging import AccessLog
from routerproject import servers
from tests.live import PYTHON, ROOT, SERVERS, LiveRouter, _env


@pytest.fixture
def captured(monkeypatch, settings):
    """``run()`` up to the point where a server would start: what it would have started it with."""
    calls: list[tuple] = []
    monkeypatch.setattr(servers, "running", None)  # restored afterwards: this process serves nothing
    for name in ("_run_daphne", "_run_uvicorn"):
        monkeypatch.setattr(servers, name, lambda app, host, port, fd, *, behind_proxy, name=name: calls.append(
            (name, app, host, port, fd, behind_proxy, gc.get_freeze_count())))
    settings.ROUTER_HOST, settings.ROUTER_PORT = "127.0.0.1", 8123
    yield calls
    gc.unfreeze()


def test_run_starts_the_chosen_server_with_the_settings_defaults(captured, settings):
    from routerproject.asgi import application

    settings.ROUTER_SERVER = "uvicorn"
    servers.run()
    assert servers.running == "uvicorn" and not servers.daphne_may_serve()
    name, app, host, port, fd, behind_proxy, frozen = captured[-1]
    assert (name, app, host, port, fd, behind_proxy) == ("_run_uvicorn", application, "127.0.0.1", 8123, None, False)
    assert frozen > 0  # the startup heap is out of the collector's way before serving

    settings.ROUTER_ACCESS_LOG, settings.ROUTER_BEHIND_TLS_PROXY = True, True
    servers.run("daphne", host="::1", port=9000)
    name, app, host, port, fd, behind_proxy, _ = captured[-1]
    assert (name, host, port, fd, behind_proxy) == ("_run_daphne", "::1", 9000, None, True)
    assert isinstance(app, AccessLog) and app.app is application
    assert servers.daphne_may_serve()


def test_an_unknown_server_is_refused_by_name(captured):
    with pytest.raises(ValueError, match="unknown server 'gunicorn': choose one of daphne, uvicorn"):
        servers.run("gunicorn")
    assert captured == []


@pytest.mark.parametrize("server", SERVERS)
def test_a_server_serves_an_inherited_socket_and_drains_on_sigterm(tmp_path, server):
    live = LiveRouter("server: {master_key: sk-fd-test}\n", tmp_path, server=server)  # migrated, configured
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    log = tmp_path / "fd.log"
    with log.open("w") as out:
        proc = subprocess.Popen([PYTHON, "-m", "routerproject.servers", "--server", server, "--fd",
                                 str(listener.fileno())], cwd=ROOT, env=_env(live.db, live.extra_env),
                                pass_fds=[listener.fileno()], stdout=out, stderr=subprocess.STDOUT)
    listener.close()  # the child holds the socket now
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                res = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert res.status_code == 200 and res.json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert f"({server}, pid {proc.pid})" in out and "shutdown: every request finished" in out, out
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
