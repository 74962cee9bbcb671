"""/v1/chat/completions against a fake OpenAI upstream on a loopback socket."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from asgiref.sync import sync_to_async

from proxy import usage
from proxy.models import UsageRecord
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.openai import completion, error_reply, stream_frames
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


async def rows() -> list[UsageRecord]:
    await usage.aflush()
    return await sync_to_async(lambda: list(UsageRecord.objects.order_by("id")))()


@pytest.fixture
def upstream(router_db, openai_fake):
    async def make(*replies, **cred_fields):
        fake = openai_fake(*replies)
        await sync_to_async(add_credential)(
            "openai_main", "openai", models={"gpt-4o": "gpt-4o-2024-08-06"}, api_key="sk-upstream-secret",
            base_url=fake.url + "/v1", **cred_fields)
        return fake
    return make


async def test_non_stream_body_is_relayed_exactly_and_logged(app, upstream):
    body = completion("Hello there")
    fake = await upstream(Reply(body=json.dumps(body, indent=1)))
    res = await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)
    assert res.status == 200
    assert res.body == json.dumps(body, indent=1).encode()
    assert res.headers["x-request-id"].startswith("req_")
    sent = fake.requests[0]
    assert sent.json["model"] == "gpt-4o-2024-08-06"
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    assert "sk-router-test-key" not in json.dumps(sent.headers)
    [row] = await rows()
    tokens = (row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.reasoning_tokens)
    assert row.status == 200 and tokens == (9, 3, 2, 1)
    assert (row.requested_model, row.resolved_model, row.credential, row.provider) == (
        "gpt-4o", "gpt-4o-2024-08-06", "openai_main", "openai")
    assert row.request_id == res.headers["x-request-id"] and not row.stream and row.latency_ms > 0


async def test_stream_relays_events_byte_for_byte_and_hides_usage_chunk(app, upstream):
    frames = stream_frames(["Hel", "lo"])
    await upstream(Reply(sse=frames))
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    assert res.status == 200 and res.headers["content-type"] == "text/event-stream"
    usage_frame = frames[-2]
    assert res.body == "".join(f for f in frames if f != usage_frame).encode()
    [row] = await rows()
    assert row.stream and (row.prompt_tokens, row.completion_tokens) == (9, 2) and not row.tokens_estimated


async def test_stream_asks_upstream_for_usage_and_forwards_it_when_client_asked(app, upstream):
    frames = stream_frames(["a"])
    fake = await upstream(Reply(sse=frames))
    res = await call(app, "POST", "/v1/chat/completions",
                     {**CHAT, "stream": True, "stream_options": {"include_usage": True}}, AUTH)
    assert fake.requests[0].json["stream_options"] == {"include_usage": True}
    assert res.body == "".join(frames).encode()


async def test_stream_chunks_arrive_spaced_not_buffered(app, upstream):
    await upstream(Reply(sse=stream_frames(["a", "b", "c", "d"], delay=0.15)))
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    squeezed = [(t, c.replace(b" ", b"")) for t, c in res.chunks]
    content_times = [t for t, c in squeezed if b'"content":"' in c and b'"content":""' not in c]
    assert len(content_times) == 4
    gaps = [b - a for a, b in itertools.pairwise(content_times)]
    assert all(g > 0.1 for g in gaps), gaps


async def test_client_disconnect_cancels_upstream_and_logs_client_closed(app, upstream):
    fake = await upstream(Reply(sse=stream_frames([f"w{i}" for i in range(40)], delay=0.1)))
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH, disconnect_after_chunks=3)
    assert len(res.chunks) <= 4
    for _ in range(50):
        if fake.server.disconnects:
            break
        await asyncio.sleep(0.05)
    assert fake.server.disconnects == 1
    [row] = await rows()
    assert row.client_closed and row.status == 499
    assert row.tokens_estimated and row.completion_tokens >= 1


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "Missing API key"),
    ({"authorization": "Bearer wrong"}, "Incorrect API key"),
    ({"x-api-key": "wrong"}, "Incorrect API key"),
])
async def test_bad_keys_get_401(app, upstream, headers, message):
    fake = await upstream()
    res = await call(app, "POST", "/v1/chat/completions", CHAT, headers)
    assert res.status == 401
    err = res.json()["error"]
    assert message in err["message"] and err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
    assert set(err) == {"message", "type", "param", "code"}
    assert fake.requests == []


async def test_x_api_key_is_accepted(app, upstream):
    await upstream(Reply(json=completion()))
    res = await call(app, "POST", "/v1/chat/completions", CHAT, {"x-api-key": "sk-router-test-key"})
    assert res.status == 200


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b"", 400, None),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
    (json.dumps({"model": "gpt-4o"}).encode(), 400, "messages"),
    (json.dumps({"model": "gpt-4o", "messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"model": "gpt-4o", "messages": [{"content": "x"}]}).encode(), 400, "messages[0]"),
    (json.dumps({**CHAT, "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({**CHAT, "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({**CHAT, "max_tokens": True}).encode(), 400, "max_tokens"),
    (json.dumps({**CHAT, "stream": 1}).encode(), 400, "stream"),
    (json.dumps({**CHAT, "logprobs": "true"}).encode(), 400, "logprobs"),
    (json.dumps({**CHAT, "seed": 1.5}).encode(), 400, "seed"),
    (json.dumps({**CHAT, "presence_penalty": "0"}).encode(), 400, "presence_penalty"),
    (json.dumps({**CHAT, "store": "false"}).encode(), 400, "store"),
])
async def test_bad_input_gets_clear_400(app, upstream, body, status, param):
    fake = await upstream()
    res = await call(app, "POST", "/v1/chat/completions", body, AUTH)
    assert res.status == status
    err = res.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert fake.requests == []


async def test_oversized_body_gets_413(app, upstream, settings):
    settings.ROUTER_MAX_BODY_BYTES = 1000
    await upstream()
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "pad": "x" * 2000}, AUTH)
    assert res.status == 413 and res.json()["error"]["code"] == "request_too_large"


async def test_unknown_model_is_404_model_not_found(app, upstream):
    await upstream()
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "nope"}, AUTH)
    assert res.status == 404
    assert res.json()["error"]["code"] == "model_not_found"
    [row] = await rows()
    assert row.status == 404 and row.error_type == "model_not_found"


@pytest.mark.parametrize(("reply", "status", "code"), [
    (error_reply(400, "This model's maximum context length is 128000 tokens", code="context_length_exceeded"),
     400, "context_length_exceeded"),
    (error_reply(400, "Invalid 'messages[0].role'", code=None), 400, None),
    (error_reply(429, "Rate limit reached", code="rate_limit_exceeded", headers={"retry-after": "7"}),
     429, "rate_limit_exceeded"),
    (error_reply(429, "You exceeded your current quota", code="insufficient_quota"), 429, "insufficient_quota"),
    (error_reply(401, "Incorrect API key provided: sk-up***", code="invalid_api_key"), 502,
     "upstream_authentication_error"),
    (Reply(status=500, body="boom", content_type="text/plain"), 502, "server_error"),
])
async def test_upstream_errors_come_back_openai_shaped(app, upstream, settings, reply, status, code):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await upstream(reply)
    res = await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)
    assert res.status == status
    err = res.json()["error"]
    assert err["code"] == code and set(err) == {"message", "type", "param", "code"}
    assert "sk-upstream-secret" not in res.body.decode()
    if status == 429:
        assert int(res.headers["retry-after"]) >= 1


async def test_mid_stream_upstream_error_reaches_the_client(app, upstream):
    frames = [*stream_frames(["partial"])[:2], 'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n']
    await upstream(Reply(sse=frames))
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    data = res.sse_data()
    assert "partial" in data[1]
    assert json.loads(data[-1])["error"]["message"].endswith("overloaded")
    [row] = await rows()
    assert row.status >= 500 and not row.client_closed


async def test_upstream_unreachable_is_502(app, router_db, settings):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await sync_to_async(add_credential)("dead", "openai", models=["gpt-4o"], api_key="k",
                                        base_url="http://127.0.0.1:9/v1")
    res = await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)
    assert res.status == 502 and res.json()["error"]["code"] == "upstream_unreachable"


async def test_first_byte_timeout(app, upstream, settings):
    settings.ROUTER_FIRST_BYTE_TIMEOUT = 0.3
    settings.ROUTER_MAX_ATTEMPTS = 1
    await upstream(Reply(json=completion(), hang=2))
    res = await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)
    assert res.status == 504 and res.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_idle_timeout_between_chunks_is_separate_from_total_time(app, upstream, settings, transport):
    settings.ROUTER_HTTP_TRANSPORT = transport
    settings.ROUTER_IDLE_TIMEOUT = 0.5
    # 6 chunks 0.3 s apart: 1.8 s in total, but never 0.5 s of silence.
    await upstream(Reply(sse=stream_frames(list("abcdef"), delay=0.3)))
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    assert res.sse_data()[-1] == "[DONE]"


async def test_embeddings_forwarded(app, upstream):
    fake = await upstream()
    res = await call(app, "POST", "/v1/embeddings", {"model": "gpt-4o", "input": ["a", "b"]}, AUTH)
    assert res.status == 200 and len(res.json()["data"]) == 2
    assert fake.requests[0].json["model"] == "gpt-4o-2024-08-06"
    res = await call(app, "POST", "/v1/embeddings", {"model": "gpt-4o"}, AUTH)
    assert res.status == 400 and res.json()["error"]["param"] == "input"


@pytest.mark.parametrize(("field", "value"), [
    ("encoding_format", "int8"), ("encoding_format", 1), ("dimensions", "256"), ("dimensions", 0), ("user", 7),
])
async def test_embeddings_parameters_are_checked(app, upstream, field, value):
    fake = await upstream()
    res = await call(app, "POST", "/v1/embeddings", {"model": "gpt-4o", "input": "a", field: value}, AUTH)
    error = res.json()["error"]
    assert res.status == 400 and error["param"] == field and f"`{field}`" in error["message"]
    assert fake.requests == []


async def test_models_list_and_detail(app, upstream):
    from credentials.models import ModelAlias

    await upstream()
    await sync_to_async(ModelAlias.objects.create)(alias="fast", targets=["gpt-4o"])
    res = await call(app, "GET", "/v1/models", None, AUTH)
    assert [m["id"] for m in res.json()["data"]] == ["fast", "gpt-4o"]
    assert (await call(app, "GET", "/v1/models/fast", None, AUTH)).json()["id"] == "fast"
    res = await call(app, "GET", "/v1/models/nope", None, AUTH)
    assert res.status == 404 and res.json()["error"]["code"] == "model_not_found"
    assert (await call(app, "GET", "/v1/models", None, {})).status == 401


async def test_alias_resolves_and_config_change_is_seen_without_restart(app, upstream):
    from credentials.models import ModelAlias

    await upstream(Reply(json=completion()), Reply(json=completion()))
    assert (await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "smart"}, AUTH)).status == 404
    await sync_to_async(ModelAlias.objects.create)(alias="smart", targets=["gpt-4o"])
    assert (await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "smart"}, AUTH)).status == 200


async def test_health_hides_credentials_without_auth(app, upstream):
    await upstream()
    res = await call(app, "GET", "/health", None, {})
    data = res.json()
    assert res.status == 200 and data["database"] == "ok" and data["credentials_enabled"] == 1
    assert "credentials" not in data and "openai_main" not in res.body.decode()
    data = (await call(app, "GET", "/health", None, AUTH)).json()
    assert data["credentials"] == ["openai_main"]


async def test_unknown_api_path_and_method(app, upstream):
    await upstream()
    assert (await call(app, "POST", "/v1/nothing", CHAT, AUTH)).status == 404
    assert (await call(app, "GET", "/v1/chat/completions", None, AUTH)).status == 405


async def test_change_made_by_another_process_is_noticed_within_the_poll_interval(app, upstream, settings):
    from credentials.models import ModelAlias, bump_config_version

    settings.ROUTER_CONFIG_POLL_SECONDS = 0.2
    await upstream(Reply(json=completion()))
    assert (await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "other"}, AUTH)).status == 404

    def other_process_edit():  # bulk_create sends no signals: only the version bump tells us
        ModelAlias.objects.bulk_create([ModelAlias(alias="other", targets=["gpt-4o"])])
        bump_config_version()

    await sync_to_async(other_process_edit)()
    await asyncio.sleep(0.3)
    assert (await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "other"}, AUTH)).status == 200


async def test_config_database_down_at_first_request_is_503_not_500(app, upstream, monkeypatch):
    from django.db import OperationalError

    from proxy import config

    await upstream()

    def down():
        raise OperationalError("connection refused")

    config.invalidate()
    monkeypatch.setattr(config, "load", down)
    res = await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)
    assert res.status == 503 and res.json()["error"]["code"] == "service_unavailable"
    assert res.headers["retry-after"] == "5"


async def test_a_burst_of_events_goes_out_in_few_writes_byte_for_byte(app, upstream):
    frames = stream_frames([f"w{i} " for i in range(2000)])
    await upstream(Reply(sse=["".join(frames)]))  # one write upstream: thousands of events per read
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    assert res.body == "".join(f for f in frames if f != frames[-2]).encode()  # all but the usage chunk
    assert len(res.chunks) < 100  # joined per network read, not one write per event
