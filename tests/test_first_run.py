"""The README's first run: the sample config's demo credential streams to curl-like clients and to Codex,
under either server."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.codex.harness import CodexHome, require_codex
from tests.live import ROOT, SERVERS, LiveRouter

KEY = "sk-router-local-dev"  # the sample config's master key, as the README says


@pytest.fixture(scope="module", params=SERVERS)
def router(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("first-run")
    live = LiveRouter((ROOT / "router.sample.yaml").read_text(), tmp, server=request.param).start()
    yield live, tmp
    live.stop()


def test_sample_config_streams_a_demo_answer(router):
    live, _ = router
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body,
                      headers={"authorization": f"Bearer {KEY}"}, timeout=30) as res:
        assert res.status_code == 200
        data = [line[6:] for line in res.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    text = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in data[:-1])
    assert len(data) > 5 and "You said: 'hi'" in text
    models = httpx.get(live.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"}).json()
    assert {"demo", "gpt-4o", "fast"} <= {m["id"] for m in models["data"]}


def test_demo_answers_responses_as_json_and_refuses_embeddings_as_what_it_is(router):
    live, _ = router
    auth = {"authorization": f"Bearer {KEY}"}
    res = httpx.post(live.url + "/v1/responses", json={"model": "demo", "input": "hi"}, headers=auth, timeout=30)
    assert res.status_code == 200 and res.headers["content-type"] == "application/json"
    assert "You said: 'hi'" in res.json()["output"][0]["content"][0]["text"]
    res = httpx.post(live.url + "/v1/embeddings", json={"model": "demo", "input": "hi"}, headers=auth, timeout=30)
    error = res.json()["error"]
    assert res.status_code == 400 and (error["type"], error["code"]) == ("invalid_request_error", "unsupported_model")
    assert "demo credential" in error["message"] and "does not serve embeddings" in error["message"]
    assert "upstream" not in error["message"]


def test_codex_gets_an_answer_from_the_demo_model(router):
    require_codex()
    live, tmp = router
    run = CodexHome(tmp, live.url).exec("openai", "say hi", api_key=KEY, model="demo")
    assert run.rc == 0, run.describe()
    assert "Hello from Auto AI Router's demo model" in run.answer, run.describe()


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/realtime", "/admin/", "/no/such/path"])
def test_websocket_upgrades_are_refused_cleanly(router, path):
    live, _ = router
    handshake = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {KEY}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(handshake.encode())
        head = sock.recv(4096).decode(errors="replace")
    assert head.split("\r\n")[0].split(" ")[1] == "403", head
    assert "Traceback" not in live.log() and "No application configured" not in live.log()
    assert httpx.get(live.url + "/health").status_code == 200  # and the server carries on
