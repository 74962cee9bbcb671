"""Scripted fake upstreams for the Codex end-to-end tests, one per backend type.

Each ``Backend`` owns a queue of abstract ``Answer``s (text, one tool call,
thinking) and renders the next one in its provider's own wire format when a
model request arrives, so one test body drives every backend. Raw script items
(an Anthropic ``Fail``, a ``GoogleError``, a ``Reply``) pass through for error
cases. A text answer may be a function of the request the fake received, so a
fake can "answer from" the tool output it was sent.

The strict fakes (``AnthropicFake``, ``GeminiFake``) reject malformed requests
with the provider's 400 and record why; ``Backend.rejections`` collects that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakes import anthropic as anth
from tests.fakes import gemini as gem
from tests.fakes.openai import error_reply
from tests.fakes.server import FakeServer, Recorded, Reply, sse_frames

UPSTREAM_KEY = "sk-upstream-secret"
OPENAI_BLOB = "gAAAAB-openai-opaque-reasoning-state=="
_OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

TextFn = Callable[["Backend", dict], str]


@dataclass
class Call:
    name: str
    args: dict | str  # str: the raw input of a freeform (custom) tool
    namespace: str | None = None

    @property
    def custom(self) -> bool:
        return isinstance(self.args, str)

    @property
    def flat(self) -> str:
        """The provider-safe name the router declares for this tool."""
        return f"{self.namespace}__{self.name}" if self.namespace else self.name

    def function_args(self) -> dict:
        return {"input": self.args} if isinstance(self.args, str) else self.args


@dataclass
class Answer:
    text: str | TextFn | None = None
    call: Call | list[Call] | None = None  # a list: parallel calls in one answer
    thinking: str | None = None
    input_tokens: int = 100  # what the provider reports (Codex compacts when the context looks full)

    def text_for(self, backend: Backend, body: dict) -> str | None:
        return self.text(backend, body) if callable(self.text) else self.text

    @property
    def calls(self) -> list[Call]:
        return self.call if isinstance(self.call, list) else [self.call] if self.call else []


class Backend:
    """A fake upstream of one type, scriptable per test."""

    name = "base"
    profile = ""  # the docs profile (NAME.config.toml) serving this backend
    model: str | None = None  # a router model to pass with -m (None: the profile's)
    # A model name Codex does not know, so it sends its fallback tool set (with the multi_agent_v1 namespace).
    plain_model: str | None = None
    expected_search: dict | None = None  # what Codex's web_search tool becomes in this provider's request
    patch_model = ""  # a gpt-5.5* router name served by this backend (Codex sends apply_patch)
    patch_profile: str | None = None  # a docs profile using patch_model

    def __init__(self) -> None:
        self.queue: list[Any] = []
        self.server: FakeServer | None = None
        self._ready: list[Any] = []

    # -- scripting

    def script(self, *items: Any) -> None:
        """What the next model requests get, in order (``Answer``s or raw provider script items)."""
        self.queue = list(items)
        if self.server is not None:
            self.server.requests.clear()
        self._reset()

    async def handle(self, req: Recorded):
        if self.is_model_call(req) and not self._pending() and self.queue:
            item = self.queue.pop(0)
            self._push(self.render(item, req.json or {}) if isinstance(item, Answer) else item)
        return await self._delegate(req)

    def render(self, answer: Answer, body: dict) -> Any:
        raise NotImplementedError

    # -- what the fake received

    def requests(self) -> list[Recorded]:
        assert self.server is not None
        return self.server.requests

    def bodies(self) -> list[dict]:
        return [r.json for r in self.requests() if self.is_model_call(r)]

    def is_model_call(self, req: Recorded) -> bool:
        raise NotImplementedError

    def tool_results(self, body: dict) -> list[str]:
        """The tool results in ``body``, in the provider's own format, as text."""
        raise NotImplementedError

    def declares(self, body: dict, call: Call) -> bool:
        raise NotImplementedError

    def images(self, body: dict) -> list[str]:
        """The images in ``body``, in the provider's own format (base64 data or data URLs)."""
        raise NotImplementedError

    def check_thinking_replayed(self, body: dict, thinking: str) -> None:
        """Assert the provider state of ``thinking`` came back in a later request."""
        raise NotImplementedError

    def search_tool(self, body: dict) -> dict | None:
        """The non-function tool in ``body`` (what Codex's web_search became), if any."""
        return next((t for t in body.get("tools", []) if t.get("type") != "function"), None)

    def check_search(self, body: dict) -> None:
        assert self.search_tool(body) == self.expected_search

    @property
    def rejections(self) -> list:
        return []

    # -- errors, in this provider's words

    def rate_limited(self, retry_after: int) -> Any:
        return error_reply(429, "Rate limit reached for requests", code="rate_limit_exceeded",
                           type_="requests", headers={"retry-after": str(retry_after)})

    def context_overflow(self) -> Any:
        return error_reply(400, "This model's maximum context length is 128000 tokens. However, your messages "
                           "resulted in 250000 tokens.", code="context_length_exceeded")

    def server_error(self) -> Any:
        return error_reply(500, "The server had an error while processing your request.", code=None,
                           type_="server_error")

    def broken_stream(self) -> Any:
        raise NotImplementedError

    def truncated(self, text: str) -> Any:
        """An answer cut by the output token limit."""
        raise NotImplementedError

    # -- internals: where rendered items wait (the strict fakes keep their own script)

    def _pending(self) -> bool:
        return bool(self._ready)

    def _push(self, item: Any) -> None:
        self._ready.append(item)

    async def _delegate(self, req: Recorded):
        if self.is_model_call(req) and self._ready:
            return self._ready.pop(0)
        return Reply(status=500, json={"error": {"message": f"fake {self.name}: nothing scripted for {req.path}"}})

    def _reset(self) -> None:
        self._ready.clear()


# ---- OpenAI: native Responses relay ------------------------------------------------

class ResponsesBackend(Backend):
    """An OpenAI upstream speaking the Responses API (credential ``responses_api: true``)."""

    name = "openai-responses"
    profile = "openai"
    patch_model = "gpt-5.5"
    plain_model = "gpt-4.1"

    def check_search(self, body: dict) -> None:
        # Forwarded as Codex sent it: OpenAI runs the search.
        [tool] = [t for t in body["tools"] if t.get("type") == "web_search"]
        assert tool["external_web_access"] is True

    async def handle(self, req: Recorded):
        if req.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return error_reply(401, "Incorrect API key provided.", code="invalid_api_key")
        return await super().handle(req)

    def is_model_call(self, req: Recorded) -> bool:
        return req.path == "/v1/responses"

    def render(self, answer: Answer, body: dict) -> Reply:
        items = []
        if answer.thinking:
            items.append({"id": "rs_1", "type": "reasoning", "encrypted_content": OPENAI_BLOB,
                          "summary": [{"type": "summary_text", "text": answer.thinking}]})
        text = answer.text_for(self, body)
        if text:
            items.append({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                          "content": [{"type": "output_text", "text": text, "annotations": []}]})
        items += [_responses_call(call, n) for n, call in enumerate(answer.calls, 1)]
        usage = {"input_tokens": answer.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": answer.input_tokens + 7}
        return Reply(sse=responses_sse(items, usage, body), headers={"cache-control": "no-cache"})

    def tool_results(self, body: dict) -> list[str]:
        return [_text(item.get("output")) for item in body.get("input", [])
                if item.get("type") in ("function_call_output", "custom_tool_call_output")]

    def declares(self, body: dict, call: Call) -> bool:
        for tool in body.get("tools", []):
            if call.namespace and tool.get("type") == "namespace" and tool.get("name") == call.namespace:
                return any(t.get("name") == call.name for t in tool.get("tools", []))
            if not call.namespace and tool.get("name") == call.name:
                return tool.get("type") == ("custom" if call.custom else "function")
        return False

    def images(self, body: dict) -> list[str]:
        return [part["image_url"] for item in body["input"] if item.get("type") == "message"
                and isinstance(item.get("content"), list) for part in item["content"]
                if part.get("type") == "input_image"]

    def check_thinking_replayed(self, body: dict, thinking: str) -> None:
        replayed = [i for i in body["input"] if i.get("type") == "reasoning"]
        assert [i["encrypted_content"] for i in replayed] == [OPENAI_BLOB], replayed
        assert replayed[0]["summary"][0]["text"] == thinking

    def broken_stream(self) -> Reply:
        items = [{"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}]
        events = [{"type": "response.created", "response": {"id": "resp_b", "status": "in_progress", "output": []}},
                  {"type": "response.output_item.added", "output_index": 0, "item": items[0]},
                  {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                   "content_index": 0, "delta": "partial"}]
        return Reply(sse=[*sse_frames(events, event_names=True), "never sent"], reset_after=3)


    def truncated(self, text: str) -> Reply:
        message = {"id": "msg_1", "type": "message", "status": "incomplete", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}
        events = [{"type": "response.output_item.done", "output_index": 0, "item": message},
                  {"type": "response.incomplete", "response": {
                      "id": "resp_up_1", "object": "response", "status": "incomplete", "output": [message],
                      "incomplete_details": {"reason": "max_output_tokens"}}}]
        return Reply(sse=sse_frames(events, event_names=True))


def _responses_call(call: Call, n: int) -> dict:
    if call.custom:
        return {"id": f"ctc_{n}", "type": "custom_tool_call", "status": "completed", "call_id": f"call_up_{n}",
                "name": call.name, "input": call.args}
    item = {"id": f"fc_{n}", "type": "function_call", "status": "completed", "call_id": f"call_up_{n}",
            "name": call.name, "arguments": json.dumps(call.args)}
    if call.namespace:
        item["namespace"] = call.namespace
    return item


def responses_sse(items: list[dict], usage: dict, request: dict | None = None) -> list[str]:
    """A Responses event stream delivering complete ``items`` (what real OpenAI sends, minus deltas):
    sequence numbers, and Response objects with every field OpenAI fills in, echoing ``request``."""
    response = openai_response(request or {})
    events: list[dict] = [{"type": "response.created", "response": response},
                          {"type": "response.in_progress", "response": response}]
    for index, item in enumerate(items):
        events.append({"type": "response.output_item.added", "output_index": index, "item": item})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": {
        **response, "status": "completed", "completed_at": 1764000003, "output": items, "usage": usage}})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return [*sse_frames(events, event_names=True)]


def openai_response(request: dict) -> dict:
    """An in-progress Response object as OpenAI builds it for ``request``."""
    return {
        "id": "resp_up_1", "object": "response", "created_at": 1764000000, "completed_at": None,
        "status": "in_progress", "model": "gpt-5.5-up", "output": [], "error": None, "incomplete_details": None,
        "instructions": request.get("instructions"), "tools": [_openai_tool(t) for t in request.get("tools") or []],
        "tool_choice": request.get("tool_choice", "auto"), "parallel_tool_calls": True, "truncation": "disabled",
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "temperature": 1.0, "top_p": 1.0,
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "top_logprobs": 0, "reasoning": None, "usage": None,
        "max_output_tokens": None, "max_tool_calls": None, "previous_response_id": None, "store": False,
        "background": False, "service_tier": "default", "metadata": {}, "safety_identifier": None,
        "prompt_cache_key": request.get("prompt_cache_key"), "user": None,
    }


def _openai_tool(tool: dict) -> dict:
    if tool.get("type") != "function":
        return tool
    return {"description": None, "parameters": None, "strict": True, **tool}  # OpenAI's default: strict


# ---- OpenAI-compatible Chat Completions ----------------------------------------------

class ChatBackend(Backend):
    """An OpenAI-compatible server speaking Chat Completions only (vLLM, Ollama, another gateway)."""

    name = "openai-chat"
    profile = "local"
    patch_model = "gpt-5.5-local"

    async def handle(self, req: Recorded):
        if req.headers.get("authorization") != f"Bearer {UPSTREAM_KEY}":
            return error_reply(401, "Incorrect API key provided.", code="invalid_api_key")
        if self.is_model_call(req):
            for i, tool in enumerate((req.json or {}).get("tools") or []):
                name = (tool.get("function") or {}).get("name", "")
                if tool.get("type") != "function" or not _OPENAI_NAME.match(name):
                    return error_reply(400, f"Invalid 'tools[{i}].function.name': string does not match pattern.")
        return await super().handle(req)

    def is_model_call(self, req: Recorded) -> bool:
        return req.path == "/v1/chat/completions"

    def render(self, answer: Answer, body: dict) -> Reply:
        deltas: list[dict] = [{"role": "assistant", "content": ""}]
        if answer.thinking:
            deltas.append({"reasoning_content": answer.thinking})
        text = answer.text_for(self, body)
        if text:
            deltas.append({"content": text})
        for n, call in enumerate(answer.calls):
            opening = {"index": n, "id": f"call_up_{n + 1}", "type": "function",
                       "function": {"name": call.flat, "arguments": ""}}
            arguments = {"index": n, "function": {"arguments": json.dumps(call.function_args())}}
            deltas += [{"tool_calls": [opening]}, {"tool_calls": [arguments]}]
        finish = "tool_calls" if answer.calls else "stop"
        if body.get("stream") is not True:
            return Reply(json=chat_completion(deltas, finish, answer.input_tokens))
        return Reply(sse=chat_sse(deltas, finish, answer.input_tokens))

    def tool_results(self, body: dict) -> list[str]:
        return [_text(m.get("content")) for m in body["messages"] if m.get("role") == "tool"]

    def declares(self, body: dict, call: Call) -> bool:
        return call.flat in [t["function"]["name"] for t in body.get("tools", [])]

    def images(self, body: dict) -> list[str]:
        return [part["image_url"]["url"] for m in body["messages"] if isinstance(m.get("content"), list)
                for part in m["content"] if part.get("type") == "image_url"]

    def check_thinking_replayed(self, body: dict, thinking: str) -> None:
        # Chat has no reasoning input: nothing to carry, and nothing of ours may leak into it.
        assert "thinking_blocks" not in json.dumps(body) and "rtr1:" not in json.dumps(body)

    def broken_stream(self) -> Reply:
        frames = chat_sse([{"role": "assistant", "content": ""}, {"content": "partial"}], "stop", 100)
        return Reply(sse=frames, reset_after=2)


    def truncated(self, text: str) -> Reply:
        return Reply(sse=chat_sse([{"role": "assistant", "content": ""}, {"content": text}], "length", 100))


def chat_completion(deltas: list[dict], finish: str, input_tokens: int) -> dict:
    """The non-streamed answer the deltas of ``chat_sse`` add up to."""
    message: dict = {"role": "assistant", "content": "".join(d.get("content") or "" for d in deltas) or None}
    calls = [c for d in deltas for c in d.get("tool_calls") or [] if "id" in c]
    if calls:
        arguments = {c["index"]: c["function"]["arguments"] for d in deltas for c in d.get("tool_calls") or []
                     if "id" not in c}
        message["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
            "name": c["function"]["name"], "arguments": arguments.get(c["index"], "")}} for c in calls]
    return {"id": "chatcmpl-up", "object": "chat.completion", "created": 1764000000, "model": "qwen3-up",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": input_tokens, "completion_tokens": 7, "total_tokens": input_tokens + 7}}


def chat_sse(deltas: list[dict], finish: str, input_tokens: int) -> list[str]:
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1764000000, "model": "qwen3-up"}
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": input_tokens, "completion_tokens": 7,
                                                    "total_tokens": input_tokens + 7}})
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


# ---- Anthropic (direct and on Vertex) ----------------------------------------------------

class AnthropicBackend(Backend):
    name = "anthropic"
    profile = "claude"
    patch_model = "gpt-5.5-claude"
    patch_profile = "claude-patch"
    expected_search = {"type": "web_search_20250305", "name": "web_search"}

    def search_tool(self, body: dict) -> dict | None:
        return next((t for t in body.get("tools", []) if "input_schema" not in t), None)

    def __init__(self, *, vertex: bool = False) -> None:
        super().__init__()
        self.fake = anth.AnthropicFake(api_key=UPSTREAM_KEY, vertex=vertex)

    def is_model_call(self, req: Recorded) -> bool:
        return req.path.endswith(("/v1/messages", ":rawPredict", ":streamRawPredict"))

    def render(self, answer: Answer, body: dict) -> anth.Turn:
        blocks = [anth.thinking(answer.thinking)] if answer.thinking else []
        text = answer.text_for(self, body)
        if text:
            blocks.append(anth.text(text))
        blocks += [anth.tool_use(call.flat, call.function_args()) for call in answer.calls]
        usage = {"input_tokens": answer.input_tokens, "cache_read_input_tokens": 20, "output_tokens": 7}
        return anth.Turn(blocks, usage=usage)

    def tool_results(self, body: dict) -> list[str]:
        return [_text(block.get("content")) for m in body["messages"] if m["role"] == "user"
                and isinstance(m["content"], list) for block in m["content"] if block["type"] == "tool_result"]

    def declares(self, body: dict, call: Call) -> bool:
        return call.flat in [t.get("name") for t in body.get("tools", [])]

    def images(self, body: dict) -> list[str]:
        return [block["source"]["data"] for m in body["messages"] if isinstance(m["content"], list)
                for block in m["content"] if block["type"] == "image"]

    def check_thinking_replayed(self, body: dict, thinking: str) -> None:
        assert (body.get("thinking") or {}).get("type") in ("enabled", "adaptive"), body.get("thinking")
        replayed = [b for m in body["messages"] if m["role"] == "assistant" and isinstance(m["content"], list)
                    for b in m["content"] if b["type"] == "thinking"]
        assert replayed == [{"type": "thinking", "thinking": thinking, "signature": anth.sign_thinking(thinking)}]

    @property
    def rejections(self) -> list:
        return self.fake.rejections

    def rate_limited(self, retry_after: int) -> anth.Fail:
        return anth.Fail.rate_limited(retry_after=retry_after)

    def context_overflow(self) -> anth.Fail:
        return anth.Fail.bad_request("prompt is too long: 250000 tokens > 200000 maximum")

    def server_error(self) -> anth.Fail:
        return anth.Fail.http(500, "api_error", "Internal server error")

    def broken_stream(self) -> anth.Turn:
        return anth.Turn([anth.text("partial answer that never finishes")], cut_after=5)

    def truncated(self, text: str) -> anth.Turn:
        return anth.Turn([anth.text(text)], stop_reason="max_tokens")

    def _pending(self) -> bool:
        return bool(self.fake.script)

    def _push(self, item: Any) -> None:
        self.fake.add(item)

    async def _delegate(self, req: Recorded):
        return await self.fake.handler(req)

    def _reset(self) -> None:
        self.fake.script.clear()
        self.fake.received.clear()
        self.fake.rejections.clear()


class VertexClaudeBackend(AnthropicBackend):
    name = "vertex-claude"
    profile = "vertex"
    model = "claude-sonnet-4-6-vertex"
    patch_model = "gpt-5.5-vertex-claude"
    patch_profile = None

    def __init__(self, oauth: gem.FakeOAuth) -> None:
        super().__init__(vertex=True)
        self.oauth = oauth

    async def handle(self, req: Recorded):
        # Vertex's front end accepts any live token the (fake) Google OAuth server issued.
        token = req.headers.get("authorization", "").removeprefix("Bearer ")
        self.fake.token = token if self.oauth.valid(token) else "no valid token"
        return await super().handle(req)

    def is_model_call(self, req: Recorded) -> bool:
        return "/publishers/anthropic/" in req.path


# ---- Gemini (AI Studio and Vertex) ------------------------------------------------------

class GeminiBackend(Backend):
    name = "gemini"
    profile = "gemini"
    patch_model = "gpt-5.5-gemini"
    expected_search = {"googleSearch": {}}

    def search_tool(self, body: dict) -> dict | None:
        return next((t for t in body.get("tools", []) if "functionDeclarations" not in t), None)

    def __init__(self, fake: gem.GeminiFake | None = None) -> None:
        super().__init__()
        self.fake = fake or gem.GeminiFake(api_key=UPSTREAM_KEY)

    def is_model_call(self, req: Recorded) -> bool:
        return req.path.startswith("/v1beta/models/") and req.path.endswith(("GenerateContent", ":generateContent"))

    def render(self, answer: Answer, body: dict) -> gem.Turn:
        chunks: list[dict] = [gem.thought(answer.thinking)] if answer.thinking else []
        text = answer.text_for(self, body)
        if text:
            chunks.append(gem.text(text))
        chunks += [gem.call(call.flat, call.function_args()) for call in answer.calls]
        usage = gem.usage_metadata(answer.input_tokens, 7, thoughts=3 if answer.thinking else 0)
        return gem.Turn(*chunks, usage=usage)

    def tool_results(self, body: dict) -> list[str]:
        return [_text(_unwrap(part["functionResponse"]["response"])) for c in body["contents"]
                for part in c["parts"] if "functionResponse" in part]

    def declares(self, body: dict, call: Call) -> bool:
        names = [d["name"] for t in body.get("tools", []) for d in t.get("functionDeclarations", [])]
        return call.flat in names

    def images(self, body: dict) -> list[str]:
        return [part["inlineData"]["data"] for c in body["contents"] for part in c["parts"] if "inlineData" in part]

    def check_thinking_replayed(self, body: dict, thinking: str) -> None:
        signed = [p for c in body["contents"] if c["role"] == "model" for p in c["parts"] if "thoughtSignature" in p]
        assert signed and "functionCall" in signed[0], body["contents"]
        assert {p["thoughtSignature"] for p in signed} <= self.fake.signatures

    @property
    def rejections(self) -> list:
        return self.fake.rejections

    def rate_limited(self, retry_after: int) -> gem.GoogleError:
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"}
        return gem.GoogleError(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
                               details=[retry])

    def context_overflow(self) -> gem.GoogleError:
        return gem.GoogleError(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum "
                               "number of tokens allowed (1048576).")

    def server_error(self) -> gem.GoogleError:
        return gem.GoogleError(500, "INTERNAL", "An internal error has occurred. Please retry.")

    def broken_stream(self) -> Reply:
        chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": "partial"}]}, "index": 0}]}
        return Reply(sse=[*gem.sse_frames([chunk]), "never sent"], reset_after=1)

    def truncated(self, text: str) -> gem.Turn:
        return gem.Turn(gem.text(text), finish="MAX_TOKENS")

    def _pending(self) -> bool:
        return bool(self.fake.script)

    def _push(self, item: Any) -> None:
        self.fake.add(item)

    async def _delegate(self, req: Recorded):
        return await self.fake.handle(req)

    def _reset(self) -> None:
        self.fake.script.clear()
        self.fake.rejections.clear()


class VertexGeminiBackend(GeminiBackend):
    name = "vertex-gemini"
    profile = "vertex"
    patch_model = "gpt-5.5-vertex"

    def __init__(self, oauth: gem.FakeOAuth, project: str) -> None:
        super().__init__(gem.GeminiFake(oauth=oauth, project=project))

    def is_model_call(self, req: Recorded) -> bool:
        return "/publishers/google/" in req.path


def _unwrap(response: dict) -> Any:
    """Gemini wants an object as a function response; a lone text sits in its one field."""
    values = list(response.values())
    return values[0] if len(values) == 1 and isinstance(values[0], str) else response


def _text(value: Any) -> str:
    """A tool result's content as text, whatever the provider's shape (string, blocks, parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text(v.get("text", v) if isinstance(v, dict) else v) for v in value)
    return json.dumps(value)
