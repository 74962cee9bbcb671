"""A strict fake of Anthropic's Messages API (and of Claude on Vertex AI), for ``FakeServer``.

Script it with what each request should get back, point the router at it, and
it rejects every request the real API would reject for its shape (providers.md
3.7 and 9), with Anthropic's own 400 error body::

    fake = AnthropicFake([
        Turn([thinking("Check the files."), tool_use("exec_command", {"cmd": "ls"})]),
        Turn([text("Done.")], usage={"input_tokens": 40, "cache_read_input_tokens": 900}),
        Fail.overloaded(),
    ], api_key="k")
    server = FakeServer(fake.handler).start()   # POST {server.url}/v1/messages
    fake.received      # every JSON body that got past authentication, in order
    fake.rejections    # the validator's 400 messages, in order

* Each request consumes the next script item: a ``Turn`` (content blocks to answer
  with; streamed as ``event:``/``data:`` SSE when the body says ``stream: true``), a
  ``Fail`` (an error mode) or a plain list of blocks (shorthand for ``Turn``). A
  request that fails authentication or validation consumes nothing. When the
  script runs out the fake answers 500 ``api_error``.
* Blocks: ``text(s)``, ``thinking(s)`` (a signature the fake can verify later is
  added), ``redacted_thinking()``, ``tool_use(name, input, id=None)``, or any raw
  block dict (``server_tool_use``, ``web_search_tool_result``...) passed through.
* ``Turn(..., usage={...})`` overrides usage fields (cache fields included);
  ``delay`` sleeps between SSE events; ``cut_after=N`` ends the stream after N
  events without ``message_stop``; ``stop_reason`` overrides the default
  (``tool_use`` when the turn has tool calls, else ``end_turn``).
* ``Fail.overloaded()`` (HTTP 529), ``Fail.rate_limited(retry_after=2)`` (429 +
  ``retry-after``), ``Fail.bad_request(msg)`` (400 + ``x-should-retry: false``),
  ``Fail.mid_stream()`` (200, ``message_start``, then an ``overloaded_error`` event;
  a non-streaming request gets the matching HTTP status), ``Fail.http(status,
  type, message, headers)``.
* ``vertex=True``: ``POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:rawPredict``
  (``:streamRawPredict`` when streaming), ``authorization: Bearer {token}``, no
  ``model`` in the body, ``anthropic_version: vertex-2023-10-16``.

``validate_body(body, vertex=False)`` is the validator on its own (no socket); it
raises ``InvalidRequest``. Thinking signatures are HMACs of the thinking text, so
any instance verifies what another issued, and any change to text or signature
is caught.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from proxy.sse import encode
from tests.fakes.server import Recorded, Reply

VERTEX_VERSION = "vertex-2023-10-16"
_KEY = b"anthropic-fake-thinking-signatures"
_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_VERTEX_PATH = re.compile(
    r"^/v1/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/(?P<model>[^/:]+):(?P<verb>rawPredict|streamRawPredict)$"
)
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
THINKING = frozenset({"thinking", "redacted_thinking"})

_TOP_LEVEL = frozenset({
    "model", "max_tokens", "messages", "system", "tools", "tool_choice", "stop_sequences", "temperature", "top_p",
    "top_k", "thinking", "output_config", "metadata", "service_tier", "stream", "container", "mcp_servers",
    "context_management", "inference_geo",
})
_BLOCK_KEYS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
    "search_result": {"type", "source", "title", "content", "citations", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
    "server_tool_use": {"type", "id", "name", "input", "cache_control"},
    "web_search_tool_result": {"type", "tool_use_id", "content", "cache_control"},
}
_ROLE_BLOCKS = {
    "user": {"text", "image", "document", "search_result", "tool_result"},
    "assistant": {"text", "thinking", "redacted_thinking", "tool_use", "server_tool_use", "web_search_tool_result"},
}
_TOOL_KEYS = {"type", "name", "description", "input_schema", "cache_control", "strict", "input_examples"}
_WEB_SEARCH_KEYS = {"type", "name", "max_uses", "allowed_domains", "blocked_domains", "user_location", "cache_control"}
ADVANCED_TOOL_USE = "advanced-tool-use-2025-11-20"
_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500, "invalid_request_error": 400}


class InvalidRequest(Exception):
    """What the real API answers with a 400 ``invalid_request_error``."""


# ---- signatures ------------------------------------------------------------

def sign_thinking(thinking_text: str) -> str:
    # Standard base64 with + / = like real signatures, so re-encoding bugs show up.
    return base64.b64encode(hmac.new(_KEY, thinking_text.encode(), hashlib.sha512).digest()).decode()


def valid_signature(thinking_text: str, signature: str) -> bool:
    return isinstance(signature, str) and hmac.compare_digest(sign_thinking(thinking_text), signature)


def redacted_data() -> str:
    nonce = secrets.token_bytes(16)
    return base64.b64encode(nonce + hmac.new(_KEY, nonce, hashlib.sha256).digest()).decode()


def valid_redacted(data: str) -> bool:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return False
    return len(raw) == 48 and hmac.compare_digest(hmac.new(_KEY, raw[:16], hashlib.sha256).digest(), raw[16:])


# ---- script ----------------------------------------------------------------

def text(value: str) -> dict:
    return {"type": "text", "text": value}


def thinking(value: str) -> dict:
    return {"type": "thinking", "thinking": value}


def redacted_thinking() -> dict:
    return {"type": "redacted_thinking"}


def tool_use(name: str, input: dict | None = None, id: str | None = None) -> dict:
    block = {"type": "tool_use", "name": name, "input": input or {}}
    return {**block, "id": id} if id else block


@dataclass
class Turn:
    blocks: list[dict]
    stop_reason: str | None = None
    usage: dict | None = None
    delay: float = 0.0
    cut_after: int | None = None
    fragment: int = 12


@dataclass
class Fail:
    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    after_start: bool = False  # streaming requests get 200, message_start, then the error event
    delay: float = 0.0

    @classmethod
    def http(cls, status: int, error_type: str, message: str, headers: dict | None = None) -> Fail:
        return cls(status, error_type, message, dict(headers or {}))

    @classmethod
    def overloaded(cls) -> Fail:
        return cls(529, "overloaded_error", "Overloaded")

    @classmethod
    def rate_limited(cls, retry_after: float = 1) -> Fail:
        return cls(429, "rate_limit_error", "This request would exceed the rate limit for your organization.",
                   {"retry-after": f"{retry_after:g}"})

    @classmethod
    def bad_request(cls, message: str = "Invalid request.") -> Fail:
        return cls(400, "invalid_request_error", message, {"x-should-retry": "false"})

    @classmethod
    def mid_stream(cls, error_type: str = "overloaded_error", message: str = "Overloaded", delay: float = 0.0) -> Fail:
        return cls(_ERROR_STATUS.get(error_type, 500), error_type, message, after_start=True, delay=delay)


# ---- validation ------------------------------------------------------------

def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidRequest(message)


def validate_body(body: Any, *, vertex: bool = False, betas: frozenset[str] = frozenset()) -> None:
    """Raise ``InvalidRequest`` for what the Messages API would reject (shape rules only).

    ``betas``: the ``anthropic-beta`` features of the request (``advanced-tool-use-2025-11-20``
    allows ``defer_loading`` on tools, as Claude Code sends)."""
    _check(isinstance(body, dict), "body: Input should be an object")
    _check_top_level(body, vertex)
    _check_system(body.get("system"))
    names = _check_tools(body.get("tools"), ADVANCED_TOOL_USE in betas)
    _check_tool_choice(body.get("tool_choice"), names)
    _check_messages(body.get("messages"))
    _check(bool(names) or not any(b["type"] in ("tool_use", "tool_result") for m in body["messages"]
                                  for b in _blocks(m, "")),
           "Requests which include `tool_use` or `tool_result` blocks must define tools.")
    _check_thinking(body)
    marks = json.dumps([body.get("system"), body.get("tools"), body["messages"]]).count('"cache_control"')
    _check(marks <= 4, f"A maximum of 4 blocks with cache_control may be provided. Found {marks}.")


def _check_top_level(body: dict, vertex: bool) -> None:
    allowed = (_TOP_LEVEL - {"model"}) | {"anthropic_version"} if vertex else _TOP_LEVEL
    for key in body:
        _check(key in allowed, f"{key}: Extra inputs are not permitted")
    if vertex:
        _check(body.get("anthropic_version") == VERTEX_VERSION, f"anthropic_version: must be {VERTEX_VERSION!r}")
    else:
        _check(isinstance(body.get("model"), str) and bool(body["model"]), "model: Field required")
    max_tokens = body.get("max_tokens")
    _check(max_tokens is not None, "max_tokens: Field required")
    _check(_is_int(max_tokens) and max_tokens >= 1, "max_tokens: Input should be a positive integer")
    _check(isinstance(body.get("stream", False), bool), "stream: Input should be a valid boolean")
    for key, high in (("temperature", 1.0), ("top_p", 1.0)):
        if key in body:
            _check(_is_number(body[key]) and 0 <= body[key] <= high, f"{key}: Input should be between 0 and {high}")
    if "top_k" in body:
        _check(_is_int(body["top_k"]) and body["top_k"] >= 0, "top_k: Input should be a non-negative integer")
    stops = body.get("stop_sequences", [])
    _check(isinstance(stops, list) and all(isinstance(s, str) and s.strip() for s in stops),
           "stop_sequences: each stop sequence must be a string containing non-whitespace")
    metadata = body.get("metadata", {})
    _check(isinstance(metadata, dict) and set(metadata) <= {"user_id"}, "metadata: only user_id is permitted")
    _check(body.get("service_tier", "auto") in ("auto", "standard_only"), "service_tier: Input should be 'auto' or "
           "'standard_only'")
    _check_output_config(body.get("output_config"))


def _check_output_config(config) -> None:
    if config is None:
        return
    _check(isinstance(config, dict) and set(config) <= {"effort", "format"}, "output_config: Extra inputs are not "
           "permitted")
    fmt = config.get("format")
    if fmt is not None:
        _check(isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict),
               "output_config.format: expected {type: json_schema, schema: object}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_text(block: dict, path: str) -> None:
    value = block.get("text")
    _check(isinstance(value, str), f"{path}.text: Field required")
    _check(value != "", f"{path}: text content blocks must be non-empty")
    _check(bool(value.strip()), f"{path}: text content blocks must contain non-whitespace text")


def _check_system(system) -> None:
    if system is None or isinstance(system, str):
        return
    _check(isinstance(system, list), "system: Input should be a valid string or list")
    for i, block in enumerate(system):
        _check(isinstance(block, dict) and block.get("type") == "text", f"system.{i}.type: must be 'text'")
        _check_keys(block, _BLOCK_KEYS["text"], f"system.{i}")
        _check_text(block, f"system.{i}")


def _check_keys(block: dict, allowed: set[str], path: str) -> None:
    for key in block:
        _check(key in allowed, f"{path}.{key}: Extra inputs are not permitted")


def _check_tools(tools, deferred_allowed: bool = False) -> set[str]:
    if tools is None:
        return set()
    _check(isinstance(tools, list), "tools: Input should be a valid list")
    names: list[str] = []
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        _check(isinstance(tool, dict), f"{path}: Input should be an object")
        if str(tool.get("type", "")).startswith("web_search_"):
            _check_keys(tool, _WEB_SEARCH_KEYS, path)
            _check(tool.get("name") == "web_search", f"{path}.name: Input should be 'web_search'")
        else:
            _check(tool.get("type", "custom") == "custom", f"{path}.type: unknown tool type {tool.get('type')!r}")
            _check_keys(tool, _TOOL_KEYS | ({"defer_loading"} if deferred_allowed else set()), path)
            _check(isinstance(tool.get("name"), str) and bool(_NAME.match(tool["name"])),
                   f"{path}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
            schema = tool.get("input_schema")
            _check(isinstance(schema, dict) and schema.get("type") == "object",
                   f"{path}.input_schema.type: Input should be 'object'")
        names.append(tool["name"])
    _check(len(names) == len(set(names)), "tools: Tool names must be unique.")
    return set(names)


def _check_tool_choice(choice, names: set[str]) -> None:
    if choice is None:
        return
    _check(bool(names), "tool_choice: tool_choice may only be specified while providing tools.")
    _check(isinstance(choice, dict) and choice.get("type") in ("auto", "any", "tool", "none"),
           "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    _check_keys(choice, {"type", "name", "disable_parallel_tool_use"}, "tool_choice")
    if choice["type"] == "tool":
        _check(choice.get("name") in names, f"tool_choice.name: no tool named {choice.get('name')!r}")
    _check(isinstance(choice.get("disable_parallel_tool_use", False), bool),
           "tool_choice.disable_parallel_tool_use: Input should be a valid boolean")


def _blocks(message: dict, path: str) -> list[dict]:
    content = message.get("content")
    if isinstance(content, str):
        return [text(content)] if content else []
    _check(isinstance(content, list), f"{path}.content: Input should be a valid string or list")
    for j, block in enumerate(content):
        _check(isinstance(block, dict) and isinstance(block.get("type"), str), f"{path}.content.{j}: Input should "
               "be a content block object")
    return content


def _check_messages(messages) -> None:
    _check(isinstance(messages, list) and bool(messages), "messages: at least one message is required")
    previous_calls: list[str] = []
    seen_ids: set[str] = set()
    last_role = None
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        _check(isinstance(message, dict) and message.get("role") in ("user", "assistant"),
               f"{path}.role: Input should be 'user' or 'assistant'")
        role = message["role"]
        _check(i > 0 or role == "user", f"{path}.role: the first message must use the \"user\" role")
        _check(role != last_role, "messages: roles must alternate between \"user\" and \"assistant\"")
        blocks = _blocks(message, path)
        final_assistant = role == "assistant" and i == len(messages) - 1
        _check(bool(blocks) or final_assistant, f"{path}: all messages must have non-empty content except for "
               "the optional final assistant message")
        for j, block in enumerate(blocks):
            _check_block(block, role, f"{path}.content.{j}", seen_ids)
        if role == "user":
            _check_results(blocks, previous_calls, path, f"messages.{i - 1}")
            previous_calls = []
        else:
            _check_assistant_order(blocks, path)
            previous_calls = [b["id"] for b in blocks if b["type"] == "tool_use"]
        last_role = role
    _check(not previous_calls, f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` "
           f"blocks immediately after: {', '.join(previous_calls)}. Each `tool_use` block must have a corresponding "
           "`tool_result` block in the next message.")
    _check_prefill(messages[-1], len(messages) - 1)


def _check_prefill(message: dict, index: int) -> None:
    if message["role"] != "assistant":
        return
    blocks = _blocks(message, f"messages.{index}")
    if blocks and blocks[-1]["type"] == "text":
        _check(blocks[-1]["text"] == blocks[-1]["text"].rstrip(),
               "final assistant content cannot end with trailing whitespace")


def _check_block(block: dict, role: str, path: str, seen_ids: set[str]) -> None:
    kind = block["type"]
    _check(kind in _ROLE_BLOCKS[role], f"{path}.type: '{kind}' blocks are not permitted in {role} messages")
    _check_keys(block, _BLOCK_KEYS[kind], path)
    if kind == "text":
        _check_text(block, path)
    elif kind == "image":
        _check_image(block.get("source"), f"{path}.source")
    elif kind == "document":
        _check_document(block.get("source"), f"{path}.source")
    elif kind == "tool_use":
        _check(isinstance(block.get("id"), str) and bool(_ID.match(block["id"])),
               f"{path}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        _check(block["id"] not in seen_ids, f"{path}: `tool_use` ids must be unique")
        seen_ids.add(block["id"])
        _check(isinstance(block.get("name"), str) and bool(_NAME.match(block["name"])),
               f"{path}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        _check(isinstance(block.get("input"), dict), f"{path}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        _check_tool_result(block, path)
    elif kind == "thinking":
        _check(valid_signature(block.get("thinking", ""), block.get("signature", "")),
               f"{path}: Invalid `signature` in `thinking` block")
    elif kind == "redacted_thinking":
        _check(valid_redacted(block.get("data", "")), f"{path}: Invalid `data` in `redacted_thinking` block")


def _check_image(source, path: str) -> None:
    _check(isinstance(source, dict), f"{path}: Field required")
    if source.get("type") == "url":
        _check(str(source.get("url", "")).startswith(("http://", "https://")), f"{path}.url: must be an http(s) URL")
        return
    _check(source.get("type") == "base64", f"{path}.type: Input should be 'base64' or 'url'")
    _check(source.get("media_type") in IMAGE_TYPES, f"{path}.media_type: Input should be 'image/jpeg', "
           "'image/png', 'image/gif' or 'image/webp'")
    _check(_is_base64(source.get("data")), f"{path}.data: invalid base64 data")


def _check_document(source, path: str) -> None:
    _check(isinstance(source, dict), f"{path}: Field required")
    kind = source.get("type")
    if kind == "url":
        _check(str(source.get("url", "")).startswith(("http://", "https://")), f"{path}.url: must be an http(s) URL")
    elif kind == "text":
        _check(source.get("media_type") == "text/plain" and isinstance(source.get("data"), str),
               f"{path}: text sources need media_type text/plain and data")
    else:
        _check(kind == "base64" and source.get("media_type") == "application/pdf", f"{path}: expected a PDF source")
        _check(_is_base64(source.get("data")), f"{path}.data: invalid base64 data")


def _is_base64(data) -> bool:
    if not isinstance(data, str) or not data:
        return False
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _check_tool_result(block: dict, path: str) -> None:
    _check(isinstance(block.get("tool_use_id"), str) and bool(_ID.match(block["tool_use_id"])),
           f"{path}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    _check(isinstance(content, list), f"{path}.content: Input should be a valid string or list")
    for k, inner in enumerate(content):
        inner_path = f"{path}.content.{k}"
        _check(isinstance(inner, dict) and inner.get("type") in ("text", "image", "document", "search_result"),
               f"{inner_path}.type: Input should be 'text', 'image', 'document' or 'search_result'")
        _check_keys(inner, _BLOCK_KEYS[inner["type"]], inner_path)
        if inner["type"] == "text":
            _check_text(inner, inner_path)
        elif inner["type"] == "image":
            _check_image(inner.get("source"), f"{inner_path}.source")


def _check_results(blocks: list[dict], calls: list[str], path: str, call_path: str) -> None:
    ids = [b.get("tool_use_id") for b in blocks if b["type"] == "tool_result"]
    leading = len(list(itertools.takewhile(lambda b: b["type"] == "tool_result", blocks)))
    if calls:
        _check(leading >= len(ids), f"{path}.content.0: Did not find {len(ids)} `tool_result` block(s) at the "
               "beginning of this message. Messages following `tool_use` blocks must begin with a matching number "
               "of `tool_result` blocks.")
    for call_id in ids:
        _check(call_id in calls, f"{path}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
               f"{call_id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous "
               "message.")
    _check(len(ids) == len(set(ids)), f"{path}.content: each `tool_use_id` may be answered only once")
    missing = [c for c in calls if c not in ids]
    _check(not missing, f"{call_path}: `tool_use` ids were found without `tool_result` blocks immediately after: "
           f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in the next "
           "message.")


def _check_assistant_order(blocks: list[dict], path: str) -> None:
    if not any(b["type"] in THINKING for b in blocks):
        return
    _check(blocks[0]["type"] in THINKING, f"{path}.content.0: If an assistant message contains any thinking "
           "blocks, the first block must be `thinking` or `redacted_thinking`.")
    _check(blocks[-1]["type"] not in THINKING, f"{path}: The final block in an assistant message cannot be "
           "`thinking`.")


def _check_thinking(body: dict) -> None:
    config = body.get("thinking") or {"type": "disabled"}
    kind = config.get("type") if isinstance(config, dict) else None
    _check(kind in ("enabled", "adaptive", "disabled"), "thinking.type: Input should be 'enabled', 'adaptive' or "
           "'disabled'")
    messages = body["messages"]
    if kind == "disabled":
        last = messages[-1]
        _check(last["role"] != "assistant" or not any(b["type"] in THINKING for b in _blocks(last, "")),
               "When thinking is disabled, an `assistant` message in the final position cannot contain `thinking`. "
               "To use thinking blocks, enable `thinking` in your request.")
        return
    if kind == "enabled":
        budget = config.get("budget_tokens")
        _check(_is_int(budget) and budget >= 1024, "thinking.enabled.budget_tokens: Input should be greater than "
               "or equal to 1024")
        _check(budget < body["max_tokens"], "`max_tokens` must be greater than `thinking.budget_tokens`.")
        choice = body.get("tool_choice") or {}
        _check(choice.get("type") not in ("any", "tool"), "Thinking may not be enabled when tool_choice forces "
               "tool use.")
    _check(body.get("temperature", 1) == 1, "`temperature` may only be set to 1 when thinking is enabled.")
    _check("top_k" not in body, "`top_k` must be unset when thinking is enabled.")
    _check(body.get("top_p", 1) >= 0.95, "`top_p` must be greater than or equal to 0.95 when thinking is enabled.")
    if kind == "enabled":
        # with adaptive thinking the model may skip thinking, so a turn without it stays valid
        _check_final_thinking(messages)


def _check_final_thinking(messages: list[dict]) -> None:
    index, last = next(((i, m) for i, m in reversed(list(enumerate(messages))) if m["role"] == "assistant"),
                       (0, None))
    if last is None:
        return
    blocks = _blocks(last, "")
    if any(b["type"] == "tool_use" for b in blocks):
        _check(blocks[0]["type"] in THINKING, f"messages.{index}.content.0.type: Expected `thinking` or "
               f"`redacted_thinking`, but found `{blocks[0]['type']}`. When `thinking` is enabled, a final "
               "`assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and "
               "`tool_result` blocks). To avoid this requirement, disable `thinking`.")


# ---- answers ---------------------------------------------------------------

def fake_count(body: dict) -> int:
    payload = {k: body.get(k) for k in ("system", "messages", "tools")}
    return len(json.dumps(payload, sort_keys=True)) // 4

def error_body(error_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": f"req_fake_{secrets.token_hex(6)}"}


def _error_reply(status: int, error_type: str, message: str, headers: dict | None = None) -> Reply:
    body = error_body(error_type, message)
    return Reply(status=status, json=body, headers={"request-id": body["request_id"], **(headers or {})})


def _google_error(status: int, state: str, message: str) -> Reply:
    return Reply(status=status, json={"error": {"code": status, "message": message, "status": state}})


def _default_usage(blocks: list[dict]) -> dict:
    output = sum(len(json.dumps(b)) for b in blocks) // 4 + 1
    return {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output}


def _pieces(value: str, size: int) -> list[str]:
    return [value[i:i + size] for i in range(0, len(value), size)] or [""]


class AnthropicFake:
    def __init__(self, turns: list[Turn | Fail | list[dict]] | None = None, *, api_key: str = "test-key",
                 vertex: bool = False, token: str = "test-token") -> None:
        self.script: list[Turn | Fail | list[dict]] = list(turns or [])
        self.api_key = api_key
        self.vertex = vertex
        self.token = token
        self.received: list[dict] = []
        self.received_headers: list[dict[str, str]] = []
        self.counted: list[dict] = []  # count_tokens bodies
        self.rejections: list[str] = []
        self._ids = itertools.count(1)

    def add(self, *turns: Turn | Fail | list[dict]) -> None:
        self.script.extend(turns)

    # -- request handling

    async def handler(self, req: Recorded) -> Reply:
        routed = self._route(req)
        if isinstance(routed, Reply):
            return routed
        model_in_path, verb = routed
        try:
            body = json.loads(req.body)
        except ValueError:
            return _error_reply(400, "invalid_request_error", "There was an issue with your request body: invalid "
                                "JSON")
        if verb == "count_tokens":
            return self._count(body)
        self.received.append(body)
        self.received_headers.append(dict(req.headers))
        betas = frozenset(b.strip() for b in req.headers.get("anthropic-beta", "").split(",") if b.strip())
        try:
            validate_body(body, vertex=self.vertex, betas=betas)
            _check(verb is None or (verb == "streamRawPredict") == bool(body.get("stream")),
                   f"stream: {verb} does not match stream={body.get('stream')!r}")
        except InvalidRequest as exc:
            self.rejections.append(str(exc))
            return _error_reply(400, "invalid_request_error", str(exc), {"x-should-retry": "false"})
        if not self.script:
            return _error_reply(500, "api_error", "fake anthropic: no scripted turn left")
        return self._answer(self.script.pop(0), model_in_path or body["model"], bool(body.get("stream")))

    def _route(self, req: Recorded) -> tuple[str | None, str | None] | Reply:
        if self.vertex:
            match = _VERTEX_PATH.match(req.path)
            if req.method != "POST" or match is None:
                return _google_error(404, "NOT_FOUND", f"fake vertex: no route for {req.method} {req.path}")
            if req.headers.get("authorization") != f"Bearer {self.token}":
                return _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            if match.group("model") == "count-tokens" and match.group("verb") == "rawPredict":
                return None, "count_tokens"
            return match.group("model"), match.group("verb")
        if req.method == "POST" and req.path == "/v1/messages/count_tokens":
            routed = self._route(Recorded(req.method, "/v1/messages", req.query, req.headers, req.body))
            return routed if isinstance(routed, Reply) else (None, "count_tokens")
        if req.method != "POST" or req.path != "/v1/messages":
            return _error_reply(404, "not_found_error", f"Not found: {req.method} {req.path}")
        if req.headers.get("x-api-key") != self.api_key:
            return _error_reply(401, "authentication_error", "invalid x-api-key")
        if not req.headers.get("anthropic-version"):
            return _error_reply(400, "invalid_request_error", "anthropic-version: header is required")
        return None, None

    def _count(self, body: dict) -> Reply:
        """``count_tokens``: the fake's count is a function of the request (a quarter of its JSON length)."""
        self.counted.append(body)
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            return _error_reply(400, "invalid_request_error", "model: Field required")
        for key in ("max_tokens", "stream", "metadata", "temperature"):
            if key in body:
                return _error_reply(400, "invalid_request_error", f"{key}: Extra inputs are not permitted")
        return Reply(json={"input_tokens": fake_count(body)})

    def _answer(self, item: Turn | Fail | list[dict], model: str, stream: bool) -> Reply:
        if isinstance(item, list):
            item = Turn(item)
        if isinstance(item, Fail):
            return self._fail(item, model, stream)
        message = self.message(item, model)
        if not stream:
            return Reply(json=message, headers={"request-id": f"req_fake_{secrets.token_hex(6)}"})
        frames = self.events(item, message)
        if item.cut_after is not None:
            frames = frames[: item.cut_after]
        return Reply(sse=self._paced(frames, item.delay), headers={"cache-control": "no-cache"})

    def _fail(self, fail: Fail, model: str, stream: bool) -> Reply:
        if not (fail.after_start and stream):
            reply = _error_reply(fail.status, fail.error_type, fail.message, fail.headers)
            reply.hang = fail.delay
            return reply
        start = self._message_start(self.message(Turn([]), model))
        error = {"type": "error", "error": {"type": fail.error_type, "message": fail.message}}
        return Reply(sse=self._paced([start, error], fail.delay))

    @staticmethod
    def _paced(events: list[dict], delay: float) -> list[bytes | float]:
        frames: list[bytes | float] = []
        for ev in events:
            if delay and frames:
                frames.append(delay)
            frames.append(encode(ev, event=ev["type"]))
        return frames

    # -- answer construction

    def message(self, turn: Turn, model: str) -> dict:
        """The complete Message for a turn (signatures, ids and usage filled in)."""
        blocks = [self._materialize(b) for b in turn.blocks]
        stop = turn.stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn")
        return {"id": f"msg_fake_{next(self._ids):04d}", "type": "message", "role": "assistant", "model": model,
                "content": blocks, "stop_reason": stop, "stop_sequence": None,
                "usage": {**_default_usage(blocks), **(turn.usage or {})}}

    def _materialize(self, block: dict) -> dict:
        kind = block.get("type")
        if kind == "thinking":
            return {"type": "thinking", "thinking": block["thinking"], "signature": sign_thinking(block["thinking"])}
        if kind == "redacted_thinking":
            return {"type": "redacted_thinking", "data": block.get("data") or redacted_data()}
        if kind == "tool_use":
            return {"type": "tool_use", "id": block.get("id") or f"toolu_fake_{next(self._ids):04d}",
                    "name": block["name"], "input": block.get("input") or {}}
        return dict(block)

    @staticmethod
    def _message_start(message: dict) -> dict:
        usage = {**message["usage"], "output_tokens": 1}
        return {"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                      "usage": usage}}

    def events(self, turn: Turn, message: dict) -> list[dict]:
        """The SSE events (as dicts) streaming ``message``, the way the real API orders them."""
        events = [self._message_start(message), {"type": "ping"}]
        for index, block in enumerate(message["content"]):
            events += self._block_events(index, block, turn.fragment)
            if index == 0:
                events.append({"type": "ping"})
        events.append({"type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                                          "stop_sequence": None}, "usage": message["usage"]})
        events.append({"type": "message_stop"})
        return events

    @staticmethod
    def _block_events(index: int, block: dict, size: int) -> list[dict]:
        kind = block["type"]
        deltas: list[dict] = []
        if kind == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"], size)]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], size)]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "tool_use":
            start = {**block, "input": {}}
            # The real API opens with an empty fragment; a call without input sends nothing else.
            arguments = json.dumps(block["input"]) if block["input"] else ""
            fragments = ["", *(_pieces(arguments, size) if arguments else [])]
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in fragments]
        else:
            start = block
        return ([{"type": "content_block_start", "index": index, "content_block": start}]
                + [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
                + [{"type": "content_block_stop", "index": index}])


def claude_on_vertex(fake: AnthropicFake, oauth, front: list[Reply] | None = None):
    """A handler for the vertex-mode fake that accepts the tokens ``oauth`` (a ``FakeOAuth``) issued."""
    queued = list(front or [])

    async def handle(req: Recorded) -> Reply:
        if queued:
            return queued.pop(0)
        token = req.headers.get("authorization", "").removeprefix("Bearer ")
        fake.token = token if oauth.valid(token) else "not-a-valid-token"
        return await fake.handler(req)

    return handle
