"""Chat <-> Anthropic translation: request rules, answers, streams, errors, and a round trip
through the strict fake's validator."""

from __future__ import annotations

import json

import pytest

from proxy.errors import ProxyError
from proxy.sse import SSEEvent, SSEParser
from proxy.translators.anthropic import (
    JSON_ONLY_INSTRUCTION,
    MISSING_RESULT,
    PLACEHOLDER_USER_TEXT,
    AnthropicContext,
    AnthropicStream,
    anthropic_error,
    anthropic_headers,
    anthropic_to_chat,
    chat_to_anthropic,
    model_version,
    output_limit,
    supports_thinking,
)
from proxy.translators.common import ToolNameMap, safe_tool_id
from tests.fakes.anthropic import (
    AnthropicFake,
    InvalidRequest,
    Turn,
    redacted_thinking,
    sign_thinking,
    text,
    thinking,
    tool_use,
    validate_body,
)
from tests.fixtures import CODEX_FIXTURES as FIXTURES

MODEL = "claude-sonnet-4-5-20250929"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PDF = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="
SIG = sign_thinking("Plan the call.")
TB = {"type": "thinking", "thinking": "Plan the call.", "signature": SIG}


# ---- helpers ---------------------------------------------------------------

def translate(messages: list[dict], model: str = MODEL, *, vertex: bool = False, **fields) -> dict:
    body, _ = chat_to_anthropic({"model": "router-claude", "messages": messages, **fields}, model, vertex=vertex)
    return body


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content=None, calls=(), blocks=None) -> dict:
    msg = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = [{"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                             for cid, name, args in calls]
    if blocks is not None:
        msg["thinking_blocks"] = blocks
    return msg


def tool(call_id: str, content) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def fn(name: str, parameters: dict | None = None, **extra) -> dict:
    spec = {"name": name, **extra}
    if parameters is not None:
        spec["parameters"] = parameters
    return {"type": "function", "function": spec}


def roles(body: dict) -> list[str]:
    return [m["role"] for m in body["messages"]]


def types(message: dict) -> list[str]:
    return [b["type"] for b in message["content"]]


def ctx(names: ToolNameMap | None = None, model: str = "router-claude") -> AnthropicContext:
    return AnthropicContext(model=model, upstream_model=MODEL, names=names or ToolNameMap())


def fixture_body(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())["body"]


def responses_to_chat(body: dict) -> dict:
    """Just enough of the Responses -> Chat mapping (providers.md 6.5) to feed Codex captures in."""
    tools: list[dict] = []
    for t in body.get("tools", []):
        inner = t.get("tools", []) if t["type"] == "namespace" else [t]
        prefix = f"{t['name']}__" if t["type"] == "namespace" else ""
        for f in inner:
            params = f.get("parameters") or {"type": "object", "properties": {"input": {"type": "string"}}}
            tools.append(fn(prefix + (f.get("name") or f["type"]), params, description=f.get("description", "")))
    messages: list[dict] = []
    for item in body["input"]:
        kind = item["type"]
        if kind == "message":
            parts = [{"type": "text", "text": p["text"]} if "text" in p else
                     {"type": "image_url", "image_url": {"url": p["image_url"]}} for p in item["content"]]
            messages.append({"role": item["role"], "content": parts})
        elif kind in ("function_call", "custom_tool_call", "tool_search_call"):
            name = f"{item['namespace']}__{item['name']}" if item.get("namespace") else item.get("name", "tool_search")
            args = item.get("arguments") if kind != "custom_tool_call" else {"input": item["input"]}
            messages.append(assistant(None, [(item["call_id"], name, args if isinstance(args, str)
                                              else json.dumps(args))]))
        elif kind.endswith("_output"):
            output = item.get("output", item.get("tools"))
            if isinstance(output, list) and kind != "tool_search_output":
                output = [{"type": "text", "text": p["text"]} if "text" in p else
                          {"type": "image_url", "image_url": {"url": p["image_url"]}} for p in output]
            elif not isinstance(output, str):
                output = json.dumps(output)
            messages.append(tool(item["call_id"], output))
    return {"model": body["model"], "messages": messages, "tools": tools, "stream": body["stream"],
            "tool_choice": body["tool_choice"], "parallel_tool_calls": body["parallel_tool_calls"],
            "reasoning_effort": (body.get("reasoning") or {}).get("effort")}


def events(*payloads: dict) -> list[SSEEvent]:
    return [SSEEvent(p["type"], json.dumps(p)) for p in payloads]


def run_stream(evs: list[SSEEvent], context: AnthropicContext | None = None) -> list[dict]:
    stream = AnthropicStream(context or ctx())
    chunks = [c for ev in evs for c in stream.feed(ev)]
    return chunks + stream.finish()


def deltas(chunks: list[dict]) -> list[dict]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def accumulate(chunks: list[dict]) -> dict:
    """A Chat client's view of a stream: the final assistant message, finish reason and usage."""
    message: dict = {"role": "assistant", "content": "", "reasoning_content": "", "thinking_blocks": []}
    calls: dict[int, dict] = {}
    finish, usage = None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            d = choice["delta"]
            finish = choice["finish_reason"] or finish
            message["content"] += d.get("content") or ""
            message["reasoning_content"] += d.get("reasoning_content") or ""
            message["thinking_blocks"] += d.get("thinking_blocks") or []
            for call in d.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": call.get("id"), "type": "function",
                                                        "function": {"name": "", "arguments": ""}})
                slot["function"]["name"] += call.get("function", {}).get("name") or ""
                slot["function"]["arguments"] += call.get("function", {}).get("arguments") or ""
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {"message": message, "finish_reason": finish, "usage": usage}


# ---- system, roles, empties -----------------------------------------------

@pytest.mark.parametrize(("messages", "system"), [
    ([{"role": "system", "content": "A"}, user("hi")], [{"type": "text", "text": "A"}]),
    ([{"role": "developer", "content": [{"type": "text", "text": "A"}, {"type": "input_text", "text": "B"}]},
      user("hi")], [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]),
    ([{"role": "system", "content": "A"}, user("hi"), {"role": "developer", "content": "B"}, assistant("ok"),
      {"role": "system", "content": [{"type": "text", "text": "C"}]}],
     [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}, {"type": "text", "text": "C"}]),
    ([{"role": "system", "content": [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}]},
      user("hi")], [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}]),
    ([{"role": "system", "content": ""}, {"role": "system", "content": "  "}, user("hi")], None),
    ([user("hi")], None),
], ids=["string", "developer-parts", "all-positions-in-order", "cache-control", "empty-dropped", "none"])
def test_system_messages_become_top_level_system(messages, system):
    body = translate(messages)
    assert body.get("system") == system
    assert roles(body) == ["user", "assistant"][: len(body["messages"])]


@pytest.mark.parametrize(("messages", "expected"), [
    ([assistant("hello"), user("hi")],
     [("user", [PLACEHOLDER_USER_TEXT]), ("assistant", ["hello"]), ("user", ["hi"])]),
    ([user("a"), user("b"), assistant("x"), assistant("y"), user("c")],
     [("user", ["a", "b"]), ("assistant", ["x", "y"]), ("user", ["c"])]),
    ([user("a"), assistant(""), user("b")], [("user", ["a", "b"])]),
    ([user("a"), assistant([{"type": "text", "text": "  "}]), user([{"type": "text", "text": ""}]), user("b")],
     [("user", ["a", "b"])]),
    ([{"role": "system", "content": "only system"}], [("user", [PLACEHOLDER_USER_TEXT])]),
    ([], [("user", [PLACEHOLDER_USER_TEXT])]),
    ([user("q"), assistant("Sure:  \n")], [("user", ["q"]), ("assistant", ["Sure:"])]),
    ([user([{"type": "text", "text": "a"}, {"type": "input_text", "text": "b"}])], [("user", ["a", "b"])]),
    ([user("q"), assistant([{"type": "text", "text": "A"}, {"type": "refusal", "refusal": "R"}])],
     [("user", ["q"]), ("assistant", ["A", "R"])]),
    ([user("q"), {"role": "assistant", "content": None, "refusal": "No."}], [("user", ["q"]), ("assistant", ["No."])]),
], ids=["assistant-first", "merge-same-role", "empty-message-dropped-then-merged", "blank-parts-dropped",
        "only-system", "no-messages", "prefill-trailing-whitespace", "input-text", "refusal-part", "refusal-field"])
def test_roles_alternate_start_with_user_and_carry_no_empty_text(messages, expected):
    body = translate(messages)
    got = [(m["role"], [b["text"] for b in m["content"]]) for m in body["messages"]]
    assert got == expected
    validate_body(body)


# ---- tools in history ------------------------------------------------------

def test_parallel_tool_results_are_grouped_first_in_one_user_message():
    body = translate([
        user("weather?"),
        assistant("Checking.", [("call_a", "get", '{"city":"Paris"}'), ("call_b", "get", '{"city":"Rome"}')]),
        tool("call_a", "sunny"),
        user("and quickly"),
        tool("call_b", [{"type": "text", "text": "rain"}]),
        user([{"type": "text", "text": "thanks"}]),
    ], tools=[fn("get")])
    assert roles(body) == ["user", "assistant", "user"]
    assert types(body["messages"][1]) == ["text", "tool_use", "tool_use"]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_b", "content": "rain"},
        {"type": "text", "text": "and quickly"},
        {"type": "text", "text": "thanks"},
    ]
    validate_body(body)


@pytest.mark.parametrize(("messages", "last_user"), [
    ([user("go"), assistant(None, [("c1", "f", "{}"), ("c2", "f", "{}")]), tool("c2", "two")],
     [{"type": "tool_result", "tool_use_id": "c1", "content": MISSING_RESULT, "is_error": True},
      {"type": "tool_result", "tool_use_id": "c2", "content": "two"}]),
    ([user("go"), assistant(None, [("c1", "f", "{}")])],
     [{"type": "tool_result", "tool_use_id": "c1", "content": MISSING_RESULT, "is_error": True}]),
    ([user("go"), assistant(None, [("c1", "f", "{}")]), user("never mind")],
     [{"type": "tool_result", "tool_use_id": "c1", "content": MISSING_RESULT, "is_error": True},
      {"type": "text", "text": "never mind"}]),
    ([user("go"), assistant("done"), tool("c9", "late")],
     [{"type": "text", "text": "[result of tool call c9]\nlate"}]),
    ([tool("c9", "stray"), user("hi")], [{"type": "text", "text": "[result of tool call c9]\nstray"},
                                         {"type": "text", "text": "hi"}]),
    ([user("go"), assistant(None, [("c1", "f", "{}")]), tool("c1", "a"), tool("c1", "again")],
     [{"type": "tool_result", "tool_use_id": "c1", "content": "a"},
      {"type": "text", "text": "[result of tool call c1]\nagain"}]),
], ids=["missing-result-filled", "trailing-call-answered", "user-text-instead-of-result", "orphan-result-as-text",
        "orphan-first-message", "duplicate-result"])
def test_tool_results_are_repaired_to_match_the_calls(messages, last_user):
    body = translate(messages, tools=[fn("f")])
    assert body["messages"][-1]["content"] == last_user
    validate_body(body)


def test_tool_result_content_forms():
    body = translate([
        user("look"),
        assistant(None, [("c1", "view", "{}"), ("c2", "view", "{}"), ("c3", "view", "{}")]),
        tool("c1", [{"type": "text", "text": "see"}, {"type": "image_url",
                                                      "image_url": {"url": f"data:image/png;base64,{PNG}"}}]),
        tool("c2", ""),
        tool("c3", [{"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"}]),
    ], tools=[fn("view")])
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "see"}, image]},
        {"type": "tool_result", "tool_use_id": "c2"},
        {"type": "tool_result", "tool_use_id": "c3", "content": [image]},
    ]
    validate_body(body)


@pytest.mark.parametrize("call_id", ["call_abc-1", "call.with.dots", "fc_1|item:2", "call_x__thought__SIGNATURE+/=",
                                     "a" * 80 + "$"])
def test_tool_call_ids_are_sanitised_the_same_way_on_both_sides(call_id):
    body = translate([user("go"), assistant(None, [(call_id, "f", "{}")]), tool(call_id, "ok")], tools=[fn("f")])
    use, result = body["messages"][1]["content"][0], body["messages"][2]["content"][0]
    assert use["id"] == result["tool_use_id"] == safe_tool_id(call_id)
    assert "__thought__" not in use["id"]
    validate_body(body)


def test_distinct_ids_stay_distinct_after_sanitising():
    body = translate([user("go"), assistant(None, [("call.1", "f", "{}"), ("call_1", "f", "{}")]),
                      tool("call.1", "a"), tool("call_1", "b")], tools=[fn("f")])
    ids = [b["id"] for b in body["messages"][1]["content"]]
    assert len(set(ids)) == 2
    assert [b["tool_use_id"] for b in body["messages"][2]["content"]] == ids


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"a": 1}', {"a": 1}), ("", {}), ("not json", {}), ("[1, 2]", {"value": [1, 2]}), (None, {}),
])
def test_tool_call_arguments_become_an_input_object(arguments, expected):
    body = translate([user("go"), assistant(None, [("c1", "f", arguments)]), tool("c1", "ok")], tools=[fn("f")])
    assert body["messages"][1]["content"][0]["input"] == expected


# ---- tool definitions and tool_choice ---------------------------------------

def test_tool_definitions():
    names_body, context = chat_to_anthropic({"model": "m", "messages": [user("hi")], "tools": [
        fn("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}}, description="Weather"),
        fn("no_params"),
        fn("untyped", {"properties": {"x": {"type": "integer"}}}),
        fn("strict_one", {"type": "object"}, strict=True),
        fn("not_strict", {"type": "object"}, strict=False),
        fn("mcp.server/say hello"),
        {"type": "web_search"},
        {"type": "image_generation"},
    ]}, MODEL)
    assert names_body["tools"] == [
        {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
         "description": "Weather"},
        {"name": "no_params", "input_schema": {"type": "object"}},
        {"name": "untyped", "input_schema": {"properties": {"x": {"type": "integer"}}, "type": "object"}},
        {"name": "strict_one", "input_schema": {"type": "object"}, "strict": True},
        {"name": "not_strict", "input_schema": {"type": "object"}},
        {"name": "mcp_server_say_hello", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search"},
    ]
    assert context.names.to_client("mcp_server_say_hello") == "mcp.server/say hello"
    validate_body(names_body)


def test_tool_names_are_mapped_in_history_and_stay_consistent():
    long_name = "mcp__" + "x" * 70
    body, context = chat_to_anthropic({"model": "m", "tools": [fn(long_name), fn("a.b")], "messages": [
        user("go"), assistant(None, [("c1", long_name, "{}"), ("c2", "a.b", "{}")]),
        tool("c1", "1"), tool("c2", "2")]}, MODEL)
    declared = [t["name"] for t in body["tools"]]
    used = [b["name"] for b in body["messages"][1]["content"]]
    assert declared == used
    assert all(len(n) <= 64 for n in declared)
    assert [context.names.to_client(n) for n in used] == [long_name, "a.b"]
    validate_body(body)


@pytest.mark.parametrize(("choice", "parallel", "effort", "expected"), [
    (None, None, None, None),
    ("auto", None, None, {"type": "auto"}),
    ("none", None, None, {"type": "none"}),
    ("required", None, None, {"type": "any"}),
    ({"type": "function", "function": {"name": "a.b"}}, None, None, {"type": "tool", "name": "a_b"}),
    ({"type": "custom", "custom": {"name": "f"}}, None, None, {"type": "tool", "name": "f"}),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}}, None, None, {"type": "any"}),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}, None, None, {"type": "auto"}),
    (None, False, None, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, None, {"type": "any", "disable_parallel_tool_use": True}),
    ("none", False, None, {"type": "none"}),
    ("auto", True, None, {"type": "auto"}),
    ("required", None, "high", {"type": "auto"}),
    ({"type": "function", "function": {"name": "f"}}, False, "low",
     {"type": "auto", "disable_parallel_tool_use": True}),
    ("none", None, "high", {"type": "none"}),
], ids=["absent", "auto", "none", "required", "named-mapped", "custom-named", "allowed-required", "allowed-auto",
        "parallel-false-alone", "parallel-false-required", "parallel-false-none", "parallel-true",
        "forced-with-thinking", "named-with-thinking", "none-with-thinking"])
def test_tool_choice(choice, parallel, effort, expected):
    fields = {k: v for k, v in (("tool_choice", choice), ("parallel_tool_calls", parallel),
                                ("reasoning_effort", effort)) if v is not None}
    body = translate([user("go")], tools=[fn("f"), fn("a.b")], **fields)
    assert body.get("tool_choice") == expected
    validate_body(body)


def test_tool_choice_is_omitted_without_tools_and_invalid_values_are_rejected():
    assert "tool_choice" not in translate([user("go")], tool_choice="required", tools=[])
    with pytest.raises(ProxyError) as exc:
        translate([user("go")], tools=[fn("f")], tool_choice="sometimes")
    assert exc.value.status == 400 and exc.value.param == "tool_choice"


def test_history_tool_blocks_without_tools_get_stub_declarations():
    # Codex compaction: tools: [] while the history holds calls and results.
    body = translate([user("go"), assistant(None, [("c1", "exec.command", "{}")]), tool("c1", "ok"),
                      user("summarise")], tools=[], tool_choice="auto", parallel_tool_calls=False)
    assert [t["name"] for t in body["tools"]] == ["exec_command"]
    assert body["tool_choice"] == {"type": "none"}
    validate_body(body)


# ---- content parts ----------------------------------------------------------

@pytest.mark.parametrize(("part", "block"), [
    ({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
     {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}),
    ({"type": "image_url", "image_url": {"url": f"data:;base64,{PNG}"}},
     {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}),
    ({"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG}"}},
     {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}}),
    ({"type": "input_image", "image_url": f"data:image/webp;base64,{PNG}"},
     {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": PNG}}),
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.gif"}},
     {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.gif"}}),
    ({"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "spec.pdf"}},
     {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
      "title": "spec.pdf"}),
    ({"type": "file", "file": {"file_data": PDF, "filename": "raw.PDF"}},
     {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
      "title": "raw.PDF"}),
    ({"type": "file", "file": {"file_data": "data:text/plain;base64,aGVsbG8="}},
     {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}}),
    ({"type": "input_file", "file_url": "https://example.com/a.pdf"},
     {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}),
    ({"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}},
     {"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}),
], ids=["png-data-url", "missing-mime", "jpg-alias", "input-image", "http-url", "pdf", "pdf-raw-base64", "text-file",
        "file-url", "cache-control"])
def test_user_content_parts(part, block):
    body = translate([user([{"type": "text", "text": "see"}, part])])
    assert body["messages"][0]["content"] == [{"type": "text", "text": "see"}, block]
    validate_body(body)


@pytest.mark.parametrize(("part", "needle"), [
    ({"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}, "Audio input is not supported"),
    ({"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}, "image/svg+xml"),
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/x.png"}}, "data: URL or an http(s) URL"),
    ({"type": "image_url", "image_url": {}}, "need an image_url"),
    ({"type": "file", "file": {"file_id": "file-123"}}, "file_id"),
    ({"type": "file", "file": {"file_data": "data:application/zip;base64,UEs="}}, "application/zip"),
    ({"type": "file", "file": {"filename": "x.pdf"}}, "file_data"),
    ({"type": "video", "video": {}}, "unsupported content part type 'video'"),
], ids=["audio", "svg", "ftp", "no-url", "file-id", "zip", "no-data", "unknown-part"])
def test_unsupported_content_is_a_clear_400(part, needle):
    with pytest.raises(ProxyError) as exc:
        translate([user("x"), assistant("y"), user([part])])
    assert exc.value.status == 400
    assert needle in exc.value.message
    assert exc.value.param == "messages[2].content[0]"


def test_unknown_role_is_a_400():
    with pytest.raises(ProxyError) as exc:
        translate([{"role": "function", "name": "f", "content": "x"}])
    assert exc.value.status == 400 and exc.value.param == "messages[0].role"


# ---- reasoning, max_tokens ---------------------------------------------------

@pytest.mark.parametrize(("fields", "model", "thinking"), [
    ({"reasoning_effort": "minimal"}, MODEL, {"type": "enabled", "budget_tokens": 1024}),
    ({"reasoning_effort": "low"}, MODEL, {"type": "enabled", "budget_tokens": 4096}),
    ({"reasoning_effort": "medium"}, MODEL, {"type": "enabled", "budget_tokens": 10000}),
    ({"reasoning_effort": "high"}, MODEL, {"type": "enabled", "budget_tokens": 24000}),
    ({"reasoning_effort": "xhigh"}, MODEL, {"type": "enabled", "budget_tokens": 32000}),
    ({"reasoning_effort": "none"}, MODEL, None),
    ({}, MODEL, None),
    ({"reasoning": {"effort": "low"}}, MODEL, {"type": "enabled", "budget_tokens": 4096}),
    ({"reasoning_effort": "high"}, "claude-3-5-sonnet-20241022", None),
    ({"reasoning_effort": "high"}, "claude-3-7-sonnet-20250219", {"type": "enabled", "budget_tokens": 24000}),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, MODEL, {"type": "enabled", "budget_tokens": 2048}),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048, "display": "omitted"}, "reasoning_effort": "high"},
     MODEL, {"type": "enabled", "budget_tokens": 2048, "display": "omitted"}),
    ({"thinking": {"type": "adaptive"}}, MODEL, {"type": "adaptive"}),
    ({"thinking": {"type": "disabled"}, "reasoning_effort": "high"}, MODEL, None),
], ids=["minimal", "low", "medium", "high", "xhigh", "none", "absent", "reasoning-object", "old-model",
        "claude-3-7", "client-thinking", "client-thinking-wins", "adaptive", "client-disabled"])
def test_reasoning_maps_to_thinking(fields, model, thinking):
    body = translate([user("hi")], model, **fields)
    assert body.get("thinking") == thinking
    if thinking and thinking["type"] == "enabled":
        assert body["max_tokens"] > thinking["budget_tokens"]
    validate_body(body)


@pytest.mark.parametrize("fields", [{"reasoning_effort": "extreme"},
                                    {"thinking": {"type": "enabled", "budget_tokens": "lots"}}])
def test_invalid_reasoning_is_a_400(fields):
    with pytest.raises(ProxyError) as exc:
        translate([user("hi")], **fields)
    assert exc.value.status == 400


@pytest.mark.parametrize(("model", "fields", "max_tokens", "budget"), [
    (MODEL, {}, 64000, None),
    ("claude-opus-4-1-20250805", {}, 32000, None),
    ("claude-opus-4-5-20251101", {}, 64000, None),
    ("claude-haiku-4-5", {}, 64000, None),
    ("claude-sonnet-4@20250514", {}, 64000, None),
    ("claude-3-5-haiku-20241022", {}, 8192, None),
    ("claude-3-opus-20240229", {}, 4096, None),
    ("some-alias", {}, 8192, None),
    (MODEL, {"max_tokens": 500}, 500, None),
    (MODEL, {"max_tokens": 500, "max_completion_tokens": 700}, 700, None),
    (MODEL, {"max_completion_tokens": 1_000_000}, 64000, None),
    ("some-alias", {"max_tokens": 1_000_000}, 128000, None),
    ("some-alias", {"reasoning_effort": "high"}, 24000 + 8192, 24000),
    ("claude-opus-4-1", {"reasoning_effort": "max"}, 32000, 16000),
    (MODEL, {"reasoning_effort": "high", "max_tokens": 10000}, 10000, 5000),
    (MODEL, {"reasoning_effort": "low", "max_tokens": 10000}, 10000, 4096),
    (MODEL, {"reasoning_effort": "high", "max_tokens": 2000}, 2000, None),
], ids=["sonnet-4.5", "opus-4.1", "opus-4.5", "haiku-4.5", "vertex-id", "3.5-haiku", "3-opus", "unknown",
        "client-max-tokens", "max-completion-wins", "clamped-to-model", "clamped-to-cap", "unknown-room-for-thinking",
        "budget-fits-limit", "client-limit-shrinks-budget", "budget-fits", "too-small-for-thinking"])
def test_max_tokens(model, fields, max_tokens, budget):
    body = translate([user("hi")], model, **fields)
    assert body["max_tokens"] == max_tokens
    assert (body.get("thinking") or {}).get("budget_tokens") == budget
    validate_body(body)


@pytest.mark.parametrize("value", [0, -1, "10", 1.5, True])
def test_invalid_max_tokens_is_a_400(value):
    with pytest.raises(ProxyError) as exc:
        translate([user("hi")], max_tokens=value)
    assert exc.value.param == "max_tokens"


@pytest.mark.parametrize(("model", "version", "limit", "thinks"), [
    ("claude-sonnet-4-5-20250929", ("sonnet", 4, 5), 64000, True),
    ("claude-opus-4-20250514", ("opus", 4, 0), 32000, True),
    ("claude-opus-4-1@20250805", ("opus", 4, 1), 32000, True),
    ("anthropic/claude-haiku-4-5", ("haiku", 4, 5), 64000, True),
    ("claude-3-7-sonnet-latest", ("sonnet", 3, 7), 64000, True),
    ("claude-3-5-sonnet-v2@20241022", ("sonnet", 3, 5), 8192, False),
    ("claude-3-haiku-20240307", ("haiku", 3, 0), 4096, False),
    ("gpt-4o", None, None, True),
])
def test_model_facts(model, version, limit, thinks):
    assert model_version(model) == version
    assert output_limit(model) == limit
    assert supports_thinking(model) is thinks


# ---- thinking blocks in history ----------------------------------------------

def test_thinking_blocks_lead_the_assistant_turn_byte_exact():
    redacted = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}
    body = translate([
        user("go"),
        assistant("I will call.", [("c1", "f", "{}")], blocks=[TB, redacted, {"type": "thinking", "thinking": "x"}]),
        tool("c1", "ok"),
    ], tools=[fn("f")], reasoning_effort="low")
    content = body["messages"][1]["content"]
    assert types(body["messages"][1]) == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert content[0] == TB and content[0]["signature"] is SIG
    assert content[1] == redacted
    assert body["thinking"]["type"] == "enabled"


def test_merged_assistant_messages_put_thinking_first():
    # A Responses reasoning item may arrive as its own assistant message before the calls.
    body = translate([user("go"), assistant("Let me look.", blocks=[TB]),
                      assistant(None, [("c1", "f", "{}")]), tool("c1", "ok")],
                     tools=[fn("f")], reasoning_effort="low")
    assert types(body["messages"][1]) == ["thinking", "text", "tool_use"]
    assert "thinking" in body
    validate_body(body)


@pytest.mark.parametrize(("messages", "thinking_on"), [
    ([user("go"), assistant(None, [("c1", "f", "{}")], blocks=[TB]), tool("c1", "ok")], True),
    ([user("go"), assistant(None, [("c1", "f", "{}")]), tool("c1", "ok")], False),
    ([user("go"), assistant(None, [("c1", "f", "{}")], blocks=[{"type": "thinking", "thinking": "unsigned"}]),
      tool("c1", "ok")], False),
    ([user("go"), assistant(None, [("c1", "f", "{}")], blocks=[TB]), tool("c1", "ok"),
      assistant(None, [("c2", "f", "{}")]), tool("c2", "ok")], False),
    ([user("go"), assistant(None, [("c1", "f", "{}")]), tool("c1", "ok"), assistant("Done."), user("next")], True),
    ([user("hi"), assistant("hello"), user("again")], True),
], ids=["signed-last-tool-turn", "unsigned-last-tool-turn", "thinking-without-signature", "only-earlier-turn-signed",
        "tool-loop-closed-by-text", "no-tools"])
def test_thinking_is_turned_off_when_the_last_tool_turn_cannot_replay_it(messages, thinking_on):
    body = translate(messages, tools=[fn("f")], reasoning_effort="medium", temperature=0.2, tool_choice="required")
    assert ("thinking" in body) is thinking_on
    assert ("temperature" in body) is not thinking_on
    assert body["tool_choice"] == ({"type": "auto"} if thinking_on else {"type": "any"})
    if not thinking_on:
        assert not any(b["type"] in ("thinking", "redacted_thinking") for m in body["messages"] for b in m["content"])
    validate_body(body)


def test_thinking_only_assistant_turn_is_dropped():
    body = translate([user("a"), assistant(None, blocks=[TB]), user("b")], reasoning_effort="low")
    assert roles(body) == ["user"]
    assert [b["text"] for b in body["messages"][0]["content"]] == ["a", "b"]
    validate_body(body)


# ---- sampling and other fields ----------------------------------------------

@pytest.mark.parametrize(("fields", "expected"), [
    ({"stop": "END"}, {"stop_sequences": ["END"]}),
    ({"stop": ["a", "", "  ", "b"]}, {"stop_sequences": ["a", "b"]}),
    ({"stop": None}, {}),
    ({"temperature": 1.7}, {"temperature": 1.0}),
    ({"temperature": 0.3, "top_p": 0.9}, {"temperature": 0.3, "top_p": 0.9}),
    ({"top_k": 40}, {"top_k": 40}),
    ({"temperature": 0.3, "top_p": 0.9, "top_k": 5, "reasoning_effort": "low"},
     {"thinking": {"type": "enabled", "budget_tokens": 4096}}),
    ({"user": "user-123"}, {"metadata": {"user_id": "user-123"}}),
    ({"safety_identifier": "hash-9"}, {"metadata": {"user_id": "hash-9"}}),
    ({"stream": True, "stream_options": {"include_usage": True}}, {"stream": True}),
    ({"stream": False}, {}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
     {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}),
    ({"response_format": {"type": "json_object"}}, {"system": [{"type": "text", "text": JSON_ONLY_INSTRUCTION}]}),
    ({"response_format": {"type": "text"}}, {}),
    ({"n": 2, "logprobs": True, "top_logprobs": 2, "seed": 1, "presence_penalty": 1, "frequency_penalty": 1,
      "logit_bias": {"1": 2}, "store": True, "metadata": {"a": "b"}, "service_tier": "flex", "modalities": ["text"],
      "prompt_cache_key": "k", "verbosity": "low", "prediction": {}, "web_search_options": {}}, {}),
], ids=["stop-string", "stop-list-filtered", "stop-none", "temperature-clamped", "sampling-kept", "top-k",
        "sampling-dropped-with-thinking", "user", "safety-identifier", "stream", "no-stream", "json-schema",
        "json-object", "text-format", "openai-only-dropped"])
def test_other_fields(fields, expected):
    body = translate([user("hi")], **fields)
    base = {"model", "max_tokens", "messages"}
    assert {k: v for k, v in body.items() if k not in base} == expected
    validate_body(body)


def test_json_object_instruction_follows_the_client_system_prompt():
    body = translate([{"role": "system", "content": "Be terse."}, user("hi")],
                     response_format={"type": "json_object"})
    assert [b["text"] for b in body["system"]] == ["Be terse.", JSON_ONLY_INSTRUCTION]


def test_non_numeric_sampling_is_a_400():
    with pytest.raises(ProxyError) as exc:
        translate([user("hi")], temperature="hot")
    assert exc.value.param == "temperature"


def test_vertex_body_and_context():
    body, context = chat_to_anthropic({"model": "my-claude", "messages": [user("hi")], "stream": True},
                                      "claude-sonnet-4@20250514", vertex=True)
    assert "model" not in body
    assert body["anthropic_version"] == "vertex-2023-10-16"
    assert body["stream"] is True
    assert (context.model, context.upstream_model, context.stream, context.vertex) == (
        "my-claude", "claude-sonnet-4@20250514", True, True)
    validate_body(body, vertex=True)
    _, context = chat_to_anthropic({"messages": [user("hi")]}, MODEL)
    assert context.model == MODEL


def test_headers():
    assert anthropic_headers("sk-ant-1") == {"anthropic-version": "2023-06-01", "content-type": "application/json",
                                             "x-api-key": "sk-ant-1"}
    assert anthropic_headers(None, {"anthropic-beta": "interleaved-thinking-2025-05-14"}) == {
        "anthropic-version": "2023-06-01", "content-type": "application/json",
        "anthropic-beta": "interleaved-thinking-2025-05-14"}


# ---- non-streaming answers ----------------------------------------------------

USAGE = {"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 1000,
         "output_tokens": 50, "service_tier": "standard"}
CHAT_USAGE = {"prompt_tokens": 1120, "completion_tokens": 50, "total_tokens": 1170,
              "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 20},
              "completion_tokens_details": {"reasoning_tokens": 0}}


def test_answer_with_thinking_text_and_parallel_tools():
    names = ToolNameMap()
    names.to_upstream("mcp.say")
    resp = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "stop_reason": "tool_use",
            "content": [TB, {"type": "redacted_thinking", "data": "REDACTED"},
                        {"type": "text", "text": "Calling "}, {"type": "text", "text": "both."},
                        {"type": "tool_use", "id": "toolu_1", "name": "mcp_say", "input": {"who": "é"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "other", "input": {}}],
            "usage": USAGE}
    out = anthropic_to_chat(resp, ctx(names))
    assert out["id"] == "msg_1" and out["object"] == "chat.completion" and out["model"] == "router-claude"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant", "content": "Calling both.", "reasoning_content": "Plan the call.",
        "thinking_blocks": [TB, {"type": "redacted_thinking", "data": "REDACTED"}],
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "mcp.say", "arguments": '{"who": "é"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "other", "arguments": "{}"}},
        ]}
    assert choice["message"]["thinking_blocks"][0]["signature"] == SIG
    assert out["usage"] == CHAT_USAGE


@pytest.mark.parametrize(("content", "message"), [
    ([{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
     {"role": "assistant", "content": None,
      "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}),
    ([{"type": "text", "text": "hi"}], {"role": "assistant", "content": "hi"}),
    ([], {"role": "assistant", "content": ""}),
    ([{"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
      {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [{"type": "web_search_result"}]},
      {"type": "text", "text": "Found it.", "citations": [{"type": "web_search_result_location", "url": "u"}]}],
     {"role": "assistant", "content": "Found it."}),
], ids=["tools-only", "text-only", "empty", "web-search-folded"])
def test_answer_content_shapes(content, message):
    out = anthropic_to_chat({"id": "msg_2", "content": content, "stop_reason": "end_turn", "usage": {}}, ctx())
    assert out["choices"][0]["message"] == message


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    (None, "stop"), ("something_new", "stop"),
])
def test_finish_reasons(stop_reason, finish):
    out = anthropic_to_chat({"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}, ctx())
    assert out["choices"][0]["finish_reason"] == finish
    assert out["id"].startswith("chatcmpl-")


@pytest.mark.parametrize(("usage", "expected"), [
    (USAGE, CHAT_USAGE),
    ({"input_tokens": 10, "output_tokens": 5}, {
        "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}),
    ({"input_tokens": 10, "output_tokens": 500, "cache_read_input_tokens": None,
      "output_tokens_details": {"thinking_tokens": 300}}, {
        "prompt_tokens": 10, "completion_tokens": 500, "total_tokens": 510,
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 300}}),
    (None, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}),
    ({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 80,
      "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 50}}, {
        "prompt_tokens": 190, "completion_tokens": 5, "total_tokens": 195,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 80, "cache_write_1h_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": 0}}),
    ({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 80,
      "cache_creation": {"ephemeral_5m_input_tokens": 80, "ephemeral_1h_input_tokens": 0}}, {
        "prompt_tokens": 90, "completion_tokens": 5, "total_tokens": 95,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 80},
        "completion_tokens_details": {"reasoning_tokens": 0}}),
], ids=["cache", "plain", "thinking-tokens", "missing", "cache-1h-writes", "cache-5m-writes-only"])
def test_usage(usage, expected):
    out = anthropic_to_chat({"content": [], "usage": usage}, ctx())
    assert out["usage"] == expected


# ---- streaming ---------------------------------------------------------------

# The captured tool stream from providers.md 3.5 (npm @ai-sdk/anthropic fixture), plus a ping and
# a message_start that carries cache counts.
RECORDED_TOOL_STREAM = (
    "event: message_start\n"
    'data: {"type":"message_start","message":{"id":"msg_01K","type":"message","role":"assistant","content":[],'
    '"model":"claude","stop_reason":null,"usage":{"input_tokens":849,"cache_creation_input_tokens":0,'
    '"cache_read_input_tokens":0,"output_tokens":10}}}\n\n'
    "event: content_block_start\n"
    'data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_01K",'
    '"name":"json","input":{}}}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}\n\n'
    "event: ping\n"
    'data: {"type": "ping"}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",'
    '"partial_json":"{\\"elements\\": [1]"}}\n\n'
    "event: content_block_delta\n"
    'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"}"}}\n\n'
    "event: content_block_stop\n"
    'data: {"type":"content_block_stop","index":0}\n\n'
    "event: message_delta\n"
    'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":'
    '{"input_tokens":849,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":47}}\n\n'
    "event: message_stop\n"
    'data: {"type":"message_stop"}\n\n'
)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_recorded_tool_stream(newline):
    parser = SSEParser()
    evs = parser.feed(RECORDED_TOOL_STREAM.replace("\n", newline).encode()) + parser.flush()
    chunks = run_stream(evs)
    assert {c["id"] for c in chunks} == {"msg_01K"}
    assert {c["model"] for c in chunks} == {"router-claude"}
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"tool_calls": [{"index": 0, "id": "toolu_01K", "type": "function",
                         "function": {"name": "json", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"elements": [1]'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 849, "completion_tokens": 47, "total_tokens": 896,
                                   "prompt_tokens_details": {"cached_tokens": 0},
                                   "completion_tokens_details": {"reasoning_tokens": 0}}


THINKING_TOOLS_STREAM = events(
    {"type": "message_start", "message": {"id": "msg_T", "content": [], "usage": {
        "input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 1000, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Plan the "}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "call."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": SIG}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking "}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "both."}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_A",
                                                                  "name": "mcp_say", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"who":'}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '"me"}'}},
    {"type": "content_block_stop", "index": 2},
    {"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_B",
                                                                  "name": "noargs", "input": {}}},
    {"type": "content_block_stop", "index": 3},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 50}},
    {"type": "message_stop"},
)


def test_stream_with_thinking_signature_text_and_parallel_tools():
    names = ToolNameMap()
    names.to_upstream("mcp.say")
    chunks = run_stream(THINKING_TOOLS_STREAM, ctx(names))
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Plan the "},
        {"reasoning_content": "call."},
        {"thinking_blocks": [{"index": 0, **TB}]},
        {"content": "Checking "},
        {"content": "both."},
        {"tool_calls": [{"index": 0, "id": "toolu_A", "type": "function",
                         "function": {"name": "mcp.say", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"who":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"me"}'}}]},
        {"tool_calls": [{"index": 1, "id": "toolu_B", "type": "function",
                         "function": {"name": "noargs", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == CHAT_USAGE
    assert sum(1 for c in chunks if "usage" in c) == 1


def test_stream_and_non_stream_agree():
    """The same answer through both paths gives the same message (the fake builds both)."""
    fake = AnthropicFake()
    turn = Turn([thinking("Plan the call."), redacted_thinking(), text("Checking both."),
                 tool_use("mcp_say", {"who": "me", "n": [1, 2, {"deep": "é"}]}), tool_use("noargs")],
                usage={"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 1000,
                       "output_tokens": 50}, fragment=5)
    message = fake.message(turn, MODEL)
    names = ToolNameMap()
    names.to_upstream("mcp.say")
    completion = anthropic_to_chat(message, ctx(names))
    whole = completion["choices"][0]
    streamed = accumulate(run_stream(events(*fake.events(turn, message)), ctx(names)))
    assert streamed["finish_reason"] == whole["finish_reason"] == "tool_calls"
    unindexed = [{k: v for k, v in b.items() if k != "index"} for b in streamed["message"]["thinking_blocks"]]
    assert unindexed == whole["message"]["thinking_blocks"]
    assert streamed["message"]["reasoning_content"] == whole["message"]["reasoning_content"]
    assert streamed["message"]["content"] == whole["message"]["content"]
    for got, want in zip(streamed["message"]["tool_calls"], whole["message"]["tool_calls"], strict=True):
        assert got["id"] == want["id"] and got["function"]["name"] == want["function"]["name"]
        assert json.loads(got["function"]["arguments"]) == json.loads(want["function"]["arguments"])
    assert streamed["usage"] == completion["usage"] == CHAT_USAGE


def _text_stream(*middle: dict, stop_reason: str = "end_turn") -> list[SSEEvent]:
    return events(
        {"type": "message_start", "message": {"id": "msg_S", "usage": {"input_tokens": 7, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        *middle,
        {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    )


@pytest.mark.parametrize(("stop_reason", "finish"), [("end_turn", "stop"), ("max_tokens", "length"),
                                                     ("refusal", "content_filter"), ("pause_turn", "stop")])
def test_stream_finish_reason(stop_reason, finish):
    chunks = run_stream(_text_stream(stop_reason=stop_reason))
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": finish}


def test_stream_ignores_pings_unknown_events_server_tools_and_citations():
    noise = (
        {"type": "ping"},
        {"type": "some_future_event", "x": 1},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "server_tool_use", "id": "srvtoolu_1",
                                                                      "name": "web_search", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "web_search_tool_result",
                                                                      "tool_use_id": "srvtoolu_1", "content": []}},
        {"type": "content_block_stop", "index": 2},
        {"type": "content_block_start", "index": 3, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 3, "delta": {"type": "citations_delta", "citation": {"url": "u"}}},
        {"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta", "text": " there"}},
        {"type": "content_block_stop", "index": 3},
        {"type": "content_block_delta", "index": 9, "delta": {"type": "text_delta", "text": "no block"}},
    )
    assert deltas(run_stream(_text_stream(*noise))) == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}, {"content": " there"}, {}]


def test_stream_redacted_thinking_block():
    block = {"type": "redacted_thinking", "data": "EmwKAhgB"}
    chunks = run_stream(_text_stream(
        {"type": "content_block_start", "index": 1, "content_block": block},
        {"type": "content_block_stop", "index": 1}))
    assert {"thinking_blocks": [{"index": 0, **block}]} in deltas(chunks)


def test_stream_usage_is_cumulative_and_emitted_once():
    evs = _text_stream()
    evs.insert(-2, events({"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 2,
                                                                                             "input_tokens": None}})[0])
    chunks = run_stream(evs)
    usage = [c["usage"] for c in chunks if "usage" in c]
    assert usage == [{"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]].count("stop") == 1


def test_stream_message_delta_may_repeat_input_counts():
    evs = _text_stream()
    evs[-2] = events({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                      "usage": {"input_tokens": 9, "cache_read_input_tokens": 100, "output_tokens": 4}})[0]
    assert run_stream(evs)[-1]["usage"]["prompt_tokens"] == 109


def test_events_after_message_stop_are_ignored_and_finish_is_quiet():
    stream = AnthropicStream(ctx())
    for ev in _text_stream():
        stream.feed(ev)
    assert stream.feed(events({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})[0]) == []
    assert stream.finish() == []


@pytest.mark.parametrize(("error", "status", "code", "retryable"), [
    ({"type": "overloaded_error", "message": "Overloaded"}, 503, "server_is_overloaded", True),
    ({"type": "rate_limit_error", "message": "slow down"}, 429, "rate_limit_exceeded", True),
    ({"type": "api_error", "message": "Internal server error"}, 502, "server_error", True),
    ({"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}, 400,
     "context_length_exceeded", False),
])
def test_stream_error_event_raises(error, status, code, retryable):
    stream = AnthropicStream(ctx())
    assert stream.feed(_text_stream()[0]) == []  # message_start: nothing goes out before content
    with pytest.raises(ProxyError) as exc:
        stream.feed(SSEEvent("error", json.dumps({"type": "error", "error": error})))
    assert (exc.value.status, exc.value.code, exc.value.retryable) == (status, code, retryable)
    assert exc.value.message.startswith("anthropic upstream error")


@pytest.mark.parametrize("cut", [0, 1, 4, 5])
def test_stream_ending_before_message_stop_is_a_retryable_502(cut):
    stream = AnthropicStream(ctx())
    for ev in _text_stream()[:cut]:
        stream.feed(ev)
    with pytest.raises(ProxyError) as exc:
        stream.finish()
    assert exc.value.status == 502 and exc.value.retryable


def test_stream_invalid_json_is_a_502():
    with pytest.raises(ProxyError) as exc:
        AnthropicStream(ctx()).feed(SSEEvent("message_start", "{not json"))
    assert exc.value.status == 502


# ---- errors ------------------------------------------------------------------

def _anthropic_body(kind: str, message: str, **extra) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message, **extra},
                       "request_id": "req_1"}).encode()


@pytest.mark.parametrize(("status", "body", "headers", "expected"), [
    (529, _anthropic_body("overloaded_error", "Overloaded"), {}, (503, "server_is_overloaded", True, False, None)),
    (429, _anthropic_body("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
     {"Retry-After": "7"}, (429, "rate_limit_exceeded", True, False, 7.0)),
    (429, _anthropic_body("rate_limit_error", "limit", details={"error_code": "enforced_spend_limit_reached"}), {},
     (429, "insufficient_quota", True, True, None)),
    (400, _anthropic_body("invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"), {},
     (400, "context_length_exceeded", False, False, None)),
    (400, _anthropic_body("invalid_request_error", "messages.1.content.0.text: text content blocks must be "
                          "non-empty"), {"x-should-retry": "false"},
     (400, "invalid_request_error", False, False, None)),
    (400, _anthropic_body("invalid_request_error", "Your credit balance is too low to access the Anthropic API."),
     {}, (429, "insufficient_quota", True, True, None)),
    (402, _anthropic_body("billing_error", "Billing issue"), {}, (429, "insufficient_quota", True, True, None)),
    (401, _anthropic_body("authentication_error", "invalid x-api-key"), {},
     (502, "upstream_authentication_error", True, True, None)),
    (403, _anthropic_body("permission_error", "not allowed"), {},
     (502, "upstream_authentication_error", True, True, None)),
    (404, _anthropic_body("not_found_error", "model: claude-nope"), {}, (404, "not_found_error", False, False, None)),
    (500, _anthropic_body("api_error", "Internal server error"), {}, (502, "server_error", True, False, None)),
    (500, _anthropic_body("api_error", "Internal"), {"x-should-retry": "false"}, (502, "server_error", False, False,
                                                                                 None)),
    (504, _anthropic_body("timeout_error", "timeout"), {}, (504, "server_error", True, False, None)),
    (413, b"<html><body><h1>413 Request Entity Too Large</h1></body></html>", {}, (413, None, False, False, None)),
    (502, b"", {}, (502, "server_error", True, False, None)),
    (429, json.dumps([{"error": {"code": 429, "message": "Quota exceeded for aiplatform.googleapis.com/online_"
                                 "prediction_requests_per_base_model", "status": "RESOURCE_EXHAUSTED"}}]).encode(),
     {}, (429, "rate_limit_exceeded", True, False, None)),
    (403, json.dumps({"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}}).encode(),
     {}, (502, "upstream_authentication_error", True, True, None)),
], ids=["overloaded", "rate-limit", "spend-limit", "context", "shape-400", "credit-balance", "billing", "auth",
        "permission", "not-found", "api-error", "no-retry-header", "timeout", "html", "empty", "vertex-quota",
        "vertex-permission"])
def test_anthropic_error(status, body, headers, expected):
    err = anthropic_error(status, body, headers)
    assert (err.status, err.code, err.retryable, err.credential_fault, err.retry_after) == expected
    assert err.message.startswith("anthropic upstream error (")


def test_error_messages_never_carry_secrets():
    err = anthropic_error(401, _anthropic_body("authentication_error", "bad key sk-ant-api03-SECRET_value-1 and "
                                               "Bearer ya29.tokenvalue"), {"x-api-key": "sk-ant-api03-SECRET"})
    assert "SECRET" not in err.message and "ya29.tokenvalue" not in err.message
    assert "[redacted]" in err.message
    assert "SECRET" not in json.dumps(err.to_dict())


def test_error_message_keeps_the_upstream_text():
    err = anthropic_error(400, _anthropic_body("invalid_request_error", "tools.0.name: String should match"), None)
    assert "tools.0.name: String should match" in err.message
    assert err.to_dict()["error"]["type"] == "invalid_request_error"


# ---- round trips through the fake's validator --------------------------------

def _round(fake: AnthropicFake, chat: dict, turn: Turn, names: ToolNameMap | None = None,
           stream: bool = False) -> tuple[dict, dict]:
    """Translate, validate as Anthropic would, answer from the fake, translate back."""
    body, context = chat_to_anthropic(chat, MODEL)
    validate_body(body)
    message = fake.message(turn, MODEL)
    if stream:
        got = accumulate(run_stream(events(*fake.events(turn, message)), context))
        got["message"] = {k: v for k, v in got["message"].items() if v not in ("", [])} | {
            "content": got["message"]["content"] or None}
        return body, got["message"]
    return body, anthropic_to_chat(message, context)["choices"][0]["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_multi_turn_tool_conversation_with_thinking_round_trips(stream):
    fake = AnthropicFake()
    tools = [fn("exec.command", {"type": "object", "properties": {"cmd": {"type": "string"}}}), fn("read_file")]
    chat = {"model": "router-claude", "tools": tools, "reasoning_effort": "high", "tool_choice": "auto",
            "messages": [{"role": "developer", "content": "You are a coding agent."}, user("list and read")]}

    body, reply = _round(fake, chat, Turn([thinking("Two calls at once."), text("Running both."),
                                           tool_use("exec_command", {"cmd": "ls"}),
                                           tool_use("read_file", {"path": "a.txt"})]), stream=stream)
    assert body["thinking"]["budget_tokens"] == 24000
    calls = reply["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["exec.command", "read_file"]

    chat["messages"] += [reply, tool(calls[1]["id"], "file body"), tool(calls[0]["id"], "a.txt")]
    body, reply = _round(fake, chat, Turn([redacted_thinking(), thinking("Need one more."),
                                           tool_use("exec_command", {"cmd": "wc a.txt"})]), stream=stream)
    assert "thinking" in body
    assert body["messages"][1]["content"][0]["signature"] == sign_thinking("Two calls at once.")
    assert [b["tool_use_id"] for b in body["messages"][2]["content"]] == [c["id"] for c in calls]

    chat["messages"] += [reply, tool(reply["tool_calls"][0]["id"], "1 a.txt"), user("thanks, and?")]
    body, reply = _round(fake, chat, Turn([thinking("Wrap up."), text("All done.")]), stream=stream)
    assert "thinking" in body
    assert types(body["messages"][3]) == ["redacted_thinking", "thinking", "tool_use"]
    assert types(body["messages"][4]) == ["tool_result", "text"]
    assert reply["content"] == "All done."

    chat["messages"] += [reply, user("one more thing")]
    body, _ = _round(fake, chat, Turn([text("Sure.")]))
    assert roles(body) == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]


def test_round_trip_after_thinking_was_lost_turns_thinking_off():
    fake = AnthropicFake()
    chat = {"model": "m", "tools": [fn("f")], "reasoning_effort": "low", "messages": [user("go")]}
    _, reply = _round(fake, chat, Turn([thinking("hm"), tool_use("f")]))
    reply.pop("thinking_blocks")  # e.g. a client that drops unknown fields
    chat["messages"] += [reply, tool(reply["tool_calls"][0]["id"], "ok")]
    body, _ = _round(fake, chat, Turn([text("done")]))
    assert "thinking" not in body


@pytest.mark.parametrize(("name", "naive", "chat"), [
    ("empty-text", {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text",
                                                                                            "text": "hi"}]}]},
     {"messages": [user([{"type": "text", "text": ""}, {"type": "text", "text": "hi"}])]}),
    ("assistant-first", {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]},
     {"messages": [assistant("hello"), user("hi")]}),
    ("one-user-message-per-result", {"tools": [{"name": "f", "input_schema": {"type": "object"}}], "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}},
                                          {"type": "tool_use", "id": "b", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "b"}]}]},
     {"tools": [fn("f")], "messages": [user("go"), assistant(None, [("a", "f", "{}"), ("b", "f", "{}")]),
                                       tool("a", "1"), tool("b", "2")]}),
    ("text-before-results", {"tools": [{"name": "f", "input_schema": {"type": "object"}}], "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "text", "text": "note"}, {"type": "tool_result", "tool_use_id": "a"}]}]},
     {"tools": [fn("f")], "messages": [user("go"), assistant(None, [("a", "f", "{}")]), user("note"),
                                       tool("a", "1")]}),
    ("bad-id", {"tools": [{"name": "f", "input_schema": {"type": "object"}}], "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call.1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call.1"}]}]},
     {"tools": [fn("f")], "messages": [user("go"), assistant(None, [("call.1", "f", "{}")]), tool("call.1", "1")]}),
    ("bad-name", {"tools": [{"name": "mcp.say", "input_schema": {"type": "object"}}],
                  "messages": [{"role": "user", "content": "go"}]},
     {"tools": [fn("mcp.say")], "messages": [user("go")]}),
    ("thinking-lost", {"tools": [{"name": "f", "input_schema": {"type": "object"}}],
                       "thinking": {"type": "enabled", "budget_tokens": 2048}, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]}]},
     {"tools": [fn("f")], "reasoning_effort": "low", "messages": [user("go"), assistant(None, [("a", "f", "{}")]),
                                                                  tool("a", "1")]}),
    ("forced-choice-with-thinking", {"tools": [{"name": "f", "input_schema": {"type": "object"}}],
                                     "tool_choice": {"type": "any"},
                                     "thinking": {"type": "enabled", "budget_tokens": 2048},
                                     "messages": [{"role": "user", "content": "go"}]},
     {"tools": [fn("f")], "tool_choice": "required", "reasoning_effort": "low", "messages": [user("go")]}),
    ("budget-over-max-tokens", {"max_tokens": 1000, "thinking": {"type": "enabled", "budget_tokens": 4096},
                                "messages": [{"role": "user", "content": "go"}]},
     {"max_tokens": 1000, "reasoning_effort": "low", "messages": [user("go")]}),
    ("temperature-over-1", {"temperature": 1.5, "messages": [{"role": "user", "content": "go"}]},
     {"temperature": 1.5, "messages": [user("go")]}),
    ("openai-fields", {"n": 1, "seed": 3, "messages": [{"role": "user", "content": "go"}]},
     {"n": 1, "seed": 3, "messages": [user("go")]}),
    ("tools-missing-for-history", {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a"}]}]},
     {"tools": [], "messages": [user("go"), assistant(None, [("a", "f", "{}")]), tool("a", "1")]}),
    ("prefill-whitespace", {"messages": [{"role": "user", "content": "go"},
                                         {"role": "assistant", "content": "Answer: "}]},
     {"messages": [user("go"), assistant("Answer: ")]}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_fake_rejects_naive_shapes_and_accepts_the_translation(name, naive, chat):
    with pytest.raises(InvalidRequest):
        validate_body({"model": MODEL, "max_tokens": 4096, **naive})
    body, _ = chat_to_anthropic({"model": "router-claude", **chat}, MODEL)
    validate_body(body)


CODEX_CAPTURES = [
    "codex_request_turn1.json", "codex_request_turn2_after_tool.json", "codex_request_image_input.json",
    "codex_request_image_tool_output.json", "codex_request_mcp_call_roundtrip.json",
    "codex_request_mcp_namespace_tools.json", "codex_request_resume_second_turn_with_reasoning.json",
    "codex_request_custom_tool_roundtrip.json", "codex_request_tool_search_roundtrip.json",
    "codex_request_compaction.json", "codex_request_model_gpt55_custom_and_tool_search_tools.json",
]


@pytest.mark.parametrize("name", CODEX_CAPTURES)
@pytest.mark.parametrize("vertex", [False, True], ids=["anthropic", "vertex"])
def test_codex_captures_translate_to_valid_requests(name, vertex):
    capture = fixture_body(name)
    chat = responses_to_chat(capture)
    body, context = chat_to_anthropic(chat, "claude-sonnet-4-5", vertex=vertex)
    validate_body(body, vertex=vertex)
    developer = [p["text"] for i in capture["input"] if i.get("role") == "developer" for p in i["content"]]
    assert [b["text"] for b in body["system"]] == developer
    assert body["messages"][0]["role"] == "user"
    assert body["stream"] is True
    declared = {t["name"] for t in body.get("tools", [])}
    client_names = {c["function"]["name"] for m in chat["messages"] for c in m.get("tool_calls", [])}
    used = [b["name"] for m in body["messages"] for b in m["content"] if b["type"] == "tool_use"]
    assert set(used) <= declared
    assert {context.names.to_client(n) for n in used} == client_names


def test_codex_tool_output_image_becomes_a_tool_result_image():
    chat = responses_to_chat(fixture_body("codex_request_image_tool_output.json"))
    body, _ = chat_to_anthropic(chat, MODEL)
    result = body["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "call_img"
    assert [b["type"] for b in result["content"]] == ["image"]
    assert result["content"][0]["source"]["media_type"] == "image/png"


def test_codex_namespaced_tools_keep_their_flat_names():
    chat = responses_to_chat(fixture_body("codex_request_mcp_call_roundtrip.json"))
    body, context = chat_to_anthropic(chat, MODEL)
    use = body["messages"][-2]["content"][0]
    assert use["name"] == "mcp__mini__say_hello_world"
    assert context.names.to_client(use["name"]) == "mcp__mini__say_hello_world"
    assert "multi_agent_v1__spawn_agent" in {t["name"] for t in body["tools"]}
