"""Prompt-caching breakpoints for Anthropic and Claude on Vertex, for clients that set none.

Anthropic caches a prompt prefix only up to a block marked ``cache_control``. Claude Code
and the Anthropic SDKs mark their own; plain Chat and Responses clients (and many SDK users)
never do, and pay full price for the same system prompt and tools on every turn. With
``prompt_caching`` on for a credential or a model, a request without any ``cache_control``
gets ephemeral breakpoints on the last system block, the last tool, and the last block of
the turn before the last user message (at most 4 in all, Anthropic's limit). A request
that already has one is left alone: the client knows its prefix better.
"""

from __future__ import annotations

import copy
import json

MAX_BREAKPOINTS = 4
EPHEMERAL = {"type": "ephemeral"}
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})


def has_breakpoints(body: dict) -> bool:
    return '"cache_control"' in json.dumps([body.get("system"), body.get("tools"), body.get("messages")])


def add_breakpoints(body: dict) -> dict:
    """``body`` (a Messages request) with breakpoints added, or unchanged when it has any (a copy when changed)."""
    if has_breakpoints(body):
        return body
    out = {**body}
    marked = 0
    system = out.get("system")
    if isinstance(system, str) and system:
        out["system"] = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
        marked += 1
    elif isinstance(system, list) and system and isinstance(system[-1], dict):
        out["system"] = [*system[:-1], {**system[-1], "cache_control": EPHEMERAL}]
        marked += 1
    tools = out.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[-1], dict):
        out["tools"] = [*tools[:-1], {**tools[-1], "cache_control": EPHEMERAL}]
        marked += 1
    messages = out.get("messages")
    if isinstance(messages, list) and marked < MAX_BREAKPOINTS:
        index = _turn_before_last_user(messages)
        if index is not None:
            marked_message = _mark_message(messages[index])
            if marked_message is not None:
                out["messages"] = [*messages[:index], marked_message, *messages[index + 1:]]
    return out


def _turn_before_last_user(messages: list) -> int | None:
    last_user = next((i for i in range(len(messages) - 1, -1, -1)
                      if isinstance(messages[i], dict) and messages[i].get("role") == "user"), None)
    return last_user - 1 if last_user else None


def _mark_message(message) -> dict | None:
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": [{"type": "text", "text": content, "cache_control": EPHEMERAL}]} \
            if content else None
    if not isinstance(content, list):
        return None
    for j in range(len(content) - 1, -1, -1):
        block = content[j]
        if isinstance(block, dict) and block.get("type") not in _UNMARKABLE and \
                not (block.get("type") == "text" and not block.get("text")):
            blocks = copy.copy(content)
            blocks[j] = {**block, "cache_control": EPHEMERAL}
            return {**message, "content": blocks}
    return None
