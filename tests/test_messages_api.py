"""/v1/messages in-process: native relay details, prompt-caching breakpoints, usage rows, stickiness, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async

from tests.asgi_client import call
from tests.chat_helpers import rows
from tests.conftest import MASTER_KEY, add_credential
from tests.fakes.anthropic import AnthropicFake, Fail, Turn, text
from tests.fakes.server import FakeServer

pytestmark = pytest.mark.django_db(transaction=True)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude_code"
HEADERS = {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"}
SIMPLE = {"model": "claude", "max_tokens": 100, "system": "You are terse.",
          "tools": [{"name": "f", "input_schema": {"type": "object"}}],
          "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                       {"role": "user", "content": "Again"}]}


@pytest.fixture
def anthropic_upstream(router_db):
    servers = []

    async def make(name: str = "claude_cred", *turns, **fields):
        fake = AnthropicFake(list(turns), api_key="sk-ant-up")
        server = FakeServer(fake.handler).start()
        servers.append(server)
        await sync_to_async(add_credential)(name, "anthropic", models={"claude": "claude-sonnet-4-6"},
                                            api_key="sk-ant-up", base_url=server.url, **fields)
        return fake
    yield make
    for server in servers:
        server.stop()


def events(body: bytes) -> list[dict]:
    return [json.loads(line[6:]) for block in body.decode().split("\n\n") for line in block.splitlines()
            if line.startswith("data: ")]


async def test_claude_code_request_is_relayed_as_sent(app, anthropic_upstream):
    recorded = json.loads((FIXTURES / "claude_code_2.1.332_after_bash_tool.json").read_text())
    fake = await anthropic_upstream("claude_cred", Turn([text("Done.")]))
    headers = {k.lower(): v for k, v in recorded["headers"].items()}
    res = await call(app, "POST", "/v1/messages", {**recorded["body"], "model": "claude"},
                     {**headers, "x-api-key": MASTER_KEY})
    assert res.status == 200 and res.headers["content-type"] == "text/event-stream", res.body
    assert fake.received[-1] == {**recorded["body"], "model": "claude-sonnet-4-6"}  # byte-for-byte the same JSON
    sent = fake.received_headers[-1]
    assert sent["anthropic-beta"] == headers["anthropic-beta"] and sent["anthropic-version"] == "2023-06-01"
    assert sent["x-api-key"] == "sk-ant-up" and MASTER_KEY not in json.dumps(sent)
    kinds = [e["type"] for e in events(res.body)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "ping" in kinds
    [row] = await rows()
    assert (row.endpoint, row.provider, row.status, row.completion_tokens) == ("messages", "anthropic", 200,
                                                                               row.completion_tokens)
    assert row.prompt_tokens == 25 and row.completion_tokens > 0


async def test_breakpoints_added_when_the_client_set_none(app, anthropic_upstream):
    usage = {"input_tokens": 10, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 0,
             "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100}}
    fake = await anthropic_upstream("claude_cred", Turn([text("A")], usage=usage), Turn([text("B")]),
                                    prompt_caching=True)
    res = await call(app, "POST", "/v1/messages", SIMPLE, HEADERS)
    assert res.status == 200, res.body
    sent = fake.received[-1]
    assert sent["system"] == [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    assert sent["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    ephemeral = {"type": "ephemeral"}
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "Hello.", "cache_control": ephemeral}]
    assert sent["messages"][2] == SIMPLE["messages"][2]
    [row] = await rows()
    assert (row.cache_write_5m_tokens, row.cache_write_1h_tokens, row.prompt_tokens) == (200, 100, 310)
    # a client that placed its own breakpoint keeps exactly its own
    own = {**SIMPLE, "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]}
    await call(app, "POST", "/v1/messages", own, HEADERS)
    assert fake.received[-1] == {**own, "model": "claude-sonnet-4-6"}


async def test_breakpoints_off_by_default_and_on_the_chat_path(app, anthropic_upstream):
    fake = await anthropic_upstream("claude_cred", Turn([text("A")]))
    await call(app, "POST", "/v1/messages", SIMPLE, HEADERS)
    assert "cache_control" not in json.dumps(fake.received[-1])
    fake2 = await anthropic_upstream("cached_cred", Turn([text("B")]), prompt_caching=True)
    await sync_to_async(_only)("cached_cred")
    chat = {"model": "claude", "messages": [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Hi"}]}
    res = await call(app, "POST", "/v1/chat/completions", chat, {"authorization": f"Bearer {MASTER_KEY}"})
    assert res.status == 200, res.body
    assert fake2.received[-1]["system"][-1]["cache_control"] == {"type": "ephemeral"}


def _only(name: str) -> None:
    from credentials.models import Credential
    from proxy import config

    Credential.objects.exclude(name=name).update(enabled=False)
    config.invalidate()


async def test_session_stays_on_one_credential(app, anthropic_upstream):
    first = await anthropic_upstream("claude_a", *[Turn([text("a")]) for _ in range(6)])
    second = await anthropic_upstream("claude_b", *[Turn([text("b")]) for _ in range(6)])
    for session in ("s-1", "s-2", "s-3"):
        for _ in range(2):
            res = await call(app, "POST", "/v1/messages", SIMPLE, {**HEADERS, "x-claude-code-session-id": session})
            assert res.status == 200
    counts = [len(first.received), len(second.received)]
    assert sum(counts) == 6 and all(c % 2 == 0 for c in counts)  # both requests of a session on one credential


async def test_upstream_errors_pass_through_unchanged(app, anthropic_upstream):
    await anthropic_upstream("claude_cred", Fail.bad_request("messages.0.content: something Anthropic said"),
                             Fail.overloaded())
    res = await call(app, "POST", "/v1/messages", {**SIMPLE, "stream": True}, HEADERS)
    assert res.status == 400
    body = res.json()
    assert body["type"] == "error" and body["error"] == {"type": "invalid_request_error",
                                                          "message": "messages.0.content: something Anthropic said"}
    res = await call(app, "POST", "/v1/messages", SIMPLE, HEADERS)
    assert res.status == 529 and res.json()["error"]["type"] == "overloaded_error"


async def test_router_errors_in_anthropic_shape(app, router_db):
    res = await call(app, "POST", "/v1/messages", SIMPLE, {"anthropic-version": "2023-06-01"})
    assert res.status == 401 and res.json()["error"]["type"] == "authentication_error"
    res = await call(app, "POST", "/v1/messages", b"{not json", HEADERS)
    assert res.status == 400 and res.json()["type"] == "error"
    res = await call(app, "POST", "/v1/messages", {"model": "claude", "messages": [{"role": "user", "content": "x"}]},
                     HEADERS)
    assert res.status == 400 and res.json()["error"]["message"] == "max_tokens: Field required"
    res = await call(app, "POST", "/v1/messages/count_tokens", {"model": "nope", "messages": []}, HEADERS)
    assert res.status == 400 and res.json()["error"]["message"] == "messages: Field required"
    res = await call(app, "GET", "/v1/models", None, HEADERS)
    assert res.status == 200 and res.json()["has_more"] is False and res.json()["data"] == []
    res = await call(app, "GET", "/v1/models/nope", None, HEADERS)
    assert res.status == 404 and res.json()["error"] == {"type": "not_found_error", "message": "model: nope"}
