"""Chat Completions <-> Anthropic Messages (api.anthropic.com and Claude on Vertex AI).

Pure translation, no I/O. ``chat_to_anthropic`` builds the upstream body and an
``AnthropicContext``; ``anthropic_to_chat`` and ``AnthropicStream`` turn the
answer back into the router's internal Chat format (see ``common``);
``anthropic_error`` classifies upstream failures.

The request side repairs what Anthropic rejects with a 400 (providers.md 3.7):
system messages lifted out, roles merged and made to start with ``user``, the
tool results of one assistant turn grouped first in the next user turn (missing
results filled in, orphan results turned into text), empty text dropped, and
thinking turned off when the history cannot satisfy its signature rules.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import ProxyError, bad_request, classify_upstream_error
from proxy.redaction import redact
from proxy.sse import SSEEvent
from proxy.translators.common import (
    ToolNameMap,
    chat_chunk,
    chat_completion,
    chat_usage,
    content_text,
    new_id,
    now,
    parse_arguments,
    parse_data_url,
    safe_tool_id,
    usage_chunk,
)

ANTHROPIC_VERSION = "2023-06-01"
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"

DEFAULT_MAX_TOKENS = 8192
MAX_TOKENS_CAP = 128000
MIN_THINKING_BUDGET = 1024
THINKING_BUDGETS = {"minimal": 1024, "low": 4096, "medium": 10000, "high": 24000, "xhigh": 32000, "max": 48000}

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
THINKING_TYPES = frozenset({"thinking", "redacted_thinking"})
# Stream events that come before any content (an error may still follow them).
_PRELUDE = frozenset({"message_start", "ping", "error"})
JSON_ONLY_INSTRUCTION = "Respond with a single valid JSON object and nothing else: no prose, no code fences."
MISSING_RESULT = "No result was provided for this tool call; it was not executed."
PLACEHOLDER_USER_TEXT = "."
STUB_TOOL_DESCRIPTION = "Used earlier in this conversation; not available now."

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Status an error type stands for, for error events that arrive after HTTP 200.
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

# Vertex's front end answers in Google's shape. Its RESOURCE_EXHAUSTED says "Quota exceeded" for
# per-minute limits, which must read as a rate limit (cool down), not as an exhausted budget.
_GOOGLE_STATUS = {
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
}
# Anthropic reports an empty prepaid balance or a workspace spend cap as a plain 400; for the router
# these are credential problems (another key may work), so they are classified like a 402.
_BILLING_400 = re.compile(r"credit balance|spend limit|usage limits", re.I)
_MODEL_NEW = re.compile(r"claude-(opus|sonnet|haiku)-(\d+)(?:[-.](\d{1,2}))?(?=$|[-@.:_])")
_MODEL_OLD = re.compile(r"claude-(\d+)(?:[-.](\d))?-(opus|sonnet|haiku)")


@dataclass
class AnthropicContext:
    """Per-request state needed to translate the answer back."""

    model: str
    upstream_model: str
    names: ToolNameMap = field(default_factory=ToolNameMap)
    stream: bool = False
    thinking: bool = False
    vertex: bool = False


@dataclass
class _Turn:
    role: str
    blocks: list[dict]


# ---- headers ---------------------------------------------------------------

def anthropic_headers(api_key: str | None, extra: dict | None = None) -> dict:
    headers = {"anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    headers.update(extra or {})
    return headers


# ---- model facts -----------------------------------------------------------

def model_version(model: str) -> tuple[str, int, int] | None:
    """``claude-sonnet-4-5-20250929`` -> (``sonnet``, 4, 5); ``claude-3-7-sonnet`` -> (``sonnet``, 3, 7)."""
    m = _MODEL_NEW.search(model)
    if m:
        return m.group(1), int(m.group(2)), int(m.group(3) or 0)
    m = _MODEL_OLD.search(model)
    if m:
        return m.group(3), int(m.group(1)), int(m.group(2) or 0)
    return None


def output_limit(model: str) -> int | None:
    """Largest ``max_tokens`` the model accepts, when the model is recognised."""
    version = model_version(model)
    if version is None:
        return None
    family, major, minor = version
    if major >= 4:
        return 32000 if family == "opus" and (major, minor) <= (4, 1) else 64000
    if (major, minor) == (3, 7):
        return 64000
    return 8192 if (major, minor) == (3, 5) else 4096


def supports_thinking(model: str) -> bool:
    """Unknown names are assumed recent; Claude 3.5 and older reject ``thinking``."""
    version = model_version(model)
    return version is None or version[1:] >= (3, 7)


# ---- request ---------------------------------------------------------------

def chat_to_anthropic(body: dict, model: str, *, vertex: bool = False) -> tuple[dict, AnthropicContext]:
    ctx = AnthropicContext(model=str(body.get("model") or model), upstream_model=model,
                           stream=bool(body.get("stream")), vertex=vertex)
    tools = _tools(body.get("tools"), ctx.names)
    system, turns = _convert_messages(body.get("messages") or [], ctx.names)
    system += _response_format_system(body.get("response_format"))
    turns, max_tokens, thinking = _plan_thinking(body, model, _finalize(turns))
    ctx.thinking = thinking is not None

    out: dict[str, Any] = {"anthropic_version": VERTEX_ANTHROPIC_VERSION} if vertex else {"model": model}
    out["max_tokens"] = max_tokens
    if system:
        out["system"] = system
    out["messages"] = [{"role": t.role, "content": t.blocks} for t in turns]
    out.update(_tool_fields(tools, turns, body, ctx))
    if thinking:
        out["thinking"] = thinking
    out.update(_sampling(body, ctx.thinking))
    out.update(_output_config(body.get("response_format")))
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": str(user)[:256]}
    if ctx.stream:
        out["stream"] = True
    return out, ctx


def _plan_thinking(body: dict, model: str, turns: list[_Turn]) -> tuple[list[_Turn], int, dict | None]:
    """Thinking config, max_tokens, and the turns (without thinking blocks when thinking is off)."""
    thinking = _thinking_request(body, model)
    if thinking and not _thinking_continuity_ok(turns):
        thinking = None
    max_tokens, thinking = _size_output(_requested_max_tokens(body), model, thinking)
    if not thinking:
        turns = _finalize([_Turn(t.role, [b for b in t.blocks if b["type"] not in THINKING_TYPES]) for t in turns])
    return turns, max_tokens, thinking


def _tool_fields(tools: list[dict], turns: list[_Turn], body: dict, ctx: AnthropicContext) -> dict:
    if tools:
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), ctx.names, ctx.thinking)
        return {"tools": tools, **({"tool_choice": choice} if choice else {})}
    history_tools = _history_tool_names(turns)
    if not history_tools:
        return {}
    # Anthropic rejects tool blocks in a request without tools (Codex compaction sends tools: []).
    stubs = [{"name": n, "description": STUB_TOOL_DESCRIPTION, "input_schema": {"type": "object"}}
             for n in history_tools]
    return {"tools": stubs, "tool_choice": {"type": "none"}}


def _requested_max_tokens(body: dict) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad_request(f"{key} must be a positive integer", param=key)
            return value
    return None


def _thinking_request(body: dict, model: str) -> dict | None:
    """The ``thinking`` object asked for by a client ``thinking`` object or ``reasoning_effort``."""
    client = body.get("thinking")
    if isinstance(client, dict):
        kind = client.get("type")
        extra = {"display": client["display"]} if client.get("display") else {}
        if kind == "enabled":
            budget = client.get("budget_tokens") or THINKING_BUDGETS["medium"]
            if isinstance(budget, bool) or not isinstance(budget, int):
                raise bad_request("thinking.budget_tokens must be an integer", param="thinking.budget_tokens")
            return {"type": "enabled", "budget_tokens": budget, **extra}
        return {"type": "adaptive", **extra} if kind == "adaptive" else None
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort") or (reasoning.get("effort") if isinstance(reasoning, dict) else None)
    if effort in (None, "none"):
        return None
    if effort not in THINKING_BUDGETS:
        raise bad_request(f"reasoning_effort must be one of none, {', '.join(THINKING_BUDGETS)}",
                          param="reasoning_effort")
    if not supports_thinking(model):
        return None
    return {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}


def _size_output(requested: int | None, model: str, thinking: dict | None) -> tuple[int, dict | None]:
    """``max_tokens`` within the model's limit, and a thinking budget that fits below it.

    A client's limit is kept (OpenAI's ``max_completion_tokens`` also counts reasoning), so the
    budget shrinks to half of it, and thinking goes off when even the minimum budget does not fit.
    """
    known = output_limit(model)
    limit = known or MAX_TOKENS_CAP
    max_tokens = min(requested, limit) if requested else (known or DEFAULT_MAX_TOKENS)
    if not thinking or thinking["type"] != "enabled":
        return max_tokens, thinking
    budget = thinking["budget_tokens"]
    if requested is None and max_tokens <= budget:
        max_tokens = min(limit, budget + DEFAULT_MAX_TOKENS)
    if budget >= max_tokens:
        budget = max_tokens // 2
    if budget < MIN_THINKING_BUDGET:
        return max_tokens, None
    return max_tokens, {**thinking, "budget_tokens": budget}


def _sampling(body: dict, thinking: bool) -> dict:
    out: dict[str, Any] = {}
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops = [s for s in stops if isinstance(s, str) and s.strip()]
    if stops:
        out["stop_sequences"] = stops
    if thinking:
        return out  # Anthropic rejects sampling changes while thinking
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = _number(body, key)
    if "temperature" in out:
        out["temperature"] = min(max(out["temperature"], 0.0), 1.0)  # OpenAI allows up to 2
    return out


def _number(body: dict, key: str) -> float | int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"{key} must be a number", param=key)
    return value


def _json_schema_format(response_format) -> dict | None:
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, dict) else None


def _output_config(response_format) -> dict:
    schema = _json_schema_format(response_format)
    return {"output_config": {"format": {"type": "json_schema", "schema": schema}}} if schema else {}


def _response_format_system(response_format) -> list[dict]:
    if not isinstance(response_format, dict):
        return []
    kind = response_format.get("type")
    wants_json = kind == "json_object" or (kind == "json_schema" and _json_schema_format(response_format) is None)
    return [{"type": "text", "text": JSON_ONLY_INSTRUCTION}] if wants_json else []


# ---- tools -----------------------------------------------------------------

def _tools(tools, names: ToolNameMap) -> list[dict]:
    out = []
    for tool in tools or []:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "web_search":
            out.append({"type": "web_search_20250305", "name": "web_search"})
        elif kind == "function" and isinstance(tool.get("function"), dict):
            out.append(_function_tool(tool["function"], names))
        # Other hosted tools have no Anthropic equivalent; the model simply does not see them.
    return out


def _function_tool(fn: dict, names: ToolNameMap) -> dict:
    schema = fn.get("parameters")
    schema = dict(schema) if isinstance(schema, dict) else {}
    schema.setdefault("type", "object")
    out = {"name": names.to_upstream(str(fn.get("name") or "")), "input_schema": schema}
    if fn.get("description"):
        out["description"] = fn["description"]
    if fn.get("strict") is True:
        out["strict"] = True
    return out


def _tool_choice(choice, parallel, names: ToolNameMap, thinking: bool) -> dict | None:
    out = _base_tool_choice(choice, names)
    if thinking and out and out["type"] in ("any", "tool"):
        out = {"type": "auto"}  # "Thinking may not be enabled when tool_choice forces tool use"
    if parallel is False and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def _base_tool_choice(choice, names: ToolNameMap) -> dict | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict):
        kind = choice.get("type")
        named = choice.get(kind) if kind in ("function", "custom") else None
        if isinstance(named, dict) and named.get("name"):
            return {"type": "tool", "name": names.to_upstream(named["name"])}
        if kind == "allowed_tools":
            mode = (choice.get("allowed_tools") or {}).get("mode", "auto")
            return {"type": "any" if mode == "required" else "auto"}
    raise bad_request("tool_choice must be auto, none, required or a named function", param="tool_choice")


# ---- messages --------------------------------------------------------------

def _convert_messages(messages: list, names: ToolNameMap) -> tuple[list[dict], list[_Turn]]:
    system: list[dict] = []
    turns: list[_Turn] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", param=f"messages[{i}]")
        role = msg.get("role")
        if role in ("system", "developer"):
            system += _text_blocks(msg.get("content"))
        elif role == "user":
            turns.append(_Turn("user", _user_blocks(msg.get("content"), f"messages[{i}].content")))
        elif role == "assistant":
            turns.append(_Turn("assistant", _assistant_blocks(msg, names)))
        elif role == "tool":
            turns.append(_Turn("user", [_tool_result(msg, f"messages[{i}].content")]))
        else:
            raise bad_request(f"unsupported message role {role!r}", param=f"messages[{i}].role")
    return system, turns


def _text_block(text: str, part: dict | None = None) -> list[dict]:
    if not isinstance(text, str) or not text.strip():
        return []
    block = {"type": "text", "text": text}
    if part and isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return [block]


def _text_blocks(content) -> list[dict]:
    if isinstance(content, str) or content is None:
        return _text_block(content or "")
    return [b for p in content if isinstance(p, dict) for b in _text_block(p.get("text", ""), p)
            if p.get("type") in ("text", "input_text", "output_text")]


def _user_blocks(content, param: str) -> list[dict]:
    if isinstance(content, str) or content is None:
        return _text_block(content or "")
    blocks = []
    for j, part in enumerate(content):
        blocks += _user_part(part if isinstance(part, dict) else {}, f"{param}[{j}]")
    return blocks


def _user_part(part: dict, param: str) -> list[dict]:
    kind = part.get("type")
    if kind in ("text", "input_text"):
        return _text_block(part.get("text", ""), part)
    if kind in ("image_url", "input_image"):
        return [_image_block(part, param)]
    if kind in ("file", "input_file"):
        return [_document_block(part, param)]
    if kind == "input_audio":
        raise bad_request("Audio input is not supported by Anthropic models; send a transcript as text instead.",
                          param=param)
    raise bad_request(f"unsupported content part type {kind!r} for Anthropic models", param=param)


def _image_block(part: dict, param: str) -> dict:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise bad_request("image parts need an image_url (a data: URL or an http(s) URL)", param=param)
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    parsed = parse_data_url(url)
    if parsed is None:
        raise bad_request("image_url must be a base64 data: URL or an http(s) URL", param=param)
    mime = "image/jpeg" if parsed[0] == "image/jpg" else parsed[0]
    if mime not in IMAGE_TYPES:
        raise bad_request(f"image type {mime} is not supported by Anthropic (jpeg, png, gif, webp only)", param=param)
    return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": parsed[1]}}


def _document_block(part: dict, param: str) -> dict:
    spec = part.get("file") if isinstance(part.get("file"), dict) else part
    filename = spec.get("filename")
    block: dict[str, Any] = {"type": "document", "source": _document_source(spec, param)}
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _document_source(spec: dict, param: str) -> dict:
    if spec.get("file_id") and not spec.get("file_data"):
        raise bad_request("file_id references cannot be resolved for Anthropic models; send file_data", param=param)
    url = spec.get("file_url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    data = spec.get("file_data")
    if not isinstance(data, str) or not data:
        raise bad_request("file parts need file_data (a base64 data: URL)", param=param)
    parsed = parse_data_url(data)
    filename = str(spec.get("filename") or "").lower()
    mime, payload = parsed if parsed else (_mime_from_filename(filename), data)
    if mime == "application/pdf":
        return {"type": "base64", "media_type": mime, "data": payload}
    if mime == "text/plain":
        return {"type": "text", "media_type": mime, "data": _b64_text(payload, param)}
    raise bad_request(f"file type {mime or 'unknown'} is not supported by Anthropic (PDF or plain text only)",
                      param=param)


def _mime_from_filename(filename: str) -> str | None:
    if filename.endswith(".pdf"):
        return "application/pdf"
    return "text/plain" if filename.endswith((".txt", ".md")) else None


def _b64_text(payload: str, param: str) -> str:
    try:
        return base64.b64decode(payload, validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise bad_request("file_data is not valid base64 text", param=param)


def _assistant_blocks(msg: dict, names: ToolNameMap) -> list[dict]:
    blocks = [b for raw in msg.get("thinking_blocks") or [] for b in _thinking_block(raw)]
    content = msg.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "refusal":
                blocks += _text_block(part.get("refusal", ""))
            elif isinstance(part, dict):
                blocks += _text_block(content_text([part]), part)
    else:
        blocks += _text_block(content or msg.get("refusal") or "")
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            blocks.append({"type": "tool_use", "id": safe_tool_id(str(call.get("id") or new_id("toolu_"))),
                           "name": names.to_upstream(str(fn.get("name") or "")),
                           "input": parse_arguments(fn.get("arguments"))})
    return blocks


def _thinking_block(raw) -> list[dict]:
    """Only signed blocks can go back; the signature must stay byte-exact."""
    if not isinstance(raw, dict):
        return []
    if raw.get("type") == "thinking" and isinstance(raw.get("signature"), str) and raw["signature"]:
        return [{"type": "thinking", "thinking": raw.get("thinking") or "", "signature": raw["signature"]}]
    if raw.get("type") == "redacted_thinking" and isinstance(raw.get("data"), str) and raw["data"]:
        return [{"type": "redacted_thinking", "data": raw["data"]}]
    return []


def _tool_result(msg: dict, param: str) -> dict:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": safe_tool_id(str(msg.get("tool_call_id") or ""))}
    content = msg.get("content")
    if isinstance(content, list):
        parts = [b for p in content if isinstance(p, dict) for b in _tool_result_part(p, param)]
        has_images = any(b["type"] != "text" for b in parts)
        content = parts if has_images else "\n".join(b["text"] for b in parts)
    if content:
        block["content"] = content
    return block


def _tool_result_part(part: dict, param: str) -> list[dict]:
    if part.get("type") in ("image_url", "input_image"):
        return [_image_block(part, param)]
    return _text_block(content_text([part]))


# ---- turn structure --------------------------------------------------------

def _finalize(turns: list[_Turn]) -> list[_Turn]:
    """Anthropic's shape rules, applied to converted turns (idempotent)."""
    turns = _merge(turns)
    turns = [_Turn(t.role, _ordered(t)) for t in turns]
    turns = _merge([t for t in turns if t.blocks])
    turns = _pair_tool_results(turns)
    if not turns or turns[0].role != "user":
        turns.insert(0, _Turn("user", [{"type": "text", "text": PLACEHOLDER_USER_TEXT}]))
    return _trim_prefill(turns)


def _merge(turns: list[_Turn]) -> list[_Turn]:
    out: list[_Turn] = []
    for turn in turns:
        if not turn.blocks:
            continue
        if out and out[-1].role == turn.role:
            out[-1] = _Turn(turn.role, out[-1].blocks + turn.blocks)
        else:
            out.append(_Turn(turn.role, list(turn.blocks)))
    return out


def _ordered(turn: _Turn) -> list[dict]:
    """Tool results lead a user turn; thinking leads an assistant turn and can never end it."""
    leading = {"tool_result"} if turn.role == "user" else THINKING_TYPES
    first = [b for b in turn.blocks if b["type"] in leading]
    rest = [b for b in turn.blocks if b["type"] not in leading]
    if turn.role == "assistant" and not rest:
        return []
    return first + rest


def _tool_use_ids(turn: _Turn | None) -> list[str]:
    if turn is None or turn.role != "assistant":
        return []
    return [b["id"] for b in turn.blocks if b["type"] == "tool_use"]


def _pair_tool_results(turns: list[_Turn]) -> list[_Turn]:
    """Every tool_use answered in the very next user turn, and no result without its call.

    ``turns`` alternate roles, so only a trailing assistant turn can lack a next user turn
    (Codex replays the calls of a stream that failed, without outputs).
    """
    out: list[_Turn] = []
    for turn in turns:
        pending = _tool_use_ids(out[-1] if out else None)
        out.append(_Turn("user", _answered(turn.blocks, pending)) if turn.role == "user" else turn)
    pending = _tool_use_ids(out[-1] if out else None)
    if pending:
        out.append(_Turn("user", _answered([], pending)))
    return out


def _answered(blocks: list[dict], ids: list[str]) -> list[dict]:
    results: dict[str, dict] = {}
    orphans: list[dict] = []
    for block in blocks:
        if block["type"] != "tool_result":
            continue
        if block["tool_use_id"] in ids and block["tool_use_id"] not in results:
            results[block["tool_use_id"]] = block
        else:
            orphans += _orphan_as_content(block)
    for call_id in ids:
        results.setdefault(call_id, {"type": "tool_result", "tool_use_id": call_id, "content": MISSING_RESULT,
                                     "is_error": True})
    return [results[i] for i in ids] + orphans + [b for b in blocks if b["type"] != "tool_result"]


def _orphan_as_content(block: dict) -> list[dict]:
    """A result whose call is not in the previous assistant turn (history cut by the client)."""
    content = block.get("content") or ""
    text = content if isinstance(content, str) else "\n".join(b["text"] for b in content if b["type"] == "text")
    media = [] if isinstance(content, str) else [b for b in content if b["type"] != "text"]
    return [{"type": "text", "text": f"[result of tool call {block['tool_use_id']}]\n{text}".rstrip()}, *media]


def _trim_prefill(turns: list[_Turn]) -> list[_Turn]:
    """A final assistant turn is a prefill, and Anthropic rejects trailing whitespace there.

    Text blocks are never blank here, so stripping cannot empty one.
    """
    last = turns[-1]
    if last.role == "assistant" and last.blocks[-1]["type"] == "text":
        last.blocks[-1] = {**last.blocks[-1], "text": last.blocks[-1]["text"].rstrip()}
    return turns


def _history_tool_names(turns: list[_Turn]) -> list[str]:
    names = [b["name"] for t in turns for b in t.blocks if b["type"] == "tool_use"]
    return list(dict.fromkeys(names))


def _thinking_continuity_ok(turns: list[_Turn]) -> bool:
    """With thinking on, a final assistant turn that used tools must replay its signed thinking."""
    last = next((t for t in reversed(turns) if t.role == "assistant"), None)
    if last is None or not _tool_use_ids(last):
        return True
    return last.blocks[0]["type"] in THINKING_TYPES


# ---- response --------------------------------------------------------------

def anthropic_usage(usage: Mapping | None) -> dict:
    """Anthropic usage -> Chat usage; prompt counts cache reads and writes (providers.md 6.8)."""
    usage = usage or {}
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    # cache_creation splits the writes by TTL (1-hour writes cost more); absent = all 5-minute
    write_1h = int((usage.get("cache_creation") or {}).get("ephemeral_1h_input_tokens") or 0)
    details = usage.get("output_tokens_details") or {}
    return chat_usage(int(usage.get("input_tokens") or 0) + cache_read + cache_write,
                      int(usage.get("output_tokens") or 0), cached=cache_read, cache_write=cache_write,
                      cache_write_1h=min(write_1h, cache_write), reasoning=int(details.get("thinking_tokens") or 0))


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


def _tool_call(block: dict, names: ToolNameMap) -> dict:
    return {"id": block.get("id"), "type": "function",
            "function": {"name": names.to_client(block.get("name") or ""),
                         "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}}


def anthropic_to_chat(resp: dict, ctx: AnthropicContext) -> dict:
    blocks = [b for b in resp.get("content") or [] if isinstance(b, dict)]
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
    thinking = [b for b in blocks if b.get("type") in THINKING_TYPES]
    calls = [_tool_call(b, ctx.names) for b in blocks if b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": None if calls and not text else text}
    if thinking:
        message["reasoning_content"] = "".join(b.get("thinking") or "" for b in thinking)
        message["thinking_blocks"] = thinking
    if calls:
        message["tool_calls"] = calls
    return chat_completion(resp.get("id") or new_id("chatcmpl-"), ctx.model, now(), message,
                           finish_reason(resp.get("stop_reason")), anthropic_usage(resp.get("usage")))


# ---- stream ----------------------------------------------------------------

@dataclass
class _Block:
    kind: str
    tool_index: int = -1
    data: dict = field(default_factory=dict)
    relayed: bool = False


class AnthropicStream:
    """Anthropic SSE events -> canonical Chat chunks (see the module docstring of ``common``).

    The finish chunk and the usage chunk go out at ``message_stop``: there may be several
    ``message_delta`` events, each with cumulative usage, and only the last one counts.
    """

    def __init__(self, ctx: AnthropicContext) -> None:
        self.ctx = ctx
        self.id = new_id("chatcmpl-")
        self.created = now()
        self._blocks: dict[int, _Block] = {}
        self._tools = 0
        self._thinking = 0
        self._usage: dict = {}
        self._stop_reason: str | None = None
        self._started = False
        self._done = False

    def feed(self, ev: SSEEvent) -> list[dict]:
        if self._done or not ev.data or ev.data == "[DONE]":
            return []
        try:
            data = json.loads(ev.data)
        except ValueError:
            raise ProxyError(502, "anthropic stream sent invalid JSON", code="server_error", retryable=True)
        kind = data.get("type") or ev.event
        handler = getattr(self, f"_on_{kind}", None)
        out = handler(data) if handler else []  # unknown events are ignored by Anthropic's versioning policy
        if not self._started and kind not in _PRELUDE:
            # The role chunk waits for the first content: Anthropic often sends message_start and
            # then an error (overloaded_error), and the router commits to an upstream at its first
            # chunk, so holding it lets that error still fail over or become a plain HTTP error.
            self._started = True
            out = [self._chunk({"role": "assistant", "content": ""}), *out]
        return out

    def finish(self) -> list[dict]:
        if not self._done:
            raise ProxyError(502, "anthropic stream ended before message_stop", code="server_error",
                             retryable=True)
        return []

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        return chat_chunk(self.id, self.ctx.model, self.created, delta, finish)

    def _on_error(self, data: dict) -> list[dict]:
        raise error_from_payload(data, None, {})

    def _on_message_start(self, data: dict) -> list[dict]:
        message = data.get("message") or {}
        self.id = message.get("id") or self.id
        self._usage = dict(message.get("usage") or {})
        return []

    def _on_content_block_start(self, data: dict) -> list[dict]:
        block = data.get("content_block") or {}
        kind = block.get("type")
        index = data.get("index", len(self._blocks))
        if kind == "tool_use":
            state = _Block(kind, self._tools, {"input": block.get("input") or {}})
            self._tools += 1
            self._blocks[index] = state
            return [self._tool_delta(state, {"id": block.get("id"), "type": "function",
                                             "function": {"name": self.ctx.names.to_client(block.get("name", "")),
                                                          "arguments": ""}})]
        if kind == "thinking":
            self._blocks[index] = _Block(kind, data={"type": "thinking", "thinking": block.get("thinking") or "",
                                                     "signature": block.get("signature") or ""})
            return [self._chunk({"reasoning_content": block["thinking"]})] if block.get("thinking") else []
        self._blocks[index] = _Block(kind or "unknown", data=dict(block))
        return [self._chunk({"content": block["text"]})] if kind == "text" and block.get("text") else []

    def _tool_delta(self, state: _Block, call: dict) -> dict:
        return self._chunk({"tool_calls": [{"index": state.tool_index, **call}]})

    def _on_content_block_delta(self, data: dict) -> list[dict]:
        state = self._blocks.get(data.get("index", -1))
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if state is None:
            return []
        if kind == "text_delta" and state.kind == "text" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and state.kind == "thinking" and delta.get("thinking"):
            state.data["thinking"] += delta["thinking"]
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "signature_delta" and state.kind == "thinking":
            state.data["signature"] += delta.get("signature") or ""
        elif kind == "input_json_delta" and state.kind == "tool_use" and delta.get("partial_json"):
            state.relayed = True
            return [self._tool_delta(state, {"function": {"arguments": delta["partial_json"]}})]
        return []

    def _on_content_block_stop(self, data: dict) -> list[dict]:
        state = self._blocks.get(data.get("index", -1))
        if state is None:
            return []
        if state.kind in THINKING_TYPES:
            # OpenAI clients merge list deltas by ``index`` (the SDK's stream helper raises without it).
            block = {"index": self._thinking, **state.data}
            self._thinking += 1
            return [self._chunk({"thinking_blocks": [block]})]
        if state.kind == "tool_use" and not state.relayed:
            # A call with no input fragments still needs valid JSON arguments.
            state.relayed = True
            arguments = json.dumps(state.data["input"], ensure_ascii=False)
            return [self._tool_delta(state, {"function": {"arguments": arguments}})]
        return []

    def _on_message_delta(self, data: dict) -> list[dict]:
        self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
        self._usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        return []

    def _on_message_stop(self, data: dict) -> list[dict]:
        self._done = True
        return [self._chunk({}, finish_reason(self._stop_reason)),
                usage_chunk(self.id, self.ctx.model, self.created, anthropic_usage(self._usage))]


# ---- errors ----------------------------------------------------------------

def error_from_payload(payload, status: int | None, headers: Mapping[str, str]) -> ProxyError:
    """An Anthropic (or Vertex/Google) error body, already parsed, as the router's error."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return _classify(status or 502, json.dumps(payload)[:500], None, headers)
    code = err.get("type") or err.get("status")
    details = err.get("details") if isinstance(err.get("details"), dict) else {}
    if details.get("error_code") == "enforced_spend_limit_reached":
        code = "insufficient_quota"
    message = str(err.get("message") or code or "")
    if status is None:
        status = ERROR_TYPE_STATUS.get(code or "", 500)
    status, code = _GOOGLE_STATUS.get(err.get("status") or "", (status, code))
    if status == 400 and _BILLING_400.search(message):
        status = 402
    return _classify(status, message, code, headers)


def _classify(status: int, message: str, code: str | None, headers: Mapping[str, str]) -> ProxyError:
    return classify_upstream_error(status, message[:2000], provider="anthropic", upstream_code=code,
                                   headers=headers)


def anthropic_error(status: int, body: bytes, headers: Mapping[str, str] | None) -> ProxyError:
    """An upstream HTTP error; the message comes from the body only, never from request headers."""
    lowered = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes | bytearray) else str(body or "")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict | list) and payload:
        err = error_from_payload(payload, status, lowered)
        if isinstance(payload, dict) and payload.get("type") == "error":
            redacted = redact(text)  # unchanged unless the provider echoed a secret the router holds
            err.upstream_body = body if redacted == text and isinstance(body, bytes) else redacted.encode()
        return err
    return _classify(status, " ".join(text.split())[:500], None, lowered)
