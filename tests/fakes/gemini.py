"""Fake Gemini upstreams (AI Studio and Vertex AI) and a fake Google OAuth token endpoint.

``GeminiFake(*script)`` answers, over a ``FakeServer`` socket:

* AI Studio ``/v1beta/models/{m}:generateContent | :streamGenerateContent[?alt=sse] | :batchEmbedContents``
  (``x-goog-api-key`` required);
* Vertex ``/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent |
  :streamGenerateContent | :predict`` (``Authorization: Bearer`` issued by a ``FakeOAuth``);
* Imagen ``imagen-*:predict`` on both (``validate_imagen``: generation models and the
  capability model's reference images and edit modes), drawing small PNGs.

Requests are checked like the real API (``validate_generate_content``, usable
directly in unit tests) and rejected with Google's 400 JSON. Each generate
request consumes the next script item: a ``Turn`` (parts, finish reason, usage,
block, chunking; streamed as ``data:`` events separated by CRLF CRLF), a
``GoogleError`` or a raw ``Reply``. Function calls are signed with thought
signatures the fake issues and later accepts (``signatures``).

``FakeOAuth`` is a token endpoint for google-auth's service-account flow; it
verifies the JWT assertion against keys made by ``make_service_account``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections import Counter
from itertools import pairwise
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .images import b64png
from .server import FakeProvider, Recorded, Reply

DUMMY_SIGNATURE = "skip_thought_signature_validator"
NEW_SIGNATURE = "<new signature>"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# google-auth signs this audience whatever the token_uri (google/oauth2/service_account.py), as Google expects.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_AI_STUDIO_PATH = re.compile(r"^/v1beta/models/(?P<model>[^/:]+):(?P<action>\w+)$")
_VERTEX_PATH = re.compile(r"^/v1(?:beta1)?/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
                          r"/publishers/google/models/(?P<model>[^/:]+):(?P<action>\w+)$")
_FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,127}$")


# ---- script items --------------------------------------------------------------

def text(value: str, *, signed: bool = False) -> dict:
    part: dict = {"text": value}
    if signed:
        part["thoughtSignature"] = NEW_SIGNATURE
    return part


def thought(value: str) -> dict:
    return {"text": value, "thought": True}


def call(name: str, args: dict | None = None, *, id: str | None = None, signed: bool = False) -> dict:
    fc: dict = {"name": name, "args": args or {}}
    if id:
        fc["id"] = id
    part: dict = {"functionCall": fc}
    if signed:
        part["thoughtSignature"] = NEW_SIGNATURE
    return part


def usage_metadata(prompt: int = 10, candidates: int = 5, *, thoughts: int = 0, cached: int = 0,
                   tool_prompt: int = 0) -> dict:
    meta = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates + thoughts + tool_prompt}
    for key, value in (("thoughtsTokenCount", thoughts), ("cachedContentTokenCount", cached),
                       ("toolUsePromptTokenCount", tool_prompt)):
        if value:
            meta[key] = value
    return meta


class Turn:
    """One scripted model answer.

    Each positional argument is one stream chunk: a part or a list of parts.
    The first functionCall of the turn is signed (``sign_first_call``), as
    Gemini 3 does for each step; parallel calls after it are not.
    """

    def __init__(self, *chunks: dict | list[dict], finish: str | None = "STOP", usage: dict | None = None,
                 early_usage: bool = False, block: str | None = None, trailing_empty: bool = False,
                 sign_first_call: bool = True, delay: float = 0.0, finish_message: str | None = None) -> None:
        self.chunks = [c if isinstance(c, list) else [c] for c in chunks]
        self.finish = finish
        self.usage = usage if usage is not None else usage_metadata()
        self.early_usage = early_usage
        self.block = block
        self.trailing_empty = trailing_empty
        self.sign_first_call = sign_first_call
        self.delay = delay
        self.finish_message = finish_message


class GoogleError:
    """A scripted Google error answer (``{"error": {code, message, status, details}}``, optionally list-wrapped)."""

    def __init__(self, status: int = 429, google_status: str = "RESOURCE_EXHAUSTED",
                 message: str = "Resource has been exhausted (e.g. check quota).", *, list_wrapped: bool = False,
                 details: list | None = None, headers: dict | None = None) -> None:
        self.status, self.google_status, self.message = status, google_status, message
        self.list_wrapped, self.details, self.headers = list_wrapped, details, headers or {}

    def reply(self) -> Reply:
        return google_error_reply(self.status, self.google_status, self.message, list_wrapped=self.list_wrapped,
                                  details=self.details, headers=self.headers)


def google_error_body(status: int, google_status: str, message: str, details: list | None = None) -> dict:
    error: dict = {"code": status, "message": message, "status": google_status}
    if details:
        error["details"] = details
    return {"error": error}


def google_error_reply(status: int, google_status: str, message: str, *, list_wrapped: bool = False,
                       details: list | None = None, headers: dict | None = None) -> Reply:
    body = google_error_body(status, google_status, message, details)
    return Reply(status=status, json=[body] if list_wrapped else body, headers=headers or {})


def sse_frames(chunks: list[dict], delay: float = 0.0) -> list[str | float]:
    """Gemini framing: ``data: {json}`` events separated by CRLF CRLF, no terminator."""
    frames: list[str | float] = []
    for i, chunk in enumerate(chunks):
        if delay and i:
            frames.append(delay)
        frames.append(f"data: {json.dumps(chunk, separators=(',', ':'))}\r\n\r\n")
    return frames


# ---- request validation (like the real API, see providers.md §4 and §9) --------------

_REQUEST_KEYS = frozenset({"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                           "safetySettings", "cachedContent", "model"})
_PART_DATA = frozenset({"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
                        "codeExecutionResult"})
_PART_EXTRA = frozenset({"thought", "thoughtSignature", "videoMetadata", "mediaResolution"})
_SCHEMA_KEYS = frozenset({"type", "format", "title", "description", "nullable", "enum", "properties", "required",
                          "items", "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
                          "minProperties", "maxProperties", "anyOf", "propertyOrdering", "default", "example"})
_SCHEMA_TYPES = frozenset({"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"})
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}
_TOOL_KEYS = frozenset({"functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution",
                        "urlContext", "retrieval", "enterpriseWebSearch", "googleMaps", "fileSearch"})
_DECLARATION_KEYS = frozenset({"name", "description", "parameters", "parametersJsonSchema", "response",
                               "responseJsonSchema", "behavior"})
_GENERATION_KEYS = frozenset({"maxOutputTokens", "temperature", "topP", "topK", "stopSequences", "candidateCount",
                              "seed", "presencePenalty", "frequencyPenalty", "responseMimeType", "responseSchema",
                              "responseJsonSchema", "thinkingConfig", "responseLogprobs", "logprobs",
                              "responseModalities", "mediaResolution", "imageConfig"})
_MODALITIES = frozenset({"TEXT", "IMAGE", "AUDIO"})
_IMAGE_CONFIG = {"aspectRatio": frozenset({"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"}),
                 "imageSize": frozenset({"1K", "2K", "4K"})}
_THINKING_KEYS = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
_THINKING_LEVELS = frozenset({"MINIMAL", "LOW", "MEDIUM", "HIGH"})
_MODES = frozenset({"AUTO", "ANY", "NONE", "VALIDATED"})


def _unknown(errors: list[str], keys, allowed: frozenset, where: str) -> None:
    for key in keys:
        if key not in allowed:
            errors.append(f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.')


def validate_generate_content(body: dict, *, vertex: bool = False, signatures: set[str] | None = None,
                              require_signatures: bool = True) -> list[str]:
    """Every reason the real API would answer 400 that the fake knows about (empty: valid).

    ``signatures``: the ones the fake issued (None: do not check their validity).
    ``require_signatures``: emulate Gemini 3 (first call of each current-turn step must be signed).
    """
    errors: list[str] = []
    if not isinstance(body, dict):
        return ["Invalid JSON payload received."]
    _unknown(errors, body, _REQUEST_KEYS | ({"labels"} if vertex else set()), "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return [*errors, "* GenerateContentRequest.contents: contents is not specified"]
    for i, content in enumerate(contents):
        _check_content(content, f"contents[{i}]", errors)
    if errors:
        return errors
    _check_alternation(contents, errors)
    _check_function_turns(contents, errors)
    _check_signatures(contents, signatures, require_signatures, errors)
    _check_system(body.get("systemInstruction"), errors)
    declared = _check_tools(body.get("tools"), errors)
    _check_tool_config(body.get("toolConfig"), declared, errors)
    _check_generation_config(body.get("generationConfig"), errors)
    return errors


def _check_content(content, where: str, errors: list[str]) -> None:
    if not isinstance(content, dict):
        errors.append(f"* GenerateContentRequest.{where}: must be an object")
        return
    _unknown(errors, content, frozenset({"role", "parts"}), where)
    role = content.get("role")
    if not role:
        errors.append(f"Please use a valid role: user, model. ({where}.role is missing)")
    elif role == "system":
        errors.append("Content with system role is not supported.")
    elif role not in ("user", "model"):
        errors.append(f"Please use a valid role: user, model. (got {role!r})")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        errors.append(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
        return
    for j, part in enumerate(parts):
        _check_part(part, f"{where}.parts[{j}]", errors)


def _check_part(part, where: str, errors: list[str]) -> None:
    if not isinstance(part, dict):
        errors.append(f"* GenerateContentRequest.{where}: must be an object")
        return
    _unknown(errors, part, _PART_DATA | _PART_EXTRA, where)
    data = [k for k in part if k in _PART_DATA]
    if len(data) != 1:
        errors.append(f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have one "
                      "initialized field")
        return
    kind = data[0]
    if kind == "text" and (not isinstance(part["text"], str) or not part["text"]):
        errors.append("Unable to submit request because it has an empty text parameter. Add a value to the "
                      "parameter and try again.")
    elif kind == "inlineData":
        _check_inline(part["inlineData"], where, errors)
    elif kind == "fileData" and not (part["fileData"].get("fileUri") and part["fileData"].get("mimeType")):
        errors.append(f"* GenerateContentRequest.{where}.file_data: fileUri and mimeType are required")
    elif kind == "functionCall":
        _check_named(part["functionCall"], "args", f"{where}.function_call", errors)
    elif kind == "functionResponse":
        _check_named(part["functionResponse"], "response", f"{where}.function_response", errors)
    sig = part.get("thoughtSignature")
    if sig is not None and (not isinstance(sig, str) or not sig):
        errors.append(f"* GenerateContentRequest.{where}.thought_signature: invalid value")


def _check_inline(inline, where: str, errors: list[str]) -> None:
    if not isinstance(inline, dict) or not inline.get("mimeType") or not inline.get("data"):
        errors.append(f"* GenerateContentRequest.{where}.inline_data: mimeType and data are required")
        return
    try:
        base64.b64decode(inline["data"], validate=True)
    except ValueError:
        errors.append(f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed")


def _check_named(obj, payload_key: str, where: str, errors: list[str]) -> None:
    if not isinstance(obj, dict) or not obj.get("name"):
        errors.append(f"* GenerateContentRequest.{where}.name: Name cannot be empty.")
        return
    _unknown(errors, obj, frozenset({"name", payload_key, "id"}), where)
    if payload_key in obj and not isinstance(obj[payload_key], dict):
        errors.append(f"Invalid value at '{where}.{payload_key}' (type.googleapis.com/google.protobuf.Struct)")


def _check_alternation(contents: list[dict], errors: list[str]) -> None:
    for prev, cur in pairwise(contents):
        if prev["role"] == cur["role"]:
            errors.append("Please ensure that multiturn requests alternate between user and model.")
            return
    if contents[-1]["role"] != "user":
        errors.append("Please ensure that multiturn requests ends with a user role or a function response.")


def _calls(content: dict) -> list[str]:
    return [p["functionCall"]["name"] for p in content["parts"] if "functionCall" in p]


def _responses(content: dict) -> list[str]:
    return [p["functionResponse"]["name"] for p in content["parts"] if "functionResponse" in p]


def _check_function_turns(contents: list[dict], errors: list[str]) -> None:
    for i, content in enumerate(contents):
        calls, responses = _calls(content), _responses(content)
        if calls and i == 0:
            errors.append("Please ensure that function call turn comes immediately after a user turn or after a "
                          "function response turn.")
        previous_calls = _calls(contents[i - 1]) if i else []
        if responses and not previous_calls:
            errors.append("Please ensure that function response turn comes immediately after a function call turn.")
        elif previous_calls and len(responses) != len(previous_calls):
            errors.append("Please ensure that the number of function response parts is equal to the number of "
                          "function call parts of the function call turn.")
        elif previous_calls and Counter(responses) != Counter(previous_calls):
            errors.append(f"Function response names {responses} do not match the function call names "
                          f"{previous_calls} of the function call turn.")


def _current_turn_start(contents: list[dict]) -> int:
    """Index of the last user content holding more than function responses (a real user message)."""
    for i in range(len(contents) - 1, -1, -1):
        content = contents[i]
        if content["role"] == "user" and any("functionResponse" not in p for p in content["parts"]):
            return i
    return 0


def _check_signatures(contents: list[dict], issued: set[str] | None, required: bool, errors: list[str]) -> None:
    start = _current_turn_start(contents)
    for i, content in enumerate(contents):
        for j, part in enumerate(content["parts"]):
            sig = part.get("thoughtSignature")
            if sig and issued is not None and sig != DUMMY_SIGNATURE and sig not in issued:
                errors.append(f"Corrupted thought signature. (contents[{i}].parts[{j}])")
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if required and i > start and first is not None and not first.get("thoughtSignature"):
            position = content["parts"].index(first) + 1
            errors.append("Function call is missing a thought_signature in functionCall parts. This is required for "
                          "tools to work correctly, and missing thought_signature may lead to degraded model "
                          f"performance. Additional data, function call `default_api:{first['functionCall']['name']}`"
                          f" , position {position}.")


def _check_system(system, errors: list[str]) -> None:
    if system is None:
        return
    parts = system.get("parts") if isinstance(system, dict) else None
    if not isinstance(parts, list) or not parts:
        errors.append("* GenerateContentRequest.system_instruction.parts: must not be empty")
        return
    for j, part in enumerate(parts):
        _check_part(part, f"system_instruction.parts[{j}]", errors)


def _check_tools(tools, errors: list[str]) -> set[str]:
    declared: set[str] = set()
    for i, tool in enumerate(tools or []):
        keys = [k for k in tool if k in _TOOL_KEYS]
        _unknown(errors, tool, _TOOL_KEYS, f"tools[{i}]")
        if len(keys) != 1:
            errors.append(f"* GenerateContentRequest.tools[{i}]: exactly one tool type must be set")
        for j, decl in enumerate(tool.get("functionDeclarations") or []):
            _check_declaration(decl, f"tools[{i}].function_declarations[{j}]", declared, errors)
    return declared


def _check_declaration(decl: dict, where: str, declared: set[str], errors: list[str]) -> None:
    _unknown(errors, decl, _DECLARATION_KEYS, where)
    name = decl.get("name") or ""
    if not _FUNCTION_NAME.match(name):
        errors.append(f"* GenerateContentRequest.{where}.name: Invalid function name. Must start with a letter or an "
                      "underscore. Must be alphameric (a-z, A-Z, 0-9), underscores (_), dots (.), colons (:), or "
                      "dashes (-), with a maximum length of 128.")
    if name in declared:
        errors.append(f"* GenerateContentRequest.{where}.name: Duplicate function declaration found: {name}")
    declared.add(name)
    if "parameters" in decl and "parametersJsonSchema" in decl:
        errors.append(f"* GenerateContentRequest.{where}: parameters and parameters_json_schema are mutually "
                      "exclusive")
    params = decl.get("parameters")
    if params is None:
        return
    if str(params.get("type", "")).upper() != "OBJECT":
        errors.append(f"Unable to submit request because `{name}` functionDeclaration `parameters` schema should "
                      "be of type OBJECT.")
    if not params.get("properties"):
        errors.append(f"* GenerateContentRequest.{where}.parameters.properties: should be non-empty for OBJECT type")
    check_schema(params, f"{where}.parameters", errors)


def check_schema(schema, where: str, errors: list[str]) -> None:
    """The OpenAPI-subset ``Schema`` rules (parameters and responseSchema)."""
    if not isinstance(schema, dict):
        errors.append(f"Invalid value at '{where}' (type.googleapis.com/google.ai.generativelanguage.v1beta.Schema)")
        return
    _unknown(errors, schema, _SCHEMA_KEYS, where)
    kind = _schema_type(schema.get("type"), where, errors)
    _check_enum_and_format(schema, kind, where, errors)
    props = schema.get("properties")
    if props is not None:
        for name, sub in (props.items() if isinstance(props, dict) else []):
            check_schema(sub, f"{where}.properties[{name}].value", errors)
    for k, name in enumerate(schema.get("required") or []):
        if not isinstance(props, dict) or name not in props:
            errors.append(f"* GenerateContentRequest.{where}.required[{k}]: property is not defined")
    if kind == "ARRAY" and "items" not in schema:
        errors.append(f"* GenerateContentRequest.{where}.items: missing field.")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items", errors)
    for k, sub in enumerate(schema.get("anyOf") or []):
        check_schema(sub, f"{where}.any_of[{k}]", errors)


def _schema_type(value, where: str, errors: list[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        errors.append(f"Invalid value at '{where}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type)"
                      ", Proto field is not repeating, cannot start list.")
        return None
    if not isinstance(value, str) or value.upper() not in _SCHEMA_TYPES:
        errors.append(f"Invalid value at '{where}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type)"
                      f", \"{value}\"")
        return None
    return value.upper()


def _check_enum_and_format(schema: dict, kind: str | None, where: str, errors: list[str]) -> None:
    enum = schema.get("enum")
    if enum is not None and (kind != "STRING" or not all(isinstance(v, str) and v for v in enum)):
        errors.append(f"* GenerateContentRequest.{where}.enum: only allowed for STRING type with non-empty values")
    fmt = schema.get("format")
    if fmt is not None and fmt not in _FORMATS.get(kind or "", set()):
        errors.append(f"* GenerateContentRequest.{where}.format: unsupported format {fmt!r} for type {kind}")


def _check_tool_config(config, declared: set[str], errors: list[str]) -> None:
    if config is None:
        return
    fcc = config.get("functionCallingConfig") or {}
    if not declared:
        errors.append("Function calling config is set without function_declarations.")
    mode = fcc.get("mode", "AUTO")
    if mode not in _MODES:
        errors.append(f"Invalid value at 'tool_config.function_calling_config.mode', \"{mode}\"")
    names = fcc.get("allowedFunctionNames")
    if names and mode not in ("ANY", "VALIDATED"):
        errors.append("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: only "
                      "allowed when mode is ANY")
    for name in names or []:
        if name not in declared:
            errors.append(f"* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                          f"{name} is not a declared function")


def _check_generation_config(config, errors: list[str]) -> None:
    if config is None:
        return
    _unknown(errors, config, _GENERATION_KEYS, "generation_config")
    if "responseSchema" in config and "responseJsonSchema" in config:
        errors.append("* GenerateContentRequest.generation_config: response_schema and response_json_schema are "
                      "mutually exclusive")
    if "responseSchema" in config:
        if config.get("responseMimeType") not in ("application/json", "text/x.enum"):
            errors.append("* GenerateContentRequest.generation_config.response_mime_type: must be application/json "
                          "when response_schema is set")
        check_schema(config["responseSchema"], "generation_config.response_schema", errors)
    stop = config.get("stopSequences")
    if stop is not None and (not isinstance(stop, list) or len(stop) > 5):
        errors.append("* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences")
    modalities = config.get("responseModalities")
    if modalities is not None and (not isinstance(modalities, list) or set(modalities) - _MODALITIES):
        errors.append(f"Invalid value at 'generation_config.response_modalities': {modalities!r}")
    image_config = config.get("imageConfig")
    if image_config is not None:
        _unknown(errors, image_config, frozenset(_IMAGE_CONFIG), "generation_config.image_config")
        for key, allowed in _IMAGE_CONFIG.items():
            if key in image_config and image_config[key] not in allowed:
                errors.append(f"Invalid value at 'generation_config.image_config.{key}': {image_config[key]!r}")
    thinking = config.get("thinkingConfig")
    if thinking is not None:
        _unknown(errors, thinking, _THINKING_KEYS, "generation_config.thinking_config")
        if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
            errors.append("You can only set one of thinking budget and thinking level.")
        level = thinking.get("thinkingLevel")
        if level is not None and str(level).upper() not in _THINKING_LEVELS:
            errors.append(f"Invalid value at 'generation_config.thinking_config.thinking_level', \"{level}\"")


def validate_batch_embed(body: dict, model: str) -> list[str]:
    errors: list[str] = []
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return ["* BatchEmbedContentsRequest.requests: must not be empty"]
    for i, req in enumerate(requests):
        _unknown(errors, req, frozenset({"model", "content", "outputDimensionality", "taskType", "title"}),
                 f"requests[{i}]")
        if req.get("model") != f"models/{model}":
            errors.append(f"* BatchEmbedContentsRequest.requests[{i}].model: Model names should match the parent "
                          "model")
        parts = (req.get("content") or {}).get("parts") or []
        if not parts or not all(isinstance(p.get("text"), str) and p["text"] for p in parts):
            errors.append(f"* BatchEmbedContentsRequest.requests[{i}].content: text must not be empty")
    return errors


def validate_predict(body: dict) -> list[str]:
    errors: list[str] = []
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        return ["instances must not be empty"]
    for i, inst in enumerate(instances):
        _unknown(errors, inst, frozenset({"content", "task_type", "title"}), f"instances[{i}]")
        if not isinstance(inst.get("content"), str) or not inst["content"]:
            errors.append(f"instances[{i}].content must be a non-empty string")
    _unknown(errors, body.get("parameters") or {}, frozenset({"outputDimensionality", "autoTruncate"}), "parameters")
    return errors


_IMAGEN_PARAMETERS = frozenset({"sampleCount", "aspectRatio", "sampleImageSize", "outputOptions", "includeRaiReason",
                                "safetySetting", "personGeneration", "negativePrompt", "seed", "addWatermark",
                                "enhancePrompt", "language", "guidanceScale", "includeSafetyAttributes", "editMode",
                                "baseSteps", "storageUri"})
_IMAGEN_RATIOS = frozenset({"1:1", "3:4", "4:3", "9:16", "16:9"})
_EDIT_MODES = frozenset({"EDIT_MODE_DEFAULT", "EDIT_MODE_INPAINT_REMOVAL", "EDIT_MODE_INPAINT_INSERTION",
                         "EDIT_MODE_OUTPAINT", "EDIT_MODE_CONTROLLED_EDITING", "EDIT_MODE_STYLE", "EDIT_MODE_BGSWAP",
                         "EDIT_MODE_PRODUCT_IMAGE"})
_MASK_MODES = frozenset({"MASK_MODE_USER_PROVIDED", "MASK_MODE_BACKGROUND", "MASK_MODE_FOREGROUND",
                         "MASK_MODE_SEMANTIC"})


def validate_imagen(body: dict, model: str) -> list[str]:
    """Imagen ``:predict``: generation models take a prompt; the capability model also takes reference images."""
    errors: list[str] = []
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or len(instances) != 1:
        return ["instances must hold exactly one instance"]
    edit = "capability" in model
    instance = instances[0]
    _unknown(errors, instance, frozenset({"prompt", "referenceImages"} if edit else {"prompt"}), "instances[0]")
    if not isinstance(instance.get("prompt"), str) or not instance["prompt"]:
        errors.append("instances[0].prompt must be a non-empty string")
    params = body.get("parameters") or {}
    _unknown(errors, params, _IMAGEN_PARAMETERS, "parameters")
    count = params.get("sampleCount", 1)
    if not isinstance(count, int) or not 1 <= count <= 4:
        errors.append("parameters.sampleCount must be from 1 to 4")
    if "aspectRatio" in params and params["aspectRatio"] not in _IMAGEN_RATIOS:
        errors.append(f"Unsupported aspect ratio {params['aspectRatio']!r}")
    mime = (params.get("outputOptions") or {}).get("mimeType")
    if mime is not None and mime not in ("image/png", "image/jpeg"):
        errors.append(f"Unsupported output mime type {mime!r}")
    if edit:
        errors += _check_references(instance.get("referenceImages"), params.get("editMode"))
    elif "editMode" in params:
        errors.append(f"editMode is not supported by {model}")
    return errors


def _check_references(refs, edit_mode) -> list[str]:
    if edit_mode not in _EDIT_MODES:
        return [f"parameters.editMode {edit_mode!r} is not valid"]
    if not isinstance(refs, list) or not refs:
        return ["instances[0].referenceImages must not be empty"]
    errors = []
    kinds = [r.get("referenceType") for r in refs]
    if kinds.count("REFERENCE_TYPE_RAW") != 1:
        errors.append("exactly one REFERENCE_TYPE_RAW reference image is required")
    for i, ref in enumerate(refs):
        _unknown(errors, ref, frozenset({"referenceType", "referenceId", "referenceImage", "maskImageConfig"}),
                 f"referenceImages[{i}]")
        image = (ref.get("referenceImage") or {}).get("bytesBase64Encoded")
        if image is not None:
            try:
                base64.b64decode(image, validate=True)
            except ValueError:
                errors.append(f"referenceImages[{i}].referenceImage: Base64 decoding failed")
        if ref.get("referenceType") == "REFERENCE_TYPE_MASK":
            mode = (ref.get("maskImageConfig") or {}).get("maskMode")
            if mode not in _MASK_MODES:
                errors.append(f"referenceImages[{i}].maskImageConfig.maskMode {mode!r} is not valid")
            if (mode == "MASK_MODE_USER_PROVIDED") != (image is not None):
                errors.append(f"referenceImages[{i}]: a user-provided mask needs an image, other modes none")
        elif image is None:
            errors.append(f"referenceImages[{i}].referenceImage.bytesBase64Encoded is required")
    return errors


def imagen_predictions(body: dict) -> dict:
    params = body.get("parameters") or {}
    mime = (params.get("outputOptions") or {}).get("mimeType", "image/png")
    return {"predictions": [{"bytesBase64Encoded": b64png(color=(0, 10 * i, 200)), "mimeType": mime}
                            for i in range(params.get("sampleCount", 1))]}


def image(data_b64: str, mime: str = "image/png", *, thought_image: bool = False) -> dict:
    """A drawn image part of a Gemini image model's answer."""
    part: dict = {"inlineData": {"mimeType": mime, "data": data_b64}}
    if thought_image:
        part["thought"] = True
    return part


def fake_vector(text_value: str, dims: int = 8) -> list[float]:
    """Deterministic unit-ish vector for a text."""
    seed = hashlib.sha256(text_value.encode()).digest() * (dims // 8 + 1)
    return [round((b - 127.5) / 127.5, 6) for b in seed[:dims]]


# ---- the Gemini / Vertex fake ---------------------------------------------------------

class GeminiFake(FakeProvider):
    def __init__(self, *script: Turn | GoogleError | Reply, api_key: str = "gm-test-key",
                 oauth: FakeOAuth | None = None, project: str = "test-project", require_signatures: bool = True,
                 model_version: str = "gemini-fake-001") -> None:
        self.script: list[Turn | GoogleError | Reply] = list(script)
        self.api_key = api_key
        self.oauth = oauth
        self.project = project
        self.require_signatures = require_signatures
        self.model_version = model_version
        self.signatures: set[str] = set()
        self.rejections: list[list[str]] = []
        self.image_bodies: list[dict] = []  # Imagen :predict bodies
        self.counted: list[dict] = []  # countTokens bodies
        super().__init__()

    # lifecycle
    def add(self, *items: Turn | GoogleError | Reply) -> None:
        self.script.extend(items)

    # direct use (no socket)
    def issue_signature(self) -> str:
        # "+/" in every signature proves carriers survive non-id-safe base64 characters.
        sig = base64.b64encode(b"\xfb\xff" + os.urandom(30)).decode()
        self.signatures.add(sig)
        return sig

    def validate(self, body: dict, *, vertex: bool = False) -> list[str]:
        return validate_generate_content(body, vertex=vertex, signatures=self.signatures,
                                         require_signatures=self.require_signatures)

    def render(self, turn: Turn) -> list[dict]:
        """The turn as stream chunks (``GenerateContentResponse`` dicts), issuing its signatures."""
        response_id = base64.urlsafe_b64encode(os.urandom(12)).decode()
        base = {"modelVersion": self.model_version, "responseId": response_id}
        if turn.block:
            return [{"promptFeedback": {"blockReason": turn.block}, "usageMetadata": turn.usage, **base}]
        groups = self._sign([list(g) for g in turn.chunks], turn.sign_first_call)
        if turn.trailing_empty or not groups:
            groups.append([{"text": ""}] if turn.trailing_empty else [])
        chunks = []
        for i, parts in enumerate(groups):
            last = i == len(groups) - 1
            candidate: dict = {"content": {"role": "model", "parts": parts} if parts else {"role": "model"},
                               "index": 0}
            chunk: dict = {"candidates": [candidate], **base}
            if last and turn.finish:
                candidate["finishReason"] = turn.finish
                if turn.finish_message:
                    candidate["finishMessage"] = turn.finish_message
            if last and turn.usage:
                chunk["usageMetadata"] = turn.usage
            elif turn.early_usage and turn.usage:
                prompt = turn.usage.get("promptTokenCount", 0)
                chunk["usageMetadata"] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
            chunks.append(chunk)
        return chunks

    def render_whole(self, turn: Turn) -> dict:
        """The turn as one non-streamed response."""
        chunks = self.render(turn)
        whole = dict(chunks[-1])
        if "candidates" in whole:
            candidate = dict(whole["candidates"][0])
            parts = [p for c in chunks for p in c["candidates"][0]["content"].get("parts", []) if p != {"text": ""}]
            candidate["content"] = {"role": "model", "parts": parts} if parts else {"role": "model"}
            whole["candidates"] = [candidate]
        return whole

    def _sign(self, groups: list[list[dict]], sign_first_call: bool) -> list[list[dict]]:
        first_call_seen = False
        out = []
        for group in groups:
            parts = []
            for part in group:
                part = dict(part)
                if "functionCall" in part and not first_call_seen:
                    first_call_seen = True
                    if sign_first_call and "thoughtSignature" not in part:
                        part["thoughtSignature"] = NEW_SIGNATURE
                if part.get("thoughtSignature") == NEW_SIGNATURE:
                    part["thoughtSignature"] = self.issue_signature()
                parts.append(part)
            out.append(parts)
        return out

    # HTTP
    async def handle(self, req: Recorded) -> Reply:
        match = _AI_STUDIO_PATH.match(req.path)
        vertex = False
        if match is None:
            match, vertex = _VERTEX_PATH.match(req.path), True
        if match is None or req.method != "POST":
            return google_error_reply(404, "NOT_FOUND", f"fake gemini: no route for {req.method} {req.path}")
        denied = self._vertex_auth(req, match["project"]) if vertex else self._studio_auth(req)
        if denied is not None:
            return denied
        try:
            body = json.loads(req.body or b"null")
        except ValueError:
            return google_error_reply(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        action = match["action"]
        if action in ("generateContent", "streamGenerateContent"):
            return self._generate(body, vertex, action == "streamGenerateContent", req.query.get("alt") == "sse")
        if action == "predict" and match["model"].startswith("imagen"):
            self.image_bodies.append(body)
            return self._embed(validate_imagen(body, match["model"]), lambda: imagen_predictions(body))
        if action == "countTokens":
            return self._count(body, vertex)
        if action == "batchEmbedContents" and not vertex:
            return self._embed(validate_batch_embed(body, match["model"]), lambda: _studio_embeddings(body))
        if action == "predict" and vertex:
            return self._embed(validate_predict(body), lambda: _vertex_embeddings(body))
        return google_error_reply(404, "NOT_FOUND", f"fake gemini: unsupported action {action}")

    def _studio_auth(self, req: Recorded) -> Reply | None:
        key = req.headers.get("x-goog-api-key") or req.query.get("key")
        if not key:
            return google_error_reply(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers "
                                      "without established identity). Please use API Key or other form of API "
                                      "consumer identity to call this API.")
        if key != self.api_key:
            return google_error_reply(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                      details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                                "reason": "API_KEY_INVALID", "domain": "googleapis.com"}])
        return None

    def _vertex_auth(self, req: Recorded, project: str) -> Reply | None:
        auth = req.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if not token or self.oauth is None or not self.oauth.valid(token):
            return google_error_reply(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. "
                                      "Expected OAuth 2 access token, login cookie or other valid authentication "
                                      "credential.")
        if project != self.project:
            return google_error_reply(403, "PERMISSION_DENIED", f"Permission denied on resource project {project}.")
        return None

    def _next(self) -> Turn | GoogleError | Reply | None:
        return self.script.pop(0) if self.script else None

    def _generate(self, body: dict, vertex: bool, stream: bool, sse: bool) -> Reply:
        errors = self.validate(body, vertex=vertex)
        if errors:
            self.rejections.append(errors)
            return google_error_reply(400, "INVALID_ARGUMENT", "\n".join(errors))
        item = self._next()
        if item is None:
            return google_error_reply(500, "INTERNAL", "fake gemini: no scripted turn left")
        if isinstance(item, GoogleError):
            return item.reply()
        if isinstance(item, Reply):
            return item
        if not stream:
            return Reply(json=self.render_whole(item))
        chunks = self.render(item)
        if not sse:
            return Reply(json=chunks)
        return Reply(sse=sse_frames(chunks, item.delay))

    def _count(self, body: dict, vertex: bool) -> Reply:
        """``countTokens``: Vertex takes ``contents`` (+ systemInstruction, tools), AI Studio either ``contents``
        or a whole ``generateContentRequest``; the count is a quarter of the JSON length of what was given."""
        request = body if vertex or "generateContentRequest" not in body else body["generateContentRequest"]
        allowed = {"contents", "systemInstruction", "tools", "generationConfig"} if vertex else \
            {"contents", "generateContentRequest"}
        unknown = set(body) - allowed
        if unknown or not isinstance(request.get("contents"), list):
            message = f"Invalid JSON payload received. Unknown name {sorted(unknown)[0]!r}" if unknown else \
                "contents is required"
            self.rejections.append([message])
            return google_error_reply(400, "INVALID_ARGUMENT", message)
        self.counted.append(body)
        payload = {k: request.get(k) for k in ("contents", "systemInstruction", "tools")}
        return Reply(json={"totalTokens": len(json.dumps(payload, sort_keys=True)) // 4})

    def _embed(self, errors: list[str], answer) -> Reply:
        if errors:
            self.rejections.append(errors)
            return google_error_reply(400, "INVALID_ARGUMENT", "\n".join(errors))
        if self.script and not isinstance(self.script[0], Turn):
            item = self._next()
            return item.reply() if isinstance(item, GoogleError) else item
        return Reply(json=answer())


def _studio_embeddings(body: dict) -> dict:
    return {"embeddings": [{"values": fake_vector(r["content"]["parts"][0]["text"], r.get("outputDimensionality") or 8)}
                           for r in body["requests"]]}


def _vertex_embeddings(body: dict) -> dict:
    dims = (body.get("parameters") or {}).get("outputDimensionality") or 8
    predictions = [{"embeddings": {"values": fake_vector(i["content"], dims),
                                   "statistics": {"token_count": len(i["content"].split()), "truncated": False}}}
                   for i in body["instances"]]
    return {"predictions": predictions, "metadata": {"billableCharacterCount": sum(len(i["content"])
                                                                                   for i in body["instances"])}}


# ---- fake Google OAuth ---------------------------------------------------------------

# private_key_id -> (client_email, public key) for every service account made here.
_KNOWN_KEYS: dict[str, tuple[str, rsa.RSAPublicKey]] = {}


def make_service_account(token_uri: str, project_id: str = "test-project") -> dict:
    """A service-account JSON dict with a fresh RSA key that ``FakeOAuth`` can verify."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_id = hashlib.sha1(os.urandom(16)).hexdigest()
    email = f"router-test-{key_id[:6]}@{project_id}.iam.gserviceaccount.com"
    _KNOWN_KEYS[key_id] = (email, key.public_key())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": str(int(key_id[:12], 16)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


class JWTError(ValueError):
    pass


def verify_assertion(assertion: str, audiences: set[str], now: float | None = None) -> dict:
    """Claims of a service-account JWT after checking signature, issuer, audience, scope and time."""
    try:
        head_b64, payload_b64, sig_b64 = assertion.split(".")
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(payload_b64))
        signature = _b64url_decode(sig_b64)
    except ValueError:
        raise JWTError("malformed JWT")
    if header.get("alg") != "RS256" or header.get("kid") not in _KNOWN_KEYS:
        raise JWTError("unknown signing key")
    email, public_key = _KNOWN_KEYS[header["kid"]]
    try:
        public_key.verify(signature, f"{head_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise JWTError("Invalid JWT Signature.")
    now = time.time() if now is None else now
    if claims.get("iss") != email:
        raise JWTError("issuer does not match the key")
    if claims.get("aud") not in audiences:
        raise JWTError(f"Invalid JWT: audience {claims.get('aud')!r} is not one of {sorted(audiences)}")
    if CLOUD_PLATFORM_SCOPE not in str(claims.get("scope", "")).split():
        raise JWTError("scope must include cloud-platform")
    if not (claims.get("iat", 0) - 300 <= now < claims.get("exp", 0)):
        raise JWTError("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.")
    return claims


class FakeOAuth(FakeProvider):
    """``POST /token`` with ``grant_type=jwt-bearer&assertion=<JWT>`` -> ``{"access_token": "tok-N", ...}``."""

    def __init__(self, *, expires_in: int = 3600, failures: list[Reply] | None = None) -> None:
        self.expires_in = expires_in
        self.failures: list[Reply] = list(failures or [])
        self.calls = 0
        self.issued = 0
        self.tokens: dict[str, float] = {}
        self.claims: list[dict] = []
        super().__init__()

    @property
    def token_uri(self) -> str:
        return f"{self.server.url}/token"

    def service_account(self, project_id: str = "test-project") -> dict:
        return make_service_account(self.token_uri, project_id)

    def valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        return expiry is not None and expiry > time.time()

    def revoke_all(self) -> None:
        self.tokens.clear()

    async def handle(self, req: Recorded) -> Reply:
        if req.method != "POST" or req.path != "/token":
            return Reply(status=404, json={"error": "not_found"})
        self.calls += 1
        if self.failures:
            return self.failures.pop(0)
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        if form.get("grant_type") != JWT_GRANT:
            return Reply(status=400, json={"error": "unsupported_grant_type",
                                           "error_description": "Invalid grant_type."})
        try:
            claims = verify_assertion(form.get("assertion", ""), {GOOGLE_TOKEN_AUDIENCE, self.token_uri})
        except JWTError as exc:
            return Reply(status=400, json={"error": "invalid_grant", "error_description": str(exc)})
        self.claims.append(claims)
        self.issued += 1
        token = f"tok-{self.issued}"
        self.tokens[token] = time.time() + self.expires_in
        return Reply(json={"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

