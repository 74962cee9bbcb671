"""Messages API translator: request mapping, stream re-emission, state round trip, errors, estimates.

Pure functions, no sockets: Claude Code's captured requests (tests/fixtures/claude_code)
go through ``messages_to_chat`` and on into each Chat adapter's translator, and
canonical chunks come back as the exact Anthropic event sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.errors import ProxyError
from proxy.sse import SSEEvent
from proxy.translators.common import chat_chunk, chat_completion, chat_usage, join_thought, usage_chunk
from proxy.translators.gemini import GeminiStream, chat_to_gemini
from proxy.translators.messages import (
    ROLE_ERROR,
    InvalidMessages,
    MessagesContext,
    MessagesStream,
    chat_to_message,
    collect_message,
    encode_event,
    error_body,
    error_status_and_type,
    estimate_input_tokens,
    messages_to_chat,
    messages_usage,
)
from proxy.translators.messages_native import PassthroughStream, UsageReader, forwarded_headers, native_body
from proxy.translators.responses import STATE_PREFIX, decode_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude_code"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"claude_code_2.1.332_{name}.json").read_text())


def chunk(delta: dict, finish: str | None = None) -> dict:
    return chat_chunk("chatcmpl-1", "m", 1, delta, finish)


def run(chunks: list[dict], ctx: MessagesContext | None = None) -> list[dict]:
    stream = MessagesStream(ctx or MessagesContext("m"), message_id="msg_1")
    events = stream.started()
    for c in chunks:
        events += stream.feed(c)
    return events + stream.finish()


USAGE = usage_chunk("chatcmpl-1", "m", 1, chat_usage(120, 7, cached=20))


# ---- request ------------------------------------------------------------------

def test_claude_code_first_turn_translates():
    body = fixture("turn1")["body"]
    chat, ctx = messages_to_chat(body)
    assert chat["model"] == "claude-sonnet-4-6" and chat["stream"] is True
    system = chat["messages"][0]
    assert system["role"] == "system"
    assert not any(p["text"].startswith("x-anthropic-billing-header") for p in system["content"])
    assert len(system["content"]) == 2
    user = chat["messages"][1]
    assert user["role"] == "user" and len(user["content"]) == 9 and user["content"][-1]["text"] == "say hi"
    assert all("cache_control" not in p for p in user["content"])
    names = [t["function"]["name"] for t in chat["tools"]]
    assert names[:2] == ["Agent", "Bash"] and "DeferredToolPlaceholder" in names and len(names) == 12
    assert all(set(t["function"]) <= {"name", "description", "parameters"} for t in chat["tools"])
    assert chat["max_completion_tokens"] == 32000 and chat["reasoning_effort"] == "high"
    assert not {"context_management", "output_config", "metadata", "thinking", "system"} & set(chat)
    assert ctx.show_thinking is False  # display: omitted


def test_claude_code_tool_round_trip_translates():
    chat, _ = messages_to_chat(fixture("after_bash_tool")["body"])
    assistant, tool = chat["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    [call] = assistant["tool_calls"]
    assert call["function"]["name"] == "Bash" and json.loads(call["function"]["arguments"])["command"]
    assert tool == {"role": "tool", "tool_call_id": call["id"], "content": tool["content"]}
    assert isinstance(tool["content"], str)


def test_claude_code_requests_reach_gemini_valid():
    for name in ("turn1", "after_bash_tool"):
        chat, _ = messages_to_chat(fixture(name)["body"])
        out, _ = chat_to_gemini(chat, "gemini-2.5-flash")
        assert out["contents"][0]["role"] == "user"
        assert out["systemInstruction"]["parts"]


def test_system_role_inside_messages_is_a_system_message():
    chat, _ = messages_to_chat({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "a"}, {"role": "system", "content": [{"type": "text", "text": "new tools"}]},
        {"role": "user", "content": "b"}]})
    assert [m["role"] for m in chat["messages"]] == ["user", "system", "user"]


@pytest.mark.parametrize("role", ["robot", None, "tool"])
def test_unknown_role_uses_anthropic_wording(role):
    with pytest.raises(InvalidMessages) as err:
        messages_to_chat({"model": "m", "messages": [{"role": "user", "content": "a"},
                                                     {"role": role, "content": "b"}]})
    assert err.value.message == ROLE_ERROR.format(index=1) == "messages.1.role: Input should be 'user' or 'assistant'"
    assert error_body(err.value) == {"type": "error", "error": {"type": "invalid_request_error",
                                                                "message": err.value.message}}


def test_blocks_tools_and_settings():
    chat, _ = messages_to_chat({
        "model": "m", "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "top_k": 5, "stop_sequences": ["X"],
        "system": "sys", "metadata": {"user_id": "u"},
        "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"},
                   "defer_loading": True},
                  {"type": "web_search_20250305", "name": "web_search"},
                  {"type": "bash_20250124", "name": "bash"}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
             "title": "a.pdf"},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}}]}]})
    assert chat["messages"][0] == {"role": "system", "content": "sys"}
    parts = chat["messages"][1]["content"]
    assert parts[0] == {"type": "text", "text": "look"}
    assert parts[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert parts[2] == {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    assert parts[3] == {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}
    assert parts[4] == {"type": "text", "text": "plain"}
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
                             {"type": "web_search"}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False
    assert (chat["temperature"], chat["top_p"], chat["stop"], chat["max_completion_tokens"]) == (0.2, 0.9, ["X"], 100)
    assert "top_k" not in chat and "user" not in chat


@pytest.mark.parametrize("choice,expected", [({"type": "auto"}, "auto"), ({"type": "any"}, "required"),
                                             ({"type": "none"}, "none")])
def test_tool_choice(choice, expected):
    chat, _ = messages_to_chat({"model": "m", "messages": [{"role": "user", "content": "a"}], "tool_choice": choice,
                                "tools": [{"name": "f", "input_schema": {"type": "object"}}]})
    assert chat["tool_choice"] == expected


def test_tool_choice_without_tools_is_dropped():
    chat, _ = messages_to_chat({"model": "m", "messages": [{"role": "user", "content": "a"}],
                                "tool_choice": {"type": "any"}, "tools": [{"type": "bash_20250124", "name": "bash"}]})
    assert "tools" not in chat and "tool_choice" not in chat


@pytest.mark.parametrize("thinking,config,effort", [
    ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
    ({"type": "enabled", "budget_tokens": 8000}, None, "medium"),
    ({"type": "enabled", "budget_tokens": 30000}, None, "high"),
    ({"type": "adaptive"}, None, "medium"),
    ({"type": "adaptive"}, {"effort": "low"}, "low"),
    ({"type": "adaptive"}, {"effort": "max"}, "high"),
    ({"type": "disabled"}, {"effort": "high"}, None),
])
def test_thinking_becomes_reasoning_effort(thinking, config, effort):
    body = {"model": "m", "messages": [{"role": "user", "content": "a"}], "thinking": thinking}
    if config:
        body["output_config"] = config
    chat, _ = messages_to_chat(body)
    assert chat.get("reasoning_effort") == effort


def test_tool_results_errors_parallel_and_images():
    chat, _ = messages_to_chat({"model": "m", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "text", "text": "Two."},
                                          {"type": "tool_use", "id": "t1", "name": "a", "input": {"x": 1}},
                                          {"type": "tool_use", "id": "t2", "name": "b", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "fine"},
            {"type": "tool_result", "tool_use_id": "t2", "is_error": True, "content": [
                {"type": "text", "text": "boom"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
            {"type": "text", "text": "and?"}]}]})
    msgs = chat["messages"]
    assert msgs[1]["content"] == "Two." and [c["id"] for c in msgs[1]["tool_calls"]] == ["t1", "t2"]
    assert msgs[2] == {"role": "tool", "tool_call_id": "t1", "content": "fine"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "t2", "content": "[tool error] boom"}
    assert msgs[4]["role"] == "user"
    assert [p["type"] for p in msgs[4]["content"]] == ["text", "image_url", "text"]


@pytest.mark.parametrize("body,message", [
    ({"messages": [{"role": "user", "content": "a"}]}, "model: Field required"),
    ({"model": "m"}, "messages: Field required"),
    ({"model": "m", "messages": []}, "messages: List should have at least 1 item after validation"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content: Input should be a valid "
                                                                    "string or list"),
    ({"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 0},
     "max_tokens: Input should be a valid positive integer"),
])
def test_invalid_requests(body, message):
    with pytest.raises(InvalidMessages) as err:
        messages_to_chat(body)
    assert err.value.message == message and err.value.status == 400


# ---- answer ---------------------------------------------------------------------

def test_text_stream_is_the_exact_event_sequence():
    events = run([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
                  chunk({}, "stop"), USAGE])
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                           "content_block_delta", "content_block_stop", "message_delta",
                                           "message_stop"]
    start = events[0]["message"]
    assert start == {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                     "stop_reason": None, "stop_sequence": None, "usage": messages_usage(None)}
    assert events[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[2]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert events[5] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                         "usage": {"input_tokens": 100, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 20, "output_tokens": 7}}
    message = collect_message(events)
    assert message["content"] == [{"type": "text", "text": "Hello"}] and message["stop_reason"] == "end_turn"


def test_thinking_then_parallel_tools_with_gemini_signatures():
    events = run([
        chunk({"reasoning_content": "Plan "}), chunk({"reasoning_content": "it."}),
        chunk({"tool_calls": [{"index": 0, "id": join_thought("call_1", "SIG+/1"), "type": "function",
                               "function": {"name": "a", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                               "function": {"name": "b", "arguments": '{"y"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ": 2}"}}]}),
        chunk({}, "tool_calls"), USAGE])
    message = collect_message(events)
    thinking, first, second = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "Plan it."
    assert decode_state(thinking["signature"]) == {"signatures": {"call_1": "SIG+/1"}}
    assert (first["id"], first["input"], second["id"], second["input"]) == ("call_1", {"x": 1}, "call_2", {"y": 2})
    assert message["stop_reason"] == "tool_use"
    # the client replays the turn: the signature returns to its call id, and to the tool result
    chat, _ = messages_to_chat({"model": "m", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "1"},
                                     {"type": "tool_result", "tool_use_id": "call_2", "content": "2"}]}]})
    calls = chat["messages"][1]["tool_calls"]
    assert [c["id"] for c in calls] == [join_thought("call_1", "SIG+/1"), "call_2"]
    assert chat["messages"][2]["tool_call_id"] == join_thought("call_1", "SIG+/1")
    out, _ = chat_to_gemini(chat, "gemini-3-pro")
    signed = [p for c in out["contents"] for p in c["parts"] if "thoughtSignature" in p]
    assert signed[0]["thoughtSignature"] == "SIG+/1" and "functionCall" in signed[0]


def test_signature_without_reasoning_opens_a_carrier_block():
    events = run([chunk({"content": "Let me check."}),
                  chunk({"tool_calls": [{"index": 0, "id": join_thought("c", "S"), "type": "function",
                                         "function": {"name": "a", "arguments": "{}"}}]}),
                  chunk({}, "tool_calls"), USAGE])
    kinds = [b["type"] for b in collect_message(events)["content"]]
    assert kinds == ["text", "thinking", "tool_use"]


def test_display_omitted_sends_signatures_only():
    events = run([chunk({"reasoning_content": "secret"}), chunk({"content": "A"}), chunk({}, "stop"), USAGE],
                 MessagesContext("m", show_thinking=False))
    assert not [e for e in events if e.get("delta", {}).get("type") == "thinking_delta"]
    thinking = collect_message(events)["content"][0]
    assert thinking["thinking"] == "" and thinking["signature"].startswith(STATE_PREFIX)


def test_anthropic_thinking_blocks_round_trip_in_the_signature():
    block = {"type": "thinking", "thinking": "t", "signature": "real-anthropic-sig"}
    events = run([chunk({"reasoning_content": "t"}), chunk({"thinking_blocks": [block]}), chunk({"content": "A"}),
                  chunk({}, "stop"), USAGE])
    thinking = collect_message(events)["content"][0]
    chat, _ = messages_to_chat({"model": "m", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": [thinking, {"type": "text", "text": "A"}]},
        {"role": "user", "content": "more"}]})
    assert chat["messages"][1]["thinking_blocks"] == [block]


def test_foreign_thinking_signatures_are_dropped():
    chat, _ = messages_to_chat({"model": "m", "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "EqQBCkYIB..."},
                                          {"type": "redacted_thinking", "data": "abc"},
                                          {"type": "text", "text": "A"}]},
        {"role": "user", "content": "more"}]})
    assert chat["messages"][1] == {"role": "assistant", "content": "A"}


@pytest.mark.parametrize("finish,reason", [("stop", "end_turn"), ("length", "max_tokens"),
                                           ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_stop_reasons(finish, reason):
    events = run([chunk({"content": "x"}), chunk({}, finish), USAGE])
    assert events[-2]["delta"]["stop_reason"] == reason


def test_stream_that_ends_early_ends_with_an_error_event():
    events = run([chunk({"content": "x"})])
    assert events[-1] == {"type": "error", "error": {"type": "api_error", "message":
                                                     "The upstream stream ended before the message was complete."}}


def test_non_streamed_completion_to_message():
    completion = chat_completion("chatcmpl-9", "m", 1, {
        "role": "assistant", "content": "Done.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": [1]}'}}]},
        "tool_calls", chat_usage(50, 5))
    message = chat_to_message(completion, MessagesContext("m"))
    assert message["id"].startswith("msg_") and message["type"] == "message" and message["model"] == "m"
    assert message["content"] == [{"type": "text", "text": "Done."},
                                  {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": [1]}}]
    assert message["stop_reason"] == "tool_use" and message["usage"]["input_tokens"] == 50


def test_gemini_stream_through_messages():
    """A Gemini SSE answer through the Gemini translator and on into Messages events."""
    chat, _ = messages_to_chat({"model": "g", "messages": [{"role": "user", "content": "q"}],
                                "thinking": {"type": "adaptive"}})
    _, ctx = chat_to_gemini(chat, "gemini-2.5-flash")
    gs = GeminiStream(ctx)
    data = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hmm", "thought": True},
                                                                   {"text": "Hi"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}}
    chunks = gs.feed(SSEEvent(None, json.dumps(data))) + gs.finish()
    message = collect_message(run(chunks))
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]
    assert message["content"][0]["thinking"] == "hmm" and message["content"][1]["text"] == "Hi"


# ---- errors and encoding ----------------------------------------------------------

@pytest.mark.parametrize("status,code,expected", [
    (400, None, (400, "invalid_request_error")), (401, None, (401, "authentication_error")),
    (403, None, (403, "permission_error")), (404, "model_not_found", (404, "not_found_error")),
    (413, None, (413, "request_too_large")), (429, None, (429, "rate_limit_error")),
    (500, None, (500, "api_error")), (502, None, (502, "api_error")), (503, None, (529, "overloaded_error")),
    (529, None, (529, "overloaded_error")), (504, None, (504, "timeout_error")),
])
def test_error_statuses_and_types(status, code, expected):
    assert error_status_and_type(ProxyError(status, "x", code=code)) == expected


def test_context_overflow_uses_claude_codes_words():
    err = ProxyError(400, "input is 300000 tokens", code="context_length_exceeded")
    assert error_body(err)["error"]["message"] == "prompt is too long: input is 300000 tokens"


def test_events_are_framed_like_anthropic():
    assert encode_event({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


# ---- native relay helpers ----------------------------------------------------------

def sse(kind: str, data: dict) -> SSEEvent:
    return SSEEvent(kind, json.dumps(data), f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())


def test_passthrough_holds_the_prelude_and_fails_over_on_an_early_error():
    stream = PassthroughStream()
    assert stream.feed(sse("message_start", {"type": "message_start", "message": {}})) == []
    assert stream.feed(sse("ping", {"type": "ping"})) == []
    with pytest.raises(ProxyError) as err:
        stream.feed(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert err.value.retryable and err.value.upstream_status == 529 and b"Overloaded" in err.value.upstream_body
    stream = PassthroughStream()
    stream.feed(sse("message_start", {"type": "message_start", "message": {}}))
    out = stream.feed(sse("content_block_start", {"type": "content_block_start", "index": 0}))
    assert [e.event for e in out] == ["message_start", "content_block_start"]
    with pytest.raises(ProxyError):
        stream.finish()  # no message_stop


def test_usage_reader_and_native_body():
    reader = UsageReader()
    reader.event(sse("message_start", {"type": "message_start", "message": {"usage": {
        "input_tokens": 10, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 5, "output_tokens": 1}}}))
    reader.event(sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 9}}))
    usage = reader.chat_usage()
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (45, 9)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 30, "cache_write_tokens": 5}
    body = {"model": "alias", "max_tokens": 5, "messages": []}
    assert native_body(body, "claude-x", vertex=False) == {**body, "model": "claude-x"}
    assert native_body(body, "claude-x", vertex=True) == {"max_tokens": 5, "messages": [],
                                                          "anthropic_version": "vertex-2023-10-16"}
    assert forwarded_headers({"anthropic-beta": "a,b", "x-api-key": "k"}) == {"anthropic-beta": "a,b",
                                                                              "anthropic-version": "2023-06-01"}


def test_offline_estimate():
    small = estimate_input_tokens({"messages": [{"role": "user", "content": "x" * 400}]})
    assert small == 100 + 3
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100000}}
    with_image = estimate_input_tokens({"messages": [{"role": "user", "content": [image]}]})
    assert with_image == 1600 + 3
    claude_code = estimate_input_tokens(fixture("turn1")["body"])
    assert 10000 < claude_code < 30000


@pytest.mark.parametrize("model,kept", [("gpt-4.1", False), ("gpt-4o-mini", False), ("gpt-5", True), ("o3", True),
                                        ("qwen3-coder", True)])
def test_openai_models_that_do_not_reason_get_no_effort(model, kept):
    from proxy.config import CredentialConfig, Deployment
    from proxy.providers.openai import OpenAIAdapter

    chat, _ = messages_to_chat({"model": "m", "messages": [{"role": "user", "content": "a"}],
                                "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}})
    dep = Deployment("m", CredentialConfig("c", "openai"), model)
    sent = OpenAIAdapter().chat_request(dep, chat, stream=True).body
    assert ("reasoning_effort" in sent) is kept and sent["model"] == model
