"""The official OpenAI Python SDK as the client of a real router process (uvicorn, ``LiveRouter``: the
Codex and Claude Code end-to-end tests cover Daphne)
in front of the Anthropic, Gemini, Vertex Gemini and Vertex Claude fakes.

Per provider: a streamed turn with parallel tool calls read through the SDK's stream
helper (which accumulates deltas strictly), then the tool results sent back from the
SDK's own message objects, answered by a plain ``stream=True`` iteration. The fakes
validate every request, so a lost signature or a misgrouped tool result fails here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import openai
import pytest
from openai import OpenAI

from tests.fakes import gemini as g
from tests.fakes.anthropic import (
    AnthropicFake,
    Fail,
    Turn,
    claude_on_vertex,
    redacted_thinking,
    text,
    thinking,
    tool_use,
)
from tests.fakes.server import FakeServer
from tests.live import LiveRouter

MASTER = "sk-live-sdk-master-key"
PROJECT = "sdk-project"
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}},
]
CALLS = [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]
ANSWER = "Sunny in Paris, and it is 14:00."


@dataclass
class Upstreams:
    anthropic: AnthropicFake
    gemini: g.GeminiFake
    vertex_gemini: g.GeminiFake
    vertex_claude: AnthropicFake
    oauth: g.FakeOAuth
    servers: list = field(default_factory=list)

    def claude_like(self, model: str) -> AnthropicFake | None:
        return {"sdk-claude": self.anthropic, "sdk-vertex-claude": self.vertex_claude}.get(model)

    def gemini_like(self, model: str) -> g.GeminiFake | None:
        return {"sdk-gemini": self.gemini, "sdk-vertex-gemini": self.vertex_gemini}.get(model)

    def rejections(self) -> list:
        return [*self.anthropic.rejections, *self.gemini.rejections, *self.vertex_gemini.rejections,
                *self.vertex_claude.rejections]


@pytest.fixture(scope="module")
def upstreams():
    oauth = g.FakeOAuth().start()
    anthropic = AnthropicFake(api_key="sk-ant-sdk")
    anthropic_server = FakeServer(anthropic.handler).start()
    vertex_claude = AnthropicFake(vertex=True)
    vertex_claude_server = FakeServer(claude_on_vertex(vertex_claude, oauth)).start()
    gemini = g.GeminiFake(api_key="AIzaSdk").start()
    vertex_gemini = g.GeminiFake(oauth=oauth, project=PROJECT).start()
    anthropic.url, vertex_claude.url = anthropic_server.url, vertex_claude_server.url
    ups = Upstreams(anthropic, gemini, vertex_gemini, vertex_claude, oauth,
                    [oauth, anthropic_server, vertex_claude_server, gemini, vertex_gemini])
    yield ups
    for server in ups.servers:
        server.stop()


@pytest.fixture(scope="module")
def router(upstreams, tmp_path_factory):
    sa = json.dumps(upstreams.oauth.service_account(PROJECT))
    vertex = {"type": "vertex-ai", "project_id": PROJECT, "location": "us-east5", "credentials_json": sa}
    config = {
        "server": {"master_key": MASTER},
        "credentials": [
            {"name": "anthropic_sdk", "type": "anthropic", "api_key": "sk-ant-sdk",
             "base_url": upstreams.anthropic.url},
            {"name": "gemini_sdk", "type": "gemini", "api_key": "AIzaSdk", "base_url": upstreams.gemini.url},
            {"name": "vertex_gemini_sdk", **vertex, "base_url": upstreams.vertex_gemini.url},
            {"name": "vertex_claude_sdk", **vertex, "base_url": upstreams.vertex_claude.url},
        ],
        "models": [
            {"name": "sdk-claude", "credential": "anthropic_sdk", "model": "claude-sonnet-4-5-20250929"},
            {"name": "sdk-gemini", "credential": "gemini_sdk", "model": "gemini-2.5-flash"},
            {"name": "sdk-vertex-gemini", "credential": "vertex_gemini_sdk", "model": "gemini-2.5-pro"},
            {"name": "sdk-vertex-claude", "credential": "vertex_claude_sdk", "model": "claude-opus-4-1@20250805"},
        ],
    }
    # YAML is a superset of JSON
    live = LiveRouter(json.dumps(config), tmp_path_factory.mktemp("sdk"), server="uvicorn").start()
    yield live
    live.stop()


@pytest.fixture
def client(router) -> OpenAI:
    return OpenAI(base_url=f"{router.url}/v1", api_key=MASTER, max_retries=0, timeout=30)


def script_tool_round_trip(ups: Upstreams, model: str, *, with_thinking: bool = False) -> None:
    claude = ups.claude_like(model)
    if claude is not None:
        lead = [thinking("Two lookups are needed."), redacted_thinking()] if with_thinking else [text("Checking.")]
        claude.add(Turn([*lead, *(tool_use(name, args) for name, args in CALLS)], fragment=7), Turn([text(ANSWER)]))
        return
    fake = ups.gemini_like(model)
    lead = [g.thought("Two lookups are needed.")] if with_thinking else []
    fake.add(g.Turn([*lead, *(g.call(name, args) for name, args in CALLS)]),
             g.Turn(g.text("Sunny in Paris, "), g.text("and it is 14:00.")))


def send_back(message) -> dict:
    """The assistant message as the SDK hands it out, extensions included, ready to be sent again."""
    return message.model_dump(exclude_none=True, exclude={"parsed"})


MODELS = ["sdk-claude", "sdk-gemini", "sdk-vertex-gemini", "sdk-vertex-claude"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("with_thinking", [False, True])
def test_streamed_parallel_tool_round_trip(client, upstreams, model, with_thinking):
    script_tool_round_trip(upstreams, model, with_thinking=with_thinking)
    messages: list = [{"role": "user", "content": "Weather and time in Paris?"}]
    extra = {"reasoning_effort": "low"} if with_thinking else {}
    with client.chat.completions.stream(model=model, messages=messages, tools=TOOLS,
                                        stream_options={"include_usage": True}, **extra) as stream:
        completion = stream.get_final_completion()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and completion.model == model
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == CALLS
    assert completion.usage.prompt_tokens > 0 and completion.usage.total_tokens > completion.usage.prompt_tokens
    if with_thinking:
        assert choice.message.model_extra["reasoning_content"] == "Two lookups are needed."
    if with_thinking and upstreams.claude_like(model):
        assert [b["type"] for b in choice.message.model_extra["thinking_blocks"]] == ["thinking", "redacted_thinking"]

    messages.append(send_back(choice.message))
    messages += [{"role": "tool", "tool_call_id": c.id, "content": out} for c, out in zip(calls, ["sunny", "14:00"],
                                                                                          strict=True)]
    chunks = list(client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True, **extra))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert upstreams.rejections() == []


def usage_row(router: LiveRouter, request_id: str) -> dict:
    for _ in range(50):
        found = [r for r in router.usage_rows(wait_for=0) if r["request_id"] == request_id]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no usage row for {request_id}")


@pytest.mark.parametrize("model", MODELS)
def test_non_streamed_answer_and_usage_row(client, upstreams, router, model):
    fake = upstreams.claude_like(model)
    if fake is not None:
        fake.add(Turn([text("Hi there.")], usage={"input_tokens": 11, "cache_read_input_tokens": 4,
                                                  "output_tokens": 3}))
    else:
        upstreams.gemini_like(model).add(g.Turn(g.text("Hi there."), usage=g.usage_metadata(15, 3, cached=4)))
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hi there."
    assert (completion.usage.prompt_tokens, completion.usage.prompt_tokens_details.cached_tokens) == (15, 4)
    row = usage_row(router, raw.headers["x-request-id"])
    assert (row["requested_model"], row["status"], row["prompt_tokens"], row["cached_tokens"],
            row["completion_tokens"]) == (model, 200, 15, 4, 3)


def test_sdk_sees_openai_shaped_errors(client, upstreams):
    upstreams.anthropic.add(Fail.rate_limited(retry_after=1))
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="sdk-claude", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.code == "rate_limit_exceeded" and err.value.response.headers["retry-after"] == "1"
    upstreams.gemini.add(g.GoogleError(400, "INVALID_ARGUMENT", "The input token count (2000000) exceeds the maximum "
                                       "number of tokens allowed (1048576)."))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="sdk-gemini", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.code == "context_length_exceeded"
