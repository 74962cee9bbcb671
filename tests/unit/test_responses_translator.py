"""Responses API translator: request mapping, stream re-emission, state round trip, fixture shapes."""

from __future__ import annotations

import json
import re

import pytest

from proxy.errors import ProxyError, classify_upstream_error
from proxy.sse import SSEParser
from proxy.translators.common import chat_chunk, chat_completion, chat_usage, usage_chunk
from proxy.translators.responses import (
    STATE_PREFIX,
    ResponsesContext,
    ResponsesStream,
    ToolRef,
    chat_to_response,
    decode_state,
    encode_event,
    encode_state,
    responses_to_chat,
    responses_usage,
)
from tests.fixtures import CODEX_FIXTURES as FIXTURES

SAFE_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
RESPONSES_ONLY_KEYS = {"input", "instructions", "store", "include", "prompt_cache_key", "client_metadata", "text",
                       "reasoning", "metadata", "truncation", "service_tier", "previous_response_id",
                       "max_output_tokens", "conversation"}


# ---- helpers ---------------------------------------------------------------

def codex_request(name: str) -> dict:
    return json.loads((FIXTURES / f"codex_request_{name}.json").read_text())["body"]


def fixture_events(name: str) -> list[dict]:
    parser = SSEParser()
    events = parser.feed((FIXTURES / f"{name}.sse").read_bytes()) + parser.flush()
    return [e.json() for e in events]


def translate(**body) -> tuple[dict, ResponsesContext]:
    return responses_to_chat({"model": "m", "input": "hi", **body})


def message_items(*items) -> dict:
    return {"model": "m", "input": list(items)}


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def chunk(delta: dict | None = None, finish: str | None = None) -> dict:
    return chat_chunk("c1", "m", 1, delta or {}, finish)


def usage(prompt=0, completion=0, **kw) -> dict:
    return usage_chunk("c1", "m", 1, chat_usage(prompt, completion, **kw))


def call_delta(index: int, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    call: dict = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


def start() -> dict:
    return chunk({"role": "assistant", "content": ""})


def run(ctx: ResponsesContext, *chunks: dict, finish: bool = True) -> list[dict]:
    stream = ResponsesStream(ctx, response_id="resp_test", created_at=1764000000)
    events = stream.started()
    for c in chunks:
        events += stream.feed(c)
    return events + (stream.finish() if finish else [])


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def terminal(events: list[dict]) -> dict:
    return events[-1]["response"]


def ctx_with_tools(tools: list[dict], **body) -> ResponsesContext:
    return translate(tools=tools, **body)[1]


FN = {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {}}}
NS = {"type": "namespace", "name": "multi_agent_v1", "description": "agents",
      "tools": [{"type": "function", "name": "wait_agent", "parameters": {"type": "object"}},
                {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}]}
CUSTOM = {"type": "custom", "name": "apply_patch", "description": "Patch files.",
          "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch hunk+ end_patch"}}
SEARCH = {"type": "tool_search", "execution": "client", "description": "Find tools.",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}
ALL_TOOLS = [FN, NS, CUSTOM, SEARCH]


# ---- request: captured Codex bodies ---------------------------------------

CODEX_REQUESTS = sorted(p.name[len("codex_request_"):-len(".json")] for p in FIXTURES.glob("codex_request_*.json"))


def test_fixture_directory_is_present():
    assert len(CODEX_REQUESTS) >= 11


@pytest.mark.parametrize("name", CODEX_REQUESTS)
def test_every_codex_request_translates(name):
    body = codex_request(name)
    chat, ctx = responses_to_chat(body)
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["model"] == ctx.model == body["model"]
    assert not RESPONSES_ONLY_KEYS & chat.keys()
    assert chat["messages"][0]["role"] == "system"
    for tool in chat.get("tools", []):
        if tool["type"] == "function":
            assert SAFE_NAME.match(tool["function"]["name"])
            assert ctx.tool_ref(tool["function"]["name"]).name
    names = [t["function"]["name"] for t in chat.get("tools", []) if t["type"] == "function"]
    assert len(names) == len(set(names))
    for message in chat["messages"]:
        for call in message.get("tool_calls", []):
            assert SAFE_NAME.match(call["function"]["name"])
            json.loads(call["function"]["arguments"])


def test_developer_messages_become_system_messages_in_order():
    chat, _ = responses_to_chat(codex_request("turn1"))
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "system", "user", "user"]
    assert chat["messages"][0]["content"].startswith("You are a coding agent")
    assert [p["type"] for p in chat["messages"][1]["content"]] == ["text", "text"]


def test_namespaces_are_flattened_and_map_back():
    chat, ctx = responses_to_chat(codex_request("mcp_namespace_tools"))
    names = [t["function"]["name"] for t in chat["tools"]]
    assert "multi_agent_v1__wait_agent" in names and "mcp__mini__say_hello_world" in names
    assert ctx.tool_ref("multi_agent_v1__wait_agent") == ToolRef("function", "wait_agent", "multi_agent_v1")
    assert ctx.tool_ref("mcp__mini__say_hello_world") == ToolRef("function", "say_hello_world", "mcp__mini")
    assert ctx.tool_ref("exec_command") == ToolRef("function", "exec_command")
    assert ctx.tool_ref("never_declared") == ToolRef("function", "never_declared")


def test_namespaced_call_in_history_uses_the_flat_name():
    chat, _ = responses_to_chat(codex_request("mcp_call_roundtrip"))
    assistant, tool = chat["messages"][-2:]
    assert assistant["tool_calls"] == [{"id": "call_mcp", "type": "function", "function": {
        "name": "mcp__mini__say_hello_world", "arguments": '{"who": "router"}'}}]
    assert tool == {"role": "tool", "tool_call_id": "call_mcp",
                    "content": "Wall time: 0.0093 seconds\nOutput:\n"
                               "MCP tool call requires approval, but approval policy is never"}


def test_custom_apply_patch_tool_becomes_an_input_function():
    chat, ctx = responses_to_chat(codex_request("model_gpt55_custom_and_tool_search_tools"))
    patch = next(t["function"] for t in chat["tools"] if t["function"]["name"] == "apply_patch")
    assert patch["parameters"]["required"] == ["input"]
    assert patch["parameters"]["properties"]["input"]["type"] == "string"
    assert "FREEFORM" in patch["description"] and "begin_patch: \"*** Begin Patch\" LF" in patch["description"]
    assert ctx.tool_ref("apply_patch") == ToolRef("custom", "apply_patch")
    assert chat["reasoning_effort"] == "medium"


def test_custom_tool_call_history():
    chat, _ = responses_to_chat(codex_request("custom_tool_roundtrip"))
    assistant, tool = chat["messages"][-2:]
    call = assistant["tool_calls"][0]
    assert call["id"] == "call_p1" and call["function"]["name"] == "apply_patch"
    assert json.loads(call["function"]["arguments"]) == {
        "input": "*** Begin Patch\n*** Add File: hello.txt\n+hi from patch\n*** End Patch\n"}
    assert tool["tool_call_id"] == "call_p1" and tool["content"].endswith("A hello.txt\n")


def test_tool_search_tool_and_its_output():
    body = codex_request("tool_search_roundtrip")
    assert not any(t.get("name") == "mcp__mini" for t in body["tools"])
    chat, ctx = responses_to_chat(body)
    search = next(t["function"] for t in chat["tools"] if t["function"]["name"] == "tool_search")
    assert search["parameters"]["required"] == ["query"]
    assert ctx.tool_ref("tool_search") == ToolRef("tool_search", "tool_search")
    discovered = [t for t in chat["tools"] if t["function"]["name"] == "mcp__mini__say_hello_world"]
    assert len(discovered) == 1 and discovered[0]["function"]["parameters"]["required"] == ["who"]
    assert ctx.tool_ref("mcp__mini__say_hello_world") == ToolRef("function", "say_hello_world", "mcp__mini")
    assistant, tool = chat["messages"][-2:]
    assert assistant["tool_calls"][0]["function"]["name"] == "tool_search"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {
        "query": "greets someone say hello world mini", "limit": 2}
    assert json.loads(tool["content"]) == {"tools": [
        {"name": "mcp__mini__say_hello_world",
         "description": "Greets someone (name has a dot and a dash on purpose)."}]}


def test_image_input_keeps_order_and_detail():
    chat, _ = responses_to_chat(codex_request("image_input"))
    content = chat["messages"][-1]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "text", "text"]
    assert content[1]["image_url"]["detail"] == "high"
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_image_tool_output_goes_to_a_following_user_message():
    chat, _ = responses_to_chat(codex_request("image_tool_output"))
    tool, follow = chat["messages"][-2:]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_img" and tool["content"]
    assert follow["role"] == "user"
    assert follow["content"][0] == {"type": "text", "text": "The output of tool call call_img includes the following:"}
    assert follow["content"][1]["type"] == "image_url"


def test_compaction_request_has_no_tools_at_all():
    chat, ctx = responses_to_chat(codex_request("compaction"))
    assert "tools" not in chat and "tool_choice" not in chat and "parallel_tool_calls" not in chat
    assert chat["messages"][-1]["content"].startswith("You are performing a CONTEXT CHECKPOINT COMPACTION")
    assert chat["messages"][-3]["tool_calls"][0]["function"]["name"] == "exec_command"
    assert ctx.echo["tools"] == []


def test_foreign_reasoning_item_is_dropped():
    chat, ctx = responses_to_chat(codex_request("resume_second_turn_with_reasoning"))
    assert [m["role"] for m in chat["messages"][3:]] == ["user", "assistant", "user"]
    assert chat["messages"][4] == {"role": "assistant", "content": "Hello from the fake server."}
    assert ctx.dropped_items == ["reasoning"]


# ---- request: field mapping --------------------------------------------------

@pytest.mark.parametrize(("body", "expected"), [
    ({"instructions": "Be brief."}, {"messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "hi"}]}),
    ({"reasoning": {"effort": "xhigh", "summary": "auto"}}, {"reasoning_effort": "high"}),
    ({"reasoning": {"effort": "none"}}, {"reasoning_effort": "none"}),
    ({"reasoning": {"effort": "minimal"}}, {"reasoning_effort": "minimal"}),
    ({"max_output_tokens": 50}, {"max_completion_tokens": 50}),
    ({"temperature": 0.2, "top_p": 0.9, "user": "u1"}, {"temperature": 0.2, "top_p": 0.9, "user": "u1"}),
    ({"text": {"format": {"type": "json_object"}}}, {"response_format": {"type": "json_object"}}),
    ({"text": {"format": {"type": "json_schema", "name": "out", "strict": True, "schema": {"type": "object"}},
               "verbosity": "low"}},
     {"response_format": {"type": "json_schema",
                          "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True}}}),
    ({"text": {"format": {"type": "text"}, "verbosity": "high"}}, {}),
])
def test_request_fields_map(body, expected):
    chat, _ = translate(**body)
    for key, value in expected.items():
        assert chat[key] == value


def test_stateless_and_client_fields_never_reach_the_provider():
    chat, ctx = translate(store=False, include=["reasoning.encrypted_content"], prompt_cache_key="k",
                          client_metadata={"a": 1}, metadata={"b": "2"}, truncation="auto", service_tier="flex",
                          previous_response_id=None, parallel_tool_calls=True, stream=False,
                          reasoning={"summary": "detailed"})
    assert set(chat) == {"model", "messages", "stream", "stream_options"}
    assert chat["stream"] is True
    assert ctx.reasoning_summary == "detailed"
    assert ctx.echo["metadata"] == {"b": "2"} and ctx.echo["truncation"] == "auto"


def test_string_input_and_easy_messages():
    chat, _ = responses_to_chat({"model": "m", "input": [
        {"role": "user", "content": "plain"},
        {"role": "assistant", "content": "answer"},
        {"role": "system", "content": [{"type": "input_text", "text": "rule"}]},
    ]})
    assert chat["messages"] == [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "answer"},
                                {"role": "system", "content": "rule"}]


def test_input_file_and_audio_parts():
    chat, _ = responses_to_chat(message_items({"role": "user", "content": [
        {"type": "input_file", "file_data": "data:application/pdf;base64,AAA", "filename": "a.pdf"},
        {"type": "input_audio", "input_audio": {"data": "BBB", "format": "wav"}},
    ]}))
    assert chat["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAA", "filename": "a.pdf"}},
        {"type": "input_audio", "input_audio": {"data": "BBB", "format": "wav"}}]


def test_empty_messages_are_dropped():
    chat, _ = responses_to_chat(message_items({"role": "user", "content": ""}, user("x"),
                                              {"type": "message", "role": "assistant", "content": []}))
    assert chat["messages"] == [{"role": "user", "content": "x"}]


def test_assistant_text_and_following_calls_make_one_message():
    chat, _ = responses_to_chat(message_items(
        user("go"),
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Running both."}]},
        {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": '{"cmd":"a"}'},
        {"type": "function_call", "call_id": "c2", "name": "exec_command", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "one"},
                                                                     {"type": "input_image", "image_url": "u1"}]},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"},
                                                                     {"type": "input_text", "text": "lines"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done."}]},
    ))
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["user", "assistant", "tool", "tool", "user", "assistant"]
    assistant = chat["messages"][1]
    assert assistant["content"] == "Running both."
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert assistant["tool_calls"][1]["function"]["arguments"] == "{}"
    assert chat["messages"][2]["content"] == "one" and chat["messages"][3]["content"] == "two\nlines"
    # The image waits until every tool result of the run is in: Chat requires them right after the calls.
    assert chat["messages"][4]["content"][1] == {"type": "image_url", "image_url": {"url": "u1"}}


def test_other_output_shapes():
    chat, _ = responses_to_chat(message_items(
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": {"a": 1}},
        {"type": "function_call_output", "call_id": "c1", "output": {"ok": True}},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "patch"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": None},
    ))
    assert chat["messages"][0]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
    assert chat["messages"][1]["content"] == '{"ok": true}'
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "c2", "content": ""}


def test_hosted_tool_output_items_are_dropped():
    _, ctx = responses_to_chat(message_items(user("x"), {"type": "web_search_call", "status": "completed"}))
    assert ctx.dropped_items == ["web_search_call"]


# ---- request: tools and tool_choice ----------------------------------------

def test_tool_declarations():
    chat, ctx = translate(tools=[*ALL_TOOLS, {"type": "web_search"}, {"type": "web_search_preview"},
                                 {"type": "file_search"}, {"type": "image_generation"}, {"type": "mcp"},
                                 {"type": "code_interpreter"}, {"type": "computer_use_preview"}])
    assert [t["function"]["name"] if t["type"] == "function" else t for t in chat["tools"]] == [
        "exec_command", "multi_agent_v1__wait_agent", "multi_agent_v1__close_agent", "apply_patch", "tool_search",
        {"type": "web_search"}]
    assert ctx.dropped_tools == ["file_search", "image_generation", "mcp", "code_interpreter",
                                 "computer_use_preview"]
    search = chat["tools"][4]["function"]
    assert search == {"name": "tool_search", "description": "Find tools.", "parameters": SEARCH["parameters"]}


def test_chat_shaped_function_tool_is_tolerated():
    chat, _ = translate(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                                 "strict": True}}])
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                              "strict": True}}]


def test_unsafe_long_and_colliding_names_stay_safe_and_distinct():
    long_ns = {"type": "namespace", "name": "mcp__" + "x" * 70, "tools": [{"type": "function", "name": "do.it"}]}
    clash = {"type": "function", "name": "multi_agent_v1__wait_agent"}
    chat, ctx = translate(tools=[NS, clash, long_ns, {"type": "function", "name": "say.hello-world"}])
    names = [t["function"]["name"] for t in chat["tools"]]
    assert all(SAFE_NAME.match(n) for n in names) and len(set(names)) == len(names)
    assert ctx.tool_ref(names[0]) == ToolRef("function", "wait_agent", "multi_agent_v1")
    assert ctx.tool_ref(names[2]) == ToolRef("function", "multi_agent_v1__wait_agent")
    assert ctx.tool_ref(names[3]) == ToolRef("function", "do.it", "mcp__" + "x" * 70)
    assert ctx.tool_ref(names[4]) == ToolRef("function", "say.hello-world")


def test_same_request_gives_same_names():
    tools = [NS, {"type": "namespace", "name": "mcp__" + "y" * 80, "tools": [{"type": "function", "name": "z"}]}]
    assert translate(tools=tools)[0]["tools"] == translate(tools=tools)[0]["tools"]


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", "auto"), ("none", "none"), ("required", "required"),
    ({"type": "function", "name": "exec_command"}, {"type": "function", "function": {"name": "exec_command"}}),
    ({"type": "function", "name": "wait_agent", "namespace": "multi_agent_v1"},
     {"type": "function", "function": {"name": "multi_agent_v1__wait_agent"}}),
    ({"type": "function", "name": "close_agent"},
     {"type": "function", "function": {"name": "multi_agent_v1__close_agent"}}),
    ({"type": "function", "name": "multi_agent_v1__close_agent"},
     {"type": "function", "function": {"name": "multi_agent_v1__close_agent"}}),
    ({"type": "custom", "name": "apply_patch"}, {"type": "function", "function": {"name": "apply_patch"}}),
    ({"type": "tool_search"}, {"type": "function", "function": {"name": "tool_search"}}),
    ({"type": "allowed_tools", "mode": "required", "tools": []}, "required"),
    ({"type": "allowed_tools", "mode": "auto", "tools": []}, "auto"),
    ({"type": "web_search_preview"}, "auto"),
])
def test_tool_choice(choice, expected):
    chat, _ = translate(tools=ALL_TOOLS, tool_choice=choice, parallel_tool_calls=False)
    assert chat["tool_choice"] == expected
    assert chat["parallel_tool_calls"] is False


# ---- request: validation ---------------------------------------------------

def _body(**kw):
    return {"model": "m", "input": "hi", **kw}


@pytest.mark.parametrize(("body", "param"), [
    ([], None),
    ({"input": "hi"}, "model"),
    (_body(model=""), "model"),
    (_body(model=5), "model"),
    (_body(input=5), "input"),
    ({"model": "m"}, "input"),
    (_body(input=["x"]), "input[0]"),
    (_body(input=[{"type": "wat"}]), "input[0].type"),
    (_body(input=[{"type": "item_reference", "id": "x"}]), "input[0]"),
    (_body(input=[{"type": "local_shell_call", "call_id": "c", "action": {}}]), "input[0].type"),
    (_body(input=[user("a"), {"type": "message", "role": "tool", "content": "x"}]), "input[1].role"),
    (_body(input=[{"type": "message", "role": "user", "content": 5}]), "input[0].content"),
    (_body(input=[{"type": "message", "role": "user", "content": ["x"]}]), "input[0].content[0]"),
    (_body(input=[{"type": "message", "role": "user", "content": [{"type": "input_video"}]}]),
     "input[0].content[0].type"),
    (_body(input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": 1}]}]),
     "input[0].content[0].text"),
    (_body(input=[{"type": "message", "role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]),
     "input[0].content[0].file_id"),
    (_body(input=[{"type": "message", "role": "user", "content": [{"type": "input_image"}]}]),
     "input[0].content[0].image_url"),
    (_body(input=[{"type": "message", "role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]),
     "input[0].content[0].file_id"),
    (_body(input=[{"type": "message", "role": "user", "content": [{"type": "input_file", "file_url": "u"}]}]),
     "input[0].content[0].file_url"),
    (_body(input=[{"type": "message", "role": "developer",
                   "content": [{"type": "input_image", "image_url": "u"}]}]), "input[0].content"),
    (_body(input=[{"type": "message", "role": "assistant", "content": [{"type": "input_image"}]}]),
     "input[0].content[0]"),
    (_body(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]), "input[0].call_id"),
    (_body(input=[{"type": "function_call", "call_id": "c", "arguments": "{}"}]), "input[0].name"),
    (_body(input=[{"type": "function_call_output", "output": "x"}]), "input[0].call_id"),
    (_body(input=[{"type": "function_call_output", "call_id": "c",
                   "output": [{"type": "input_image", "file_id": "f"}]}]), "input[0].output[0].file_id"),
    (_body(previous_response_id="resp_1"), "previous_response_id"),
    (_body(conversation="conv_1"), "conversation"),
    (_body(instructions=["x"]), "instructions"),
    (_body(tools={}), "tools"),
    (_body(tools=[{"name": "f"}]), "tools[0]"),
    (_body(tools=[{"type": "function"}]), "tools[0].name"),
    (_body(tools=[{"type": "namespace", "name": "n", "tools": [{"type": "function"}]}]), "tools[0].tools[0].name"),
    (_body(tools=[FN], tool_choice={"type": "function", "name": "missing"}), "tool_choice"),
    (_body(tools=[FN], tool_choice=["auto"]), "tool_choice"),
    (_body(tools=[FN], tool_choice={"type": "function", "name": "old"},  # only in history, not declared
           input=[{"type": "function_call", "call_id": "c", "name": "old", "arguments": "{}"}]), "tool_choice"),
    (_body(reasoning={"effort": "extreme"}), "reasoning.effort"),
    (_body(reasoning="high"), "reasoning"),
    (_body(max_output_tokens=0), "max_output_tokens"),
    (_body(max_output_tokens="5"), "max_output_tokens"),
    (_body(text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema"),
    (_body(text={"format": {"type": "yaml"}}), "text.format.type"),
])
def test_invalid_requests_are_400_with_param(body, param):
    with pytest.raises(ProxyError) as info:
        responses_to_chat(body)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.to_dict()["error"]["type"] == "invalid_request_error"


def test_previous_response_id_has_the_openai_code():
    with pytest.raises(ProxyError) as info:
        responses_to_chat(_body(previous_response_id="resp_1"))
    assert info.value.code == "previous_response_not_found"
    assert "stateless" in info.value.message


# ---- stream ------------------------------------------------------------------

def test_text_stream_matches_the_canonical_sequence():
    ctx = translate()[1]
    events = run(ctx, start(), chunk({"content": "Hello! "}), chunk({"content": "How can I help?"}),
                 chunk(finish="stop"), usage(1200, 24))
    assert types(events) == types(fixture_events("fixture_text_canonical.0"))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = terminal(events)
    assert done["status"] == "completed" and done["id"] == "resp_test" and done["model"] == "m"
    assert done["output"] == [{"id": events[2]["item"]["id"], "type": "message", "status": "completed",
                               "role": "assistant",
                               "content": [{"type": "output_text", "text": "Hello! How can I help?",
                                            "annotations": []}]}]
    assert done["usage"] == {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens": 24, "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": 1224}


def test_reasoning_then_text():
    ctx = translate()[1]
    events = run(ctx, start(), chunk({"reasoning_content": "The user "}), chunk({"reasoning_content": "wants hi."}),
                 chunk({"content": "Hi!"}), chunk(finish="stop"), usage(10, 5, reasoning=3))
    assert types(events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.done", "response.completed"]
    reasoning, message = terminal(events)["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [{"type": "summary_text", "text": "The user wants hi."}]
    assert reasoning["encrypted_content"] is None  # nothing provider-specific to carry
    assert message["content"][0]["text"] == "Hi!"
    assert terminal(events)["usage"]["output_tokens_details"] == {"reasoning_tokens": 3}
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1]


def test_parallel_tool_calls_interleaved_by_index():
    ctx = ctx_with_tools([FN])
    events = run(ctx, start(), chunk({"content": "Running."}),
                 call_delta(0, "call_a", "exec_command"), call_delta(1, "call_b", "exec_command", '{"cmd":'),
                 call_delta(0, arguments='{"cmd":'), call_delta(1, arguments='"b"}'),
                 call_delta(0, arguments='"a"}'), chunk(finish="tool_calls"), usage(5, 5))
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [
        (0, "message"), (1, "function_call"), (2, "function_call")]
    deltas = [(e["output_index"], e["delta"]) for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == [(2, '{"cmd":'), (1, '{"cmd":'), (2, '"b"}'), (1, '"a"}')]
    out = terminal(events)["output"]
    assert [(o["call_id"], o["arguments"]) for o in out[1:]] == [("call_a", '{"cmd":"a"}'), ("call_b", '{"cmd":"b"}')]
    assert all(o["status"] == "completed" and o["name"] == "exec_command" and "namespace" not in o for o in out[1:])
    arg_done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["output_index"], e["name"]) for e in arg_done] == [(1, "exec_command"), (2, "exec_command")]
    assert terminal(events)["status"] == "completed"


def test_namespaced_call_comes_back_with_namespace_and_name():
    ctx = ctx_with_tools([NS])
    events = run(ctx, call_delta(0, "call_ns1", "multi_agent_v1__close_agent", '{"target":"x"}'),
                 chunk(finish="tool_calls"))
    item = terminal(events)["output"][0]
    assert item | {"id": "-"} == {"id": "-", "type": "function_call", "status": "completed",
                                  "namespace": "multi_agent_v1", "name": "close_agent",
                                  "arguments": '{"target":"x"}', "call_id": "call_ns1"}
    assert "multi_agent_v1__" not in json.dumps(events)


def test_custom_tool_call_comes_back_as_custom_tool_call():
    ctx = ctx_with_tools([CUSTOM])
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"
    arguments = json.dumps({"input": patch})
    events = run(ctx, call_delta(0, "call_p", "apply_patch", arguments[:10]), call_delta(0, arguments=arguments[10:]),
                 chunk(finish="tool_calls"), usage(1, 1))
    item = terminal(events)["output"][0]
    assert item["type"] == "custom_tool_call" and item["id"].startswith("ctc_")
    assert (item["call_id"], item["name"], item["input"], item["status"]) == ("call_p", "apply_patch", patch,
                                                                            "completed")
    assert "response.function_call_arguments.delta" not in types(events)
    done_input = next(e for e in events if e["type"] == "response.custom_tool_call_input.done")
    assert done_input["input"] == patch and done_input["item_id"] == item["id"]


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"input": "raw"}', "raw"),
    ("*** Begin Patch\n*** End Patch\n", "*** Begin Patch\n*** End Patch\n"),  # model skipped the JSON wrapper
    ('{"patch": "x"}', '{"patch": "x"}'),
    ('{"input": {"a": 1}}', '{"a": 1}'),
])
def test_custom_tool_input_recovery(arguments, expected):
    ctx = ctx_with_tools([CUSTOM])
    events = run(ctx, call_delta(0, "c", "apply_patch", arguments), chunk(finish="tool_calls"))
    assert terminal(events)["output"][0]["input"] == expected


def test_tool_search_call_has_object_arguments():
    ctx = ctx_with_tools([SEARCH])
    events = run(ctx, call_delta(0, "call_ts", "tool_search", '{"query":"mini",'),
                 call_delta(0, arguments='"limit":2}'), chunk(finish="tool_calls"))
    item = terminal(events)["output"][0]
    assert item | {"id": "-"} == {"id": "-", "type": "tool_search_call", "status": "completed", "call_id": "call_ts",
                                  "execution": "client", "arguments": {"query": "mini", "limit": 2}}


def test_unknown_tool_name_passes_through():
    events = run(translate()[1], call_delta(0, "c", "mystery", ""), chunk(finish="tool_calls"))
    item = terminal(events)["output"][0]
    assert (item["type"], item["name"], item["arguments"]) == ("function_call", "mystery", "{}")


@pytest.mark.parametrize(("finish", "kind", "reason"), [
    ("length", "response.incomplete", "max_output_tokens"),
    ("content_filter", "response.incomplete", "content_filter"),
    ("stop", "response.completed", None),
    ("tool_calls", "response.completed", None),
])
def test_finish_reasons(finish, kind, reason):
    events = run(translate()[1], chunk({"content": "partial"}), chunk(finish=finish), usage(3, 4))
    assert events[-1]["type"] == kind
    response = terminal(events)
    assert response["incomplete_details"] == ({"reason": reason} if reason else None)
    assert response["output"][0]["status"] == ("incomplete" if reason else "completed")
    assert response["usage"]["total_tokens"] == 7


def test_no_finish_reason_fails_and_never_finalises_items():
    events = run(translate()[1], start(), chunk({"content": "half"}), call_delta(0, "c", "f", "{"))
    assert "response.output_item.done" not in types(events)
    assert events[-1]["type"] == "response.failed"
    assert terminal(events)["error"]["code"] == "server_error"
    assert terminal(events)["output"] == []


def test_no_output_item_done_before_the_finish_reason():
    stream = ResponsesStream(ctx_with_tools([FN]))
    events = stream.started()
    for c in (start(), chunk({"reasoning_content": "think"}), chunk({"content": "text"}),
              call_delta(0, "c1", "exec_command", "{}"), call_delta(1, "c2", "exec_command", "{}")):
        events += stream.feed(c)
    assert "response.output_item.done" not in types(events)
    closing = stream.feed(chunk(finish="tool_calls"))
    assert types(closing).count("response.output_item.done") == 4
    assert "response.completed" not in types(closing)  # the usage chunk is still to come
    end = stream.feed(usage(1, 2))
    assert types(end) == ["response.completed"]
    assert stream.finish() == [] and stream.feed(chunk({"content": "late"})) == []


def test_item_ids_are_stable():
    ctx = ctx_with_tools([FN])
    events = run(ctx, chunk({"reasoning_content": "r"}), chunk({"content": "t"}), call_delta(0, "c", "exec_command"),
                 call_delta(0, arguments="{}"), chunk(finish="tool_calls"))
    ids_by_index: dict[int, set[str]] = {}
    for e in events:
        if "output_index" in e:
            ids_by_index.setdefault(e["output_index"], set()).add(e.get("item_id") or e["item"]["id"])
    assert all(len(ids) == 1 for ids in ids_by_index.values()) and len(ids_by_index) == 3
    prefixes = [next(iter(ids_by_index[i]))[:3] for i in range(3)]
    assert prefixes == ["rs_", "msg", "fc_"]
    assert [o["id"] for o in terminal(events)["output"]] == [next(iter(ids_by_index[i])) for i in range(3)]


def test_usage_on_the_finish_chunk_and_missing_usage():
    ctx = translate()[1]
    finish_with_usage = chunk({"content": "x"}, "stop") | {"usage": chat_usage(2, 3)}
    events = run(ctx, finish_with_usage, finish=False)
    assert events[-1]["type"] == "response.completed" and terminal(events)["usage"]["total_tokens"] == 5
    events = run(ctx, chunk({"content": "x"}), chunk(finish="stop"))
    assert terminal(events)["usage"] == responses_usage(None)


@pytest.mark.parametrize(("usage_in", "expected"), [
    (None, {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}),
    (chat_usage(100, 20, cached=60, reasoning=8),
     {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 60}, "output_tokens": 20,
      "output_tokens_details": {"reasoning_tokens": 8}, "total_tokens": 120}),
    (chat_usage(100, 20, cached=10, cache_write=30),
     {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 30},
      "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 120}),
    ({"prompt_tokens": 7.0, "completion_tokens": 3, "total_tokens": None, "prompt_tokens_details": None},
     {"input_tokens": 7, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 10}),
])
def test_usage_mapping(usage_in, expected):
    result = responses_usage(usage_in)
    assert result == expected
    assert all(type(result[k]) is int for k in ("input_tokens", "output_tokens", "total_tokens"))


@pytest.mark.parametrize(("err", "code", "message_part"), [
    (ProxyError(502, "boom", code="server_error"), "server_error", "boom"),
    (ProxyError(500, "boom"), "server_error", "boom"),
    (ProxyError(429, "slow down", retry_after=1.2), "rate_limit_exceeded", "Please try again in 2s."),
    (ProxyError(400, "bad tool schema"), "invalid_prompt", "bad tool schema"),
    (classify_upstream_error(400, "prompt is too long", provider="anthropic"), "context_length_exceeded", "too long"),
    (classify_upstream_error(529, "Overloaded", provider="anthropic"), "server_is_overloaded", "Overloaded"),
    (classify_upstream_error(429, "You exceeded your current quota", provider="openai",
                             upstream_code="insufficient_quota"), "insufficient_quota", "quota"),
    (classify_upstream_error(429, "Rate limited. Please try again in 3s.", provider="openai",
                             headers={"retry-after": "3"}), "rate_limit_exceeded", "try again in 3s."),
])
def test_fail_codes(err, code, message_part):
    stream = ResponsesStream(translate()[1])
    stream.started()
    stream.feed(chunk({"content": "partial"}))
    events = stream.fail(err)
    assert types(events) == ["response.failed"]
    response = terminal(events)
    assert response["status"] == "failed" and response["output"] == []
    assert response["error"]["code"] == code and message_part in response["error"]["message"]
    assert response["error"]["message"].count("try again in") <= 1
    assert stream.fail(err) == [] and stream.finish() == []


def test_fail_after_terminal_is_silent():
    stream = ResponsesStream(translate()[1])
    stream.feed(chunk(finish="stop"))
    assert types(stream.finish()) == ["response.completed"]
    assert stream.fail(ProxyError(502, "late")) == []


def test_started_keepalive_and_sequence_numbers():
    stream = ResponsesStream(translate()[1])
    first = stream.keepalive()
    assert first["type"] == "response.in_progress" and first["response"]["status"] == "in_progress"
    started = stream.started()
    assert types(started) == ["response.created", "response.in_progress"]
    assert started[0]["response"]["usage"] is None and started[0]["response"]["output"] == []
    assert stream.started() == []
    events = [first, *started, stream.keepalive(), *stream.feed(chunk({"content": "x"}, "stop")), *stream.finish()]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert all(e["response"]["id"] == stream.id for e in events if "response" in e)


def test_feed_starts_the_stream_when_the_view_did_not():
    events = ResponsesStream(translate()[1]).feed(chunk({"content": "x"}))
    assert types(events)[:2] == ["response.created", "response.in_progress"]


def test_terminal_response_echoes_request_fields():
    body = {"model": "gpt-5.5", "input": "hi", "instructions": "Be kind.", "tools": [FN], "tool_choice": "required",
            "parallel_tool_calls": False, "reasoning": {"effort": "high", "summary": "auto"},
            "text": {"verbosity": "low"}, "temperature": 0.5, "max_output_tokens": 99, "store": False}
    ctx = responses_to_chat(body)[1]
    response = terminal(run(ctx, chunk({"content": "x"}), chunk(finish="stop")))
    assert response["object"] == "response" and isinstance(response["id"], str)
    assert isinstance(response["created_at"], int) and response["model"] == "gpt-5.5"
    for key in ("instructions", "tool_choice", "parallel_tool_calls", "reasoning", "temperature",
                "max_output_tokens"):
        assert response[key] == body[key]
    assert response["tools"] == [{**FN, "description": None, "strict": False}]  # as OpenAI echoes a function
    assert response["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    assert response["previous_response_id"] is None and response["store"] is False
    assert response["status"] == "completed" and response["completed_at"] >= response["created_at"]


def test_response_objects_carry_openai_defaults_for_what_the_request_left_out():
    stream = ResponsesStream(responses_to_chat({"model": "m", "input": "hi"})[1])
    started = stream.started()[0]["response"]
    done = terminal(stream.feed(chunk({"content": "x"}, "stop")) + stream.feed(usage(1, 1)))
    expected = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "top_logprobs": 0, "max_tool_calls": None, "background": False, "service_tier": "default",
                "safety_identifier": None, "prompt_cache_key": None, "tools": [], "tool_choice": "auto",
                "truncation": "disabled", "parallel_tool_calls": True, "text": {"format": {"type": "text"}}}
    for response in (started, done):
        assert {k: response[k] for k in expected} == expected
    assert started["completed_at"] is None and isinstance(done["completed_at"], int)


def test_response_objects_echo_the_request_values():
    body = {"model": "m", "input": "hi", "temperature": 0, "top_p": 0.5, "presence_penalty": 1,
            "frequency_penalty": -1, "top_logprobs": 3, "max_tool_calls": 4, "service_tier": "flex",
            "safety_identifier": "u-hash", "prompt_cache_key": "thread-1",
            "tools": [{"type": "function", "function": {"name": "f", "description": "d", "strict": True,
                                                        "parameters": {"type": "object"}}}]}
    chat, ctx = responses_to_chat(body)
    response = ResponsesStream(ctx).started()[0]["response"]
    assert {k: response[k] for k in ("temperature", "top_p", "presence_penalty", "frequency_penalty")} == {
        "temperature": 0.0, "top_p": 0.5, "presence_penalty": 1.0, "frequency_penalty": -1.0}
    assert (response["top_logprobs"], response["max_tool_calls"], response["service_tier"]) == (3, 4, "flex")
    assert (response["safety_identifier"], response["prompt_cache_key"]) == ("u-hash", "thread-1")
    assert response["tools"] == [{"type": "function", "name": "f", "description": "d", "strict": True,
                                  "parameters": {"type": "object"}}]
    assert (chat["presence_penalty"], chat["frequency_penalty"]) == (1, -1)  # applied, so echoed truthfully


def test_encode_event():
    event = {"type": "response.output_text.delta", "sequence_number": 4, "delta": "é"}
    assert encode_event(event) == (
        'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":4,'
        '"delta":"é"}\n\n').encode()


# ---- provider state round trip -----------------------------------------------

THINKING = {"type": "thinking", "thinking": "I should run ls.", "signature": "EqQBCkYIAxgCKkB+/sig=="}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT=="}
GEMINI_SIG = "CiQB0e2Kb+/x7Zq9==__odd"


def test_state_round_trip_restores_thinking_and_signatures_byte_exact():
    ctx = ctx_with_tools([FN, NS])
    events = run(ctx, start(), chunk({"reasoning_content": "I should run ls."}), chunk({"thinking_blocks": [THINKING]}),
                 chunk({"thinking_blocks": [REDACTED]}), chunk({"content": "Listing."}),
                 call_delta(0, f"call_g1__thought__{GEMINI_SIG}", "exec_command", '{"cmd":"ls"}'),
                 call_delta(1, "call_plain", "multi_agent_v1__wait_agent", '{"targets":[]}'),
                 chunk(finish="tool_calls"), usage(10, 10))
    output = terminal(events)["output"]
    reasoning, _message, signed, _plain = output
    assert reasoning["encrypted_content"].startswith(STATE_PREFIX)
    assert signed["call_id"] == "call_g1" and "__thought__" not in json.dumps(output[1:])
    assert decode_state(reasoning["encrypted_content"]) == {
        "thinking_blocks": [THINKING, REDACTED], "signatures": {"call_g1": GEMINI_SIG}}

    # Codex replays the items verbatim, with the tool outputs and a reasoning item from real OpenAI.
    foreign = {"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": "gAAAA-openai-blob"}
    next_input = [user("list files"), foreign, *output,
                  {"type": "function_call_output", "call_id": "call_g1", "output": "a.txt"},
                  {"type": "function_call_output", "call_id": "call_plain", "output": "{}"},
                  user("thanks")]
    chat, next_ctx = responses_to_chat({"model": "m", "input": next_input, "tools": [FN, NS]})
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool", "tool", "user"]
    assistant = chat["messages"][1]
    assert assistant["thinking_blocks"] == [THINKING, REDACTED]
    assert assistant["content"] == "Listing."
    assert [c["id"] for c in assistant["tool_calls"]] == [f"call_g1__thought__{GEMINI_SIG}", "call_plain"]
    assert assistant["tool_calls"][1]["function"]["name"] == "multi_agent_v1__wait_agent"
    assert chat["messages"][2]["tool_call_id"] == f"call_g1__thought__{GEMINI_SIG}"
    assert chat["messages"][3]["tool_call_id"] == "call_plain"
    assert next_ctx.dropped_items == ["reasoning"]


def test_signature_without_reasoning_text_gets_a_silent_reasoning_item():
    events = run(ctx_with_tools([FN]), call_delta(0, "call_1__thought__SIG", "exec_command", "{}"),
                 chunk(finish="tool_calls"))
    reasoning, call = terminal(events)["output"]
    assert reasoning["summary"] == [] and decode_state(reasoning["encrypted_content"]) == {
        "signatures": {"call_1": "SIG"}}
    assert call["call_id"] == "call_1"
    assert "response.reasoning_summary_part.added" not in types(events)


def test_reasoning_after_text_attaches_to_the_same_assistant_message():
    first = {"type": "reasoning", "id": "rs_1", "summary": [],
             "encrypted_content": encode_state([THINKING], {})}
    second = {"type": "reasoning", "id": "rs_2", "summary": [],
              "encrypted_content": encode_state([REDACTED], {})}
    chat, _ = responses_to_chat(message_items(
        user("go"), first,
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
        second, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "ok"}))
    assert chat["messages"][1]["thinking_blocks"] == [THINKING, REDACTED]


@pytest.mark.parametrize("content", [None, "", "gAAAA", STATE_PREFIX + "!!!not-base64", STATE_PREFIX + "WzFd", 5])
def test_decode_state_rejects_foreign_or_damaged_content(content):
    assert decode_state(content) is None


# ---- shapes against the transcripts Codex accepted ----------------------------

REQUIRED_ITEM_FIELDS = {"message": {"type", "role", "content"},
                        "function_call": {"type", "name", "arguments", "call_id"},
                        "reasoning": {"type", "summary"}}


def per_item(events: list[dict]) -> dict[int, list[str]]:
    grouped: dict[int, list[str]] = {}
    for e in events:
        if "output_index" in e:
            grouped.setdefault(e["output_index"], []).append(e["type"])
    return grouped


def is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(x in it for x in small)


def assert_compatible(mine: list[dict], theirs: list[dict]) -> None:
    """Same event types, the same order per output item, and every field the transcript has."""
    assert set(types(theirs)) <= set(types(mine))
    assert mine[-1]["type"] == theirs[-1]["type"]
    if theirs[0]["type"] == "response.created":
        assert mine[0]["type"] == "response.created"
    for index, sequence in per_item(theirs).items():
        assert is_subsequence(sequence, per_item(mine)[index]), (index, sequence, per_item(mine)[index])
    for their in theirs:
        same = [m for m in mine if m["type"] == their["type"] and m.get("output_index") == their.get("output_index")]
        assert same, their["type"]
        for key in their:
            assert key in same[-1], (their["type"], key)
        for nested in ("item", "part", "response"):
            if nested in their:
                assert set(their[nested]) <= set(same[-1][nested]), (their["type"], nested)
        if "item" in their:
            item = same[-1]["item"]
            assert REQUIRED_ITEM_FIELDS.get(item["type"], {"type"}) <= set(item)
            assert item["type"] == their["item"]["type"]
    final = mine[-1]["response"]
    if final.get("usage"):
        assert all(type(final["usage"][k]) is int for k in ("input_tokens", "output_tokens", "total_tokens"))
        assert final["usage"]["input_tokens_details"] and final["usage"]["output_tokens_details"]


def test_shape_text_canonical():
    mine = run(translate()[1], chunk({"content": "Hello! "}), chunk({"content": "How can I help?"}),
               chunk(finish="stop"), usage(1200, 24))
    assert_compatible(mine, fixture_events("fixture_text_canonical.0"))


def test_shape_tool_roundtrip():
    body = codex_request("turn1")
    ctx = responses_to_chat(body)[1]
    mine = run(ctx, call_delta(0, "call_1", "exec_command", '{"cmd":"echo '), call_delta(0, arguments='hi"}'),
               chunk(finish="tool_calls"), usage(1200, 24))
    assert_compatible(mine, fixture_events("fixture_tool_roundtrip.0"))
    follow_up = codex_request("turn2_after_tool")
    ctx = responses_to_chat(follow_up)[1]
    mine = run(ctx, chunk({"content": "The command printed hello-from-tool."}), chunk(finish="stop"),
               usage(1300, 9, cached=1024))
    assert_compatible(mine, fixture_events("fixture_tool_roundtrip.1"))
    assert terminal(mine)["usage"]["input_tokens_details"] == {"cached_tokens": 1024}


def test_shape_reasoning_text():
    mine = run(translate()[1], chunk({"reasoning_content": "The user wants a greeting."}), chunk({"content": "Hi!"}),
               chunk(finish="stop"), usage(1200, 24))
    assert_compatible(mine, fixture_events("fixture_reasoning_text.0"))


def test_shape_namespace_call():
    ctx = responses_to_chat(codex_request("turn1"))[1]
    mine = run(ctx, call_delta(0, "call_ns1", "multi_agent_v1__close_agent", '{"target":"no-such-agent"}'),
               chunk(finish="tool_calls"), usage(1200, 24))
    theirs = fixture_events("fixture_namespace_call.0")
    assert_compatible(mine, theirs)
    done = next(e for e in mine if e["type"] == "response.output_item.done")["item"]
    expected = theirs[0]["item"]
    assert {k: done[k] for k in expected if k != "id"} == {k: v for k, v in expected.items() if k != "id"}
    mine = run(ctx, chunk({"content": "o"}), chunk({"content": "k"}), chunk(finish="stop"), usage(100, 5))
    assert_compatible(mine, fixture_events("fixture_namespace_call.1"))


def test_shape_incomplete():
    mine = run(translate()[1], chunk({"content": "partial"}), chunk(finish="length"), usage(1, 1))
    theirs = fixture_events("fixture_incomplete.0")
    assert_compatible(mine, theirs)
    assert terminal(mine)["incomplete_details"] == theirs[-1]["response"]["incomplete_details"]
    assert mine[-2]["item"]["status"] == theirs[0]["item"]["status"] == "incomplete"


@pytest.mark.parametrize(("name", "err"), [
    ("fixture_failed_server_error.0", ProxyError(502, "upstream provider error", code="server_error")),
    ("fixture_failed_context.0", classify_upstream_error(400, "Your input exceeds the context window of this model.",
                                                         provider="openai")),
])
def test_shape_failed(name, err):
    stream = ResponsesStream(translate()[1])
    mine = stream.started() + stream.fail(err)
    theirs = fixture_events(name)
    assert_compatible(mine, theirs)
    assert terminal(mine)["error"]["code"] == theirs[-1]["response"]["error"]["code"]


def test_shape_keepalive():
    stream = ResponsesStream(translate()[1])
    theirs = fixture_events("fixture_keepalive.0")[0]
    mine = stream.keepalive()
    assert mine["type"] == theirs["type"] and set(theirs["response"]) <= set(mine["response"])


# ---- non-streaming -----------------------------------------------------------

def test_chat_to_response_maps_a_whole_completion():
    ctx = ctx_with_tools([FN, CUSTOM, NS])
    message = {"role": "assistant", "content": "Doing it.", "reasoning_content": "plan", "thinking_blocks": [THINKING],
               "tool_calls": [
                   {"id": "call_1__thought__S1", "type": "function",
                    "function": {"name": "exec_command", "arguments": '{"cmd":"ls"}'}},
                   {"id": "call_2", "type": "function",
                    "function": {"name": "apply_patch", "arguments": '{"input":"P"}'}},
                   {"id": "call_3", "type": "function",
                    "function": {"name": "multi_agent_v1__wait_agent", "arguments": "{}"}}]}
    completion = chat_completion("chatcmpl-1", "m", 1764000000, message, "tool_calls", chat_usage(10, 4, cached=2))
    response = chat_to_response(completion, ctx)
    assert response["status"] == "completed" and response["object"] == "response"
    assert response["created_at"] == 1764000000 and response["model"] == "m"
    kinds = [(o["type"], o.get("name")) for o in response["output"]]
    assert kinds == [("reasoning", None), ("message", None), ("function_call", "exec_command"),
                     ("custom_tool_call", "apply_patch"), ("function_call", "wait_agent")]
    reasoning = response["output"][0]
    assert reasoning["summary"][0]["text"] == "plan"
    assert decode_state(reasoning["encrypted_content"]) == {"thinking_blocks": [THINKING],
                                                            "signatures": {"call_1": "S1"}}
    assert response["output"][2]["call_id"] == "call_1"
    assert response["output"][3]["input"] == "P"
    assert response["output"][4]["namespace"] == "multi_agent_v1"
    assert response["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 2},
                                 "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
                                 "total_tokens": 14}


@pytest.mark.parametrize(("finish", "status"), [("length", "incomplete"), ("stop", "completed"), (None, "completed")])
def test_chat_to_response_status_and_list_content(finish, status):
    message = {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    completion = chat_completion("x", "m", 1, message, finish, None)
    response = chat_to_response(completion, translate()[1])
    assert response["status"] == status
    assert response["output"][0]["content"][0]["text"] == "ab"
    assert response["usage"]["total_tokens"] == 0


@pytest.mark.parametrize("scenario", ["text", "reasoning-and-tool", "incomplete", "failed"])
def test_every_event_validates_against_the_open_responses_schema(scenario):
    from tests.responses_schema import check_event, check_response

    ctx = ctx_with_tools([FN], temperature=0.2, reasoning={"effort": "low", "summary": "auto"})
    if scenario == "text":
        events = run(ctx, start(), chunk({"content": "Hi"}), chunk(finish="stop"), usage(5, 1))
    elif scenario == "reasoning-and-tool":
        events = run(ctx, start(), chunk({"reasoning_content": "Run it."}),
                     call_delta(0, "call_1", "exec_command", '{"cmd":'), call_delta(0, arguments=' "ls"}'),
                     chunk(finish="tool_calls"), usage(9, 4, reasoning=2))
    elif scenario == "incomplete":
        events = run(ctx, start(), chunk({"content": "cut"}), chunk(finish="length"), usage(5, 1))
    else:
        events = run(ctx, start(), chunk({"content": "part"}))  # no finish_reason: the stream failed
    for event in events:
        check_event(event)
    final = events[-1]["response"]
    check_response(final)
    expected = {"text": "response.completed", "reasoning-and-tool": "response.completed",
                "incomplete": "response.incomplete", "failed": "response.failed"}[scenario]
    assert events[-1]["type"] == expected
    assert (final["completed_at"] is not None) == (expected == "response.completed")
