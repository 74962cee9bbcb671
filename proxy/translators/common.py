"""Helpers shared by the pure translators (no I/O anywhere in this package).

The router's internal format is OpenAI Chat Completions (request, response and
stream chunks as plain dicts) with three extensions every translator honours:

* assistant messages / deltas may carry ``reasoning_content`` (str) and
  ``thinking_blocks`` (Anthropic-shaped ``{"type": "thinking", "thinking",
  "signature"}`` or ``{"type": "redacted_thinking", "data"}``), so thinking
  signatures can round-trip through Chat clients;
* a tool call id may carry a Gemini thought signature as
  ``<id>__thought__<signature>`` (clients always echo ids); ``split_thought``
  removes it before any other provider sees the id;
* the last stream chunk with ``choices: []`` carries ``usage`` (always emitted
  by translators; the view drops it when the client did not ask for usage).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time

THOUGHT_SEP = "__thought__"
_SAFE_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SAFE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+/-]*)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# ---- tool call ids ---------------------------------------------------------

def split_thought(call_id: str) -> tuple[str, str | None]:
    """``call_x__thought__SIG`` -> (``call_x``, ``SIG``)."""
    base, sep, sig = call_id.partition(THOUGHT_SEP)
    return (base, sig or None) if sep else (call_id, None)


def join_thought(call_id: str, signature: str | None) -> str:
    return f"{call_id}{THOUGHT_SEP}{signature}" if signature else call_id


def safe_tool_id(call_id: str) -> str:
    """Deterministic id matching ``^[a-zA-Z0-9_-]+$`` (Anthropic); compliant ids are kept."""
    base, _ = split_thought(call_id)
    if _SAFE_ID.match(base):
        return base
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", base)[:56] or "call"
    return f"{cleaned}_{_short_hash(base)}"


# ---- tool names ------------------------------------------------------------

class ToolNameMap:
    """Per-request bidirectional map between client tool names and provider-safe ones.

    Subclasses set a provider's rules: ``pattern`` (a valid name), ``invalid`` (characters
    to replace), ``max_len``, and may adjust ``_base``.
    """

    pattern: re.Pattern[str] = _SAFE_NAME
    invalid: re.Pattern[str] = re.compile(r"[^a-zA-Z0-9_-]")
    max_len = 64

    def __init__(self) -> None:
        self._up: dict[str, str] = {}
        self._down: dict[str, str] = {}

    def _base(self, name: str) -> str:
        return self.invalid.sub("_", name) or "tool"

    def to_upstream(self, name: str) -> str:
        if name in self._up:
            return self._up[name]
        safe = name if self.pattern.match(name) and name not in self._down else None
        if safe is None:
            base = self._base(name)[: self.max_len - 9]
            safe = base if base not in self._down and self.pattern.match(base) else f"{base}_{_short_hash(name)}"
        self._up[name], self._down[safe] = safe, name
        return safe

    def to_client(self, name: str) -> str:
        return self._down.get(name, name)

    def __bool__(self) -> bool:
        return bool(self._up)


# ---- content ---------------------------------------------------------------

def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAA`` -> (``image/png``, ``AAA``); None for other URLs."""
    m = _DATA_URL.match(url)
    if not m:
        return None
    return (m.group("mime") or "image/jpeg"), m.group("data")


def content_text(content) -> str:
    """Plain text of a Chat ``content`` (str, None or list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    kinds = ("text", "input_text", "output_text")
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in kinds)


def parse_arguments(arguments) -> dict:
    """Tool-call arguments as an object; models do emit invalid JSON, which becomes ``{}``."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {"value": value}


def b64json_encode(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


def b64json_decode(text: str):
    return json.loads(base64.urlsafe_b64decode(text.encode()))


# ---- usage and chunks ------------------------------------------------------

def chat_usage(prompt: int = 0, completion: int = 0, *, cached: int = 0, cache_write: int = 0,
               cache_write_1h: int = 0, reasoning: int = 0) -> dict:
    """Canonical usage. ``prompt`` counts cache reads (``cached``) and writes (``cache_write``, of which
    ``cache_write_1h`` went to a 1-hour cache: priced apart, and only present when non-zero)."""
    usage = {
        "prompt_tokens": int(prompt),
        "completion_tokens": int(completion),
        "total_tokens": int(prompt) + int(completion),
        "prompt_tokens_details": {"cached_tokens": int(cached)},
        "completion_tokens_details": {"reasoning_tokens": int(reasoning)},
    }
    if cache_write:
        usage["prompt_tokens_details"]["cache_write_tokens"] = int(cache_write)
    if cache_write_1h:
        usage["prompt_tokens_details"]["cache_write_1h_tokens"] = int(cache_write_1h)
    return usage


def chat_chunk(chunk_id: str, model: str, created: int, delta: dict | None = None,
               finish_reason: str | None = None) -> dict:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta if delta is not None else {}, "finish_reason": finish_reason}],
    }


def usage_chunk(chunk_id: str, model: str, created: int, usage: dict) -> dict:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage}


def chat_completion(completion_id: str, model: str, created: int, message: dict, finish_reason: str,
                    usage: dict | None) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }


class ChatChunkFold:
    """What every stream built from canonical Chat chunks shares: start once, fold deltas until a
    finish_reason, end once both the finish_reason and the usage are in (or when the upstream stream
    ends), fail at most once. Subclasses supply the events: ``started``, ``_delta``, ``_close`` (the
    finish_reason arrived), ``_terminal``, ``fail`` and ``_incomplete`` (the stream ended early)."""

    _finish: str | None
    _usage: dict | None
    _ended: bool

    def feed(self, chunk: dict) -> list[dict]:
        if self._ended:
            return []
        events = self.started()
        for choice in chunk.get("choices") or []:
            if self._finish is None:
                events += self._delta(choice.get("delta") or {})
                if choice.get("finish_reason"):
                    events += self._close(choice["finish_reason"])
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        if self._finish is not None and self._usage is not None:
            events += self._terminal()
        return events

    def finish(self) -> list[dict]:
        if self._ended:
            return []
        if self._finish is None:
            return self.fail(self._incomplete())
        return self._terminal()

    def started(self) -> list[dict]:
        raise NotImplementedError

    def fail(self, err) -> list[dict]:
        raise NotImplementedError

    def _incomplete(self):
        raise NotImplementedError

    def _delta(self, delta: dict) -> list[dict]:
        raise NotImplementedError

    def _close(self, finish_reason: str) -> list[dict]:
        raise NotImplementedError

    def _terminal(self) -> list[dict]:
        raise NotImplementedError
