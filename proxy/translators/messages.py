"""Anthropic Messages API <-> the internal Chat format (Claude Code's and the Anthropic SDKs' protocol).

``messages_to_chat`` turns a Messages request into a Chat request for the Chat
adapters (OpenAI, Gemini, Vertex Gemini, proxy); ``MessagesStream`` re-emits
their canonical Chat chunks as Messages SSE events; ``chat_to_message`` does the
same for one non-streaming completion. Anthropic and Claude-on-Vertex
credentials never come here: they get the request as sent (``proxy.messages_api``).
Everything is pure: no I/O, no Django.

Provider state the Chat format carries in-band (``thinking_blocks``, Gemini
signatures in ``<id>__thought__<sig>`` tool-call ids) travels to the client in
the ``signature`` of the thinking blocks we emit, packed like the Responses
path's ``encrypted_content`` (``STATE_PREFIX``). Clients replay thinking blocks
verbatim, so the next turn restores it; tool ids stay plain. Thinking blocks
without our prefix (signed by real Anthropic before a failover) are dropped.

What a translated backend cannot honour (``cache_control``, ``context_management``,
``output_config`` other than effort, ``defer_loading``, Anthropic's server tools
other than web search, ``top_k``, ``metadata``) is dropped quietly. Claude Code
puts a ``system``-role message inside ``messages`` for model names it does not
know; it is accepted and becomes a Chat system message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from proxy.errors import ProxyError
from proxy.sse import encode
from proxy.translators.common import (
    ChatChunkFold,
    b64json_encode,
    content_text,
    join_thought,
    new_id,
    split_thought,
)
from proxy.translators.responses import STATE_PREFIX, decode_state

ROLE_ERROR = "messages.{index}.role: Input should be 'user' or 'assistant'"
BILLING_HEADER = "x-anthropic-billing-header:"  # Claude Code's per-request system line; it defeats prefix caches
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "function_call": "tool_use", "content_filter": "refusal"}
# ProxyError status -> (client status, Anthropic error type)
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


class InvalidMessages(ProxyError):
    """A 400 in Anthropic's own wording (``messages.1.role: ...``): clients match on it."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message, type="invalid_request_error")


@dataclass
class MessagesContext:
    model: str
    show_thinking: bool = True  # ``thinking.display: omitted`` -> signatures only, no text


# ---- request ---------------------------------------------------------------

def messages_to_chat(body: dict, *, stream: bool = True) -> tuple[dict, MessagesContext]:
    """A Messages request -> (internal Chat request, context for the answer)."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidMessages("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidMessages("messages: Field required" if messages is None else
                              "messages: List should have at least 1 item after validation")
    chat: dict = {"model": model, "messages": [*_system(body.get("system")), *_history(messages)]}
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        _tool_choice(body.get("tool_choice"), chat)
    _sampling(body, chat)
    thinking = body.get("thinking") if isinstance(body.get("thinking"), dict) else {}
    effort = _effort(thinking, body.get("output_config"))
    if effort:
        chat["reasoning_effort"] = effort
    ctx = MessagesContext(model=model, show_thinking=thinking.get("display") != "omitted")
    return chat, ctx


def _system(system) -> list[dict]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise InvalidMessages("system: Input should be a valid string or list")
    parts = [_text(b, f"system.{i}") for i, b in enumerate(system)]
    parts = [p for p in parts if p["text"] and not p["text"].startswith(BILLING_HEADER)]
    return [{"role": "system", "content": parts}] if parts else []


def _text(block, path: str) -> dict:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise InvalidMessages(f"{path}: Input should be a text block")
    return {"type": "text", "text": block["text"]}


def _blocks(content, path: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidMessages(f"{path}.content: Input should be a valid string or list")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidMessages(f"{path}.content.{j}: Input should be a valid content block")
    return content


def _history(messages: list) -> list[dict]:
    out: list[dict] = []
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("user", "assistant", "system"):
            raise InvalidMessages(ROLE_ERROR.format(index=i))
        path = f"messages.{i}"
        blocks = _blocks(msg.get("content"), path)
        if role == "assistant":
            out.append(_assistant(blocks, path))
        elif role == "system":
            texts = [{"type": "text", "text": b["text"]} for b in blocks
                     if b["type"] == "text" and isinstance(b.get("text"), str) and b["text"]]
            if texts:
                out.append({"role": "system", "content": texts})
        else:
            out += _user(blocks, path)
    _restore_signatures(out)
    return out


def _user(blocks: list[dict], path: str) -> list[dict]:
    """Tool results become Chat tool messages (first, as Chat requires); the rest one user message."""
    tools: list[dict] = []
    parts: list[dict] = []
    attachments: list[dict] = []
    for j, block in enumerate(blocks):
        where = f"{path}.content.{j}"
        if block["type"] == "tool_result":
            message, media = _tool_result(block, where)
            tools.append(message)
            if media:
                note = f"The result of tool call {message['tool_call_id']} includes the following:"
                attachments += [{"type": "text", "text": note}, *media]
        else:
            parts += _user_part(block, where)
    parts = attachments + parts
    if not parts:
        return tools
    content = parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts
    return [*tools, {"role": "user", "content": content}]


def _user_part(block: dict, where: str) -> list[dict]:
    kind = block["type"]
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise InvalidMessages(f"{where}.text: Field required")
        return [{"type": "text", "text": text}] if text else []
    if kind == "image":
        return [_image(block.get("source"), where)]
    if kind == "document":
        return [_document(block, where)]
    if kind == "search_result":
        texts = "\n".join(b.get("text", "") for b in block.get("content") or [] if isinstance(b, dict))
        return [{"type": "text", "text": f"{block.get('title') or ''}\n{block.get('source') or ''}\n{texts}".strip()}]
    if kind in ("thinking", "redacted_thinking", "tool_use", "server_tool_use"):
        raise InvalidMessages(f"{where}.type: '{kind}' blocks are not permitted in user messages")
    return []  # container uploads, web search results...: nothing a translated backend can use


def _image(source, where: str) -> dict:
    if not isinstance(source, dict):
        raise InvalidMessages(f"{where}.source: Field required")
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        mime = source.get("media_type") or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{source['data']}"}}
    raise InvalidMessages(f"{where}.source: Input should be a base64 or url image source")


def _document(block: dict, where: str) -> dict:
    source = block.get("source")
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if not isinstance(source, dict):
        raise InvalidMessages(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": f"{title}\n\n{source['data']}" if title else source["data"]}
    if kind == "content" and isinstance(source.get("content"), list | str):
        return {"type": "text", "text": content_text(_blocks(source["content"], where))}
    if kind == "base64" and isinstance(source.get("data"), str):
        mime = source.get("media_type") or "application/pdf"
        file = {"file_data": f"data:{mime};base64,{source['data']}", "filename": title or "document.pdf"}
        return {"type": "file", "file": file}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "file", "file": {"file_id": source["url"], "filename": title or "document.pdf"}}
    raise InvalidMessages(f"{where}.source: Input should be a base64, text, content or url document source")


def _tool_result(block: dict, where: str) -> tuple[dict, list[dict]]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidMessages(f"{where}.tool_use_id: Field required")
    content = block.get("content")
    media: list[dict] = []
    if isinstance(content, list):
        texts = []
        for k, inner in enumerate(_blocks(content, where)):
            if inner["type"] == "text":
                texts.append(inner.get("text") or "")
            elif inner["type"] in ("image", "document"):
                media += _user_part(inner, f"{where}.content.{k}")
        text = "\n".join(texts)
        if not text and media:
            text = f"(the tool returned {len(media)} attachment(s); they follow in the next user message)"
    else:
        text = content if isinstance(content, str) else ""
    if block.get("is_error"):
        text = f"[tool error] {text}".rstrip()
    return {"role": "tool", "tool_call_id": call_id, "content": text}, media


def _assistant(blocks: list[dict], path: str) -> dict:
    texts: list[str] = []
    calls: list[dict] = []
    thinking: list[dict] = []
    signatures: dict[str, str] = {}
    for j, block in enumerate(blocks):
        kind = block["type"]
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(_tool_call(block, f"{path}.content.{j}"))
        elif kind == "thinking":
            state = decode_state(block.get("signature"))
            if state is not None:
                thinking += state.get("thinking_blocks") or []
                signatures.update(state.get("signatures") or {})
        # redacted_thinking and server tool blocks come from real Anthropic: meaningless elsewhere
    message: dict = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
    if signatures:
        message["_signatures"] = signatures  # applied (and removed) by _restore_signatures
    return message


def _tool_call(block: dict, where: str) -> dict:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidMessages(f"{where}: tool_use blocks need an id and a name")
    arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _restore_signatures(messages: list[dict]) -> None:
    """Put carried signatures back on the tool-call ids, and on the tool results answering them."""
    restored: dict[str, str] = {}
    for msg in messages:
        signatures = msg.pop("_signatures", None) or {}
        for call in msg.get("tool_calls") or []:
            sig = signatures.get(call["id"])
            if sig:
                restored[call["id"]] = call["id"] = join_thought(call["id"], sig)
        if msg["role"] == "tool" and msg["tool_call_id"] in restored:
            msg["tool_call_id"] = restored[msg["tool_call_id"]]


def _tools(tools) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidMessages("tools: Input should be a valid list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidMessages(f"tools.{i}: Input should be an object")
        kind = tool.get("type") or "custom"
        if kind == "custom":
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise InvalidMessages(f"tools.{i}.name: Field required")
            schema = tool.get("input_schema") if isinstance(tool.get("input_schema"), dict) else {"type": "object"}
            fn = {"name": tool["name"], "parameters": schema}
            if isinstance(tool.get("description"), str) and tool["description"]:
                fn["description"] = tool["description"]
            out.append({"type": "function", "function": fn})
        elif str(kind).startswith("web_search_"):
            out.append({"type": "web_search"})
        # bash_*, text_editor_*, computer_*, code_execution_*, web_fetch_*, memory_*, tool_search_*,
        # mcp_toolset: Anthropic runs or defines them; a translated backend has no equivalent.
    return out


def _tool_choice(choice, chat: dict) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise InvalidMessages("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    kind = choice["type"]
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise InvalidMessages("tool_choice.name: Field required")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


def _sampling(body: dict, chat: dict) -> None:
    limit = body.get("max_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidMessages("max_tokens: Input should be a valid positive integer")
        chat["max_completion_tokens"] = limit
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidMessages(f"{key}: Input should be a valid number")
            chat[key] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidMessages("stop_sequences: Input should be a valid list of strings")
        if stops:
            chat["stop"] = stops


def _effort(thinking: dict, output_config) -> str | None:
    """``thinking`` (+ ``output_config.effort``) -> the Chat ``reasoning_effort`` the adapters map."""
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise InvalidMessages("thinking.enabled.budget_tokens: Field required")
        return "low" if budget <= 2048 else "medium" if budget <= 12000 else "high"
    if kind == "adaptive":
        effort = output_config.get("effort") if isinstance(output_config, dict) else None
        return _EFFORTS.get(effort, "medium") if isinstance(effort, str) else "medium"
    return None


# ---- answer: canonical Chat chunks -> Messages events -------------------------

def _pack(thinking_blocks: list[dict], signatures: dict[str, str]) -> str:
    state: dict = {}
    if thinking_blocks:
        state["thinking_blocks"] = thinking_blocks
    if signatures:
        state["signatures"] = signatures
    return STATE_PREFIX + b64json_encode(state)


def messages_usage(usage: dict | None) -> dict:
    """Canonical Chat usage -> Anthropic usage (input excludes cache reads and writes, as Anthropic counts)."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or 0)
    prompt = int(usage.get("prompt_tokens") or 0)
    return {"input_tokens": max(0, prompt - cached - written), "cache_creation_input_tokens": written,
            "cache_read_input_tokens": cached, "output_tokens": int(usage.get("completion_tokens") or 0)}


@dataclass
class _Block:
    index: int
    kind: str  # text | thinking | tool_use
    thinking: list[dict] = field(default_factory=list)
    signatures: dict[str, str] = field(default_factory=dict)


class MessagesStream(ChatChunkFold):
    """Canonical Chat chunks in, Anthropic Messages SSE events (dicts) out.

    Tool-use blocks stay open until something else starts (Chat may interleave the
    argument fragments of parallel calls); a thinking block closes with a
    ``signature_delta`` carrying the provider state seen so far.
    """

    def __init__(self, ctx: MessagesContext, *, message_id: str | None = None) -> None:
        self.ctx = ctx
        self.id = message_id or new_id("msg_")
        self._open: list[_Block] = []
        self._count = 0
        self._calls: dict[int, _Block] = {}
        self._finish: str | None = None
        self._usage: dict | None = None
        self._started = False
        self._ended = False
        self._text = ""

    # -- public

    def started(self) -> list[dict]:
        if self._started:
            return []
        self._started = True
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.ctx.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": messages_usage(None)}
        return [{"type": "message_start", "message": message}]

    @staticmethod
    def keepalive() -> dict:
        return {"type": "ping"}

    def _incomplete(self) -> ProxyError:
        return ProxyError(502, "The upstream stream ended before the message was complete.", code="server_error")

    def _close(self, finish_reason: str) -> list[dict]:
        self._finish = finish_reason  # blocks stay open until the terminal events close them all
        return []

    def fail(self, err: ProxyError) -> list[dict]:
        if self._ended:
            return []
        self._ended = True
        return [error_event(err)]

    # -- deltas

    def _delta(self, delta: dict) -> list[dict]:
        events: list[dict] = []
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            block, events = self._ensure("thinking")
            if self.ctx.show_thinking:
                events.append(self._block_delta(block, {"type": "thinking_delta", "thinking": reasoning}))
        if delta.get("thinking_blocks"):
            block, opened = self._ensure("thinking")
            events += opened
            block.thinking += [b for b in delta["thinking_blocks"] if isinstance(b, dict)]
        for text in (delta.get("content"), delta.get("refusal")):
            if isinstance(text, str) and text:
                block, opened = self._ensure("text")
                events += opened
                self._text += text
                events.append(self._block_delta(block, {"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or []:
            events += self._tool_delta(call)
        return events

    def _ensure(self, kind: str) -> tuple[_Block, list[dict]]:
        """The open block of ``kind``, opening it (and closing the others) when needed."""
        if self._open and self._open[-1].kind == kind and kind != "tool_use":
            return self._open[-1], []
        events = self._close_all()
        block = _Block(self._count, kind)
        self._count += 1
        self._open.append(block)
        start = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "",
                                                                     "signature": ""}
        events.append({"type": "content_block_start", "index": block.index, "content_block": start})
        return block, events

    def _tool_delta(self, call: dict) -> list[dict]:
        position = call.get("index", len(self._calls))
        events: list[dict] = []
        block = self._calls.get(position)
        if block is None:
            call_id, signature = split_thought(call.get("id") or new_id("toolu_"))
            if signature:
                carrier, events = self._ensure("thinking")
                carrier.signatures[call_id] = signature
            if not (self._open and self._open[-1].kind == "tool_use"):
                events += self._close_all()
            block = _Block(self._count, "tool_use")
            self._count += 1
            self._open.append(block)
            self._calls[position] = block
            name = (call.get("function") or {}).get("name") or ""
            events.append({"type": "content_block_start", "index": block.index,
                           "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}}})
        fragment = (call.get("function") or {}).get("arguments")
        if isinstance(fragment, str) and fragment:
            events.append(self._block_delta(block, {"type": "input_json_delta", "partial_json": fragment}))
        return events

    @staticmethod
    def _block_delta(block: _Block, delta: dict) -> dict:
        return {"type": "content_block_delta", "index": block.index, "delta": delta}

    def _close_all(self) -> list[dict]:
        events = []
        for block in self._open:
            if block.kind == "thinking":
                signature = _pack(block.thinking, block.signatures)
                events.append(self._block_delta(block, {"type": "signature_delta", "signature": signature}))
            events.append({"type": "content_block_stop", "index": block.index})
        self._open = []
        return events

    # -- end

    def _terminal(self) -> list[dict]:
        self._ended = True
        events = self._close_all()
        reason = _STOP_REASONS.get(self._finish or "", "end_turn")
        if reason == "end_turn" and self._calls:
            reason = "tool_use"
        events.append({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
                       "usage": messages_usage(self._usage)})
        events.append({"type": "message_stop"})
        return events


# ---- non-streaming -----------------------------------------------------------

def collect_message(events: list[dict]) -> dict:
    """The Message a client builds from ``events`` (the non-streaming answer)."""
    message: dict = {}
    blocks: dict[int, dict] = {}
    partial: dict[int, str] = {}
    for ev in events:
        kind = ev.get("type")
        if kind == "message_start":
            message = dict(ev["message"])
        elif kind == "content_block_start":
            blocks[ev["index"]] = dict(ev["content_block"])
        elif kind == "content_block_delta":
            block, delta = blocks[ev["index"]], ev["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] += delta["signature"]
            elif delta["type"] == "input_json_delta":
                partial[ev["index"]] = partial.get(ev["index"], "") + delta["partial_json"]
        elif kind == "message_delta":
            message.update(ev["delta"])
            message["usage"] = {**message.get("usage", {}), **ev["usage"]}
        elif kind == "error":
            raise _error_from_event(ev)
    for index, text in partial.items():
        try:
            blocks[index]["input"] = json.loads(text) if text else {}
        except ValueError:
            blocks[index]["input"] = {}
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def chat_to_message(completion: dict, ctx: MessagesContext) -> dict:
    """A canonical chat.completion -> a Message (same block mapping as the stream)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    stream = MessagesStream(ctx, message_id=_message_id(completion.get("id")))
    content = message.get("content")
    deltas = [
        {"reasoning_content": message.get("reasoning_content")},
        {"thinking_blocks": message.get("thinking_blocks")},
        {"content": content_text(content) if isinstance(content, list) else content},
        {"refusal": message.get("refusal")},
        *({"tool_calls": [{**call, "index": i}]} for i, call in enumerate(message.get("tool_calls") or [])),
    ]
    events = stream.started()
    for delta in deltas:
        events += stream.feed({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    events += stream.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")
                                        or "stop"}], "usage": completion.get("usage") or {}})
    return collect_message(events)


def _message_id(upstream_id) -> str:
    return upstream_id if isinstance(upstream_id, str) and upstream_id.startswith("msg_") else new_id("msg_")


# ---- errors -------------------------------------------------------------------

def error_status_and_type(err: ProxyError) -> tuple[int, str]:
    """The HTTP status and Anthropic error type a client gets for ``err``."""
    status = err.status
    if status == 503 or err.code == "server_is_overloaded":
        return 529, "overloaded_error"  # Anthropic's "try again later"; Claude Code retries it
    if status in _ERROR_TYPES:
        return status, _ERROR_TYPES[status]
    return status, "api_error" if status >= 500 else "invalid_request_error"


def error_message(err: ProxyError) -> str:
    if err.code == "context_length_exceeded" and not err.message.startswith("prompt is too long"):
        return f"prompt is too long: {err.message}"  # the words Claude Code compacts on
    return err.message


def error_body(err: ProxyError, request_id: str | None = None) -> dict:
    body: dict = {"type": "error", "error": {"type": error_status_and_type(err)[1], "message": error_message(err)}}
    if request_id:
        body["request_id"] = request_id
    return body


def error_event(err: ProxyError) -> dict:
    return error_body(err)


def _error_from_event(ev: dict) -> ProxyError:
    error = ev.get("error") or {}
    status = {v: k for k, v in _ERROR_TYPES.items()}.get(error.get("type"), 502)
    return ProxyError(status, str(error.get("message") or "upstream error"), type=error.get("type"))


def encode_event(event: dict) -> bytes:
    """``event: <type>\\ndata: <json>\\n\\n``, as Anthropic frames every event."""
    return encode(event, event=event["type"])


# ---- count_tokens without a provider counter -----------------------------------------

MEDIA_TOKENS = 1600  # an image or a base64 document, roughly what Anthropic counts for a ~1 megapixel image
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 3


def estimate_input_tokens(body: dict) -> int:
    """An offline estimate: about one token per 4 characters of every text in ``system``, ``messages`` and
    the tool definitions (names, descriptions, schemas as JSON), 3 tokens per message, and a flat 1600 per
    image or base64 document."""
    chars, media = _measure(body.get("system")), 0
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    for msg in messages:
        c, m = _measure_content(msg.get("content") if isinstance(msg, dict) else None)
        chars, media = chars + c, media + m
    for tool in body.get("tools") or []:
        chars += len(json.dumps(tool, ensure_ascii=False)) if isinstance(tool, dict) else 0
    return max(1, chars // CHARS_PER_TOKEN + MESSAGE_OVERHEAD * len(messages) + MEDIA_TOKENS * media)


def _measure(value) -> int:
    if isinstance(value, str):
        return len(value)
    return _measure_content(value)[0]


def _measure_content(content) -> tuple[int, int]:
    if isinstance(content, str):
        return len(content), 0
    chars = media = 0
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        source = block.get("source") if isinstance(block.get("source"), dict) else {}
        if block.get("type") in ("image", "document") and source.get("type") in ("base64", "url"):
            media += 1
        for key in ("text", "thinking", "data") if source.get("type") != "base64" else ("text",):
            if isinstance(block.get(key), str):
                chars += len(block[key])
        if block.get("type") == "tool_use":
            chars += len(json.dumps(block.get("input") or {}, ensure_ascii=False)) + len(str(block.get("name")))
        if block.get("type") == "tool_result" or source.get("type") in ("text", "content"):
            c, m = _measure_content(block.get("content") if "content" in block else source.get("data"))
            chars, media = chars + c, media + m
    return chars, media
