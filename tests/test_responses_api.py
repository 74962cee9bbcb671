"""/v1/responses: translated through Chat upstreams, and native passthrough."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from proxy import usage
from proxy.models import UsageRecord
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.openai import error_reply, stream_frames
from tests.fakes.server import Reply
from tests.fixtures import CODEX_FIXTURES as FIXTURES
from tests.responses_schema import check_event, check_response

pytestmark = pytest.mark.django_db(transaction=True)
CODEX_TURN1 = json.loads((FIXTURES / "codex_request_turn1.json").read_text())["body"]
SIMPLE = {"model": "gpt-4o", "input": "Say hi", "stream": True}


def events(body: bytes) -> list[dict]:
    out = []
    for block in body.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


@pytest.fixture
def chat_upstream(router_db, openai_fake):
    async def make(*replies, **fields):
        fake = openai_fake(*replies)
        await sync_to_async(add_credential)("chat_only", "openai", models={"gpt-4o": "gpt-4o-up"},
                                            api_key="sk-upstream-secret", base_url=fake.url, **fields)
        return fake
    return make


async def test_codex_request_is_translated_to_chat_and_answer_streamed_as_responses(app, chat_upstream):
    fake = await chat_upstream(Reply(sse=stream_frames(["Hello", "!"])))
    body = {**CODEX_TURN1, "model": "gpt-4o"}
    res = await call(app, "POST", "/v1/responses", body, AUTH)
    assert res.status == 200 and res.headers["content-type"] == "text/event-stream"
    sent = fake.requests[0].json
    assert sent["model"] == "gpt-4o-up" and sent["stream"] is True
    assert not {"include", "store", "prompt_cache_key", "client_metadata", "input"} & set(sent)
    assert sent["messages"][0]["role"] == "system"
    evs = events(res.body)
    types = [e["type"] for e in evs]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    done = [e for e in evs if e["type"] == "response.output_item.done"]
    assert done[0]["item"]["content"][0] == {"type": "output_text", "text": "Hello!", "annotations": []} or \
        done[0]["item"]["content"][0]["text"] == "Hello!"
    final = evs[-1]["response"]
    assert isinstance(final["id"], str)
    assert final["usage"]["input_tokens"] == 9 and final["usage"]["output_tokens"] == 2
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    await usage.aflush()
    row = await sync_to_async(UsageRecord.objects.get)()
    assert (row.endpoint, row.status, row.prompt_tokens, row.provider) == ("responses", 200, 9, "openai")


async def test_responses_also_served_without_v1_prefix(app, chat_upstream):
    await chat_upstream(Reply(sse=stream_frames(["ok"])))
    res = await call(app, "POST", "/responses", SIMPLE, AUTH)
    assert res.status == 200 and events(res.body)[-1]["type"] == "response.completed"


@pytest.mark.parametrize(("reply", "status", "code", "retry_after"), [
    (error_reply(429, "slow down", code="rate_limit_exceeded", headers={"retry-after": "3"}),
     429, "rate_limit_exceeded", "3"),
    (error_reply(429, "You exceeded your current quota", code="insufficient_quota"), 429, "insufficient_quota", None),
    (error_reply(400, "maximum context length exceeded", code="context_length_exceeded"),
     400, "context_length_exceeded", None),
    (Reply(status=503, body="down", content_type="text/plain"), 503, "server_error", None),
])
async def test_errors_before_first_event_are_http_statuses(app, chat_upstream, settings, reply, status, code,
                                                          retry_after):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await chat_upstream(reply)
    res = await call(app, "POST", "/v1/responses", SIMPLE, AUTH)
    assert res.status == status and res.json()["error"]["code"] == code
    if status == 429 and retry_after:
        assert res.headers["retry-after"] == retry_after


async def test_unknown_model_is_404_model_not_found(app, chat_upstream):
    await chat_upstream()
    res = await call(app, "POST", "/v1/responses", {**SIMPLE, "model": "nope"}, AUTH)
    assert res.status == 404 and res.json()["error"]["code"] == "model_not_found"


async def test_failure_after_headers_is_response_failed_not_error_event(app, chat_upstream):
    frames = [*stream_frames(["part"])[:2], 'data: {"error": {"message": "boom", "type": "server_error"}}\n\n']
    await chat_upstream(Reply(sse=frames))
    res = await call(app, "POST", "/v1/responses", SIMPLE, AUTH)
    evs = events(res.body)
    assert evs[-1]["type"] == "response.failed"
    assert evs[-1]["response"]["error"]["code"] == "server_error"
    assert not [e for e in evs if e["type"] == "response.output_item.done"]
    assert "error" not in [e["type"] for e in evs]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_silence_gets_in_progress_heartbeats(app, chat_upstream, settings, transport):
    settings.ROUTER_HTTP_TRANSPORT = transport  # two read loops: a timed read, or a task per chunk
    settings.ROUTER_KEEPALIVE_INTERVAL = 0.2
    frames = stream_frames(["a", "b"])
    await chat_upstream(Reply(sse=[frames[0], 1.0, *frames[1:]]))
    res = await call(app, "POST", "/v1/responses", SIMPLE, AUTH)
    types = [e["type"] for e in events(res.body)]
    assert types.count("response.in_progress") >= 4
    assert types[-1] == "response.completed"
    assert "".join(e.get("delta", "") for e in events(res.body) if e["type"] == "response.output_text.delta") == "ab"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_heartbeats_stop_at_the_idle_timeout(app, chat_upstream, settings, transport):
    settings.ROUTER_HTTP_TRANSPORT = transport
    settings.ROUTER_KEEPALIVE_INTERVAL = 0.2
    settings.ROUTER_IDLE_TIMEOUT = 0.7
    frames = stream_frames(["a", "b"])
    await chat_upstream(Reply(sse=[frames[0], 3.0, *frames[1:]]))
    evs = events((await call(app, "POST", "/v1/responses", SIMPLE, AUTH)).body)
    kinds = [e["type"] for e in evs]
    assert 2 <= kinds.count("response.in_progress") <= 5 and kinds[-1] == "response.failed"
    assert evs[-1]["response"]["error"]["code"] == "upstream_timeout"


async def test_truncation_is_response_incomplete(app, chat_upstream):
    frames = stream_frames(["cut"])
    frames[-3] = frames[-3].replace('"stop"', '"length"')
    await chat_upstream(Reply(sse=frames))
    evs = events((await call(app, "POST", "/v1/responses", SIMPLE, AUTH)).body)
    assert evs[-1]["type"] == "response.incomplete"
    assert evs[-1]["response"]["incomplete_details"]["reason"] == "max_output_tokens"


async def test_non_stream_request_gets_a_response_object(app, chat_upstream):
    await chat_upstream(Reply(sse=stream_frames(["Hi"])))
    res = await call(app, "POST", "/v1/responses", {**SIMPLE, "stream": False}, AUTH)
    assert res.status == 200 and res.headers["content-type"] == "application/json"
    data = res.json()
    assert data["object"] == "response" and data["status"] == "completed"
    assert data["output"][-1]["content"][0]["text"] == "Hi"


async def test_native_responses_upstream_is_relayed_untouched(app, router_db, openai_fake):
    sse = (FIXTURES / "fixture_text_canonical.0.sse").read_bytes()
    fake = openai_fake(Reply(body=sse, content_type="text/event-stream"))
    await sync_to_async(add_credential)("native", "openai", models={"gpt-4o": "gpt-5-up"}, api_key="sk-upstream-secret",
                                        base_url=fake.url + "/v1", responses_api=True)
    body = {**CODEX_TURN1, "model": "gpt-4o"}
    res = await call(app, "POST", "/v1/responses", body, AUTH)
    assert res.status == 200 and res.body == sse
    sent = fake.requests[0].json
    assert sent == {**body, "model": "gpt-5-up"}
    await usage.aflush()
    row = await sync_to_async(UsageRecord.objects.get)()
    assert row.prompt_tokens > 0 and row.status == 200


async def test_router_built_events_validate_against_the_schema(app, chat_upstream, settings):
    """Heartbeats, the lifecycle events and a failure are complete Response objects."""
    settings.ROUTER_KEEPALIVE_INTERVAL = 0.2
    frames = stream_frames(["a", "b"])
    await chat_upstream(Reply(sse=[frames[0], 0.7, *frames[1:3],
                                   'data: {"error": {"message": "boom", "type": "server_error"}}\n\n']))
    evs = events((await call(app, "POST", "/v1/responses", SIMPLE, AUTH)).body)
    kinds = [e["type"] for e in evs]
    assert kinds.count("response.in_progress") >= 3 and kinds[-1] == "response.failed"
    for event in evs:
        check_event(event)
    assert evs[-1]["response"]["error"]["code"] == "server_error" and evs[-1]["response"]["completed_at"] is None


async def test_no_stream_field_means_json(app, chat_upstream):
    await chat_upstream(Reply(sse=stream_frames(["Hi"])))
    res = await call(app, "POST", "/v1/responses", {"model": "gpt-4o", "input": "Say hi"}, AUTH)
    assert res.status == 200 and res.headers["content-type"] == "application/json"
    check_response(res.json())
    assert res.json()["output"][-1]["content"][0]["text"] == "Hi"


def _native_sse(*, silence: float = 0.0, cut: bool = False) -> list:
    from tests.codex.backends import openai_response

    response = openai_response({"tools": []})
    message = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "Hi", "annotations": []}]}
    evs = [{"type": "response.created", "sequence_number": 0, "response": response},
           {"type": "response.output_item.done", "sequence_number": 1, "output_index": 0, "item": message}]
    if not cut:
        evs.append({"type": "response.completed", "sequence_number": 2, "response": {
            **response, "status": "completed", "completed_at": 1764000009, "output": [message], "usage": None}})
    frames: list = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in evs]
    return [frames[0], silence, *frames[1:]] if silence else frames


@pytest.fixture
def native_upstream(router_db, openai_fake):
    async def make(reply: Reply):
        fake = openai_fake(reply)
        await sync_to_async(add_credential)("native", "openai", models={"gpt-4o": "gpt-5-up"},
                                            api_key="sk-upstream-secret", base_url=fake.url + "/v1",
                                            responses_api=True)
        return fake
    return make


async def test_native_relay_without_stream_field_answers_json(app, native_upstream):
    fake = await native_upstream(Reply(sse=_native_sse()))
    res = await call(app, "POST", "/v1/responses", {"model": "gpt-4o", "input": "hi"}, AUTH)
    assert res.status == 200 and res.headers["content-type"] == "application/json"
    check_response(res.json())
    assert res.json()["id"] == "resp_up_1" and res.json()["output"][0]["content"][0]["text"] == "Hi"
    assert fake.requests[0].json["stream"] is True  # read as a stream upstream, answered as one object


async def test_native_relay_heartbeats_and_failure_reuse_the_upstream_response(app, native_upstream, settings):
    settings.ROUTER_KEEPALIVE_INTERVAL = 0.2
    await native_upstream(Reply(sse=_native_sse(silence=0.7, cut=True), reset_after=1))
    evs = events((await call(app, "POST", "/v1/responses", SIMPLE, AUTH)).body)
    added = [e for e in evs if e["type"] in ("response.in_progress", "response.failed")]
    assert len(added) >= 3 and added[-1]["type"] == "response.failed"
    for event in added:
        assert event["response"]["id"] == "resp_up_1"
        check_response(event["response"])


@pytest.mark.parametrize(("field", "value"), [
    ("stream", "false"), ("stream", 1), ("background", "yes"), ("temperature", "hot"), ("store", "no"),
    ("max_output_tokens", 1.5), ("parallel_tool_calls", 0), ("metadata", []), ("top_logprobs", True),
])
async def test_parameters_of_the_wrong_type_are_400_naming_them(app, chat_upstream, field, value):
    fake = await chat_upstream()
    res = await call(app, "POST", "/v1/responses", {"model": "gpt-4o", "input": "hi", field: value}, AUTH)
    assert res.status == 400
    error = res.json()["error"]
    assert (error["param"], error["type"]) == (field, "invalid_request_error") and f"`{field}`" in error["message"]
    assert fake.requests == []


async def test_background_mode_is_refused(app, chat_upstream):
    await chat_upstream()
    res = await call(app, "POST", "/v1/responses", {"model": "gpt-4o", "input": "hi", "background": True}, AUTH)
    assert res.status == 400 and res.json()["error"]["param"] == "background"


async def test_a_burst_of_chat_events_becomes_responses_events_in_few_writes(app, chat_upstream):
    await chat_upstream(Reply(sse=["".join(stream_frames([f"w{i} " for i in range(1000)]))]))
    res = await call(app, "POST", "/v1/responses", SIMPLE, AUTH)
    evs = events(res.body)
    deltas = [e["delta"] for e in evs if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "".join(f"w{i} " for i in range(1000)) and evs[-1]["type"] == "response.completed"
    assert len(res.chunks) < 100  # joined per network read, not one write per event
