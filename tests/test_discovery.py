"""A credential marked ``discover_models`` serves whatever its upstream lists at GET /v1/models."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from proxy import config, discovery
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.openai import completion
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)


async def test_discovered_models_are_listed_and_routed(app, router_db, openai_fake):
    fake = openai_fake(Reply(json=completion("from chained router")), models=["llama-3-70b", "qwen-2"])
    await sync_to_async(add_credential)("chained", "proxy", api_key="sk-upstream-secret", base_url=fake.url,
                                        discover_models=True)
    chat = {"model": "llama-3-70b", "messages": [{"role": "user", "content": "hi"}]}
    discovery._models.clear()
    assert (await call(app, "POST", "/v1/chat/completions", chat, AUTH)).status == 404

    await discovery.refresh_once(await config.current())  # what the background task does
    listed = (await call(app, "GET", "/v1/models", None, AUTH)).json()["data"]
    assert [m["id"] for m in listed] == ["llama-3-70b", "qwen-2"]
    res = await call(app, "POST", "/v1/chat/completions", chat, AUTH)
    assert res.status == 200 and "from chained router" in res.body.decode()
    sent = [r for r in fake.requests if r.path == "/v1/chat/completions"]
    assert sent[0].json["model"] == "llama-3-70b"
    assert "/v1/models" in [r.path for r in fake.requests]


async def test_discovery_failure_keeps_serving_and_logs(app, router_db, caplog):
    await sync_to_async(add_credential)("gone", "openai", api_key="k", base_url="http://127.0.0.1:9",
                                        discover_models=True)
    discovery._models.clear()
    await discovery.refresh_once(await config.current())
    assert discovery.models_of("gone") == frozenset()
    assert "model discovery for gone failed" in caplog.text
