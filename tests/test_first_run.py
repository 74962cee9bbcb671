"""The README's first run: the sample config's demo credential streams to curl-like clients and to Codex."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.codex.harness import CodexHome, require_codex
from tests.live import ROOT, LiveRouter

KEY = "sk-router-local-dev"  # the sample config's master key, as the README says


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first-run")
    live = LiveRouter((ROOT / "router.sample.yaml").read_text(), tmp).start()
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


def test_codex_gets_an_answer_from_the_demo_model(router):
    require_codex()
    live, tmp = router
    run = CodexHome(tmp, live.url).exec("openai", "say hi", api_key=KEY, model="demo")
    assert run.rc == 0, run.describe()
    assert "Hello from Auto AI Router's demo model" in run.answer, run.describe()
