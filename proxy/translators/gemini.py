"""Chat Completions <-> Gemini ``generateContent`` (AI Studio and Vertex AI).

Pure functions only (see ``common``). Choices worth knowing:

* Tool parameters go out as the OpenAPI-subset ``parameters`` (sanitized by
  ``sanitize_schema``), not ``parametersJsonSchema``: the subset is accepted by
  every Gemini model on both AI Studio and Vertex v1, while the JSON-Schema field
  is missing on older models. ``response_format`` schemas use ``responseSchema``
  for the same reason.
* Thought signatures ride in tool-call ids: ``<id>__thought__<call sig>`` and,
  when a text/thought part carried a signature before that call,
  ``<id>__thought__<call sig or "">__thought__<text sig>``. On replay the call
  signature goes back on its ``functionCall`` part and the text signature on the
  model turn's last text part. A text signature with no later call in the same
  answer has nowhere to live in Chat and is dropped (Gemini only validates
  signatures on function calls).
* ``functionCall.id`` is never sent back: ids we hand out are usually our own
  ``call_<hex>``, and Gemini pairs calls and responses by order and name.
* The router is stateless: everything needed on the next turn is in the ids.
"""

from __future__ import annotations

import base64
import itertools
import json
import mimetypes
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from ..errors import ProxyError, bad_request, classify_upstream_error
from ..sse import SSEEvent
from .common import (
    THOUGHT_SEP,
    ToolNameMap,
    chat_chunk,
    chat_completion,
    chat_usage,
    content_text,
    new_id,
    now,
    parse_arguments,
    parse_data_url,
    split_thought,
    usage_chunk,
)
from .images import image_family

DUMMY_SIGNATURE = "skip_thought_signature_validator"
AI_STUDIO_BASE = "https://generativelanguage.googleapis.com"

_GEMINI_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,127}$")
_MODEL_VERSION = re.compile(r"gemini-(\d+(?:\.\d+)?)")


# ---- context and names -------------------------------------------------------

class GeminiNameMap(ToolNameMap):
    """ToolNameMap with Gemini's rule: start with a letter or ``_``, then ``[a-zA-Z0-9_.:-]``, max 128."""

    pattern = _GEMINI_NAME
    invalid = re.compile(r"[^a-zA-Z0-9_.:-]")
    max_len = 128

    def _base(self, name: str) -> str:
        base = super()._base(name)
        return base if re.match(r"[a-zA-Z_]", base) else f"_{base}"


@dataclass
class GeminiContext:
    model: str
    upstream_model: str
    names: GeminiNameMap = field(default_factory=GeminiNameMap)
    include_thoughts: bool = False


# ---- thought-signature carrier ------------------------------------------------

def carry_signatures(call_id: str, call_sig: str | None, text_sig: str | None = None) -> str:
    """Tool-call id carrying the call's signature and, after it, a preceding text part's one."""
    if not call_sig and not text_sig:
        return call_id
    tail = f"{THOUGHT_SEP}{text_sig}" if text_sig else ""
    return f"{call_id}{THOUGHT_SEP}{call_sig or ''}{tail}"


def call_signatures(call_id: str) -> tuple[str, str | None, str | None]:
    """Inverse of ``carry_signatures``: (base id, call signature, text signature)."""
    base, rest = split_thought(call_id)
    if not rest:
        return base, None, None
    call_sig, _, text_sig = rest.partition(THOUGHT_SEP)
    return base, call_sig or None, text_sig or None


# ---- schema sanitizing --------------------------------------------------------

_SCHEMA_KEYS = frozenset({
    "type", "format", "description", "nullable", "enum", "properties", "required", "items", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "minProperties", "maxProperties", "anyOf",
    "propertyOrdering",
})
_STRING_FORMATS = frozenset({"enum", "date-time"})
_MAX_REF_DEPTH = 8


_MAX_SCHEMA_NODES = 20_000  # a real tool schema has a few hundred nodes once its $refs are inlined


class _Expansion:
    """How many more schema nodes inlining may produce: ``$ref`` fan-out (a definition referring
    to the next one several times, eight levels deep) is exponential in a 2 KB schema."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = _MAX_SCHEMA_NODES

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise bad_request(f"The schema is too complex: inlining its `$ref`s gives more than {_MAX_SCHEMA_NODES} "
                              "nodes (Gemini takes no references). Simplify it or avoid repeated references.",
                              code="schema_too_complex")


def sanitize_schema(schema, defs: Mapping | None = None, _refs: tuple[str, ...] = (),
                    _budget: _Expansion | None = None) -> dict:
    """JSON Schema -> the OpenAPI subset Gemini's ``parameters``/``responseSchema`` accept (§4.5)."""
    if not isinstance(schema, dict):
        return {}
    budget = _budget or _Expansion()
    budget.spend()
    defs = defs or {}
    if "$defs" in schema or "definitions" in schema:
        defs = {**defs, **_mapping(schema.get("$defs")), **_mapping(schema.get("definitions"))}
    if "$ref" in schema:
        return _sanitize_ref(schema, defs, _refs, budget)
    out = _sanitize_node(_flatten_all_of(schema, defs, budget), defs, _refs, budget)
    _infer_type(out)
    _tidy(out)
    return {k: v for k, v in out.items() if k in _SCHEMA_KEYS}


def _mapping(value) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _sanitize_ref(schema: dict, defs: Mapping, refs: tuple[str, ...], budget: _Expansion) -> dict:
    name = str(schema["$ref"]).rsplit("/", 1)[-1]
    rest = {k: v for k, v in schema.items() if k != "$ref"}
    if name in refs or not isinstance(defs.get(name), dict) or len(refs) >= _MAX_REF_DEPTH:
        # A recursive or dangling reference cannot be inlined: keep an open object.
        return sanitize_schema({"type": "object", **rest}, defs, refs, budget)
    return sanitize_schema({**defs[name], **rest}, defs, (*refs, name), budget)


def _flatten_all_of(schema: dict, defs: Mapping, budget: _Expansion, depth: int = 0) -> dict:
    """Merge ``allOf`` members (raw, so ``required`` meets the ``properties`` of a sibling member)."""
    members = schema.get("allOf")
    if not isinstance(members, list) or depth > _MAX_REF_DEPTH:
        return schema
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for member in members:
        if not isinstance(member, dict):
            continue
        budget.spend()
        name = str(member.get("$ref", "")).rsplit("/", 1)[-1]
        if isinstance(defs.get(name), dict):
            member = {**defs[name], **{k: v for k, v in member.items() if k != "$ref"}}
        merged = _merge_schemas(merged, _flatten_all_of(member, defs, budget, depth + 1))
    return merged


def _sanitize_node(schema: dict, defs: Mapping, refs: tuple[str, ...], budget: _Expansion) -> dict:
    out = {k: v for k, v in schema.items() if k in _SCHEMA_KEYS and k not in ("properties", "items", "anyOf")}
    _apply_type(out, schema.get("type"))
    if "const" in schema:
        out["enum"] = [schema["const"]]
    _apply_enum(out)
    _apply_exclusive_bounds(out, schema)
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: sanitize_schema(v, defs, refs, budget) for k, v in schema["properties"].items()}
    _apply_items(out, schema, defs, refs, budget)
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list):
        out = _apply_any_of(out, variants, defs, refs, budget)
    return out


def _apply_type(out: dict, value) -> None:
    out.pop("type", None)
    if isinstance(value, str):
        types = [value]
    elif isinstance(value, list):
        types = [t for t in value if isinstance(t, str)]
    else:
        return
    concrete = [t.lower() for t in types if t.lower() != "null"]
    if len(concrete) < len(types):
        out["nullable"] = True
    if len(concrete) == 1:
        out["type"] = concrete[0]
    elif len(concrete) > 1:
        out["anyOf"] = [{"type": t} for t in concrete]


def _apply_enum(out: dict) -> None:
    values = out.pop("enum", None)
    if not isinstance(values, list):
        return
    if None in values:
        out["nullable"] = True
    values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        kept = [v for v in values if v]
        if kept:
            out["enum"], out["type"] = kept, "string"
        return
    if values:
        # Gemini enums are strings only: keep the constraint as guidance for the model.
        allowed = ", ".join(json.dumps(v) for v in values)
        out["description"] = f"{out.get('description', '')}\nAllowed values: {allowed}".strip()


def _apply_exclusive_bounds(out: dict, schema: dict) -> None:
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = schema.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and inclusive not in out:
            out[inclusive] = value


def _apply_items(out: dict, schema: dict, defs: Mapping, refs: tuple[str, ...], budget: _Expansion) -> None:
    items = schema.get("items")
    if isinstance(items, list):
        items = items[0] if items else None
    if isinstance(items, dict):
        out["items"] = sanitize_schema(items, defs, refs, budget)
    elif out.get("type") == "array":
        # Gemini rejects an ARRAY without items; strings are the least surprising default.
        out["items"] = {"type": "string"}


def _apply_any_of(out: dict, variants: list, defs: Mapping, refs: tuple[str, ...], budget: _Expansion) -> dict:
    concrete = []
    for variant in variants:
        if isinstance(variant, dict) and variant.get("type") == "null":
            out["nullable"] = True
        else:
            concrete.append(sanitize_schema(variant, defs, refs, budget))
    if len(concrete) == 1:
        return _merge_schemas(out, concrete[0])
    if concrete:
        out.pop("type", None)
        out["anyOf"] = concrete
    return out


def _infer_type(out: dict) -> None:
    if "type" in out or "anyOf" in out:
        return
    if "properties" in out:
        out["type"] = "object"
    elif "items" in out:
        out["type"] = "array"


def _tidy(out: dict) -> None:
    if out.get("type") != "string" or out.get("format") not in _STRING_FORMATS:
        out.pop("format", None)
    props = out.get("properties")
    if not props:
        out.pop("properties", None)
    required = [r for r in out.get("required") or [] if isinstance(r, str) and props and r in props]
    if required:
        out["required"] = list(dict.fromkeys(required))
    else:
        out.pop("required", None)
    ordering = out.get("propertyOrdering")
    if ordering is not None and not (props and isinstance(ordering, list) and set(ordering) <= set(props)):
        out.pop("propertyOrdering")
    if "description" in out and not isinstance(out["description"], str):
        out.pop("description")


def _merge_schemas(base: dict, extra: dict) -> dict:
    merged = {**extra, **base}
    if "properties" in base or "properties" in extra:
        props = base.get("properties", {})
        merged["properties"] = {**props, **{k: v for k, v in extra.get("properties", {}).items() if k not in props}}
    if "required" in base or "required" in extra:
        merged["required"] = list(dict.fromkeys([*base.get("required", []), *extra.get("required", [])]))
    return merged


def function_parameters(schema) -> dict | None:
    """``parameters`` for a declaration, or None when the function takes nothing (Gemini rejects empty objects)."""
    params = sanitize_schema(schema or {})
    if not params.get("properties"):
        return None
    params["type"] = "object"
    params.pop("anyOf", None)
    return params


# ---- request: messages ----------------------------------------------------------

@dataclass
class _CallInfo:
    name: str
    seq: int


class _RequestBuilder:
    def __init__(self, ctx: GeminiContext, replace_signatures: bool) -> None:
        self.ctx = ctx
        self.replace_signatures = replace_signatures
        # Latest call per id: clients may reuse ids across turns (``call_1`` every turn).
        self.calls: dict[str, _CallInfo] = {}
        self._seq = itertools.count()
        self.system: list[dict] = []
        self.contents: list[dict] = []

    def add(self, index: int, msg: dict) -> None:
        role = msg.get("role")
        if role in ("system", "developer"):
            self.system.extend(_text_parts(msg.get("content")))
        elif role == "user":
            self._append("user", _user_parts(msg.get("content"), f"messages[{index}].content"))
        elif role == "assistant":
            self._append("model", self._model_parts(msg))
        elif role == "tool":
            self._append("user", self._response_parts(index, msg))
        else:
            raise bad_request(f"Unsupported message role: {role!r}", param=f"messages[{index}].role")

    def _append(self, role: str, parts: list[dict]) -> None:
        if not parts:
            return
        if self.contents and self.contents[-1]["role"] == role:
            self.contents[-1]["parts"].extend(parts)
        else:
            self.contents.append({"role": role, "parts": parts})

    def _model_parts(self, msg: dict) -> list[dict]:
        parts = _text_parts(msg.get("content")) + _image_outputs(msg.get("images"))
        calls = []
        for call in msg.get("tool_calls") or []:
            part, text_sig = self._call_part(call)
            calls.append(part)
            if text_sig and parts and not self.replace_signatures:
                parts[-1]["thoughtSignature"] = text_sig
        return parts + calls

    def _call_part(self, call: dict) -> tuple[dict, str | None]:
        fn = call.get("function") or {}
        base, call_sig, text_sig = call_signatures(str(call.get("id") or ""))
        call_sig = call_sig or ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
        name = self.ctx.names.to_upstream(fn.get("name") or "")
        self.calls[base] = _CallInfo(name, next(self._seq))
        part: dict = {"functionCall": {"name": name, "args": parse_arguments(fn.get("arguments"))}}
        if call_sig and not self.replace_signatures:
            part["thoughtSignature"] = call_sig
        return part, text_sig

    def _response_parts(self, index: int, msg: dict) -> list[dict]:
        base, _ = split_thought(str(msg.get("tool_call_id") or ""))
        info = self.calls.get(base)
        if info is None:
            raise bad_request(f"Tool message refers to unknown tool_call_id {base!r}",
                              param=f"messages[{index}].tool_call_id")
        content = msg.get("content")
        part = {"functionResponse": {"name": info.name, "response": _tool_response(content_text(content))},
                "_seq": info.seq}
        extras = [p for p in _user_parts(content, f"messages[{index}].content") if "text" not in p]
        return [part, *extras]

    def build(self) -> list[dict]:
        for content in self.contents:
            if content["role"] == "user":
                _order_responses(content["parts"])
            else:
                _ensure_first_signature(content["parts"])
        return self.contents


def _image_outputs(images) -> list[dict]:
    """Images an image model drew in an earlier turn (``images`` on the assistant message), sent back inline."""
    parts = []
    for image in images if isinstance(images, list) else []:
        url = (image.get("image_url") or {}).get("url") if isinstance(image, dict) else None
        parsed = parse_data_url(url) if isinstance(url, str) else None
        if parsed is not None:
            parts.append({"inlineData": {"mimeType": parsed[0], "data": parsed[1]}})
    return parts


def _order_responses(parts: list[dict]) -> None:
    """Function responses first, in the order of their calls; other parts keep their order after them."""
    responses = sorted((p for p in parts if "_seq" in p), key=lambda p: p["_seq"])
    others = [p for p in parts if "_seq" not in p]
    for p in responses:
        del p["_seq"]
    parts[:] = responses + others


def _ensure_first_signature(parts: list[dict]) -> None:
    first_call = next((p for p in parts if "functionCall" in p), None)
    if first_call is not None and not first_call.get("thoughtSignature"):
        first_call["thoughtSignature"] = DUMMY_SIGNATURE


def _tool_response(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"output": text}


def _text_parts(content) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    return [{"text": p["text"]} for p in content or []
            if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text") and p.get("text")]


def _user_parts(content, param: str) -> list[dict]:
    if not isinstance(content, list):
        return _text_parts(content)
    parts = []
    for i, item in enumerate(content):
        part = _user_part(item, f"{param}[{i}]")
        if part is not None:
            parts.append(part)
    return parts


def _user_part(item: dict, param: str) -> dict | None:
    kind = item.get("type") if isinstance(item, dict) else None
    if kind in ("text", "input_text"):
        return {"text": item["text"]} if item.get("text") else None
    if kind in ("image_url", "input_image"):
        url = item.get("image_url")
        return _media_part(url.get("url", "") if isinstance(url, dict) else str(url or ""), "image/jpeg", param)
    if kind == "file":
        return _file_part(item.get("file") or {}, param)
    if kind == "input_audio":
        audio = item.get("input_audio") or {}
        return {"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}", "data": audio.get("data", "")}}
    raise bad_request(f"Unsupported content part type {kind!r} for Gemini", param=param)


def _media_part(url: str, default_mime: str, param: str) -> dict:
    parsed = parse_data_url(url)
    if parsed:
        return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
    if url.startswith(("http://", "https://", "gs://")):
        mime = mimetypes.guess_type(urlparse(url).path)[0] or default_mime
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise bad_request("Unsupported media URL: expected a data: URL or an http(s)/gs URL", param=param)


def _file_part(file: dict, param: str) -> dict:
    mime = mimetypes.guess_type(file.get("filename") or "")[0] or "application/pdf"
    data = file.get("file_data")
    if data:
        mime, data = parse_data_url(data) or (mime, data)
        return {"inlineData": {"mimeType": mime, "data": data}}
    file_id = str(file.get("file_id") or "")
    if file_id.startswith(("files/", "gs://", "http://", "https://")):
        return {"fileData": {"mimeType": mime, "fileUri": file_id}}
    raise bad_request("file parts need file_data (uploaded file ids cannot be resolved)", param=param)


# ---- request: tools and generation config ------------------------------------------

def _tools(body: dict, names: GeminiNameMap) -> list[dict]:
    declarations, native = [], []
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("type") == "function":
            try:
                declarations.append(_declaration(tool.get("function") or {}, names))
            except ProxyError as err:
                err.param = err.param or f"tools[{i}].function.parameters"
                raise
        elif tool.get("type") == "web_search":
            native.append({"googleSearch": {}})
    return ([{"functionDeclarations": declarations}] if declarations else []) + native[:1]


def _declaration(fn: dict, names: GeminiNameMap) -> dict:
    decl: dict = {"name": names.to_upstream(fn.get("name") or "")}
    if fn.get("description"):
        decl["description"] = fn["description"]
    params = function_parameters(fn.get("parameters"))
    if params:
        decl["parameters"] = params
    return decl


def _tool_config(choice, names: GeminiNameMap) -> dict | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(choice)
        return {"functionCallingConfig": {"mode": mode}} if mode else None
    if choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [names.to_upstream(name)]}}
    if choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or choice
        listed = [(t.get("function") or t).get("name") for t in allowed.get("tools") or []]
        mode = "ANY" if allowed.get("mode") == "required" else "AUTO"
        config: dict = {"mode": mode}
        if mode == "ANY" and listed:
            config["allowedFunctionNames"] = [names.to_upstream(n) for n in listed if n]
        return {"functionCallingConfig": config}
    return None


def _allowed_auto_names(choice) -> set[str] | None:
    """Tool names to keep for ``allowed_tools`` in auto mode (Gemini only restricts names in ANY mode)."""
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return None
    allowed = choice.get("allowed_tools") or choice
    if allowed.get("mode") == "required":
        return None
    return {(t.get("function") or t).get("name") for t in allowed.get("tools") or []}


_SIMPLE_CONFIG = (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                  ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))


def _generation_config(body: dict, model: str) -> tuple[dict, bool]:
    config: dict = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    for src, dst in _SIMPLE_CONFIG:
        if body.get(src) is not None:
            config[dst] = body[src]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    n = body.get("n")
    if n and n != 1:
        if body.get("stream"):
            raise bad_request("n > 1 is not supported with stream for Gemini models", param="n")
        config["candidateCount"] = n
    config.update(_response_format(body.get("response_format")))
    thinking = thinking_config(body.get("reasoning_effort"), model)
    if thinking:
        config["thinkingConfig"] = thinking
    return config, bool(thinking and thinking.get("includeThoughts"))


def _response_format(fmt) -> dict:
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return {}
    out: dict = {"responseMimeType": "application/json"}
    try:
        schema = sanitize_schema((fmt.get("json_schema") or {}).get("schema"))
    except ProxyError as err:
        err.param = err.param or "response_format.json_schema.schema"
        raise
    if schema and not (schema.get("type") == "object" and not schema.get("properties")):
        out["responseSchema"] = schema
    return out


_BUDGETS_25 = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576, "max": 24576}
_LEVELS_3_FLASH = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM"}
_LEVELS_3_PRO = {"none": "LOW", "minimal": "LOW", "low": "LOW"}
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})


def thinking_config(effort: str | None, model: str) -> dict | None:
    """``reasoning_effort`` -> ``thinkingConfig`` for the model's generation (None: leave the model default)."""
    match = _MODEL_VERSION.search(model.lower())
    if effort not in _EFFORTS or not match:
        return None
    version = float(match.group(1))
    flash = "flash" in model.lower()
    if version >= 3:
        table = _LEVELS_3_FLASH if flash else _LEVELS_3_PRO
        config: dict = {"thinkingLevel": table.get(effort, "HIGH")}
    elif version >= 2.5:
        # 2.5 Pro cannot turn thinking off: 128 is its smallest budget.
        off = 0 if flash else 128
        config = {"thinkingBudget": off if effort == "none" else _BUDGETS_25[effort]}
    else:
        return None
    if effort != "none":
        config["includeThoughts"] = True
    return config


def chat_to_gemini(body: dict, model: str, *, replace_signatures: bool = False) -> tuple[dict, GeminiContext]:
    """Chat request -> (``generateContent`` body, context). ``model`` is the upstream model id.

    ``replace_signatures`` drops every carried thought signature (and uses the
    dummy on first calls): the one-time fix after an "invalid thought signature" 400.
    """
    ctx = GeminiContext(model=body.get("model") or model, upstream_model=model)
    builder = _RequestBuilder(ctx, replace_signatures)
    for i, msg in enumerate(body.get("messages") or []):
        builder.add(i, msg)
    contents = builder.build()
    if not contents:
        raise bad_request("At least one user or assistant message is required", param="messages")
    out: dict = {"contents": contents}
    if builder.system:
        out["systemInstruction"] = {"parts": builder.system}
    tools = _tools(body, ctx.names)
    keep = _allowed_auto_names(body.get("tool_choice"))
    if keep is not None:
        tools = _keep_declarations(tools, {ctx.names.to_upstream(n) for n in keep if n})
    if tools:
        out["tools"] = tools
        tool_config = _tool_config(body.get("tool_choice"), ctx.names)
        if tool_config and any("functionDeclarations" in t for t in tools):
            out["toolConfig"] = tool_config
    config, ctx.include_thoughts = _generation_config(body, model)
    modalities = _response_modalities(body.get("modalities"), model)
    if modalities:
        config["responseModalities"] = modalities
    if config:
        out["generationConfig"] = config
    return out, ctx


def _response_modalities(modalities, model: str) -> list[str] | None:
    """Chat ``modalities`` (``["text", "image"]``) -> ``responseModalities``; image models draw by default."""
    if isinstance(modalities, list) and modalities:
        wanted = [m.upper() for m in modalities if isinstance(m, str) and m.lower() in ("text", "image")]
        return wanted or None
    return ["TEXT", "IMAGE"] if image_family(model) == "gemini" else None


def _keep_declarations(tools: list[dict], names: set[str]) -> list[dict]:
    out = []
    for tool in tools:
        if "functionDeclarations" in tool:
            kept = [d for d in tool["functionDeclarations"] if d["name"] in names]
            if kept:
                out.append({"functionDeclarations": kept})
        else:
            out.append(tool)
    return out


# ---- response -----------------------------------------------------------------------

_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                       "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"})
_FAILED = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})


def gemini_usage(meta: Mapping) -> dict:
    thoughts = meta.get("thoughtsTokenCount") or 0
    return chat_usage(
        (meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0),
        (meta.get("candidatesTokenCount") or 0) + thoughts,
        cached=meta.get("cachedContentTokenCount") or 0,
        reasoning=thoughts,
    )


def finish_reason(reason: str | None, has_calls: bool, message: str = "") -> str:
    """Gemini ``finishReason`` -> Chat ``finish_reason``; model errors become a retryable 502."""
    if reason in _FAILED:
        raise ProxyError(502, f"gemini upstream error: model ended with {reason}. {message}".strip(),
                         code="server_error", type="server_error", retryable=True)
    if reason in _FILTERED:
        return "content_filter"
    if has_calls:
        return "tool_calls"
    return "length" if reason == "MAX_TOKENS" else "stop"


class _Candidate:
    """One candidate's parts -> Chat deltas (shared by streams and whole responses)."""

    def __init__(self, ctx: GeminiContext) -> None:
        self.ctx = ctx
        self.calls = 0
        self.images = 0
        self._text_sig: str | None = None

    def deltas(self, parts: list[dict]) -> list[dict]:
        out = []
        for part in parts:
            if "functionCall" in part:
                out.append(self._call(part))
                continue
            image = _drawn_image(part)
            if image is not None:
                out.append({"images": [{"index": self.images, "type": "image_url", "image_url": {"url": image}}]})
                self.images += 1
                continue
            if part.get("thoughtSignature"):
                self._text_sig = part["thoughtSignature"]
            text = part.get("text")
            if text:
                out.append({"reasoning_content": text} if part.get("thought") else {"content": text})
        return out

    def _call(self, part: dict) -> dict:
        fc = part["functionCall"]
        call_id = carry_signatures(fc.get("id") or new_id("call_"), part.get("thoughtSignature"), self._text_sig)
        self._text_sig = None
        call = {"index": self.calls, "id": call_id, "type": "function",
                "function": {"name": self.ctx.names.to_client(fc.get("name") or ""),
                             "arguments": json.dumps(fc.get("args") or {}, ensure_ascii=False)}}
        self.calls += 1
        return {"tool_calls": [call]}


def _drawn_image(part: dict) -> str | None:
    """An image the model drew, as a data URL (Gemini 3's draft "thought" images are left out)."""
    inline = part.get("inlineData")
    if not isinstance(inline, dict) or part.get("thought") or not inline.get("data"):
        return None
    mime = str(inline.get("mimeType") or "")
    return f"data:{mime};base64,{inline['data']}" if mime.startswith("image/") else None


def _candidate_parts(candidate: Mapping) -> list[dict]:
    return (candidate.get("content") or {}).get("parts") or []


def _message_from(deltas: list[dict]) -> dict:
    text = "".join(d.get("content", "") for d in deltas)
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    calls = [{k: v for k, v in d["tool_calls"][0].items() if k != "index"} for d in deltas if "tool_calls" in d]
    message: dict = {"role": "assistant", "content": text or (None if calls else "")}
    images = [{k: v for k, v in image.items() if k != "index"} for d in deltas for image in d.get("images", ())]
    if images:
        message["images"] = images
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message


def gemini_to_chat(resp: dict, ctx: GeminiContext) -> dict:
    """A whole ``GenerateContentResponse`` -> Chat completion (one choice per candidate)."""
    if "error" in resp:
        raise _error_from_payload(resp)
    usage = gemini_usage(resp["usageMetadata"]) if resp.get("usageMetadata") else None
    completion_id = f"chatcmpl-{resp.get('responseId') or new_id('')}"
    candidates = resp.get("candidates") or []
    if not candidates:
        blocked = (resp.get("promptFeedback") or {}).get("blockReason")
        if not blocked:
            raise ProxyError(502, "gemini upstream error: response has no candidates", retryable=True,
                             code="server_error", type="server_error")
        return chat_completion(completion_id, ctx.model, now(), {"role": "assistant", "content": ""},
                               "content_filter", usage)
    choices = []
    for i, candidate in enumerate(candidates):
        state = _Candidate(ctx)
        message = _message_from(state.deltas(_candidate_parts(candidate)))
        reason = finish_reason(candidate.get("finishReason"), state.calls > 0, candidate.get("finishMessage") or "")
        choices.append({"index": candidate.get("index", i), "message": message, "finish_reason": reason})
    result = chat_completion(completion_id, ctx.model, now(), choices[0]["message"], choices[0]["finish_reason"],
                             usage)
    result["choices"] = choices
    return result


class GeminiStream:
    """``streamGenerateContent?alt=sse`` events -> canonical Chat chunks (candidate 0)."""

    def __init__(self, ctx: GeminiContext) -> None:
        self.ctx = ctx
        self.id = new_id("chatcmpl-")
        self.created = now()
        self._candidate = _Candidate(ctx)
        self._started = False
        self._reason: str | None = None
        self._usage: dict | None = None

    def feed(self, ev: SSEEvent) -> list[dict]:
        data = (ev.data or "").strip()
        if not data or data == "[DONE]":
            return []
        try:
            payload = json.loads(data)
        except ValueError:
            raise ProxyError(502, "gemini upstream error: unparseable stream event", retryable=True,
                             code="server_error", type="server_error")
        out: list[dict] = []
        for resp in payload if isinstance(payload, list) else [payload]:
            out += self._response(resp)
        return out

    def _response(self, resp: dict) -> list[dict]:
        if "error" in resp:
            raise _error_from_payload(resp)
        out = self._start()
        if resp.get("usageMetadata"):
            self._usage = resp["usageMetadata"]
        candidates = resp.get("candidates") or []
        if not candidates:
            if (resp.get("promptFeedback") or {}).get("blockReason"):
                self._reason = "content_filter"
            return out
        candidate = candidates[0]
        out += [self._chunk(d) for d in self._candidate.deltas(_candidate_parts(candidate))]
        if candidate.get("finishReason"):
            self._reason = finish_reason(candidate["finishReason"], False, candidate.get("finishMessage") or "")
        return out

    def finish(self) -> list[dict]:
        if self._reason is None:
            raise ProxyError(502, "gemini upstream error: stream ended without a finishReason", retryable=True,
                             code="server_error", type="server_error")
        reason = "tool_calls" if self._candidate.calls and self._reason != "content_filter" else self._reason
        out = [*self._start(), self._chunk({}, reason)]
        if self._usage:
            out.append(usage_chunk(self.id, self.ctx.model, self.created, gemini_usage(self._usage)))
        return out

    def _start(self) -> list[dict]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _chunk(self, delta: dict, reason: str | None = None) -> dict:
        return chat_chunk(self.id, self.ctx.model, self.created, delta, reason)


# ---- errors ---------------------------------------------------------------------------

_STATUS_CODES = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
                 "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ABORTED": 409, "ALREADY_EXISTS": 409,
                 "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500, "UNKNOWN": 500,
                 "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
_CREDENTIAL_RE = re.compile(
    r"not allowed to use Publisher Model|does not have access|API key not valid|API key expired|API_KEY_INVALID|"
    r"API_KEY_EXPIRED|SERVICE_DISABLED|has not been used in project|billing|location is not supported",
    re.I,
)
# Per-minute exhaustion clears by itself; a zero or daily limit or a billing problem does not.
_HARD_QUOTA_RE = re.compile(r"limit: 0\b|per[ _]?day|billing", re.I)
_SIGNATURE_RE = re.compile(r"thought[_ ]signature", re.I)


def _google_error(body: bytes | str) -> tuple[dict, str]:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        data = json.loads(text)
    except ValueError:
        return {}, text.strip()[:500]
    if isinstance(data, list):
        data = data[0] if data else {}
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return err, str(err.get("message") or "")
    return {}, text.strip()[:500]


def _retry_delay(details: list) -> float | None:
    for item in details:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


def gemini_error(status: int, body: bytes | str, headers: Mapping[str, str] | None = None, *,
                 provider: str = "gemini") -> ProxyError:
    """A Google error answer (``{"error": {code, message, status, details}}``, maybe list-wrapped) -> ProxyError."""
    err, message = _google_error(body)
    google_status = str(err.get("status") or "")
    status = status if status >= 400 else int(err.get("code") or _STATUS_CODES.get(google_status, 502))
    details = err.get("details") if isinstance(err.get("details"), list) else []
    reasons = " ".join(str(d.get("reason", "")) for d in details if isinstance(d, dict))
    evidence = f"{google_status} {reasons} {message}"
    headers = headers or {}
    message = message or f"HTTP {status}"
    if status == 429 or google_status == "RESOURCE_EXHAUSTED":
        code = "RESOURCE_EXHAUSTED" if _HARD_QUOTA_RE.search(evidence) else "rate_limit_exceeded"
        error = classify_upstream_error(429, message, provider=provider, upstream_code=code, headers=headers)
    elif status < 500 and _CREDENTIAL_RE.search(evidence):
        error = ProxyError(502, f"{provider} upstream error ({status}): {message}", retryable=True,
                           credential_fault=True, code="upstream_authentication_error",
                           type="upstream_authentication_error")
    else:
        error = classify_upstream_error(status, message, provider=provider, upstream_code=google_status or None,
                                        headers=headers)
        if status == 400 and _SIGNATURE_RE.search(message) and error.code != "context_length_exceeded":
            error.code = "invalid_thought_signature"
    if error.retry_after is None:
        error.retry_after = _retry_delay(details)
    return error


def _error_from_payload(payload: dict) -> ProxyError:
    return gemini_error(0, json.dumps(payload))


# ---- embeddings -----------------------------------------------------------------------

def _embedding_inputs(body: dict) -> list[str]:
    value = body.get("input")
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise bad_request("input must be a non-empty string or a list of strings (token arrays are not supported)",
                          param="input")
    if any(not v for v in values):
        raise bad_request("input strings must not be empty", param="input")
    return values


def _strip_models_prefix(model: str) -> str:
    return model.removeprefix("models/")


def embeddings_to_gemini(body: dict, model: str) -> dict:
    """OpenAI embeddings request -> ``batchEmbedContents`` body."""
    name = f"models/{_strip_models_prefix(model)}"
    requests = []
    for text in _embedding_inputs(body):
        req: dict = {"model": name, "content": {"parts": [{"text": text}]}}
        if body.get("dimensions"):
            req["outputDimensionality"] = body["dimensions"]
        requests.append(req)
    return {"requests": requests}


def embeddings_to_vertex(body: dict) -> dict:
    """OpenAI embeddings request -> Vertex ``:predict`` body."""
    out: dict = {"instances": [{"content": text} for text in _embedding_inputs(body)]}
    if body.get("dimensions"):
        out["parameters"] = {"outputDimensionality": body["dimensions"]}
    return out


def _encode_vector(values: list[float], encoding_format: str | None) -> list[float] | str:
    if encoding_format != "base64":
        return values
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _embedding_list(vectors: list[list[float]], client_model: str, tokens: int, encoding_format: str | None) -> dict:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode_vector(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": client_model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def gemini_embeddings_to_openai(resp: dict, client_model: str, *, encoding_format: str | None = None) -> dict:
    vectors = [e.get("values") or [] for e in resp.get("embeddings") or []]
    tokens = (resp.get("usageMetadata") or {}).get("promptTokenCount") or 0
    return _embedding_list(vectors, client_model, int(tokens), encoding_format)


def vertex_embeddings_to_openai(resp: dict, client_model: str, *, encoding_format: str | None = None) -> dict:
    embeddings = [(p.get("embeddings") or {}) for p in resp.get("predictions") or []]
    tokens = sum(int((e.get("statistics") or {}).get("token_count") or 0) for e in embeddings)
    return _embedding_list([e.get("values") or [] for e in embeddings], client_model, tokens, encoding_format)


# ---- URLs -----------------------------------------------------------------------------

_STREAM_ACTIONS = frozenset({"streamGenerateContent"})


def _with_alt(url: str, action: str) -> str:
    return f"{url}?alt=sse" if action in _STREAM_ACTIONS else url


def gemini_url(base_url: str | None, model: str, stream: bool, action: str | None = None) -> str:
    """AI Studio URL; ``base_url`` may already end in ``/v1beta`` or ``/v1``."""
    base = (base_url or AI_STUDIO_BASE).rstrip("/")
    if not base.endswith(("/v1beta", "/v1")):
        base = f"{base}/v1beta"
    action = action or ("streamGenerateContent" if stream else "generateContent")
    return _with_alt(f"{base}/models/{_strip_models_prefix(model)}:{action}", action)


def vertex_host(location: str) -> str:
    if location == "global":
        return "https://aiplatform.googleapis.com"
    if location in ("us", "eu"):
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def vertex_url(base_url: str | None, project: str, location: str, publisher: str, model: str, action: str) -> str:
    """Vertex publisher-model URL (``publisher`` is ``google`` or ``anthropic``); ``base_url`` replaces the host."""
    base = (base_url or vertex_host(location)).rstrip("/")
    if not base.endswith(("/v1", "/v1beta1")):
        base = f"{base}/v1"
    path = f"/projects/{project}/locations/{location}/publishers/{publisher}/models/{_strip_models_prefix(model)}"
    return _with_alt(f"{base}{path}:{action}", action)
