"""Table tests of the Gemini / Vertex translator (pure functions, no sockets, no Django)."""

from __future__ import annotations

import base64
import json
import random
import struct

import pytest

from proxy.errors import ProxyError
from proxy.sse import SSEParser
from proxy.translators.common import THOUGHT_SEP
from proxy.translators.gemini import (
    DUMMY_SIGNATURE,
    GeminiContext,
    GeminiNameMap,
    GeminiStream,
    call_signatures,
    carry_signatures,
    chat_to_gemini,
    embeddings_to_gemini,
    embeddings_to_vertex,
    finish_reason,
    function_parameters,
    gemini_embeddings_to_openai,
    gemini_error,
    gemini_to_chat,
    gemini_url,
    gemini_usage,
    sanitize_schema,
    thinking_config,
    vertex_embeddings_to_openai,
    vertex_url,
)
from tests.fakes.gemini import GeminiFake, Turn, call, check_schema, sse_frames, text, thought, usage_metadata
from tests.fixtures import CODEX_FIXTURES as FIXTURES

MODEL = "gemini-3-pro-preview"


@pytest.fixture(autouse=True)
def _close_thread_connections():
    """Overrides the shared conftest's DB teardown: these tests are pure and run without Django."""
    yield


# ---- helpers ------------------------------------------------------------------------

def codex_body(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())["body"]


def codex_tools(body: dict) -> list[dict]:
    """Codex's Responses tools as canonical Chat tools (namespaces flattened, non-function tools dropped)."""
    out = []
    for tool in body.get("tools") or []:
        members = tool["tools"] if tool.get("type") == "namespace" else [tool]
        for t in members:
            if t.get("type") == "function":
                out.append({"type": "function", "function": {"name": t["name"], "description": t.get("description"),
                                                             "parameters": t.get("parameters")}})
    return out


def codex_messages(body: dict) -> list[dict]:
    """A minimal Responses input -> Chat messages conversion, enough for the captured requests."""
    messages: list[dict] = []
    for item in body["input"]:
        kind = item.get("type", "message")
        if kind == "message":
            parts = [{"type": "text", "text": p["text"]} if "text" in p else
                     {"type": "image_url", "image_url": {"url": p["image_url"]}} for p in item["content"]]
            messages.append({"role": item["role"], "content": parts})
        elif kind == "function_call":
            tc = {"id": item["call_id"], "type": "function",
                  "function": {"name": item["name"], "arguments": item["arguments"]}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1]["tool_calls"].append(tc)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [tc]})
        elif kind == "function_call_output":
            output = item["output"]
            if isinstance(output, list):
                output = [{"type": "text", "text": p["text"]} if p["type"] == "input_text" else
                          {"type": "image_url", "image_url": {"url": p["image_url"]}} for p in output]
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    return messages


def to_gemini(messages: list[dict], model: str = MODEL, **extra) -> dict:
    return chat_to_gemini({"model": "client-model", "messages": messages, **extra}, model)[0]


def ctx_for(body: dict | None = None, model: str = MODEL) -> GeminiContext:
    return chat_to_gemini(body or {"model": "client-model", "messages": [{"role": "user", "content": "x"}]}, model)[1]


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content=None, calls: list[dict] | None = None) -> dict:
    msg: dict = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = calls
    return msg


def tc(call_id: str, name: str = "f", arguments: str = "{}", **extra) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}, **extra}


def tool(call_id: str, content) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def run_stream(chunks: list[dict] | list[str], ctx: GeminiContext | None = None, seed: int = 0) -> list[dict]:
    """CRLF-framed bytes, cut at random places, through SSEParser and GeminiStream."""
    frames = chunks if chunks and isinstance(chunks[0], str) else sse_frames(chunks)
    raw = "".join(f for f in frames if isinstance(f, str)).encode()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), min(12, len(raw) - 1)))
    stream, parser, out = GeminiStream(ctx or ctx_for()), SSEParser(), []
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        for ev in parser.feed(raw[a:b]):
            out += stream.feed(ev)
    for ev in parser.flush():
        out += stream.feed(ev)
    return out + stream.finish()


def deltas(chunks: list[dict]) -> list[dict]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def assemble(chunks: list[dict]) -> dict:
    """Canonical chunks -> the assistant message a Chat client would keep."""
    text_, calls = "", {}
    for d in deltas(chunks):
        text_ += d.get("content") or ""
        for c in d.get("tool_calls") or []:
            slot = calls.setdefault(c["index"], {"id": c.get("id"), "type": "function",
                                                 "function": {"name": c["function"].get("name"), "arguments": ""}})
            slot["function"]["arguments"] += c["function"].get("arguments") or ""
    return assistant(text_ or None, [calls[i] for i in sorted(calls)])


# ---- request: messages -----------------------------------------------------------------

def test_every_system_and_developer_message_is_kept_in_order():
    out = to_gemini([
        {"role": "system", "content": "one"},
        user("hi"),
        {"role": "developer", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "three"}]},
        {"role": "system", "content": ""},
    ])
    assert out["systemInstruction"] == {"parts": [{"text": "one"}, {"text": "two"}, {"text": "three"}]}
    assert out["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_no_system_instruction_without_system_messages():
    assert "systemInstruction" not in to_gemini([user("hi")])


@pytest.mark.parametrize(("messages", "expected"), [
    ([user("a"), user("b")], [("user", 2)]),
    ([user("a"), assistant("b"), assistant("c"), user("d")], [("user", 1), ("model", 2), ("user", 1)]),
    ([user("a"), assistant(""), user("b")], [("user", 2)]),
    ([user(""), user([{"type": "text", "text": ""}]), user("x")], [("user", 1)]),
    ([assistant("hello"), user("x")], [("model", 1), ("user", 1)]),
])
def test_roles_are_always_set_and_same_role_turns_merge(messages, expected):
    contents = to_gemini(messages)["contents"]
    assert [(c["role"], len(c["parts"])) for c in contents] == expected


@pytest.mark.parametrize(("part", "expected"), [
    ({"type": "text", "text": "hi"}, {"text": "hi"}),
    ({"type": "input_text", "text": "hi"}, {"text": "hi"}),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
     {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}),
    ({"type": "image_url", "image_url": {"url": "data:;base64,AAAA"}},
     {"inlineData": {"mimeType": "image/jpeg", "data": "AAAA"}}),
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png?size=2", "detail": "high"}},
     {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png?size=2"}}),
    ({"type": "image_url", "image_url": {"url": "https://example.com/photo"}},
     {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photo"}}),
    ({"type": "image_url", "image_url": {"url": "gs://bucket/a.webp"}},
     {"fileData": {"mimeType": "image/webp", "fileUri": "gs://bucket/a.webp"}}),
    ({"type": "input_image", "image_url": "data:image/gif;base64,R0lG"},
     {"inlineData": {"mimeType": "image/gif", "data": "R0lG"}}),
    ({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
     {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}),
    ({"type": "file", "file": {"file_data": "JVBERi0=", "filename": "report.pdf"}},
     {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}),
    ({"type": "file", "file": {"file_data": "aGk=", "filename": "notes.txt"}},
     {"inlineData": {"mimeType": "text/plain", "data": "aGk="}}),
    ({"type": "file", "file": {"file_id": "files/abc123"}},
     {"fileData": {"mimeType": "application/pdf", "fileUri": "files/abc123"}}),
    ({"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
     {"inlineData": {"mimeType": "audio/wav", "data": "UklG"}}),
    ({"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}},
     {"inlineData": {"mimeType": "audio/mp3", "data": "SUQz"}}),
])
def test_user_content_parts(part, expected):
    contents = to_gemini([user([part, {"type": "text", "text": "tail"}])])["contents"]
    assert contents[0]["parts"] == [expected, {"text": "tail"}]


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
    {"type": "file", "file": {"file_id": "file-abc"}},
    {"type": "video", "video": {}},
])
def test_unsupported_user_parts_are_a_400_naming_the_part(part):
    with pytest.raises(ProxyError) as err:
        to_gemini([user([{"type": "text", "text": "x"}, part])])
    assert err.value.status == 400
    assert err.value.param == "messages[0].content[1]"


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "function", "content": "x"}], "messages[0].role"),
    ([user("x"), tool("call_missing", "out")], "messages[1].tool_call_id"),
    ([{"role": "system", "content": "only system"}], "messages"),
    ([], "messages"),
])
def test_invalid_conversations_are_a_400(messages, param):
    with pytest.raises(ProxyError) as err:
        to_gemini(messages)
    assert (err.value.status, err.value.param) == (400, param)


def test_assistant_text_comes_before_function_calls_and_arguments_are_objects():
    out = to_gemini([
        user("go"),
        assistant("Let me look.", [tc("call_1", "read", '{"path": "a.txt"}'), tc("call_2", "bad", "{not json"),
                                   tc("call_3", "arr", "[1, 2]"), tc("call_4", "empty", "")]),
        tool("call_1", "A"), tool("call_2", "B"), tool("call_3", "C"), tool("call_4", "D"),
    ])
    model = out["contents"][1]
    assert model["role"] == "model"
    assert model["parts"][0] == {"text": "Let me look."}
    assert [p["functionCall"] for p in model["parts"][1:]] == [
        {"name": "read", "args": {"path": "a.txt"}}, {"name": "bad", "args": {}},
        {"name": "arr", "args": {"value": [1, 2]}}, {"name": "empty", "args": {}},
    ]
    assert all("id" not in p["functionCall"] for p in model["parts"][1:])


def test_reasoning_content_and_thinking_blocks_are_not_sent_back():
    msg = assistant("answer")
    msg["reasoning_content"] = "private thoughts"
    msg["thinking_blocks"] = [{"type": "thinking", "thinking": "x", "signature": "anthropic-sig"}]
    out = to_gemini([user("q"), msg, user("next")])
    assert out["contents"][1] == {"role": "model", "parts": [{"text": "answer"}]}


def _model_parts(calls: list[dict], content=None, replace: bool = False) -> list[dict]:
    messages = [user("q"), assistant(content, calls), *[tool(c["id"], "ok") for c in calls]]
    body, _ = chat_to_gemini({"messages": messages}, MODEL, replace_signatures=replace)
    return body["contents"][1]["parts"]


@pytest.mark.parametrize(("calls", "content", "replace", "expected"), [
    # carrier on the id -> back on the call part it came from
    ([tc("call_a__thought__SIG+/=")], None, False, [{"sig": "SIG+/="}]),
    # Google's OpenAI-compat spelling
    ([tc("call_a", extra_content={"google": {"thought_signature": "XC"}})], None, False, [{"sig": "XC"}]),
    # the id carrier wins over extra_content
    ([tc("call_a__thought__ID", extra_content={"google": {"thought_signature": "XC"}})], None, False,
     [{"sig": "ID"}]),
    # no signature at all -> the documented dummy, on the first call only
    ([tc("call_a"), tc("call_b")], None, False, [{"sig": DUMMY_SIGNATURE}, {"sig": None}]),
    # parallel calls: only the first was signed; nothing invented for the second
    ([tc("call_a__thought__S1"), tc("call_b")], None, False, [{"sig": "S1"}, {"sig": None}]),
    # a signature on a later call is kept, the unsigned first one gets the dummy
    ([tc("call_a"), tc("call_b__thought__S2")], None, False, [{"sig": DUMMY_SIGNATURE}, {"sig": "S2"}]),
    # text-part signature rides behind the call's: restored on the text part
    ([tc(carry_signatures("call_a", "CS", "TS"))], "Checking.", False, [{"text_sig": "TS"}, {"sig": "CS"}]),
    ([tc(carry_signatures("call_a", None, "TS"))], "Checking.", False, [{"text_sig": "TS"}, {"sig": DUMMY_SIGNATURE}]),
    # no text to put it on: dropped (an empty text part would be rejected)
    ([tc(carry_signatures("call_a", "CS", "TS"))], None, False, [{"sig": "CS"}]),
    # the one-time retry after "invalid thought signature": dummy only
    ([tc(carry_signatures("call_a", "CS", "TS")), tc("call_b__thought__X")], "Checking.", True,
     [{"text_sig": None}, {"sig": DUMMY_SIGNATURE}, {"sig": None}]),
])
def test_thought_signatures_are_restored_where_they_were_received(calls, content, replace, expected):
    parts = _model_parts(calls, content, replace)
    got = [{"text_sig": p.get("thoughtSignature")} if "text" in p else {"sig": p.get("thoughtSignature")}
           for p in parts]
    assert got == expected


def test_every_model_turn_gets_the_dummy_when_its_first_call_is_unsigned():
    out = to_gemini([user("q"), assistant(None, [tc("c1")]), tool("c1", "1"),
                     assistant(None, [tc("c2__thought__S")]), tool("c2", "2"),
                     assistant(None, [tc("c3", "g"), tc("c4", "h")]), tool("c3", "3"), tool("c4", "4")])
    firsts = [next(p for p in c["parts"] if "functionCall" in p) for c in out["contents"] if c["role"] == "model"]
    assert [p["thoughtSignature"] for p in firsts] == [DUMMY_SIGNATURE, "S", DUMMY_SIGNATURE]


@pytest.mark.parametrize(("content", "response"), [
    ('{"exit_code": 0, "stdout": "hi"}', {"exit_code": 0, "stdout": "hi"}),
    ("[1, 2]", {"output": "[1, 2]"}),
    ('"quoted"', {"output": '"quoted"'}),
    ("plain text", {"output": "plain text"}),
    ("", {"output": ""}),
    ([{"type": "text", "text": "part one "}, {"type": "text", "text": "two"}], {"output": "part one two"}),
])
def test_tool_results_become_function_responses(content, response):
    out = to_gemini([user("q"), assistant(None, [tc("call_1", "run")]), tool("call_1", content)])
    assert out["contents"][2] == {"role": "user", "parts": [{"functionResponse": {"name": "run",
                                                                                   "response": response}}]}


def test_parallel_results_are_one_user_content_in_call_order_then_user_text():
    out = to_gemini([
        user("q"),
        assistant(None, [tc("c_a__thought__SIG", "alpha"), tc("c_b", "beta"), tc("c_c", "gamma")]),
        tool("c_c", "3"), tool("c_a__thought__SIG", "1"), tool("c_b", "2"),
        user("and now?"),
    ])
    assert len(out["contents"]) == 3
    parts = out["contents"][2]["parts"]
    assert [p.get("functionResponse", {}).get("name") for p in parts] == ["alpha", "beta", "gamma", None]
    assert [p["functionResponse"]["response"]["output"] for p in parts[:3]] == ["1", "2", "3"]
    assert parts[3] == {"text": "and now?"}


def test_call_ids_reused_across_turns_resolve_to_the_latest_call():
    out = to_gemini([user("q"), assistant(None, [tc("call_1", "first")]), tool("call_1", "a"),
                     assistant(None, [tc("call_2", "x"), tc("call_1", "second")]),
                     tool("call_1", "c"), tool("call_2", "b")])
    assert [p["functionResponse"]["name"] for p in out["contents"][4]["parts"]] == ["x", "second"]
    assert out["contents"][2]["parts"][0]["functionResponse"]["name"] == "first"


def test_images_in_tool_results_follow_the_function_responses():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}
    out = to_gemini([user("q"), assistant(None, [tc("c1", "view"), tc("c2", "cat")]),
                     tool("c1", [image]), tool("c2", "txt")])
    parts = out["contents"][2]["parts"]
    assert [next(iter(p)) for p in parts] == ["functionResponse", "functionResponse", "inlineData"]


def test_function_names_in_history_use_the_same_mapping_as_declarations():
    body = {"messages": [user("q"), assistant(None, [tc("c1", "9lives")]), tool("c1", "ok")],
            "tools": [{"type": "function", "function": {"name": "9lives", "parameters": {}}}]}
    out, ctx = chat_to_gemini(body, MODEL)
    mapped = out["tools"][0]["functionDeclarations"][0]["name"]
    assert mapped == "_9lives"
    assert out["contents"][1]["parts"][0]["functionCall"]["name"] == mapped
    assert out["contents"][2]["parts"][0]["functionResponse"]["name"] == mapped
    assert ctx.names.to_client(mapped) == "9lives"


# ---- request: names, tools, tool_choice ---------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("get_weather", "get_weather"),
    ("multi_agent_v1.wait_agent", "multi_agent_v1.wait_agent"),
    ("ns:tool-x", "ns:tool-x"),
    ("_private", "_private"),
    ("9lives", "_9lives"),
    ("-dash", "_-dash"),
    ("say hello/world", "say_hello_world"),
    ("x" * 128, "x" * 128),
])
def test_tool_names_follow_gemini_rules(name, expected):
    names = GeminiNameMap()
    assert names.to_upstream(name) == expected
    assert names.to_client(expected) == name


def test_tool_name_collisions_and_long_names_stay_distinct_and_valid():
    names = GeminiNameMap()
    a, b = names.to_upstream("a b"), names.to_upstream("a_b")
    long_name = names.to_upstream("é" * 200)
    assert a == "a_b" and b != a and b.startswith("a_b_")
    assert len(long_name) <= 128 and long_name[0] == "_"
    assert {names.to_client(a), names.to_client(b)} == {"a b", "a_b"}
    assert names.to_upstream("a b") == a


def _fn(name: str, params=None, description: str | None = "d") -> dict:
    fn: dict = {"name": name, "parameters": params}
    if description:
        fn["description"] = description
    return {"type": "function", "function": fn}


def test_tools_become_function_declarations_and_web_search_google_search():
    body = {"messages": [user("q")], "tools": [
        _fn("lookup", {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}),
        _fn("ping", {"type": "object", "properties": {}, "additionalProperties": False}, description=None),
        _fn("noargs", None),
        {"type": "web_search"},
        {"type": "custom", "custom": {"name": "apply_patch"}},
    ]}
    out, _ = chat_to_gemini(body, MODEL)
    assert out["tools"] == [
        {"functionDeclarations": [
            {"name": "lookup", "description": "d",
             "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}},
            {"name": "ping"},
            {"name": "noargs", "description": "d"},
        ]},
        {"googleSearch": {}},
    ]


def test_web_search_alone_has_no_tool_config():
    out = to_gemini([user("q")], tools=[{"type": "web_search"}], tool_choice="auto")
    assert out["tools"] == [{"googleSearch": {}}]
    assert "toolConfig" not in out


@pytest.mark.parametrize(("choice", "config", "declared"), [
    (None, None, ["a", "b"]),
    ("auto", {"mode": "AUTO"}, ["a", "b"]),
    ("none", {"mode": "NONE"}, ["a", "b"]),
    ("required", {"mode": "ANY"}, ["a", "b"]),
    ({"type": "function", "function": {"name": "b"}}, {"mode": "ANY", "allowedFunctionNames": ["b"]}, ["a", "b"]),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "a"}}]}}, {"mode": "ANY", "allowedFunctionNames": ["a"]},
     ["a", "b"]),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
        {"type": "function", "function": {"name": "b"}}]}}, {"mode": "AUTO"}, ["b"]),
])
def test_tool_choice_maps_to_function_calling_config(choice, config, declared):
    body = {"messages": [user("q")], "tools": [_fn("a", {"properties": {"x": {"type": "string"}}}), _fn("b")]}
    if choice is not None:
        body["tool_choice"] = choice
    out, _ = chat_to_gemini(body, MODEL)
    assert out.get("toolConfig") == ({"functionCallingConfig": config} if config else None)
    assert [d["name"] for d in out["tools"][0]["functionDeclarations"]] == declared


def test_tool_choice_without_tools_is_dropped():
    out = to_gemini([user("q")], tool_choice="required")
    assert "tools" not in out and "toolConfig" not in out


# ---- schema sanitizing ------------------------------------------------------------------------

@pytest.mark.parametrize(("schema", "expected"), [
    ({"type": "string", "$schema": "http://json-schema.org/draft-07/schema#", "title": "T", "default": "x",
      "examples": ["a"], "$id": "i", "$comment": "c", "deprecated": True, "readOnly": True},
     {"type": "string"}),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False,
      "propertyNames": {"pattern": "x"}, "patternProperties": {"x": {}}, "unevaluatedProperties": False},
     {"type": "object", "properties": {"a": {"type": "string"}}}),
    ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
    ({"type": ["integer", "string"]}, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    ({"type": "null"}, {"nullable": True}),
    ({"anyOf": [{"type": "string", "description": "inner"}, {"type": "null"}], "description": "outer"},
     {"type": "string", "description": "outer", "nullable": True}),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, {"anyOf": [{"type": "string"}, {"type": "integer"}]}),
    ({"anyOf": [{"type": "object", "properties": {"a": {"type": "string", "additionalProperties": 1}}},
                {"type": "boolean"}]},
     {"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "boolean"}]}),
    ({"const": "fixed"}, {"type": "string", "enum": ["fixed"]}),
    ({"const": 3, "description": "n"}, {"description": "n\nAllowed values: 3"}),
    ({"type": "integer", "enum": [1, 2]}, {"type": "integer", "description": "Allowed values: 1, 2"}),
    ({"type": "string", "enum": ["a", "", None]}, {"type": "string", "enum": ["a"], "nullable": True}),
    ({"enum": ["x", "y"]}, {"type": "string", "enum": ["x", "y"]}),
    ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 10}, {"type": "number", "minimum": 0,
                                                                          "maximum": 10}),
    ({"type": "number", "minimum": 1, "exclusiveMinimum": 0}, {"type": "number", "minimum": 1}),
    ({"type": "number", "exclusiveMinimum": True, "minimum": 0}, {"type": "number", "minimum": 0}),
    ({"type": "string", "format": "uri"}, {"type": "string"}),
    ({"type": "string", "format": "date-time"}, {"type": "string", "format": "date-time"}),
    ({"type": "integer", "format": "int64"}, {"type": "integer"}),
    ({"type": "array"}, {"type": "array", "items": {"type": "string"}}),
    ({"type": "array", "items": [{"type": "integer"}, {"type": "string"}], "minItems": 1, "uniqueItems": True},
     {"type": "array", "items": {"type": "integer"}, "minItems": 1}),
    ({"items": {"type": "string"}}, {"type": "array", "items": {"type": "string"}}),
    ({"properties": {"a": {"type": "string"}}, "required": ["a", "ghost"]},
     {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
    ({"type": "object", "properties": {}, "required": []}, {"type": "object"}),
    ({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
      "propertyOrdering": ["b", "a"]},
     {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
      "propertyOrdering": ["b", "a"]}),
    ({"type": "string", "pattern": "^a", "minLength": 1, "maxLength": 9, "description": "s"},
     {"type": "string", "pattern": "^a", "minLength": 1, "maxLength": 9, "description": "s"}),
    ({"type": "STRING"}, {"type": "string"}),
    ({"description": 5, "type": "boolean"}, {"type": "boolean"}),
    (True, {}),
])
def test_sanitize_schema_rules(schema, expected):
    assert sanitize_schema(schema) == expected


def test_sanitize_schema_inlines_refs_and_stops_on_recursion():
    schema = {
        "type": "object",
        "$defs": {"Node": {"type": "object", "properties": {"name": {"type": "string"},
                                                            "child": {"$ref": "#/$defs/Node"}}},
                  "Color": {"enum": ["red", "blue"]}},
        "definitions": {"Legacy": {"type": "integer"}},
        "properties": {"root": {"$ref": "#/$defs/Node", "description": "the root"},
                       "color": {"$ref": "#/$defs/Color"},
                       "old": {"$ref": "#/definitions/Legacy"},
                       "lost": {"$ref": "#/$defs/Nope"}},
    }
    out = sanitize_schema(schema)
    assert out["properties"]["root"]["description"] == "the root"
    assert out["properties"]["root"]["properties"]["name"] == {"type": "string"}
    assert out["properties"]["root"]["properties"]["child"] == {"type": "object"}
    assert out["properties"]["color"] == {"type": "string", "enum": ["red", "blue"]}
    assert out["properties"]["old"] == {"type": "integer"}
    assert out["properties"]["lost"] == {"type": "object"}
    assert "$defs" not in json.dumps(out) and "$ref" not in json.dumps(out)


def test_sanitize_schema_merges_all_of_members_including_refs():
    schema = {"$defs": {"B": {"properties": {"b": {"type": "integer"}}}},
              "allOf": [{"properties": {"a": {"type": "string"}}}, {"required": ["a", "b"]}, {"$ref": "#/$defs/B"}],
              "description": "merged"}
    assert sanitize_schema(schema) == {
        "type": "object", "description": "merged", "required": ["a", "b"],
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
    }


@pytest.mark.parametrize(("schema", "expected"), [
    (None, None),
    ({}, None),
    ({"type": "object", "properties": {}}, None),
    ({"properties": {"a": {"type": "string"}}}, {"type": "object", "properties": {"a": {"type": "string"}}}),
])
def test_function_parameters_omit_empty_objects(schema, expected):
    assert function_parameters(schema) == expected


def _all_codex_tools() -> list[dict]:
    tools: dict[str, dict] = {}
    for path in sorted(FIXTURES.glob("codex_request_*.json")):
        for t in codex_tools(codex_body(path.name)):
            tools[t["function"]["name"]] = t
    return list(tools.values())


@pytest.mark.parametrize("tool_def", _all_codex_tools(), ids=lambda t: t["function"]["name"])
def test_codex_tool_schemas_pass_the_fake_gemini_schema_rules(tool_def):
    params = function_parameters(tool_def["function"]["parameters"])
    errors: list[str] = []
    if params is not None:
        check_schema(params, "parameters", errors)
    assert errors == []
    assert "additionalProperties" not in json.dumps(params)


# ---- request: generation config and thinking ------------------------------------------------

@pytest.mark.parametrize(("extra", "expected"), [
    ({}, None),
    ({"max_tokens": 50}, {"maxOutputTokens": 50}),
    ({"max_completion_tokens": 70, "max_tokens": 50}, {"maxOutputTokens": 70}),
    ({"temperature": 0, "top_p": 0.5, "seed": 7}, {"temperature": 0, "topP": 0.5, "seed": 7}),
    ({"presence_penalty": 0.1, "frequency_penalty": -0.2}, {"presencePenalty": 0.1, "frequencyPenalty": -0.2}),
    ({"stop": "END"}, {"stopSequences": ["END"]}),
    ({"stop": ["a", "b"]}, {"stopSequences": ["a", "b"]}),
    ({"n": 1}, None),
    ({"n": 3}, {"candidateCount": 3}),
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "out", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": ["string", "null"]}}, "required": ["a"],
        "additionalProperties": False}}}},
     {"responseMimeType": "application/json", "responseSchema": {
         "type": "object", "properties": {"a": {"type": "string", "nullable": True}}, "required": ["a"]}}),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"}}}},
     {"responseMimeType": "application/json"}),
    ({"user": "u1", "metadata": {"a": "b"}, "store": False, "parallel_tool_calls": False,
      "stream_options": {"include_usage": True}, "logit_bias": {"1": 2}}, None),
])
def test_generation_config(extra, expected):
    assert to_gemini([user("q")], **extra).get("generationConfig") == expected


def test_n_above_one_cannot_stream():
    with pytest.raises(ProxyError) as err:
        to_gemini([user("q")], n=2, stream=True)
    assert (err.value.status, err.value.param) == (400, "n")


@pytest.mark.parametrize(("effort", "model", "expected"), [
    (None, "gemini-2.5-flash", None),
    ("high", "gemini-2.0-flash", None),
    ("high", "gemini-flash-latest", None),
    ("bogus", "gemini-2.5-flash", None),
    ("none", "gemini-2.5-flash", {"thinkingBudget": 0}),
    ("none", "gemini-2.5-flash-lite", {"thinkingBudget": 0}),
    ("none", "gemini-2.5-pro", {"thinkingBudget": 128}),
    ("minimal", "gemini-2.5-flash", {"thinkingBudget": 512, "includeThoughts": True}),
    ("low", "gemini-2.5-flash", {"thinkingBudget": 1024, "includeThoughts": True}),
    ("medium", "gemini-2.5-pro", {"thinkingBudget": 8192, "includeThoughts": True}),
    ("high", "models/gemini-2.5-pro", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("xhigh", "gemini-2.5-flash", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("none", "gemini-3-flash-preview", {"thinkingLevel": "MINIMAL"}),
    ("minimal", "gemini-3-flash-preview", {"thinkingLevel": "MINIMAL", "includeThoughts": True}),
    ("low", "gemini-3-flash-preview", {"thinkingLevel": "LOW", "includeThoughts": True}),
    ("medium", "gemini-3-flash-preview", {"thinkingLevel": "MEDIUM", "includeThoughts": True}),
    ("high", "gemini-3-flash-preview", {"thinkingLevel": "HIGH", "includeThoughts": True}),
    ("none", "gemini-3-pro-preview", {"thinkingLevel": "LOW"}),
    ("low", "gemini-3-pro-preview", {"thinkingLevel": "LOW", "includeThoughts": True}),
    ("medium", "gemini-3.1-pro-preview", {"thinkingLevel": "HIGH", "includeThoughts": True}),
    ("max", "gemini-3-pro-preview", {"thinkingLevel": "HIGH", "includeThoughts": True}),
])
def test_reasoning_effort_to_thinking_config(effort, model, expected):
    assert thinking_config(effort, model) == expected
    body, ctx = chat_to_gemini({"messages": [user("q")], "reasoning_effort": effort}, model)
    assert (body.get("generationConfig") or {}).get("thinkingConfig") == expected
    assert ctx.include_thoughts == bool(expected and expected.get("includeThoughts"))


def test_context_keeps_client_and_upstream_model_names():
    _, ctx = chat_to_gemini({"model": "my-alias", "messages": [user("q")]}, "gemini-2.5-flash")
    assert (ctx.model, ctx.upstream_model) == ("my-alias", "gemini-2.5-flash")
    _, ctx = chat_to_gemini({"messages": [user("q")]}, "gemini-2.5-flash")
    assert ctx.model == "gemini-2.5-flash"


# ---- request: whole Codex requests pass the fake's validator -------------------------------

@pytest.mark.parametrize("name", [
    "codex_request_turn1.json", "codex_request_turn2_after_tool.json", "codex_request_image_input.json",
    "codex_request_image_tool_output.json", "codex_request_mcp_call_roundtrip.json",
    "codex_request_compaction.json",
])
@pytest.mark.parametrize("vertex", [False, True])
def test_codex_requests_translate_to_valid_gemini_requests(name, vertex):
    body = codex_body(name)
    chat = {"model": body["model"], "messages": codex_messages(body), "tools": codex_tools(body),
            "tool_choice": body.get("tool_choice")}
    out, _ = chat_to_gemini(chat, MODEL)
    assert GeminiFake().validate(out, vertex=vertex) == []
    assert out["systemInstruction"]["parts"][0]["text"].startswith("You are a coding agent")


def test_codex_tool_roundtrip_gets_the_dummy_signature_and_one_response():
    body = codex_body("codex_request_turn2_after_tool.json")
    out, _ = chat_to_gemini({"messages": codex_messages(body), "tools": codex_tools(body)}, MODEL)
    model, responses = out["contents"][-2], out["contents"][-1]
    assert model["parts"] == [{"functionCall": {"name": "exec_command", "args": {"cmd": "echo hello-from-tool"}},
                               "thoughtSignature": DUMMY_SIGNATURE}]
    assert responses["parts"][0]["functionResponse"]["response"]["output"].endswith("hello-from-tool\n")


def test_codex_view_image_output_reaches_gemini_as_inline_data():
    body = codex_body("codex_request_image_tool_output.json")
    out, _ = chat_to_gemini({"messages": codex_messages(body), "tools": codex_tools(body)}, MODEL)
    last = out["contents"][-1]["parts"]
    assert last[0]["functionResponse"] == {"name": "view_image", "response": {"output": ""}}
    assert last[1]["inlineData"]["mimeType"] == "image/png"


# ---- response (non-streaming) ---------------------------------------------------------------

def _resp(parts: list[dict] | None, finish: str | None = "STOP", usage: dict | None = None, **extra) -> dict:
    candidate: dict = {"content": {"role": "model", **({"parts": parts} if parts is not None else {})}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    resp: dict = {"candidates": [candidate], "responseId": "rid1", "modelVersion": "gemini-x", **extra}
    if usage:
        resp["usageMetadata"] = usage
    return resp


def test_text_and_thoughts_map_to_content_and_reasoning():
    out = gemini_to_chat(_resp([thought("hmm "), thought("ok"), text("Hello"), text(" world")],
                               usage=usage_metadata(7, 3, thoughts=11)), ctx_for())
    assert out["object"] == "chat.completion" and out["model"] == "client-model"
    assert out["id"] == "chatcmpl-rid1"
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello world", "reasoning_content": "hmm ok"}
    assert choice["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 14
    assert out["usage"]["completion_tokens_details"] == {"reasoning_tokens": 11}


def test_function_calls_map_to_tool_calls_with_carried_signatures():
    body = {"messages": [user("q")], "tools": [_fn("9lives", {"properties": {"x": {"type": "string"}}})]}
    ctx = chat_to_gemini(body, MODEL)[1]
    parts = [text("Checking", ), {**text(""), "thoughtSignature": "TEXTSIG"},
             {"functionCall": {"name": "_9lives", "args": {"x": "é"}}, "thoughtSignature": "SIG+/="},
             {"functionCall": {"name": "other", "id": "given-id"}}]
    message = gemini_to_chat(_resp(parts), ctx)["choices"][0]["message"]
    first, second = message["tool_calls"]
    base, call_sig, text_sig = call_signatures(first["id"])
    assert base.startswith("call_") and len(base) == 29
    assert (call_sig, text_sig) == ("SIG+/=", "TEXTSIG")
    assert first["function"] == {"name": "9lives", "arguments": '{"x": "é"}'}
    assert second == {"id": "given-id", "type": "function", "function": {"name": "other", "arguments": "{}"}}
    assert message["content"] == "Checking"
    assert gemini_to_chat(_resp(parts), ctx)["choices"][0]["finish_reason"] == "tool_calls"


def test_content_is_null_with_only_tool_calls():
    message = gemini_to_chat(_resp([call("f")]), ctx_for())["choices"][0]["message"]
    assert message["content"] is None and len(message["tool_calls"]) == 1


def test_text_signature_without_a_call_is_dropped():
    message = gemini_to_chat(_resp([{"text": "Done.", "thoughtSignature": "S"}]), ctx_for())["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Done."}


@pytest.mark.parametrize(("resp", "reason", "content"), [
    (_resp([text("cut")], "MAX_TOKENS"), "length", "cut"),
    (_resp(None, "MAX_TOKENS", usage_metadata(5, 0, thoughts=100)), "length", ""),
    (_resp([], "MAX_TOKENS"), "length", ""),
    (_resp(None, "SAFETY"), "content_filter", ""),
    (_resp([text("partial")], "RECITATION"), "content_filter", "partial"),
    (_resp(None, None), "stop", ""),
    ({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": usage_metadata(4, 0)},
     "content_filter", ""),
])
def test_finish_reasons_never_invent_text(resp, reason, content):
    choice = gemini_to_chat(resp, ctx_for())["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == (reason, content)


@pytest.mark.parametrize("reason", ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"])
def test_model_errors_are_retryable_502(reason):
    with pytest.raises(ProxyError) as err:
        gemini_to_chat(_resp([], reason, finishMessage="bad call"), ctx_for())
    assert (err.value.status, err.value.retryable, err.value.credential_fault) == (502, True, False)


def test_response_without_candidates_or_block_is_retryable():
    with pytest.raises(ProxyError) as err:
        gemini_to_chat({"usageMetadata": usage_metadata()}, ctx_for())
    assert err.value.status == 502 and err.value.retryable


def test_error_body_with_200_raises_the_classified_error():
    with pytest.raises(ProxyError) as err:
        gemini_to_chat({"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}, ctx_for())
    assert err.value.status == 429 and err.value.code == "rate_limit_exceeded"


def test_several_candidates_become_several_choices():
    resp = {"candidates": [{"content": {"role": "model", "parts": [text("a")]}, "finishReason": "STOP", "index": 0},
                           {"content": {"role": "model", "parts": [text("b")]}, "finishReason": "MAX_TOKENS",
                            "index": 1}]}
    out = gemini_to_chat(resp, ctx_for())
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "a", "stop"), (1, "b", "length")]
    assert out["usage"] is None


@pytest.mark.parametrize(("reason", "has_calls", "expected"), [
    ("STOP", False, "stop"), ("STOP", True, "tool_calls"), ("MAX_TOKENS", False, "length"),
    ("MAX_TOKENS", True, "tool_calls"), ("LANGUAGE", False, "stop"), ("OTHER", False, "stop"),
    ("FINISH_REASON_UNSPECIFIED", False, "stop"), ("NO_IMAGE", False, "stop"), ("IMAGE_OTHER", False, "stop"),
    ("SAFETY", True, "content_filter"), ("RECITATION", False, "content_filter"),
    ("BLOCKLIST", False, "content_filter"), ("PROHIBITED_CONTENT", False, "content_filter"),
    ("SPII", False, "content_filter"), ("IMAGE_SAFETY", False, "content_filter"),
    ("IMAGE_PROHIBITED_CONTENT", False, "content_filter"), ("IMAGE_RECITATION", False, "content_filter"),
    (None, False, "stop"), ("SOMETHING_NEW", False, "stop"),
])
def test_finish_reason_table(reason, has_calls, expected):
    assert finish_reason(reason, has_calls) == expected


@pytest.mark.parametrize(("meta", "expected"), [
    ({}, (0, 0, 0, 0, 0)),
    ({"promptTokenCount": 83, "candidatesTokenCount": 14, "thoughtsTokenCount": 104, "totalTokenCount": 201},
     (83, 118, 201, 0, 104)),
    ({"promptTokenCount": 100, "cachedContentTokenCount": 60, "toolUsePromptTokenCount": 7,
      "candidatesTokenCount": 3}, (107, 3, 110, 60, 0)),
])
def test_usage_mapping(meta, expected):
    usage = gemini_usage(meta)
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"],
            usage["prompt_tokens_details"]["cached_tokens"],
            usage["completion_tokens_details"]["reasoning_tokens"]) == expected
    assert "cache_write_tokens" not in usage["prompt_tokens_details"]


# ---- stream -----------------------------------------------------------------------------------

def _chunk(parts=None, finish=None, usage=None, **extra) -> dict:
    candidate: dict = {"content": {"role": "model", "parts": parts or []}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    out: dict = {"candidates": [candidate], **extra}
    if usage:
        out["usageMetadata"] = usage
    return out


@pytest.mark.parametrize("seed", range(5))
def test_text_stream_shape(seed):
    chunks = run_stream([_chunk([text("Hel")]), _chunk([text("lo")]),
                         _chunk([text("!")], "STOP", usage_metadata(9, 3))], seed=seed)
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"},
                              {"content": "!"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [None] * 4 + ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 12
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["model"] == "client-model" and c["object"] == "chat.completion.chunk" for c in chunks)


def test_parallel_calls_across_chunks_keep_distinct_indexes():
    ctx = ctx_for({"messages": [user("q")], "tools": [_fn("a b", {"properties": {"x": {"type": "string"}}})]})
    chunks = run_stream([
        _chunk([thought("plan")]),
        _chunk([{"functionCall": {"name": "a_b", "args": {"x": "1"}}, "thoughtSignature": "S1"},
                {"functionCall": {"name": "a_b", "args": {"x": "2"}}}]),
        _chunk([{"functionCall": {"name": "c", "args": {}}}], "STOP", usage_metadata(5, 5)),
    ], ctx)
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert [c["index"] for c in calls] == [0, 1, 2]
    assert [c["function"]["name"] for c in calls] == ["a b", "a b", "c"]
    assert [c["function"]["arguments"] for c in calls] == ['{"x": "1"}', '{"x": "2"}', "{}"]
    assert [call_signatures(c["id"])[1] for c in calls] == ["S1", None, None]
    assert all(len(d["tool_calls"]) == 1 and c["type"] == "function" for d, c in
               zip([d for d in deltas(chunks) if "tool_calls" in d], calls, strict=True))
    assert len({c["id"] for c in calls}) == 3
    assert {"reasoning_content": "plan"} in deltas(chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_usage_is_emitted_once_from_the_last_metadata():
    chunks = run_stream([_chunk([text("a")], usage={"promptTokenCount": 5, "totalTokenCount": 5}),
                         _chunk([text("b")], usage={"promptTokenCount": 5, "totalTokenCount": 5}),
                         _chunk([text("c")], "STOP", usage_metadata(5, 3, thoughts=2))])
    usages = [c for c in chunks if "usage" in c]
    assert len(usages) == 1 and usages[0] is chunks[-1]
    assert usages[0]["usage"]["completion_tokens"] == 5


def test_no_usage_chunk_when_gemini_reported_none():
    chunks = run_stream([_chunk([text("a")], "STOP")])
    assert all("usage" not in c for c in chunks)


def test_max_tokens_with_empty_text_is_length_without_invented_text():
    chunks = run_stream([{"candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
                          "usageMetadata": usage_metadata(5, 0, thoughts=64)}])
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("block", ["SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"])
def test_blocked_prompt_streams_content_filter(block):
    chunks = run_stream([{"promptFeedback": {"blockReason": block}, "usageMetadata": usage_metadata(4, 0)}])
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[-1]["usage"]["prompt_tokens"] == 4


def test_safety_stop_after_calls_stays_content_filter():
    chunks = run_stream([_chunk([call("f")]), _chunk([], "SAFETY")])
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_trailing_empty_text_part_emits_nothing():
    chunks = run_stream([_chunk([text("hi")]), _chunk([text("")], "STOP")])
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "hi"}, {}]


def test_text_signature_rides_on_the_next_call_in_the_stream():
    chunks = run_stream([_chunk([text("Let me check.")]), _chunk([{"text": "", "thoughtSignature": "TS"}]),
                         _chunk([{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "CS"}], "STOP")])
    call_id = next(d for d in deltas(chunks) if "tool_calls" in d)["tool_calls"][0]["id"]
    assert call_signatures(call_id)[1:] == ("CS", "TS")
    assert call_id.count(THOUGHT_SEP) == 2


def test_text_signature_without_a_call_is_dropped_in_the_stream():
    chunks = run_stream([_chunk([{"text": "Done.", "thoughtSignature": "TS"}], "STOP")])
    assert "TS" not in json.dumps(chunks)


@pytest.mark.parametrize("events", [
    [],
    [_chunk([text("partial")])],
    [_chunk([text("partial")], usage=usage_metadata())],
])
def test_stream_without_finish_reason_is_a_retryable_502(events):
    stream = GeminiStream(ctx_for())
    for ev in SSEParser().feed("".join(sse_frames(events)).encode()):
        stream.feed(ev)
    with pytest.raises(ProxyError) as err:
        stream.finish()
    assert (err.value.status, err.value.retryable) == (502, True)


def test_mid_stream_error_event_raises_the_classified_error():
    stream = GeminiStream(ctx_for())
    events = SSEParser().feed("".join(sse_frames([
        _chunk([text("a")]), {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
    ])).encode())
    assert deltas(stream.feed(events[0])) == [{"role": "assistant", "content": ""}, {"content": "a"}]
    with pytest.raises(ProxyError) as err:
        stream.feed(events[1])
    assert (err.value.status, err.value.retryable) == (503, True)


def test_malformed_function_call_in_stream_raises():
    stream = GeminiStream(ctx_for())
    (event,) = SSEParser().feed("".join(sse_frames([_chunk([], "MALFORMED_FUNCTION_CALL")])).encode())
    with pytest.raises(ProxyError) as err:
        stream.feed(event)
    assert err.value.status == 502 and err.value.retryable


def test_unparseable_event_is_a_retryable_502_and_blank_events_are_ignored():
    stream = GeminiStream(ctx_for())
    events = SSEParser().feed(b"data: \r\n\r\ndata: [DONE]\r\n\r\ndata: {oops\r\n\r\n")
    assert stream.feed(events[0]) == [] and stream.feed(events[1]) == []
    with pytest.raises(ProxyError) as err:
        stream.feed(events[2])
    assert err.value.status == 502 and err.value.retryable


def test_json_array_event_is_handled_like_several_events():
    stream = GeminiStream(ctx_for())
    (event,) = SSEParser().feed(b"data: " + json.dumps([_chunk([text("a")]), _chunk([text("b")], "STOP")]).encode()
                                + b"\r\n\r\n")
    out = stream.feed(event) + stream.finish()
    assert deltas(out)[1:] == [{"content": "a"}, {"content": "b"}, {}]


def test_stream_and_whole_response_agree():
    fake = GeminiFake()
    turn = Turn(thought("t"), [text("Hi "), text("there")], call("f", {"a": 1}), usage=usage_metadata(3, 4))
    streamed = assemble(run_stream(fake.render(turn)))
    whole = gemini_to_chat(fake.render_whole(turn), ctx_for())["choices"][0]["message"]
    assert streamed["content"] == whole["content"] == "Hi there"
    assert [c["function"] for c in streamed["tool_calls"]] == [c["function"] for c in whole["tool_calls"]]


# ---- errors ------------------------------------------------------------------------------------

def _gerr(code: int, status: str, message: str, details: list | None = None, wrap: bool = False) -> bytes:
    err: dict = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    body = {"error": err}
    return json.dumps([body] if wrap else body).encode()


RETRY_INFO = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}]


@pytest.mark.parametrize(("status", "body", "headers", "expected"), [
    (429, _gerr(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."), {},
     (429, "rate_limit_exceeded", True, False, None)),
    (429, _gerr(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/"
                "online_prediction_requests_per_base_model", wrap=True), {},
     (429, "rate_limit_exceeded", True, False, None)),
    (429, _gerr(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", RETRY_INFO), {},
     (429, "rate_limit_exceeded", True, False, 37.0)),
    (429, _gerr(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", RETRY_INFO), {"retry-after": "5"},
     (429, "rate_limit_exceeded", True, False, 5.0)),
    (429, _gerr(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing "
                "details. Quota exceeded for metric: generate_content_free_tier_requests, limit: 0"), {},
     (429, "insufficient_quota", True, True, None)),
    (429, _gerr(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'GenerateRequestsPerDayPerProject'"),
     {}, (429, "insufficient_quota", True, True, None)),
    (400, _gerr(400, "FAILED_PRECONDITION", "Project `p` is not allowed to use Publisher Model `gemini-x`",
                wrap=True), {}, (502, "upstream_authentication_error", True, True, None)),
    (400, _gerr(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]), {},
     (502, "upstream_authentication_error", True, True, None)),
    (400, _gerr(400, "FAILED_PRECONDITION", "User location is not supported for the API use."), {},
     (502, "upstream_authentication_error", True, True, None)),
    (403, _gerr(403, "PERMISSION_DENIED", "Generative Language API has not been used in project 1"), {},
     (502, "upstream_authentication_error", True, True, None)),
    (401, _gerr(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), {},
     (502, "upstream_authentication_error", True, True, None)),
    (404, _gerr(404, "NOT_FOUND", "Publisher Model `projects/p/locations/l/publishers/google/models/x` was not "
                "found or your project does not have access to it."), {},
     (502, "upstream_authentication_error", True, True, None)),
    (404, _gerr(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"), {},
     (404, "NOT_FOUND", False, False, None)),
    (400, _gerr(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens "
                "allowed (1048576)."), {}, (400, "context_length_exceeded", False, False, None)),
    (400, _gerr(400, "INVALID_ARGUMENT", "Corrupted thought signature."), {},
     (400, "invalid_thought_signature", False, False, None)),
    (400, _gerr(400, "INVALID_ARGUMENT", "Function call is missing a thought_signature in functionCall parts."),
     {}, (400, "invalid_thought_signature", False, False, None)),
    (400, _gerr(400, "INVALID_ARGUMENT", "Please ensure that multiturn requests alternate between user and model."),
     {}, (400, "INVALID_ARGUMENT", False, False, None)),
    (500, _gerr(500, "INTERNAL", "An internal error has occurred."), {}, (502, "server_error", True, False, None)),
    (503, _gerr(503, "UNAVAILABLE", "The model is overloaded."), {}, (503, "server_error", True, False, None)),
    (504, _gerr(504, "DEADLINE_EXCEEDED", "Deadline expired."), {}, (504, "server_error", True, False, None)),
    (502, b"<html>Bad Gateway</html>", {}, (502, "server_error", True, False, None)),
    (0, _gerr(429, "RESOURCE_EXHAUSTED", "slow"), {}, (429, "rate_limit_exceeded", True, False, None)),
    (0, json.dumps({"error": {"message": "x", "status": "UNAVAILABLE"}}).encode(), {},
     (503, "server_error", True, False, None)),
])
def test_gemini_error_classification(status, body, headers, expected):
    err = gemini_error(status, body, headers)
    assert (err.status, err.code, err.retryable, err.credential_fault, err.retry_after) == expected
    assert err.message.startswith("gemini upstream error")


def test_gemini_error_keeps_google_message_and_provider_name():
    err = gemini_error(400, _gerr(400, "INVALID_ARGUMENT", "bad thing", wrap=True), {}, provider="vertex")
    assert err.message == "vertex upstream error (400): bad thing"
    err = gemini_error(500, "plain text failure")
    assert "plain text failure" in err.message


# ---- embeddings -----------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "model", "expected"), [
    ({"input": "hello"}, "gemini-embedding-001",
     {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello"}]}}]}),
    ({"input": ["a", "b"], "dimensions": 256}, "models/text-embedding-004",
     {"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]},
                    "outputDimensionality": 256},
                   {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]},
                    "outputDimensionality": 256}]}),
])
def test_embeddings_to_gemini(body, model, expected):
    assert embeddings_to_gemini(body, model) == expected


@pytest.mark.parametrize(("body", "expected"), [
    ({"input": "hello"}, {"instances": [{"content": "hello"}]}),
    ({"input": ["a", "b"], "dimensions": 64},
     {"instances": [{"content": "a"}, {"content": "b"}], "parameters": {"outputDimensionality": 64}}),
])
def test_embeddings_to_vertex(body, expected):
    assert embeddings_to_vertex(body) == expected


@pytest.mark.parametrize("body", [{"input": [1, 2, 3]}, {"input": [[1, 2]]}, {"input": []}, {"input": ""},
                                  {"input": ["ok", ""]}, {}])
def test_embedding_inputs_that_gemini_cannot_take(body):
    for convert in (lambda: embeddings_to_gemini(body, "m"), lambda: embeddings_to_vertex(body)):
        with pytest.raises(ProxyError) as err:
            convert()
        assert (err.value.status, err.value.param) == (400, "input")


def test_gemini_embeddings_to_openai():
    resp = {"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}
    assert gemini_embeddings_to_openai(resp, "emb") == {
        "object": "list", "model": "emb", "usage": {"prompt_tokens": 0, "total_tokens": 0},
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
                 {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]}],
    }
    resp["usageMetadata"] = {"promptTokenCount": 12}
    assert gemini_embeddings_to_openai(resp, "emb")["usage"] == {"prompt_tokens": 12, "total_tokens": 12}


def test_vertex_embeddings_to_openai_sums_token_counts():
    resp = {"predictions": [{"embeddings": {"values": [1.0], "statistics": {"token_count": 3, "truncated": False}}},
                            {"embeddings": {"values": [2.0], "statistics": {"token_count": 4.0}}}]}
    out = vertex_embeddings_to_openai(resp, "emb")
    assert [d["embedding"] for d in out["data"]] == [[1.0], [2.0]]
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


def test_embeddings_base64_encoding_is_float32_little_endian():
    out = gemini_embeddings_to_openai({"embeddings": [{"values": [0.5, -1.0]}]}, "emb", encoding_format="base64")
    assert struct.unpack("<2f", base64.b64decode(out["data"][0]["embedding"])) == (0.5, -1.0)
    out = vertex_embeddings_to_openai({"predictions": [{"embeddings": {"values": [0.25]}}]}, "e",
                                      encoding_format="base64")
    assert struct.unpack("<f", base64.b64decode(out["data"][0]["embedding"])) == (0.25,)


# ---- URLs -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("base", "model", "stream", "action", "expected"), [
    (None, "gemini-2.5-flash", False, None,
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"),
    (None, "models/gemini-2.5-flash", True, None,
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ("https://generativelanguage.googleapis.com/v1beta/", "g", True, None,
     "https://generativelanguage.googleapis.com/v1beta/models/g:streamGenerateContent?alt=sse"),
    ("https://proxy.example/v1", "g", False, None, "https://proxy.example/v1/models/g:generateContent"),
    ("http://127.0.0.1:9999", "g", False, None, "http://127.0.0.1:9999/v1beta/models/g:generateContent"),
    (None, "gemini-embedding-001", False, "batchEmbedContents",
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"),
])
def test_gemini_url(base, model, stream, action, expected):
    assert gemini_url(base, model, stream, action) == expected


@pytest.mark.parametrize(("base", "location", "publisher", "model", "action", "expected"), [
    (None, "us-central1", "google", "gemini-2.5-pro", "generateContent",
     "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1/publishers/google/models/"
     "gemini-2.5-pro:generateContent"),
    (None, "europe-west4", "google", "gemini-2.5-pro", "streamGenerateContent",
     "https://europe-west4-aiplatform.googleapis.com/v1/projects/p1/locations/europe-west4/publishers/google/models/"
     "gemini-2.5-pro:streamGenerateContent?alt=sse"),
    (None, "global", "google", "gemini-3-pro-preview", "streamGenerateContent",
     "https://aiplatform.googleapis.com/v1/projects/p1/locations/global/publishers/google/models/"
     "gemini-3-pro-preview:streamGenerateContent?alt=sse"),
    (None, "us", "google", "m", "predict",
     "https://aiplatform.us.rep.googleapis.com/v1/projects/p1/locations/us/publishers/google/models/m:predict"),
    (None, "us-east5", "anthropic", "claude-sonnet-4@20250514", "streamRawPredict",
     "https://us-east5-aiplatform.googleapis.com/v1/projects/p1/locations/us-east5/publishers/anthropic/models/"
     "claude-sonnet-4@20250514:streamRawPredict"),
    (None, "global", "anthropic", "claude-x", "rawPredict",
     "https://aiplatform.googleapis.com/v1/projects/p1/locations/global/publishers/anthropic/models/claude-x:"
     "rawPredict"),
    ("http://127.0.0.1:8080/", "us-central1", "google", "g", "streamGenerateContent",
     "http://127.0.0.1:8080/v1/projects/p1/locations/us-central1/publishers/google/models/g:"
     "streamGenerateContent?alt=sse"),
    ("http://127.0.0.1:8080/v1beta1", "global", "google", "g", "generateContent",
     "http://127.0.0.1:8080/v1beta1/projects/p1/locations/global/publishers/google/models/g:generateContent"),
])
def test_vertex_url(base, location, publisher, model, action, expected):
    assert vertex_url(base, "p1", location, publisher, model, action) == expected


# ---- signature carrier ------------------------------------------------------------------------

@pytest.mark.parametrize(("call_sig", "text_sig", "expected_id"), [
    (None, None, "call_1"),
    ("CS", None, "call_1__thought__CS"),
    ("CS", "TS", "call_1__thought__CS__thought__TS"),
    (None, "TS", "call_1__thought____thought__TS"),
])
def test_signature_carrier_round_trip(call_sig, text_sig, expected_id):
    assert carry_signatures("call_1", call_sig, text_sig) == expected_id
    assert call_signatures(expected_id) == ("call_1", call_sig, text_sig)


# ---- multi-turn round trip, validated by the fake (no socket) ---------------------------------

def _stream_turn(fake: GeminiFake, turn: Turn, ctx: GeminiContext) -> dict:
    return assemble(run_stream(fake.render(turn), ctx))


def test_multi_turn_round_trip_passes_the_fake_validator():
    fake = GeminiFake()
    tools = [_fn("read file", {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
                               "additionalProperties": False}),
             _fn("list", {"type": "object", "properties": {"dir": {"type": ["string", "null"]}}})]
    messages: list[dict] = [{"role": "developer", "content": "Be brief."}, user("Summarise a.txt and b.txt")]

    def step(turn: Turn) -> dict:
        body, ctx = chat_to_gemini({"model": "client", "messages": messages, "tools": tools,
                                    "reasoning_effort": "low"}, MODEL)
        assert fake.validate(body) == []
        message = _stream_turn(fake, turn, ctx)
        messages.append(message)
        return message

    # step 1: parallel calls, only the first is signed
    first = step(Turn(thought("two files"), [call("read_file", {"path": "a.txt"}), call("read_file", {"path": "b"})]))
    assert [tc_["function"]["name"] for tc_ in first["tool_calls"]] == ["read file", "read file"]
    messages += [tool(first["tool_calls"][1]["id"], "B"), tool(first["tool_calls"][0]["id"], "A")]
    # step 2: a sequential call in the same user turn, signed again; text before it
    second = step(Turn(text("Need the listing."), call("list", {})))
    messages.append(tool(second["tool_calls"][0]["id"], '{"files": ["a.txt", "b.txt"]}'))
    # step 3: the answer
    third = step(Turn(text("Both files are short.", signed=True)))
    assert third["content"] == "Both files are short."
    messages.append(user("Thanks"))
    body, _ = chat_to_gemini({"model": "client", "messages": messages, "tools": tools}, MODEL)
    assert fake.validate(body) == []
    assert len(fake.signatures) == 3
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user", "model", "user", "model", "user"]


def test_round_trip_with_stripped_ids_falls_back_to_the_dummy():
    fake = GeminiFake()
    ctx = ctx_for()
    message = _stream_turn(fake, Turn(call("f", {"a": 1})), ctx)
    stripped = message["tool_calls"][0]["id"].split(THOUGHT_SEP)[0]
    message["tool_calls"][0]["id"] = stripped
    body, _ = chat_to_gemini({"messages": [user("q"), message, tool(stripped, "ok")]}, MODEL)
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == DUMMY_SIGNATURE
    assert fake.validate(body) == []


def test_round_trip_with_a_mangled_signature_is_caught_by_the_fake():
    fake = GeminiFake()
    message = _stream_turn(fake, Turn(call("f", {})), ctx_for())
    message["tool_calls"][0]["id"] += "x"
    body, _ = chat_to_gemini({"messages": [user("q"), message, tool(message["tool_calls"][0]["id"], "ok")]}, MODEL)
    assert any("Corrupted thought signature" in e for e in fake.validate(body))
    retry, _ = chat_to_gemini({"messages": [user("q"), message, tool(message["tool_calls"][0]["id"], "ok")]}, MODEL,
                              replace_signatures=True)
    assert fake.validate(retry) == []
