"""Prompt-caching breakpoints added for clients that set none (Anthropic and Claude on Vertex)."""

from __future__ import annotations

import json

from proxy.translators.prompt_cache import EPHEMERAL, MAX_BREAKPOINTS, add_breakpoints
from tests.fakes.anthropic import validate_body

TOOL = {"name": "f", "input_schema": {"type": "object"}}


def marks(body: dict) -> int:
    return json.dumps(body).count('"cache_control"')


def test_system_tools_and_the_turn_before_the_last_user_message():
    body = {"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "tools": [TOOL, {**TOOL, "name": "g"}],
            "messages": [{"role": "user", "content": "q1"},
                         {"role": "assistant", "content": [{"type": "text", "text": "x"},
                                                           {"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]}]}
    out = add_breakpoints(body)
    assert out["system"][0] == {"type": "text", "text": "a"} and out["system"][1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in out["tools"][0] and out["tools"][1]["cache_control"] == EPHEMERAL
    assert out["messages"][1]["content"][1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in json.dumps(out["messages"][2])
    assert marks(out) == 3 <= MAX_BREAKPOINTS
    assert marks(body) == 0  # the client's body is not modified
    validate_body(out)


def test_string_system_and_string_turn():
    out = add_breakpoints({"system": "s", "messages": [{"role": "user", "content": "a"},
                                                       {"role": "assistant", "content": "b"},
                                                       {"role": "user", "content": "c"}]})
    assert out["system"] == [{"type": "text", "text": "s", "cache_control": EPHEMERAL}]
    assert out["messages"][1]["content"] == [{"type": "text", "text": "b", "cache_control": EPHEMERAL}]


def test_first_turn_only_marks_system_and_tools():
    out = add_breakpoints({"system": "s", "tools": [TOOL], "messages": [{"role": "user", "content": "a"}]})
    assert marks(out) == 2 and out["messages"] == [{"role": "user", "content": "a"}]


def test_thinking_blocks_are_never_marked():
    out = add_breakpoints({"messages": [{"role": "user", "content": "a"},
                                        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t",
                                                                           "signature": "s"}]},
                                        {"role": "user", "content": "c"}]})
    assert marks(out) == 0


def test_a_client_breakpoint_leaves_the_request_alone():
    body = {"system": "s", "tools": [TOOL], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": EPHEMERAL}]}]}
    assert add_breakpoints(body) is body
