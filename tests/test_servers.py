"""``routerproject.servers.run``: which server, where, with what; and a real process per server serving an
inherited listening socket (what a pre-forking supervisor hands its children), stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
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
    assert "GET /health" not in out  # no access log unless ROUTER_ACCESS_LOG: neither server's own
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


# ---- the access log (ROUTER_ACCESS_LOG): one line per request, the same under both servers ----------------

def _http_scope(path: str, query: bytes = b"") -> dict:
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": query,
            "client": ("10.1.2.3", 5555), "headers": []}


async def test_access_log_says_client_method_path_status_once_per_request(caplog):
    async def answer(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    async def left(scope, receive, send) -> None:  # a stream the client walked away from
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise asyncio.CancelledError

    async def send(message) -> None:
        pass

    with caplog.at_level(logging.INFO, logger="router.access"):
        await AccessLog(answer)(_http_scope("/v1/chat/completions", b"key=abc"), None, send)
        with pytest.raises(asyncio.CancelledError):
            await AccessLog(left)(_http_scope("/v1/responses"), None, send)
        await AccessLog(answer)({"type": "lifespan"}, None, send)  # not a request: not logged
    lines = [r.getMessage() for r in caplog.records if r.name == "router.access"]
    assert len(lines) == 2, lines
    # the configured handlers' RedactSecretsFilter has cleaned the line, as it cleans any record
    assert re.fullmatch(r'10\.1\.2\.3:5555 - "POST /v1/chat/completions\?key=\[redacted\]" 201 \d+\.\dms', lines[0])
    assert lines[1].startswith('10.1.2.3:5555 - "POST /v1/responses" 200 ')
