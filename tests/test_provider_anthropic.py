"""Anthropic behind /v1/chat/completions, end to end against the strict fake over a loopback socket."""

from __future__ import annotations

import base64
import itertools
import json

import pytest
from asgiref.sync import sync_to_async

from proxy.sse import encode
from tests.chat_helpers import (
    assemble,
    assistant_turn,
    chat,
    check_stream_shape,
    chunks_of,
    codex_turn1,
    responses,
    rows,
    tool_results,
    user,
)
from tests.conftest import add_credential
from tests.fakes.anthropic import (
    AnthropicFake,
    Fail,
    Turn,
    redacted_thinking,
    sign_thinking,
    text,
    thinking,
    tool_use,
)
from tests.fakes.server import FakeServer, Reply, Script

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "claude-sonnet"
UPSTREAM = "claude-sonnet-4-5-20250929"
KEY = "sk-ant-upstream-secret"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 24).decode()
PDF = base64.b64encode(b"%PDF-1.4 fake").decode()
WEATHER = {"type": "function", "function": {
    "name": "weather.get", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
_names = itertools.count()


# ---- fixtures --------------------------------------------------------------------

@pytest.fixture
def anthropic(router_db):
    servers: list[FakeServer] = []

    async def make(*script, api_key: str = KEY, handler=None, **fields) -> AnthropicFake:
        fake = AnthropicFake(list(script), api_key=KEY)
        server = FakeServer(handler or fake.handler).start()
        servers.append(server)
        fake.server = server
        fake.credential = f"anthropic_{next(_names)}"
        await sync_to_async(add_credential)(fake.credential, "anthropic", models={MODEL: UPSTREAM}, api_key=api_key,
                                            base_url=server.url, **fields)
        return fake

    yield make
    for server in servers:
        server.stop()


# ---- text ------------------------------------------------------------------------

async def test_text_non_stream_with_cache_usage(app, anthropic):
    fake = await anthropic(Turn([text("Hello from Claude.")], usage={
        "input_tokens": 40, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 60, "output_tokens": 12}))
    res = await chat(app, {"model": MODEL, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Use English."},
        user("Hi"), user([{"type": "text", "text": ""}, {"type": "text", "text": "there"}])]})
    assert res.status == 200, res.body
    data = res.json()
    assert data["model"] == MODEL and data["object"] == "chat.completion"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Hello from Claude."}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 1000, "completion_tokens": 12, "total_tokens": 1012,
                             "prompt_tokens_details": {"cached_tokens": 900, "cache_write_tokens": 60},
                             "completion_tokens_details": {"reasoning_tokens": 0}}
    sent = fake.received[0]
    assert sent["model"] == UPSTREAM and sent["max_tokens"] == 64000 and "stream" not in sent
    assert sent["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use English."}]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                              {"type": "text", "text": "there"}]}]
    headers = fake.server.requests[0].headers
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert "sk-router-test-key" not in json.dumps(headers)
    [row] = await rows()
    assert (row.status, row.provider, row.credential, row.requested_model, row.resolved_model) == (
        200, "anthropic", fake.credential, MODEL, UPSTREAM)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.stream) == (1000, 12, 900, False)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_text_stream_chunk_shape_and_usage(app, anthropic, include_usage):
    fake = await anthropic(Turn([text("Hello there, this is a streamed answer.")], fragment=5, usage={
        "input_tokens": 30, "cache_read_input_tokens": 70, "output_tokens": 9}))
    body = {"model": MODEL, "messages": [user("Hi")], "stream": True, "max_completion_tokens": 500}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    res = await chat(app, body)
    assert res.status == 200 and res.headers["content-type"] == "text/event-stream"
    chunks = chunks_of(res)
    check_stream_shape(chunks, MODEL, usage_chunk=include_usage)
    msg = assemble(chunks)
    assert msg["content"] == "Hello there, this is a streamed answer." and msg["finish_reason"] == "stop"
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 8
    if include_usage:
        assert msg["usage"]["prompt_tokens"] == 100 and msg["usage"]["prompt_tokens_details"]["cached_tokens"] == 70
    assert fake.received[0]["stream"] is True and fake.received[0]["max_tokens"] == 500
    [row] = await rows()
    assert (row.stream, row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (True, 100, 9, 70)
    assert not row.tokens_estimated and row.status == 200


# ---- tools ---------------------------------------------------------------------------

async def test_parallel_tool_call_round_trip_streamed(app, anthropic):
    # "weather.get" breaks Anthropic's name pattern: it goes out as weather_get and comes back mapped.
    fake = await anthropic(
        Turn([text("Checking both."), tool_use("weather_get", {"city": "Paris"}),
              tool_use("get_time", {"tz": "Europe/Paris"})], fragment=4),
        Turn([text("Sunny and 14:00 in Paris.")]))
    first = [{"role": "system", "content": "You are helpful."}, user("Weather and time in Paris?")]
    res = await chat(app, {"model": MODEL, "messages": first, "tools": [WEATHER, CLOCK], "stream": True})
    chunks = chunks_of(res)
    check_stream_shape(chunks, MODEL, usage_chunk=False)
    msg = assemble(chunks)
    assert msg["finish_reason"] == "tool_calls" and msg["content"] == "Checking both."
    calls = msg["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("weather.get", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]
    assert [t["name"] for t in fake.received[0]["tools"]] == ["weather_get", "get_time"]

    second = [*first, assistant_turn(msg), *tool_results(calls, ["sunny, 21C", "14:00"])]
    res = await chat(app, {"model": MODEL, "messages": second, "tools": [WEATHER, CLOCK], "stream": True})
    assert assemble(chunks_of(res))["content"] == "Sunny and 14:00 in Paris."
    assert fake.rejections == []
    sent = fake.received[1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["type"] for b in sent[1]["content"]] == ["text", "tool_use", "tool_use"]
    assert sent[2]["content"] == [
        {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "sunny, 21C"},
        {"type": "tool_result", "tool_use_id": calls[1]["id"], "content": "14:00"}]


async def test_client_tool_ids_and_names_are_made_safe_both_ways(app, anthropic):
    fake = await anthropic(Turn([text("Done.")]))
    history = [user("Go"), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "fc:1/abc", "type": "function", "function": {"name": "weather.get", "arguments": '{"city": "Rome"}'}},
        {"id": "call_2__thought__c2ln+/=", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "fc:1/abc", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_2__thought__c2ln+/=", "content": "noon"}]
    res = await chat(app, {"model": MODEL, "messages": history, "tools": [WEATHER, CLOCK]})
    assert res.status == 200, res.body
    assert fake.rejections == []
    sent = fake.received[0]["messages"]
    use_ids = [b["id"] for b in sent[1]["content"]]
    assert use_ids[1] == "call_2" and use_ids[0].startswith("fc_1_abc_")
    assert [b["tool_use_id"] for b in sent[2]["content"]] == use_ids


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "weather.get"}}, None, {"type": "tool", "name": "weather_get"}),
    ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
])
async def test_tool_choice(app, anthropic, choice, parallel, expected):
    fake = await anthropic(Turn([tool_use("weather_get", {"city": "Oslo"})]))
    body = {"model": MODEL, "messages": [user("Weather?")], "tools": [WEATHER], "tool_choice": choice}
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    res = await chat(app, body)
    assert res.status == 200, res.body
    assert fake.received[0]["tool_choice"] == expected
    message = res.json()["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "weather.get"
    assert res.json()["choices"][0]["finish_reason"] == "tool_calls"


# ---- images and documents ---------------------------------------------------------------

async def test_images_and_pdf(app, anthropic):
    fake = await anthropic(Turn([text("A tiny image and a PDF.")]))
    content = [{"type": "text", "text": "What are these?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
               {"type": "file", "file": {"filename": "doc.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}]
    res = await chat(app, {"model": MODEL, "messages": [user(content)]})
    assert res.status == 200, res.body
    assert fake.received[0]["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
         "title": "doc.pdf"}]


async def test_unsupported_image_type_is_a_clear_400_without_upstream_call(app, anthropic):
    fake = await anthropic()
    content = [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]
    res = await chat(app, {"model": MODEL, "messages": [user(content)]})
    assert res.status == 400 and "image/tiff" in res.json()["error"]["message"]
    assert fake.server.requests == []


# ---- thinking --------------------------------------------------------------------------

async def test_thinking_signature_round_trip_streamed(app, anthropic):
    fake = await anthropic(
        Turn([thinking("The user wants the weather; call the tool."), tool_use("weather_get", {"city": "Paris"})],
             usage={"input_tokens": 50, "output_tokens": 80, "output_tokens_details": {"thinking_tokens": 60}}),
        Turn([thinking("Now answer."), text("It is sunny.")]))
    first = [user("Weather in Paris?")]
    body = {"model": MODEL, "tools": [WEATHER], "reasoning_effort": "low", "stream": True,
            "stream_options": {"include_usage": True}}
    res = await chat(app, {**body, "messages": first})
    chunks = chunks_of(res)
    check_stream_shape(chunks, MODEL, usage_chunk=True)
    msg = assemble(chunks)
    assert msg["reasoning_content"] == "The user wants the weather; call the tool."
    reasoning = msg["reasoning_content"]
    block = {"type": "thinking", "thinking": reasoning, "signature": sign_thinking(reasoning)}
    assert msg["thinking_blocks"] == [{"index": 0, **block}]  # index: OpenAI clients merge list deltas by index
    assert msg["usage"]["completion_tokens_details"]["reasoning_tokens"] == 60
    assert fake.received[0]["thinking"] == {"type": "enabled", "budget_tokens": 4096}

    second = [*first, assistant_turn(msg), *tool_results(msg["tool_calls"], ["sunny"])]
    res = await chat(app, {**body, "messages": second})
    final = assemble(chunks_of(res))
    assert final["content"] == "It is sunny." and final["reasoning_content"] == "Now answer."
    assert fake.rejections == []
    replayed = fake.received[1]
    assert replayed["thinking"]["type"] == "enabled"
    assert replayed["messages"][1]["content"][0] == block
    rows_ = await rows()
    assert rows_[0].reasoning_tokens == 60


async def test_thinking_round_trip_non_stream_with_redacted_block(app, anthropic):
    fake = await anthropic(
        Turn([thinking("Plan the call."), redacted_thinking(), tool_use("get_time", {"tz": "UTC"})]),
        Turn([text("Noon UTC.")]))
    first = [user("Time?")]
    body = {"model": MODEL, "tools": [CLOCK], "reasoning_effort": "medium"}
    res = await chat(app, {**body, "messages": first})
    message = res.json()["choices"][0]["message"]
    assert [b["type"] for b in message["thinking_blocks"]] == ["thinking", "redacted_thinking"]
    assert message["reasoning_content"] == "Plan the call."
    second = [*first, message, *tool_results(message["tool_calls"], ["12:00"])]
    res = await chat(app, {**body, "messages": second})
    assert res.status == 200, res.body
    assert res.json()["choices"][0]["message"]["content"] == "Noon UTC."
    assert fake.rejections == []
    assert fake.received[1]["messages"][1]["content"][:2] == message["thinking_blocks"]


async def test_tampered_thinking_signature_is_the_clients_400(app, anthropic, settings):
    settings.ROUTER_MAX_ATTEMPTS = 1
    fake = await anthropic()
    block = {"type": "thinking", "thinking": "edited", "signature": sign_thinking("original")}
    history = [user("Go"), {"role": "assistant", "content": None, "thinking_blocks": [block], "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "noon"}]
    res = await chat(app, {"model": MODEL, "messages": history, "tools": [CLOCK], "reasoning_effort": "low"})
    assert res.status == 400 and res.json()["error"]["type"] == "invalid_request_error"
    assert "signature" in res.json()["error"]["message"] and len(fake.rejections) == 1


# ---- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fail", "status", "code", "retry_after"), [
    (Fail.rate_limited(retry_after=7), 429, "rate_limit_exceeded", "7"),
    (Fail.overloaded(), 503, "server_is_overloaded", None),
    (Fail.bad_request("messages.0.content.0.text: field required"), 400, "invalid_request_error", None),
    (Fail.bad_request("prompt is too long: 212345 tokens > 200000 maximum"), 400, "context_length_exceeded", None),
    (Fail.bad_request("Your credit balance is too low to access the Anthropic API."), 429, "insufficient_quota",
     None),
    (Fail.http(500, "api_error", "Internal server error"), 502, "server_error", None),
    (Fail.mid_stream(), 503, "server_is_overloaded", None),
])
async def test_upstream_errors_are_openai_shaped(app, anthropic, settings, stream, fail, status, code, retry_after):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await anthropic(fail)
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": stream})
    assert res.status == status, res.body
    err = res.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    assert KEY not in res.body.decode()
    if retry_after:
        assert res.headers["retry-after"] == retry_after
    [row] = await rows()
    assert row.status == status and row.error_type == code


async def test_rejected_key_is_502_upstream_authentication_error(app, anthropic, settings):
    settings.ROUTER_MAX_ATTEMPTS = 1
    fake = await anthropic(api_key="sk-ant-revoked")
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")]})
    assert res.status == 502
    assert res.json()["error"]["code"] == "upstream_authentication_error"
    assert "sk-ant-revoked" not in res.body.decode() and len(fake.server.requests) == 1


@pytest.mark.parametrize("fail", [Fail.overloaded(), Fail.rate_limited(1), Fail.mid_stream()])
async def test_retryable_failures_fail_over_to_the_next_credential(app, anthropic, fail):
    first = await anthropic(fail)
    second = await anthropic(Turn([text("From the fallback.")]), is_fallback=True)
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": True})
    assert res.status == 200
    assert assemble(chunks_of(res))["content"] == "From the fallback."
    assert len(first.server.requests) == len(second.server.requests) == 1
    [row] = await rows()
    assert (row.status, row.credential, row.attempts) == (200, second.credential, 2)


async def test_error_event_after_content_reaches_the_client_as_an_error_chunk(app, anthropic):
    script = AnthropicFake()
    turn = Turn([text("A partial answer that never ends")], fragment=8)
    events = script.events(turn, script.message(turn, UPSTREAM))
    frames = [encode(ev, event=ev["type"]) for ev in events[:5]]
    frames.append(encode({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                         event="error"))
    await anthropic(handler=Script(Reply(sse=frames)))
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": True})
    assert res.status == 200
    data = res.sse_data()
    assert "[DONE]" not in data
    *chunks, last = [json.loads(d) for d in data]
    assert assemble(chunks)["content"] == "A partial answer"
    assert last["error"]["code"] == "server_is_overloaded" and "Overloaded" in last["error"]["message"]
    [row] = await rows()
    assert row.status == 503 and not row.client_closed


async def test_stream_cut_before_message_stop_is_an_error_not_a_silent_truncation(app, anthropic):
    await anthropic(Turn([text("Cut short here please")], fragment=5, cut_after=6))
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": True})
    data = res.sse_data()
    assert "[DONE]" not in data
    assert json.loads(data[-1])["error"]["code"] == "server_error"


# ---- Codex (Responses API) through the Anthropic adapter --------------------------------------

async def test_codex_tool_turn_keeps_thinking_signatures_in_reasoning_items(app, anthropic):
    fake = await anthropic(Turn([thinking("Run the command."), tool_use("exec_command", {"cmd": "echo hi"})]),
                           Turn([text("It printed hi.")]))
    body = {**codex_turn1(), "model": MODEL, "reasoning": {"effort": "low", "summary": "auto"}}
    output = (await responses(app, body))["output"]
    assert [item["type"] for item in output] == ["reasoning", "function_call"]
    assert output[0]["encrypted_content"] and output[1]["name"] == "exec_command"
    turn2 = {**body, "input": [*body["input"], *output,
                               {"type": "function_call_output", "call_id": output[1]["call_id"], "output": "hi"}]}
    final = await responses(app, turn2)
    assert final["output"][-1]["content"][0]["text"] == "It printed hi."
    assert fake.rejections == []
    assistant = fake.received[1]["messages"][-2]
    assert assistant["content"][0] == {"type": "thinking", "thinking": "Run the command.",
                                       "signature": sign_thinking("Run the command.")}
