"""What a newcomer sees in the router's own output: one encryption-key warning where the server starts
(none from manage.py commands), and a clean shutdown with no ``Unclosed client session``."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.fakes.openai import OpenAIFake, completion
from tests.fakes.server import Reply
from tests.live import PYTHON, ROOT, LiveRouter, _env, both_servers

KEY = "sk-lifecycle-key"
WARNING = "ROUTER_ENCRYPTION_KEY is not set"


@pytest.fixture
def upstream():
    fake = OpenAIFake(Reply(json=completion("Hello")), Reply(json=completion("Again"))).start()
    yield fake
    fake.stop()


def config(fake: OpenAIFake) -> str:
    return json.dumps({
        "server": {"master_key": KEY},
        "credentials": [{"name": "up", "type": "openai", "api_key": "sk-upstream-secret",
                         "base_url": f"{fake.url}/v1"}],
        "models": [{"name": "m", "credential": "up"}],
    })


@both_servers
def test_shutdown_closes_the_upstream_connections_quietly(upstream, tmp_path, server):
    live = LiveRouter(config(upstream), tmp_path, server=server, env={"ROUTER_ACCESS_LOG": "1"}).start()
    try:
        res = httpx.post(f"{live.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                         json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert res.status_code == 200  # the pooled upstream client now holds a keep-alive connection
    finally:
        live.stop()
    log = live.log()
    assert live.proc.returncode == 0 and '"POST /v1/chat/completions" 200' in log
    assert "Unclosed" not in log, log


DEV_KEY = {"ROUTER_ENCRYPTION_KEY": "", "DEBUG": ""}


@both_servers
def test_the_development_key_warning_is_said_once_where_the_server_starts(upstream, tmp_path, server):
    live = LiveRouter(config(upstream), tmp_path, env=DEV_KEY, server=server)  # import_config ran with this env
    live.start()
    live.stop()
    assert live.log().count(WARNING) == 1, live.log()


def test_manage_py_commands_do_not_say_the_development_key_warning(upstream, tmp_path):
    live = LiveRouter(config(upstream), tmp_path, env=DEV_KEY)
    for command in (["check"], ["export_config"], ["import_config", str(next(tmp_path.glob("router-*.yaml")))]):
        out = subprocess.run([PYTHON, "manage.py", *command], cwd=ROOT, env=_env(live.db, DEV_KEY),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert WARNING not in out.stdout + out.stderr, (command, out.stderr)
