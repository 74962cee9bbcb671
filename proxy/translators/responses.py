"""OpenAI Responses API <-> the internal Chat format (Codex CLI's only protocol).

``responses_to_chat`` turns a Responses request into a streaming Chat request
for the Chat adapters; ``ResponsesStream`` re-emits their canonical Chat
chunks as Responses events; ``chat_to_response`` does the same for one
non-streaming completion. Everything is pure: no I/O, no Django.

Provider state that the Chat format carries in-band (Anthropic
``thinking_blocks``, Gemini signatures in ``<id>__thought__<sig>`` tool-call
ids) cannot reach a Responses client that way, so it travels in the
``encrypted_content`` of the reasoning items we emit, behind ``STATE_PREFIX``.
Clients replay reasoning items verbatim; items without our prefix come from
another backend (real OpenAI) and are dropped.

Namespaced, custom (freeform) and ``tool_search`` tools have no Chat
equivalent: they are declared as plain functions under provider-safe flat
names, and ``ResponsesContext.tool_ref`` maps a flat name back to what the
client declared. The map is a pure function of the request (Codex resends the
whole tool list and history every turn), so the router keeps no state.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from proxy.errors import ProxyError, bad_request
from proxy.sse import encode
from proxy.translators.common import (
    ChatChunkFold,
    ToolNameMap,
    b64json_decode,
    b64json_encode,
    content_text,
    join_thought,
    new_id,
    now,
    parse_arguments,
    parse_data_url,
    split_thought,
)

STATE_PREFIX = "rtr1:"

_EFFORTS = {"none": "none", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
            "xhigh": "high", "max": "high"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
# Output of OpenAI-hosted tools: meaningless to any other backend.
_DROPPED_ITEMS = frozenset({
    "web_search_call", "file_search_call", "image_generation_call", "code_interpreter_call", "computer_call",
    "computer_call_output", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "mcp_call",
})
_IMAGE_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_WEB_SEARCH_TOOLS = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26",
                               "web_search_preview_2025_03_11"})
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
_CUSTOM_PARAMETERS = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The raw input text for the tool."}},
    "required": ["input"],
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True)
class ToolRef:
    """What the client declared behind a flat function name."""

    kind: str  # function | custom | tool_search
    name: str
    namespace: str | None = None


@dataclass
class ResponsesContext:
    model: str
    tools: dict[str, ToolRef] = field(default_factory=dict)
    echo: dict = field(default_factory=dict)
    reasoning_summary: str | None = None
    dropped_tools: list[str] = field(default_factory=list)
    dropped_items: list[str] = field(default_factory=list)

    def tool_ref(self, flat_name: str) -> ToolRef:
        """The client-side tool behind a flat name; unknown names pass through unchanged."""
        return self.tools.get(flat_name) or ToolRef("function", flat_name)


# ---- request ---------------------------------------------------------------

def responses_to_chat(body: dict) -> tuple[dict, ResponsesContext]:
    """A Responses request -> (streaming internal Chat request, context for the answer)."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("`model` is required.", param="model")
    _reject_stateful(body)
    items = _input_items(body.get("input"))
    registry = _ToolRegistry()
    registry.declare_all(body.get("tools"), "tools")
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "tool_search_output":
            # Codex never adds discovered tools to `tools`; the backend must still see them declared.
            registry.declare_all(item.get("tools") or [], f"input[{i}].tools")
    history = _History(registry)
    messages = history.build(_instructions(body.get("instructions")), items)

    chat: dict = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    if registry.chat_tools:
        # Chat backends reject tool_choice / parallel_tool_calls without tools (compaction sends `tools: []`).
        chat["tools"] = registry.chat_tools
        choice = _tool_choice(body.get("tool_choice"), registry)
        if choice is not None:
            chat["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    _copy_sampling(body, chat)
    summary = _copy_reasoning(body.get("reasoning"), chat)
    _copy_text_format(body.get("text"), chat)
    ctx = ResponsesContext(
        model=model, tools=dict(registry.by_flat), echo=response_echo(body), reasoning_summary=summary,
        dropped_tools=registry.dropped, dropped_items=history.dropped,
    )
    return chat, ctx


def _reject_stateful(body: dict) -> None:
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise bad_request(
                f"`{key}` is not supported: this router is stateless. Send the full conversation in `input`.",
                param=key, code="previous_response_not_found" if key == "previous_response_id" else None,
            )


def _input_items(value) -> list:
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return value
    raise bad_request("`input` must be a string or an array of input items.", param="input")


def _instructions(value) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    raise bad_request("`instructions` must be a string.", param="instructions")


def _copy_sampling(body: dict, chat: dict) -> None:
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "user"):
        if body.get(key) is not None:
            chat[key] = body[key]
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise bad_request("`max_output_tokens` must be a positive integer.", param="max_output_tokens")
        chat["max_completion_tokens"] = limit


def _copy_reasoning(reasoning, chat: dict) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise bad_request("`reasoning` must be an object.", param="reasoning")
    effort = reasoning.get("effort")
    if effort is not None:
        if effort not in _EFFORTS:
            raise bad_request(f"Unsupported reasoning effort {effort!r}.", param="reasoning.effort")
        chat["reasoning_effort"] = _EFFORTS[effort]
    return reasoning.get("summary")


def _copy_text_format(text, chat: dict) -> None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return
    if fmt["type"] == "json_object":
        chat["response_format"] = {"type": "json_object"}
        return
    if fmt["type"] != "json_schema":
        raise bad_request(f"Unsupported text format {fmt['type']!r}.", param="text.format.type")
    if not isinstance(fmt.get("schema"), dict):
        raise bad_request("A json_schema text format needs a `schema` object.", param="text.format.schema")
    schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
    schema.update({k: fmt[k] for k in ("strict", "description") if fmt.get(k) is not None})
    chat["response_format"] = {"type": "json_schema", "json_schema": schema}


def response_echo(body: dict) -> dict:
    """Request fields every Response object repeats: the request's values, else OpenAI's defaults
    (the Open Responses schema requires each one, numbers where numbers are due)."""
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    return {
        "instructions": body.get("instructions"),
        "tools": [_echo_tool(tool) for tool in body.get("tools") or []],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "temperature": _number(body, "temperature", 1.0),
        "top_p": _number(body, "top_p", 1.0),
        "presence_penalty": _number(body, "presence_penalty", 0.0),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0),
        "top_logprobs": body.get("top_logprobs") or 0,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "previous_response_id": None,
        "store": bool(body.get("store", False)),  # stateless: nothing is stored whatever was asked
        "background": False,
        "service_tier": body.get("service_tier") if body.get("service_tier") not in (None, "auto") else "default",
        "metadata": body.get("metadata") or {},
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
        "safety_identifier": body.get("safety_identifier"),
        "prompt_cache_key": body.get("prompt_cache_key"),
    }


def _number(body: dict, key: str, default: float) -> float:
    value = body.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _echo_tool(tool):
    """A function tool as OpenAI echoes it: flat, with description, parameters and strict always present."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    spec = tool["function"] if isinstance(tool.get("function"), dict) else tool
    strict = spec.get("strict")
    return {**{k: v for k, v in tool.items() if k != "function"}, "type": "function", "name": spec.get("name"),
            "description": spec.get("description"), "parameters": spec.get("parameters"),
            "strict": strict if isinstance(strict, bool) else False}  # not strict unless asked: nothing enforced it


def base_response(response_id: str, created_at: int, model: str, echo: dict, status: str) -> dict:
    """A Response object with every field the schema requires; output and usage to be filled in."""
    return {"id": response_id, "object": "response", "created_at": created_at, "completed_at": None,
            "status": status, "model": model, "output": [], "error": None, "incomplete_details": None,
            "usage": None, **echo}


# ---- tools -----------------------------------------------------------------

class _ToolRegistry:
    """Flat provider-safe names for the client's tools, and the Chat tool list."""

    def __init__(self) -> None:
        self._names = ToolNameMap()
        self.by_flat: dict[str, ToolRef] = {}
        self._by_ref: dict[ToolRef, str] = {}
        self._declared: dict[ToolRef, str] = {}  # only what reached `chat_tools`, not names from history
        self.chat_tools: list[dict] = []
        self.dropped: list[str] = []
        self._web_search = False

    def flat(self, ref: ToolRef) -> str:
        if ref in self._by_ref:
            return self._by_ref[ref]
        key = f"{ref.namespace}__{ref.name}" if ref.namespace else ref.name
        flat, n = self._names.to_upstream(key), 2
        while flat in self.by_flat:  # e.g. a function `a__b` beside namespace `a` tool `b`
            flat, n = self._names.to_upstream(f"{key}#{n}"), n + 1
        self.by_flat[flat], self._by_ref[ref] = ref, flat
        return flat

    def declare_all(self, tools, where: str) -> None:
        if tools is None:
            return
        if not isinstance(tools, list):
            raise bad_request(f"`{where}` must be an array.", param=where)
        for i, tool in enumerate(tools):
            self._declare(tool, f"{where}[{i}]")

    def _declare(self, tool, where: str, namespace: str | None = None) -> None:
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad_request("Each tool must be an object with a `type`.", param=where)
        kind = tool["type"]
        if kind == "function":
            spec = tool["function"] if isinstance(tool.get("function"), dict) else tool  # tolerate Chat shape
            self._add(ToolRef("function", _tool_name(spec, where), namespace), spec)
        elif kind == "namespace" and namespace is None:
            name = _tool_name(tool, where)
            for i, inner in enumerate(tool.get("tools") or []):
                self._declare(inner, f"{where}.tools[{i}]", name)
        elif kind == "custom" and namespace is None:
            spec = {"description": _custom_description(tool), "parameters": _CUSTOM_PARAMETERS}
            self._add(ToolRef("custom", _tool_name(tool, where)), spec)
        elif kind == "tool_search" and namespace is None:
            self._add(ToolRef("tool_search", "tool_search"), tool)
        elif kind in _WEB_SEARCH_TOOLS and not self._web_search:
            self._web_search = True
            self.chat_tools.append({"type": "web_search"})
        elif kind not in _WEB_SEARCH_TOOLS:
            self.dropped.append(kind)

    def _add(self, ref: ToolRef, spec: dict) -> None:
        if ref in self._declared:  # also listed in a tool_search_output
            return
        function = {"name": self.flat(ref)}
        self._declared[ref] = function["name"]
        if spec.get("description"):
            function["description"] = spec["description"]
        function["parameters"] = spec.get("parameters") or {"type": "object", "properties": {}}
        if isinstance(spec.get("strict"), bool):
            function["strict"] = spec["strict"]
        self.chat_tools.append({"type": "function", "function": function})

    def declared(self, ref: ToolRef) -> str | None:
        return self._declared.get(ref)

    def refs(self) -> list[ToolRef]:
        return list(self._declared)


def _tool_name(spec: dict, where: str) -> str:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request("Each tool needs a `name`.", param=f"{where}.name")
    return name


def _custom_description(tool: dict) -> str:
    fmt = tool.get("format") if isinstance(tool.get("format"), dict) else {}
    lines = [tool.get("description") or "",
             "This is a freeform tool: put the raw text (not JSON) in the `input` string argument."]
    if fmt.get("type") == "grammar" and fmt.get("definition"):
        lines.append(f"`input` must match this {fmt.get('syntax', '')} grammar:\n{fmt['definition']}")
    return "\n\n".join(line for line in lines if line)


def _tool_choice(choice, registry: _ToolRegistry):
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if not isinstance(choice, dict):
        raise bad_request("`tool_choice` must be auto, none, required or an object.", param="tool_choice")
    kind = choice.get("type")
    if kind == "allowed_tools":
        return "required" if choice.get("mode") == "required" else "auto"
    if kind in ("function", "custom", "tool_search"):
        flat = _choice_target(choice, kind, registry)
        if flat is None:
            raise bad_request("`tool_choice` names a tool that is not declared in `tools`.", param="tool_choice")
        return {"type": "function", "function": {"name": flat}}
    return "auto"  # a hosted tool: nothing a Chat backend could be forced to call


def _choice_target(choice: dict, kind: str, registry: _ToolRegistry) -> str | None:
    name = choice.get("name") or (choice.get("function") or {}).get("name")
    if kind == "tool_search":
        return registry.declared(ToolRef("tool_search", "tool_search"))
    if kind == "custom":
        return registry.declared(ToolRef("custom", name))
    namespace = choice.get("namespace")
    found = registry.declared(ToolRef("function", name, namespace))
    if found or namespace:
        return found
    matches = [r for r in registry.refs() if r.kind == "function" and r.name == name]
    if len(matches) == 1:
        return registry.declared(matches[0])
    ref = registry.by_flat.get(name)
    return name if ref is not None and registry.declared(ref) == name else None


# ---- history ---------------------------------------------------------------

@dataclass
class _Turn:
    """One assistant message being assembled from consecutive output items."""

    texts: list[str] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)
    thinking: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # earlier drawings, for image models to edit

    def message(self) -> dict | None:
        texts = [t for t in self.texts if t]
        if not texts and not self.tool_calls and not self.images:
            return None
        msg: dict = {"role": "assistant", "content": _text_content(texts)}
        if self.images:
            msg["images"] = self.images
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        if self.thinking:
            msg["thinking_blocks"] = self.thinking
        return msg


def _text_content(texts: list[str]):
    if not texts:
        return None
    return texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts]


class _History:
    """Input items -> Chat messages, in order."""

    def __init__(self, registry: _ToolRegistry) -> None:
        self._registry = registry
        # Our reasoning item always precedes the calls whose Gemini signatures it carries.
        self._signatures: dict[str, str] = {}
        self._messages: list[dict | _Turn] = []
        self._turn: _Turn | None = None
        self._thinking: list[dict] = []  # restored blocks waiting for the next assistant turn
        self._images: list[dict] = []  # tool-output images, sent once the run of tool messages ends
        self.dropped: list[str] = []

    def build(self, instructions: str | None, items: list) -> list[dict]:
        if instructions:
            self._append({"role": "system", "content": instructions})
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise bad_request("Each input item must be an object.", param=f"input[{i}]")
            self._add(i, item)
        self._flush_images()
        out = [m.message() if isinstance(m, _Turn) else m for m in self._messages]
        return [m for m in out if m is not None]

    def _add(self, i: int, item: dict) -> None:
        kind = item.get("type") or ("message" if "role" in item else None)
        handler = getattr(self, f"_item_{kind}", None) if isinstance(kind, str) else None
        if handler is not None:
            handler(i, item)
        elif kind in _DROPPED_ITEMS:
            self.dropped.append(kind)
        elif kind in ("local_shell_call", "local_shell_call_output"):
            raise bad_request("`local_shell_call` items are not supported by this router; use a function tool "
                              "(such as exec_command) instead.", param=f"input[{i}].type")
        elif kind == "item_reference":
            raise bad_request("`item_reference` needs stored responses, and this router is stateless. Send the "
                              "referenced item itself.", param=f"input[{i}]")
        else:
            raise bad_request(f"Unsupported input item type {kind!r}.", param=f"input[{i}].type")

    # -- plumbing

    def _append(self, message: dict | _Turn) -> None:
        if not (isinstance(message, dict) and message["role"] == "tool"):
            self._flush_images()
        if not isinstance(message, _Turn):
            self._turn = None
        self._messages.append(message)

    def _assistant(self) -> _Turn:
        if self._turn is None:
            turn = _Turn(thinking=self._thinking)
            self._thinking = []
            self._append(turn)
            self._turn = turn
        return self._turn

    def _flush_images(self) -> None:
        if self._images:
            images, self._images = self._images, []
            self._messages.append({"role": "user", "content": images})

    def _call_id(self, raw: str) -> str:
        base, carried = split_thought(raw)
        return join_thought(base, self._signatures.get(base) or carried)

    def _tool_call(self, call_id: str, ref: ToolRef, arguments: str) -> None:
        function = {"name": self._registry.flat(ref), "arguments": arguments}
        self._assistant().tool_calls.append({"id": self._call_id(call_id), "type": "function", "function": function})

    def _tool_result(self, i: int, item: dict, content: str, images: list[dict]) -> None:
        call_id = _required_str(item, "call_id", i)
        self._append({"role": "tool", "tool_call_id": self._call_id(call_id), "content": content})
        if images:
            note = {"type": "text", "text": f"The output of tool call {call_id} includes the following:"}
            self._images.extend([note, *images])

    # -- item handlers (looked up by `type`)

    def _item_message(self, i: int, item: dict) -> None:
        role = item.get("role")
        where = f"input[{i}].content"
        if role == "assistant":
            self._assistant().texts.append(_assistant_text(item.get("content"), where))
            return
        if role not in ("user", "system", "developer"):
            raise bad_request(f"Unsupported message role {role!r}.", param=f"input[{i}].role")
        parts = _content_parts(item.get("content"), where)
        if role != "user" and any(p["type"] != "text" for p in parts):
            raise bad_request(f"{role} messages may contain text only.", param=where)
        content = _compact(parts)
        if content:
            self._append({"role": "user" if role == "user" else "system", "content": content})

    def _item_image_generation_call(self, i: int, item: dict) -> None:
        result = item.get("result")
        if isinstance(result, str) and result:
            mime = _IMAGE_MIME.get(str(item.get("output_format") or "png"), "image/png")
            self._assistant().images.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{result}"}})

    def _item_function_call(self, i: int, item: dict) -> None:
        ref = ToolRef("function", _required_str(item, "name", i), item.get("namespace") or None)
        self._tool_call(_required_str(item, "call_id", i), ref, _arguments_text(item.get("arguments")))

    def _item_custom_tool_call(self, i: int, item: dict) -> None:
        ref = ToolRef("custom", _required_str(item, "name", i))
        text = item.get("input") if isinstance(item.get("input"), str) else ""
        self._tool_call(_required_str(item, "call_id", i), ref, json.dumps({"input": text}, ensure_ascii=False))

    def _item_tool_search_call(self, i: int, item: dict) -> None:
        ref = ToolRef("tool_search", "tool_search")
        self._tool_call(_required_str(item, "call_id", i), ref, _arguments_text(item.get("arguments")))

    def _item_function_call_output(self, i: int, item: dict) -> None:
        self._tool_result(i, item, *_tool_output(item.get("output"), f"input[{i}].output"))

    _item_custom_tool_call_output = _item_function_call_output

    def _item_tool_search_output(self, i: int, item: dict) -> None:
        found = [self._summary(tool) for tool in item.get("tools") or [] if isinstance(tool, dict)]
        self._tool_result(i, item, json.dumps({"tools": [t for group in found for t in group]}), [])

    def _item_reasoning(self, i: int, item: dict) -> None:
        state = decode_state(item.get("encrypted_content"))
        if state is None:
            self.dropped.append("reasoning")
            return
        self._signatures.update(state.get("signatures") or {})
        blocks = state.get("thinking_blocks") or []
        (self._turn.thinking if self._turn is not None else self._thinking).extend(blocks)

    def _summary(self, tool: dict) -> list[dict]:
        """The functions a tool_search found, under the flat names the model must call."""
        if tool.get("type") == "namespace":
            inner = [t for t in tool.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
            refs = [(ToolRef("function", t.get("name"), tool.get("name")), t) for t in inner]
        elif tool.get("type") == "function":
            refs = [(ToolRef("function", tool.get("name")), tool)]
        else:
            return []
        return [{"name": self._registry.flat(ref), "description": spec.get("description") or ""}
                for ref, spec in refs if ref.name]


def _required_str(item: dict, key: str, i: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise bad_request(f"Input item of type {item.get('type')!r} needs a string `{key}`.",
                          param=f"input[{i}].{key}")
    return value


def _arguments_text(arguments) -> str:
    if isinstance(arguments, str):
        return arguments or "{}"
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def _content_parts(content, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request("Message `content` must be a string or an array of parts.", param=where)
    return [p for j, part in enumerate(content) if (p := _content_part(part, f"{where}[{j}]"))]


def _content_part(part, where: str) -> dict | None:
    if not isinstance(part, dict):
        raise bad_request("Each content part must be an object.", param=where)
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request("A text part needs a string `text`.", param=f"{where}.text")
        return {"type": "text", "text": text} if text else None
    if kind == "input_image":
        return _image_part(part, where)
    if kind == "input_file":
        return _file_part(part, where)
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        return {"type": "input_audio", "input_audio": part["input_audio"]}
    raise bad_request(f"Unsupported content part type {kind!r}.", param=f"{where}.type")


def _image_part(part: dict, where: str) -> dict:
    if part.get("file_id"):
        raise bad_request("Images given by `file_id` cannot be resolved by this router; send `image_url` "
                          "(an https or data: URL) instead.", param=f"{where}.file_id")
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str) or not url:
        raise bad_request("An input_image part needs an `image_url`.", param=f"{where}.image_url")
    image = {"url": url}
    if part.get("detail"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _file_part(part: dict, where: str) -> dict:
    for key in ("file_id", "file_url"):
        if part.get(key):
            raise bad_request(f"Files given by `{key}` cannot be resolved by this router; send `file_data` "
                              "instead.", param=f"{where}.{key}")
    if not isinstance(part.get("file_data"), str) or not part["file_data"]:
        raise bad_request("An input_file part needs `file_data`.", param=f"{where}.file_data")
    file = {"file_data": part["file_data"]}
    if part.get("filename"):
        file["filename"] = part["filename"]
    return {"type": "file", "file": file}


def _compact(parts: list[dict]):
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts or None


def _assistant_text(content, where: str) -> str:
    if isinstance(content, str) or content is None:
        return content or ""
    if not isinstance(content, list):
        raise bad_request("Message `content` must be a string or an array of parts.", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise bad_request(f"Unsupported assistant content part {kind!r}.", param=f"{where}[{j}]")
    return "".join(texts)


def _tool_output(output, where: str) -> tuple[str, list[dict]]:
    """Tool output -> (text for the tool message, non-text parts for a following user message)."""
    if isinstance(output, str) or output is None:
        return output or "", []
    if not isinstance(output, list):
        return json.dumps(output, ensure_ascii=False), []
    parts = _content_parts(output, where)
    texts = [p["text"] for p in parts if p["type"] == "text"]
    others = [p for p in parts if p["type"] != "text"]
    if not texts and others:
        texts = [f"(the tool returned {len(others)} attachment(s); they follow in the next user message)"]
    return "\n".join(texts), others


# ---- opaque provider state -------------------------------------------------

def encode_state(thinking_blocks: list[dict], signatures: dict[str, str]) -> str | None:
    state: dict = {}
    if thinking_blocks:
        state["thinking_blocks"] = thinking_blocks
    if signatures:
        state["signatures"] = signatures
    return STATE_PREFIX + b64json_encode(state) if state else None


def decode_state(encrypted_content) -> dict | None:
    """Our packed state, or None for foreign (e.g. OpenAI) or damaged content."""
    if not isinstance(encrypted_content, str) or not encrypted_content.startswith(STATE_PREFIX):
        return None
    try:
        state = b64json_decode(encrypted_content[len(STATE_PREFIX):])
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


# ---- stream ----------------------------------------------------------------

@dataclass
class _Item:
    index: int
    item: dict  # the fields every event repeats (id, type, call_id, name...)
    text: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    thinking: list[dict] = field(default_factory=list)
    signatures: dict[str, str] = field(default_factory=dict)
    final: dict | None = None

    @property
    def id(self) -> str:
        return self.item["id"]

    @property
    def kind(self) -> str:
        return self.item["type"]


class ResponsesStream(ChatChunkFold):
    """Canonical Chat chunks in, Responses events out.

    No ``output_item.done`` leaves before the upstream's finish_reason: Codex
    replays every done item on a retry, so output that could still fail must
    not be final yet.
    """

    def __init__(self, ctx: ResponsesContext, *, response_id: str | None = None,
                 created_at: int | None = None) -> None:
        self.ctx = ctx
        self.id = response_id or new_id("resp_")
        self.created_at = created_at or now()
        self._seq = 0
        self._items: list[_Item] = []
        self._calls: dict[int, _Item] = {}
        self._text: _Item | None = None
        self._reasoning: _Item | None = None  # open for summary deltas
        self._state: _Item | None = None  # latest reasoning item, carrier of provider state
        self._finish: str | None = None
        self._usage: dict | None = None
        self._started = False
        self._ended = False

    # -- public

    def started(self) -> list[dict]:
        if self._started:
            return []
        self._started = True
        snapshot = self._response("in_progress")
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def keepalive(self) -> dict:
        return self._event("response.in_progress", response=self._response("in_progress"))

    def _incomplete(self) -> ProxyError:
        return ProxyError(502, "The upstream stream ended before the response was complete.", code="server_error",
                          retryable=True)

    def fail(self, err: ProxyError) -> list[dict]:
        if self._ended:
            return []
        self._ended = True
        response = self._response("failed", self._done_items())
        response["error"] = {"code": _failure_code(err), "message": _failure_message(err)}
        return [self._event("response.failed", response=response)]

    # -- deltas

    def _delta(self, delta: dict) -> list[dict]:
        events = self._reasoning_delta(delta.get("reasoning_content"))
        if delta.get("thinking_blocks"):
            events += self._state_item()
            self._state.thinking.extend(delta["thinking_blocks"])
        events += self._text_delta(delta.get("content"))
        events += self._text_delta(delta.get("refusal"))
        for call in delta.get("tool_calls") or []:
            events += self._tool_delta(call)
        for image in delta.get("images") or []:
            events += self._image(image)
        return events

    def _image(self, image) -> list[dict]:
        """A drawn image (a data URL on the Chat side) -> an ``image_generation_call`` item, held until finish."""
        url = (image.get("image_url") or {}).get("url") if isinstance(image, dict) else None
        parsed = parse_data_url(url) if isinstance(url, str) else None
        if parsed is None:
            return []
        fmt = next((f for f, m in _IMAGE_MIME.items() if m == parsed[0]), "png")
        slot, events = self._open({"id": new_id("ig_"), "type": "image_generation_call", "status": "in_progress",
                                   "output_format": fmt})
        slot.text.append(parsed[1])
        events.append(self._event("response.image_generation_call.in_progress", item_id=slot.id,
                                  output_index=slot.index))
        return events

    def _reasoning_delta(self, text) -> list[dict]:
        if not isinstance(text, str) or not text:
            return []
        events = []
        if self._reasoning is None:
            self._reasoning, events = self._open_reasoning()
            events.append(self._part_event("response.reasoning_summary_part.added", self._reasoning, ""))
        self._reasoning.text.append(text)
        events.append(self._event("response.reasoning_summary_text.delta", item_id=self._reasoning.id,
                                  output_index=self._reasoning.index, summary_index=0, delta=text))
        return events

    def _state_item(self) -> list[dict]:
        """Make sure a reasoning item exists to carry provider state (it may have no summary)."""
        if self._state is not None:
            return []
        return self._open_reasoning()[1]

    def _open_reasoning(self) -> tuple[_Item, list[dict]]:
        slot, events = self._open({"id": new_id("rs_"), "type": "reasoning", "summary": []})
        self._state = slot
        return slot, events

    def _text_delta(self, text) -> list[dict]:
        if not isinstance(text, str) or not text:
            return []
        events = []
        if self._text is None:
            self._text, events = self._open({"id": new_id("msg_"), "type": "message", "status": "in_progress",
                                             "role": "assistant", "content": []})
            events.append(self._part_event("response.content_part.added", self._text, ""))
        self._text.text.append(text)
        events.append(self._event("response.output_text.delta", item_id=self._text.id,
                                  output_index=self._text.index, content_index=0, delta=text, logprobs=[]))
        return events

    def _tool_delta(self, call: dict) -> list[dict]:
        index = call.get("index", len(self._calls))
        events = [] if index in self._calls else self._open_call(index, call)
        slot = self._calls[index]
        fragment = (call.get("function") or {}).get("arguments")
        if isinstance(fragment, str) and fragment:
            slot.arguments.append(fragment)
            if slot.kind == "function_call":
                events.append(self._event("response.function_call_arguments.delta", item_id=slot.id,
                                          output_index=slot.index, delta=fragment))
        return events

    def _open_call(self, index: int, call: dict) -> list[dict]:
        events = []
        call_id, signature = split_thought(call.get("id") or new_id("call_"))
        if signature:
            events += self._state_item()
            self._state.signatures[call_id] = signature
        ref = self.ctx.tool_ref((call.get("function") or {}).get("name") or "")
        self._calls[index], added = self._open(_call_item(ref, call_id))
        return events + added

    def _open(self, item: dict) -> tuple[_Item, list[dict]]:
        """A new output item; it ends any open text or summary part, tool calls stay open until finish."""
        events = self._close_parts()
        slot = _Item(len(self._items), item)
        self._items.append(slot)
        events.append(self._event("response.output_item.added", output_index=slot.index, item=dict(item)))
        return slot, events

    def _part_event(self, kind: str, slot: _Item, text: str) -> dict:
        if slot.kind == "reasoning":
            return self._event(kind, item_id=slot.id, output_index=slot.index, summary_index=0,
                               part={"type": "summary_text", "text": text})
        return self._event(kind, item_id=slot.id, output_index=slot.index, content_index=0,
                           part={"type": "output_text", "text": text, "annotations": []})

    def _close_parts(self) -> list[dict]:
        """End the open text or summary part (display only; the item itself stays held)."""
        events = []
        if self._text is not None:
            slot, text = self._text, "".join(self._text.text)
            events += [self._event("response.output_text.done", item_id=slot.id, output_index=slot.index,
                                   content_index=0, text=text, logprobs=[]),
                       self._part_event("response.content_part.done", slot, text)]
        if self._reasoning is not None:
            slot, text = self._reasoning, "".join(self._reasoning.text)
            events += [self._event("response.reasoning_summary_text.done", item_id=slot.id,
                                   output_index=slot.index, summary_index=0, text=text),
                       self._part_event("response.reasoning_summary_part.done", slot, text)]
        self._text = self._reasoning = None
        return events

    # -- end

    def _close(self, finish_reason: str) -> list[dict]:
        self._finish = finish_reason
        status = "incomplete" if finish_reason in _INCOMPLETE_REASONS else "completed"
        events = self._close_parts()
        for slot in self._items:
            events += self._item_done(slot, status)
        return events

    def _item_done(self, slot: _Item, status: str) -> list[dict]:
        events, arguments = [], "".join(slot.arguments)
        if slot.kind == "message":
            text = "".join(slot.text)
            final = {**slot.item, "status": status,
                     "content": [{"type": "output_text", "text": text, "annotations": []}]}
        elif slot.kind == "reasoning":
            text = "".join(slot.text)
            final = {**slot.item, "summary": [{"type": "summary_text", "text": text}] if text else [],
                     "encrypted_content": encode_state(slot.thinking, slot.signatures)}
        elif slot.kind == "function_call":
            final = {**slot.item, "status": status, "arguments": arguments or "{}"}
            events.append(self._event("response.function_call_arguments.done", item_id=slot.id,
                                      output_index=slot.index, name=slot.item["name"], arguments=final["arguments"]))
        elif slot.kind == "image_generation_call":
            final = {**slot.item, "status": "completed", "result": "".join(slot.text)}
            events.append(self._event("response.image_generation_call.completed", item_id=slot.id,
                                      output_index=slot.index))
        elif slot.kind == "custom_tool_call":
            final = {**slot.item, "status": status, "input": _custom_input(arguments)}
            events += [self._event("response.custom_tool_call_input.delta", item_id=slot.id,
                                   output_index=slot.index, delta=final["input"]),
                       self._event("response.custom_tool_call_input.done", item_id=slot.id,
                                   output_index=slot.index, input=final["input"])]
        else:
            final = {**slot.item, "status": status, "arguments": parse_arguments(arguments)}
        slot.final = final
        events.append(self._event("response.output_item.done", output_index=slot.index, item=final))
        return events

    def _terminal(self) -> list[dict]:
        self._ended = True
        reason = _INCOMPLETE_REASONS.get(self._finish or "")
        response = self._response("incomplete" if reason else "completed", self._done_items())
        response["usage"] = responses_usage(self._usage)
        if reason:
            response["incomplete_details"] = {"reason": reason}
        else:
            response["completed_at"] = now()
        return [self._event("response.incomplete" if reason else "response.completed", response=response)]

    def _done_items(self) -> list[dict]:
        return [slot.final for slot in self._items if slot.final is not None]

    def _response(self, status: str, output: list[dict] | None = None) -> dict:
        response = base_response(self.id, self.created_at, self.ctx.model, self.ctx.echo, status)
        response["output"] = output or []
        return response

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event


def _call_item(ref: ToolRef, call_id: str) -> dict:
    if ref.kind == "custom":
        return {"id": new_id("ctc_"), "type": "custom_tool_call", "status": "in_progress", "call_id": call_id,
                "name": ref.name, "input": ""}
    if ref.kind == "tool_search":
        return {"id": new_id("tsc_"), "type": "tool_search_call", "status": "in_progress", "call_id": call_id,
                "execution": "client", "arguments": {}}
    item = {"id": new_id("fc_"), "type": "function_call", "status": "in_progress", "call_id": call_id,
            "name": ref.name, "arguments": ""}
    if ref.namespace:
        item["namespace"] = ref.namespace
    return item


def _custom_input(arguments: str) -> str:
    """The `input` of a freeform call; a model that skipped the JSON wrapper sent the raw text."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and "input" in value:
        value = value["input"]
    elif isinstance(value, dict):
        return arguments
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def responses_usage(usage: dict | None) -> dict:
    """Canonical Chat usage -> Responses usage (integers, details never empty)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    input_details = {"cached_tokens": int(prompt_details.get("cached_tokens") or 0)}
    if prompt_details.get("cache_write_tokens"):
        input_details["cache_write_tokens"] = int(prompt_details["cache_write_tokens"])
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": input_details, "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": int(usage.get("total_tokens") or prompt + completion)}


def _failure_code(err: ProxyError) -> str:
    if err.code:
        return err.code
    if err.status == 429:
        return "rate_limit_exceeded"
    if 400 <= err.status < 500 and not err.retryable:
        return "invalid_prompt"  # Codex shows it and does not retry a request that cannot succeed
    return "server_error"


def _failure_message(err: ProxyError) -> str:
    # Codex reads the rate-limit delay from this phrase.
    if _failure_code(err) == "rate_limit_exceeded" and err.retry_after and "try again in" not in err.message.lower():
        return f"{err.message} Please try again in {math.ceil(err.retry_after)}s."
    return err.message


# ---- non-streaming ---------------------------------------------------------

def chat_to_response(completion: dict, ctx: ResponsesContext) -> dict:
    """A canonical chat.completion -> a complete Response object (same item mapping as the stream)."""
    choice = (completion.get("choices") or [{}])[0]
    stream = ResponsesStream(ctx, created_at=completion.get("created"))
    events = stream.started()
    for chunk in _message_chunks(choice.get("message") or {}, choice.get("finish_reason") or "stop"):
        events += stream.feed(chunk)
    events += stream.feed({"choices": [], "usage": completion.get("usage")})
    events += stream.finish()
    return events[-1]["response"]


def _message_chunks(message: dict, finish_reason: str) -> list[dict]:
    content = message.get("content")
    deltas = [
        {"reasoning_content": message.get("reasoning_content")},
        {"thinking_blocks": message.get("thinking_blocks")},
        {"content": content_text(content) if isinstance(content, list) else content},
        {"refusal": message.get("refusal")},
        {"images": message.get("images")},
        *({"tool_calls": [{**call, "index": i}]} for i, call in enumerate(message.get("tool_calls") or [])),
    ]
    chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    return [*chunks, {"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}]


def encode_event(event: dict) -> bytes:
    """``event: <type>\\ndata: <json>\\n\\n``."""
    return encode(event, event=event["type"])
