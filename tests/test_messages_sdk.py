"""The official ``anthropic`` Python SDK against a real router process (uvicorn), on every backend type.

The router is configured from the ``router.yaml`` snippet of docs/claude-code.md, its
credentials pointed at strict fakes (tests/claude_code/stack.py): Anthropic and Claude on
Vertex get the request natively, OpenAI Chat, Gemini and Gemini on Vertex translated. The
SDK parses every event and body into its typed models, so a shape the SDK does not accept
fails here; the fakes check what reached them in their own formats.
"""

from __future__ import annotations

import json
import time

import anthropic
import pytest

from tests.claude_code.stack import MASTER_KEY, TARGETS, Stack
from tests.codex.backends import Answer, Backend, Call
from tests.fakes import anthropic as anth

BACKENDS = list(TARGETS)
NATIVE = {"anthropic", "vertex-claude"}
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "Local time",
        "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}
CALLS = [Call("get_weather", {"city": "Paris"}), Call("get_time", {"tz": "Europe/Paris"})]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("messages-sdk")).start(server="uvicorn")  # Claude Code's tests: Daphne
    yield s
    s.stop()


@pytest.fixture(params=BACKENDS)
def backend(request, stack) -> Backend:
    backend = stack.backends[request.param]
    backend.script()
    yield backend
    assert not backend.rejections, f"the strict fake rejected a request: {backend.rejections}"


@pytest.fixture
def client(stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.router.url, api_key=MASTER_KEY, max_retries=0, timeout=30)


def model_of(backend: Backend) -> str:
    return TARGETS[backend.name].model


def usage_row(stack: Stack, request_id: str) -> dict:
    for _ in range(100):
        found = [r for r in stack.router.usage_rows(wait_for=0) if r["request_id"] == request_id]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no usage row for {request_id}")


def test_streamed_text(client, backend, stack):
    backend.script(Answer("Hello from the fake."))
    with client.messages.stream(model=model_of(backend), max_tokens=1024, system="Be brief.",
                                messages=[{"role": "user", "content": "Say hello"}]) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
        request_id = stream.response.headers["request-id"]
    assert "".join(pieces) == "Hello from the fake."
    assert message.role == "assistant" and message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Hello from the fake."
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    row = usage_row(stack, request_id)
    assert (row["endpoint"], row["requested_model"], row["status"], row["stream"]) == \
        ("messages", model_of(backend), 200, 1)
    assert row["prompt_tokens"] >= 100 and row["completion_tokens"] == 7


def test_non_streamed_text(client, backend, stack):
    backend.script(Answer("Plain answer."))
    raw = client.messages.with_raw_response.create(model=model_of(backend), max_tokens=512, stop_sequences=["END"],
                                                   extra_body={"temperature": 0.5},
                                                   messages=[{"role": "user", "content": "Hi"}])
    message = raw.parse()
    assert message.type == "message" and message.content[0].text == "Plain answer."
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 7
    sent = backend.bodies()[-1]
    if backend.name == "openai-chat":
        assert (sent["temperature"], sent["stop"], sent["max_completion_tokens"]) == (0.5, ["END"], 512)
    row = usage_row(stack, raw.headers["request-id"])
    assert (row["endpoint"], row["status"], row["stream"]) == ("messages", 200, 0)


def test_parallel_tools_and_thinking_round_trip(client, backend):
    def answer_from_results(b: Backend, body: dict) -> str:
        return "Results: " + ", ".join(b.tool_results(body))

    backend.script(Answer(thinking="Two lookups are needed.", call=CALLS), Answer(answer_from_results))
    messages: list = [{"role": "user", "content": "Weather and time in Paris?"}]
    kwargs = dict(model=model_of(backend), max_tokens=16000, tools=[WEATHER, TIME],
                  thinking={"type": "enabled", "budget_tokens": 4000})
    with client.messages.stream(messages=messages, **kwargs) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert [(c.name, c.input) for c in calls] == [(c.name, c.args) for c in CALLS]
    thinking = [b for b in first.content if b.type == "thinking"]
    assert thinking and thinking[0].signature
    if backend.name != "vertex-gemini" or any(b.thinking for b in thinking):
        assert "".join(b.thinking for b in thinking) == "Two lookups are needed."

    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"},
        {"type": "tool_result", "tool_use_id": calls[1].id, "content": [{"type": "text", "text": "14:00"}]},
    ]})
    second = client.messages.create(messages=messages, **kwargs)
    assert second.content[-1].text == "Results: sunny, 14:00"
    backend.check_thinking_replayed(backend.bodies()[-1], "Two lookups are needed.")


def test_count_tokens(client, backend):
    body = {"model": model_of(backend), "system": "You are terse.",
            "messages": [{"role": "user", "content": "How many tokens is this?"}], "tools": [WEATHER]}
    counted = client.messages.count_tokens(**body)
    if backend.name in NATIVE:
        assert counted.input_tokens == anth.fake_count({**body, "model": "x"})
        assert backend.fake.counted[-1]["messages"] == body["messages"]
    elif backend.name in ("gemini", "vertex-gemini"):
        sent = backend.fake.counted[-1]
        request = sent.get("generateContentRequest", sent)
        assert request["contents"][0]["parts"] == [{"text": "How many tokens is this?"}]
        assert counted.input_tokens == len(json.dumps({k: request.get(k) for k in ("contents", "systemInstruction",
                                                                                   "tools")}, sort_keys=True)) // 4
    else:
        assert 20 < counted.input_tokens < 200  # the offline estimate: the tool schema dominates


def test_system_message_inside_messages(client, backend):
    """Claude Code's unrecognized-model trap: translated backends accept it, Anthropic answers its own 400."""
    backend.script(Answer("ok"))
    messages = [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Tools changed."},
                {"role": "user", "content": "Go on"}]
    if backend.name in NATIVE:
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(model=model_of(backend), max_tokens=100, messages=messages)
        assert err.value.body["error"] == {"type": "invalid_request_error",
                                           "message": "messages.1.role: Input should be 'user' or 'assistant'"}
        backend.fake.rejections.clear()
        return
    message = client.messages.create(model=model_of(backend), max_tokens=100, messages=messages)
    assert message.content[0].text == "ok"


def test_errors_in_anthropic_shape(client, stack):
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["error"] == {"type": "not_found_error", "message": "model: no-such-model"}
    bad_key = anthropic.Anthropic(base_url=stack.router.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad_key.messages.create(model="gpt-4.1", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="gpt-4.1", max_tokens=10, messages=[{"role": "robot", "content": "x"}])
    assert err.value.body["error"]["message"] == "messages.0.role: Input should be 'user' or 'assistant'"


def test_upstream_rate_limit_passes_through(client, stack):
    stack.anthropic.script(anth.Fail.rate_limited(retry_after=3))
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert err.value.response.headers["retry-after"] == "3"
    assert err.value.body["error"]["type"] == "rate_limit_error"


def test_gemini_rate_limit_in_anthropic_shape(client, stack):
    stack.gemini.script(stack.gemini.rate_limited(2))
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model="gemini-2.5-flash", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert int(err.value.response.headers["retry-after"]) >= 1


def test_anthropic_models_list(client, stack):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert {t.model for t in TARGETS.values()} | {"coder"} <= set(ids)
    assert all(m.type == "model" for m in page.data)
