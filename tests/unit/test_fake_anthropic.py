"""The strict Anthropic fake: what its validator rejects and accepts, and how it answers over HTTP."""

from __future__ import annotations

import copy
import json
import time

import httpx
import pytest

from proxy.sse import SSEEvent, SSEParser
from proxy.translators.anthropic import AnthropicContext, AnthropicStream, anthropic_error
from tests.fakes.anthropic import (
    AnthropicFake,
    Fail,
    InvalidRequest,
    Turn,
    redacted_data,
    redacted_thinking,
    sign_thinking,
    text,
    thinking,
    tool_use,
    valid_redacted,
    valid_signature,
    validate_body,
)
from tests.fakes.server import FakeServer

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
SIG = sign_thinking("hmm")
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
VERTEX_PATH = "/v1/projects/p1/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514"


def good() -> dict:
    """A valid body with a thinking tool loop, parallel results, an image and a web search tool."""
    return {
        "model": "claude-sonnet-4-5", "max_tokens": 8000,
        "system": [{"type": "text", "text": "Be brief."}],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [{"name": "f", "input_schema": {"type": "object"}}, {"type": "web_search_20250305",
                                                                      "name": "web_search"}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": False},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": PNG}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": SIG},
                                              {"type": "text", "text": "Calling."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
                                              {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "one"},
                                         {"type": "tool_result", "tool_use_id": "toolu_2",
                                          "content": [{"type": "text", "text": "two"}]},
                                         {"type": "text", "text": "go on"}]},
        ],
    }


def mutate(path: str, value=..., *, delete: bool = False):
    """A function applying one change at a dotted path of ``good()``."""
    def apply(body: dict) -> dict:
        *parents, last = path.split(".")
        target = body
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        key = int(last) if isinstance(target, list) else last
        if delete:
            del target[key]
        else:
            target[key] = value
        return body
    return apply


def with_(**changes):
    return lambda body: {**body, **changes}


def without_thinking(body: dict) -> dict:
    body.pop("thinking")
    body["messages"][1]["content"] = body["messages"][1]["content"][1:]
    return body


REJECTED = [
    ("missing-max-tokens", mutate("max_tokens", delete=True), "max_tokens: Field required"),
    ("zero-max-tokens", with_(max_tokens=0), "max_tokens: Input should be a positive integer"),
    ("missing-model", mutate("model", delete=True), "model: Field required"),
    ("openai-field", with_(n=1), "n: Extra inputs are not permitted"),
    ("anthropic-version-in-body", with_(anthropic_version="vertex-2023-10-16"), "anthropic_version: Extra inputs"),
    ("no-messages", with_(messages=[]), "at least one message"),
    ("assistant-first", lambda b: {**b, "messages": b["messages"][1:]}, "first message must use the \"user\" role"),
    ("same-role-twice", lambda b: {**b, "messages": [b["messages"][0], b["messages"][0]]}, "roles must alternate"),
    ("empty-string-content", mutate("messages.0.content", ""), "all messages must have non-empty content"),
    ("empty-list-content", mutate("messages.0.content", []), "all messages must have non-empty content"),
    ("empty-text", mutate("messages.0.content.0.text", ""), "text content blocks must be non-empty"),
    ("blank-text", mutate("messages.0.content.0.text", " \n"), "must contain non-whitespace text"),
    ("empty-system-text", mutate("system.0.text", ""), "system.0: text content blocks must be non-empty"),
    ("image-media-type", mutate("messages.0.content.1.source.media_type", "image/bmp"), "media_type"),
    ("image-not-base64", mutate("messages.0.content.1.source.data", "not base64!"), "invalid base64"),
    ("block-extra-key", mutate("messages.0.content.0.reasoning_content", "x"), "reasoning_content: Extra inputs"),
    ("block-wrong-role", mutate("messages.0.content.0", {"type": "tool_use", "id": "x", "name": "f", "input": {}}),
     "'tool_use' blocks are not permitted in user messages"),
    ("tool-use-id-pattern", mutate("messages.1.content.2.id", "call.1"), "String should match pattern"),
    ("tool-use-ids-unique", mutate("messages.1.content.3.id", "toolu_1"), "ids must be unique"),
    ("tool-use-input-string", mutate("messages.1.content.2.input", "{}"), "valid dictionary"),
    ("tool-name-pattern", mutate("tools.0.name", "mcp.say"), "tools.0.name: String should match pattern"),
    ("tool-name-too-long", mutate("tools.0.name", "x" * 129), "tools.0.name: String should match pattern"),
    ("tool-schema-type", mutate("tools.0.input_schema", {"properties": {}}), "input_schema.type"),
    ("tool-extra-key", mutate("tools.0.parameters", {}), "tools.0.parameters: Extra inputs"),
    ("tool-names-unique", lambda b: {**b, "tools": [b["tools"][0], b["tools"][0]]}, "Tool names must be unique"),
    ("tool-choice-without-tools", lambda b: {**without_thinking(b), "tools": None, "messages": b["messages"][:1]},
     "tool_choice may only be specified while providing tools"),
    ("tool-choice-unknown-name", mutate("tool_choice", {"type": "tool", "name": "nope"}), "no tool named 'nope'"),
    ("tool-choice-openai-string", with_(tool_choice="auto"), "tool_choice.type"),
    ("result-after-text", mutate("messages.2.content", [{"type": "text", "text": "x"},
                                                        {"type": "tool_result", "tool_use_id": "toolu_1"},
                                                        {"type": "tool_result", "tool_use_id": "toolu_2"}]),
     "Did not find 2 `tool_result` block(s) at the beginning"),
    ("result-missing", mutate("messages.2.content", [{"type": "tool_result", "tool_use_id": "toolu_1"}]),
     "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_2"),
    ("result-unexpected", mutate("messages.2.content.1.tool_use_id", "toolu_9"),
     "unexpected `tool_use_id` found in `tool_result` blocks: toolu_9"),
    ("result-id-pattern", mutate("messages.2.content.1.tool_use_id", "a.b"), "tool_use_id: String should match"),
    ("result-empty-text", mutate("messages.2.content.1.content", [{"type": "text", "text": ""}]),
     "text content blocks must be non-empty"),
    ("trailing-tool-use", lambda b: {**b, "messages": b["messages"][:2]},
     "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after"),
    ("tool-blocks-without-tools", lambda b: {**b, "tools": None, "tool_choice": None},
     "must define tools"),
    ("signature-forged", mutate("messages.1.content.0.signature", "forged"), "Invalid `signature`"),
    ("thinking-text-edited", mutate("messages.1.content.0.thinking", "hmm!"), "Invalid `signature`"),
    ("signature-missing", mutate("messages.1.content.0", {"type": "thinking", "thinking": "hmm"}),
     "Invalid `signature`"),
    ("redacted-forged", mutate("messages.1.content.0", {"type": "redacted_thinking", "data": "QUJD"}),
     "Invalid `data`"),
    ("thinking-not-first", mutate("messages.1.content", [
        {"type": "text", "text": "Calling."}, {"type": "thinking", "thinking": "hmm", "signature": SIG},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {}}]), "the first block must be `thinking`"),
    ("thinking-last", lambda b: {**b, "messages": [b["messages"][0], {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": SIG}]}]},
     "final block in an assistant message cannot be `thinking`"),
    ("thinking-lost-in-tool-loop", mutate("messages.1.content", [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {}}]),
     "Expected `thinking` or `redacted_thinking`, but found `tool_use`"),
    ("thinking-forced-any", with_(tool_choice={"type": "any"}), "tool_choice forces tool use"),
    ("thinking-forced-tool", with_(tool_choice={"type": "tool", "name": "f"}), "tool_choice forces tool use"),
    ("thinking-small-budget", mutate("thinking.budget_tokens", 1000), "greater than or equal to 1024"),
    ("thinking-budget-over-max", with_(max_tokens=2048), "`max_tokens` must be greater than"),
    ("thinking-temperature", with_(temperature=0.5), "`temperature` may only be set to 1"),
    ("thinking-top-k", with_(top_k=5), "`top_k` must be unset"),
    ("thinking-top-p", with_(top_p=0.5), "`top_p` must be greater than or equal to 0.95"),
    ("thinking-type", with_(thinking={"type": "on"}), "thinking.type"),
    ("disabled-with-final-thinking", lambda b: {**b, "thinking": None, "messages": [b["messages"][0], {
        "role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": SIG},
                                         {"type": "text", "text": "so"}]}]}, "When thinking is disabled"),
    ("prefill-trailing-space", lambda b: {**without_thinking(b), "messages": [
        b["messages"][0], {"role": "assistant", "content": "Answer: "}]}, "cannot end with trailing whitespace"),
    ("temperature-over-1", lambda b: {**without_thinking(b), "temperature": 1.5}, "temperature: Input should be"),
    ("stop-blank", with_(stop_sequences=["  "]), "stop_sequences"),
    ("metadata-extra", with_(metadata={"user_id": "u", "tag": "x"}), "metadata"),
    ("output-config-format", with_(output_config={"format": {"type": "json_object"}}), "output_config.format"),
    ("stream-not-bool", with_(stream="yes"), "stream: Input should be a valid boolean"),
]


@pytest.mark.parametrize(("change", "needle"), [(c, n) for _, c, n in REJECTED], ids=[i for i, _, _ in REJECTED])
def test_validator_rejects(change, needle):
    body = change(copy.deepcopy(good()))
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequest) as exc:
        validate_body(body)
    assert needle in str(exc.value)


ACCEPTED = [
    ("good", lambda b: b),
    ("string-content", lambda b: {**without_thinking(b), "tools": None, "tool_choice": None,
                                  "messages": [{"role": "user", "content": "hi"}]}),
    ("empty-final-assistant", lambda b: {**without_thinking(b), "tools": None, "tool_choice": None, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": []}]}),
    ("redacted-first", mutate("messages.1.content.0", {"type": "redacted_thinking", "data": redacted_data()})),
    ("earlier-loop-unsigned", lambda b: {**b, "messages": [
        *copy.deepcopy(without_thinking(copy.deepcopy(b))["messages"]),
        {"role": "assistant", "content": "Done."}, {"role": "user", "content": "next"}]}),
    ("adaptive-forced", with_(thinking={"type": "adaptive"}, tool_choice={"type": "any"})),
    ("thinking-temperature-1", with_(temperature=1, top_p=0.95)),
    ("no-thinking-forced", lambda b: {**without_thinking(b), "tool_choice": {"type": "tool", "name": "f"},
                                      "temperature": 0.2, "top_k": 3}),
    ("result-image", mutate("messages.2.content.0.content", [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}])),
    ("pdf", mutate("messages.0.content.1", {"type": "document", "title": "x.pdf", "source": {
        "type": "base64", "media_type": "application/pdf", "data": PNG}})),
    ("json-schema-output", with_(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}})),
    ("metadata-stream-stops", with_(metadata={"user_id": "u"}, stream=True, stop_sequences=["END"])),
]


@pytest.mark.parametrize("change", [c for _, c in ACCEPTED], ids=[i for i, _ in ACCEPTED])
def test_validator_accepts(change):
    body = change(copy.deepcopy(good()))
    validate_body({k: v for k, v in body.items() if v is not None})


def test_vertex_validation():
    body = good()
    with pytest.raises(InvalidRequest, match="model: Extra inputs"):
        validate_body({**body, "anthropic_version": "vertex-2023-10-16"}, vertex=True)
    body.pop("model")
    with pytest.raises(InvalidRequest, match="anthropic_version"):
        validate_body(body, vertex=True)
    with pytest.raises(InvalidRequest, match="anthropic_version"):
        validate_body({**body, "anthropic_version": "2023-06-01"}, vertex=True)
    validate_body({**body, "anthropic_version": "vertex-2023-10-16"}, vertex=True)


def test_signatures():
    assert valid_signature("hmm", SIG)
    assert set(SIG) & set("+/=")
    assert not valid_signature("hmm ", SIG)
    assert not valid_signature("hmm", SIG[:-2])
    data = redacted_data()
    assert valid_redacted(data) and data != redacted_data()
    assert not valid_redacted(data[:-4] + "AAAA")
    assert not valid_redacted("%%%")


# ---- over HTTP -----------------------------------------------------------------

@pytest.fixture
def serve():
    servers: list[FakeServer] = []

    def start(fake: AnthropicFake) -> httpx.Client:
        server = FakeServer(fake.handler).start()
        servers.append(server)
        return httpx.Client(base_url=server.url, timeout=10)

    yield start
    for server in servers:
        server.stop()


def request(stream: bool = False, **extra) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 5000, "messages": [{"role": "user", "content": "hi"}],
            **({"stream": True} if stream else {}), **extra}


def sse(response: httpx.Response) -> list[dict]:
    parser = SSEParser()
    evs = parser.feed(response.content) + parser.flush()
    assert all(ev.event == json.loads(ev.data)["type"] for ev in evs)
    return [json.loads(ev.data) for ev in evs]


def test_non_streaming_turn(serve):
    fake = AnthropicFake([Turn([thinking("hmm"), text("Hi!"), tool_use("f", {"a": 1})],
                               usage={"input_tokens": 5, "cache_read_input_tokens": 100})])
    client = serve(fake)
    resp = client.post("/v1/messages", json=request(thinking={"type": "enabled", "budget_tokens": 2048}),
                       headers=HEADERS)
    assert resp.status_code == 200
    message = resp.json()
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    assert valid_signature("hmm", message["content"][0]["signature"])
    assert message["content"][2]["id"].startswith("toolu_")
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["input_tokens"] == 5 and message["usage"]["cache_read_input_tokens"] == 100
    assert message["model"] == "claude-sonnet-4-5"
    assert fake.received == [request(thinking={"type": "enabled", "budget_tokens": 2048})]
    assert resp.headers["request-id"].startswith("req_")


def test_streaming_turn(serve):
    fake = AnthropicFake([Turn([thinking("a long thought"), text("Hello there"), tool_use("f", {"path": "x" * 30}),
                                tool_use("g")], usage={"cache_creation_input_tokens": 7, "output_tokens": 40})])
    resp = serve(fake).post("/v1/messages", json=request(stream=True), headers=HEADERS)
    assert resp.headers["content-type"].startswith("text/event-stream")
    evs = sse(resp)
    kinds = [e["type"] for e in evs]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert "ping" in kinds
    assert evs[0]["message"]["content"] == [] and evs[0]["message"]["usage"]["cache_creation_input_tokens"] == 7
    tool_deltas = [e["delta"]["partial_json"] for e in evs if e.get("delta", {}).get("type") == "input_json_delta"]
    assert tool_deltas[0] == "" and json.loads("".join(tool_deltas)) == {"path": "x" * 30}
    assert tool_deltas.count("") == 2  # the argument-less call only sends the opening fragment
    signature = [e["delta"]["signature"] for e in evs if e.get("delta", {}).get("type") == "signature_delta"]
    assert valid_signature("a long thought", signature[0])
    assert evs[-2]["usage"]["output_tokens"] == 40 and evs[-2]["usage"]["cache_creation_input_tokens"] == 7

    stream = AnthropicStream(AnthropicContext(model="m", upstream_model="claude-sonnet-4-5"))
    chunks = [c for e in evs for c in stream.feed(_event(e))] + stream.finish()
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 7}


def _event(payload: dict) -> SSEEvent:
    return SSEEvent(payload["type"], json.dumps(payload))


def test_plain_list_is_a_turn_and_redacted_thinking_is_generated(serve):
    fake = AnthropicFake([[redacted_thinking(), text("ok")]])
    message = serve(fake).post("/v1/messages", json=request(), headers=HEADERS).json()
    assert valid_redacted(message["content"][0]["data"])
    assert message["stop_reason"] == "end_turn"


@pytest.mark.parametrize(("headers", "status", "error_type"), [
    ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
    ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
    ({"x-api-key": "test-key"}, 400, "invalid_request_error"),
])
def test_authentication_and_headers(serve, headers, status, error_type):
    fake = AnthropicFake([[text("never")]])
    client = serve(fake)
    resp = client.post("/v1/messages", json=request(), headers=headers)
    assert resp.status_code == status
    assert resp.json()["type"] == "error" and resp.json()["error"]["type"] == error_type
    assert len(fake.script) == 1


def test_invalid_request_gets_anthropics_400_and_consumes_nothing(serve):
    fake = AnthropicFake([[text("second try works")]])
    client = serve(fake)
    bad = request(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}])
    resp = client.post("/v1/messages", json=bad, headers=HEADERS)
    assert resp.status_code == 400
    assert resp.headers["x-should-retry"] == "false"
    assert resp.json()["error"] == {"type": "invalid_request_error",
                                    "message": "messages.0.content.0: text content blocks must be non-empty"}
    assert fake.rejections == ["messages.0.content.0: text content blocks must be non-empty"]
    assert client.post("/v1/messages", json=request(), headers=HEADERS).json()["content"][0]["text"] == \
        "second try works"
    assert len(fake.received) == 2
    err = anthropic_error(resp.status_code, resp.content, resp.headers)
    assert err.status == 400 and not err.retryable


@pytest.mark.parametrize(("fail", "status", "headers", "proxy"), [
    (Fail.overloaded(), 529, {}, (503, "server_is_overloaded", True)),
    (Fail.rate_limited(retry_after=3), 429, {"retry-after": "3"}, (429, "rate_limit_exceeded", True)),
    (Fail.bad_request("nope"), 400, {"x-should-retry": "false"}, (400, "invalid_request_error", False)),
    (Fail.http(500, "api_error", "boom"), 500, {}, (502, "server_error", True)),
    (Fail.mid_stream(), 529, {}, (503, "server_is_overloaded", True)),
], ids=["overloaded", "rate-limited", "bad-request", "api-error", "mid-stream-without-stream"])
def test_http_failures(serve, fail, status, headers, proxy):
    resp = serve(AnthropicFake([fail])).post("/v1/messages", json=request(), headers=HEADERS)
    assert resp.status_code == status
    assert resp.json()["error"]["type"] == fail.error_type
    for key, value in headers.items():
        assert resp.headers[key] == value
    err = anthropic_error(resp.status_code, resp.content, resp.headers)
    assert (err.status, err.code, err.retryable) == proxy


def test_mid_stream_error_event(serve):
    resp = serve(AnthropicFake([Fail.mid_stream()])).post("/v1/messages", json=request(stream=True), headers=HEADERS)
    assert resp.status_code == 200
    evs = sse(resp)
    assert [e["type"] for e in evs] == ["message_start", "error"]
    assert evs[1]["error"] == {"type": "overloaded_error", "message": "Overloaded"}


def test_cut_stream_ends_without_message_stop(serve):
    resp = serve(AnthropicFake([Turn([text("partial answer")], cut_after=4)])).post(
        "/v1/messages", json=request(stream=True), headers=HEADERS)
    assert [e["type"] for e in sse(resp)] == ["message_start", "ping", "content_block_start", "content_block_delta"]


def test_delay_between_events(serve):
    client = serve(AnthropicFake([Turn([text("abc")], delay=0.05)]))
    started = time.monotonic()
    resp = client.post("/v1/messages", json=request(stream=True), headers=HEADERS)
    assert len(sse(resp)) == 8
    assert time.monotonic() - started >= 0.3


def test_script_exhausted_and_unknown_path(serve):
    client = serve(AnthropicFake())
    resp = client.post("/v1/messages", json=request(), headers=HEADERS)
    assert resp.status_code == 500 and resp.json()["error"]["type"] == "api_error"
    assert client.post("/v1/complete", json=request(), headers=HEADERS).status_code == 404


def vertex_request(stream: bool = False) -> dict:
    body = request(stream, anthropic_version="vertex-2023-10-16")
    body.pop("model")
    return body


@pytest.mark.parametrize(("path", "headers", "body", "status"), [
    (f"{VERTEX_PATH}:rawPredict", {"authorization": "Bearer vt"}, vertex_request(), 200),
    (f"{VERTEX_PATH}:rawPredict", {"authorization": "Bearer other"}, vertex_request(), 401),
    (f"{VERTEX_PATH}:rawPredict", {"x-api-key": "test-key"}, vertex_request(), 401),
    (f"{VERTEX_PATH}:rawPredict", {"authorization": "Bearer vt"}, request(), 400),
    (f"{VERTEX_PATH}:rawPredict", {"authorization": "Bearer vt"}, vertex_request(stream=True), 400),
    (f"{VERTEX_PATH}:predict", {"authorization": "Bearer vt"}, vertex_request(), 404),
    ("/v1/messages", {"authorization": "Bearer vt"}, vertex_request(), 404),
], ids=["ok", "wrong-token", "api-key-instead", "anthropic-body", "stream-on-rawpredict", "wrong-verb", "wrong-path"])
def test_vertex_mode(serve, path, headers, body, status):
    fake = AnthropicFake([[text("from vertex")]], vertex=True, token="vt")
    resp = serve(fake).post(path, json=body, headers=headers)
    assert resp.status_code == status
    if status == 200:
        assert resp.json()["model"] == "claude-sonnet-4@20250514"
    elif status == 401:
        assert resp.json()["error"]["status"] == "UNAUTHENTICATED"
        assert anthropic_error(401, resp.content, resp.headers).credential_fault


def test_vertex_streaming(serve):
    fake = AnthropicFake([[text("streamed")]], vertex=True, token="vt")
    resp = serve(fake).post(f"{VERTEX_PATH}:streamRawPredict", json=vertex_request(stream=True),
                            headers={"authorization": "Bearer vt"})
    evs = sse(resp)
    assert evs[0]["message"]["model"] == "claude-sonnet-4@20250514" and evs[-1]["type"] == "message_stop"
