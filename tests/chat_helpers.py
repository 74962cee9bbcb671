"""Helpers shared by the provider end-to-end tests: send a chat, read and check a stream, build the next turn."""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async

from proxy import usage
from proxy.models import UsageRecord
from tests.asgi_client import AsgiResult, call
from tests.conftest import AUTH
from tests.fixtures import CODEX_FIXTURES


async def chat(app, body: dict, headers: dict | None = None) -> AsgiResult:
    return await call(app, "POST", "/v1/chat/completions", body, AUTH if headers is None else headers)


async def rows() -> list[UsageRecord]:
    await usage.aflush()
    return await sync_to_async(lambda: list(UsageRecord.objects.order_by("id")))()


def user(content) -> dict:
    return {"role": "user", "content": content}


def chunks_of(res: AsgiResult) -> list[dict]:
    """The JSON chunks of a streamed answer (``[DONE]`` must be last and is not included)."""
    data = res.sse_data()
    assert data[-1] == "[DONE]", data[-3:]
    return [json.loads(d) for d in data[:-1]]


def assemble(chunks: list[dict]) -> dict:
    """What a client builds from the chunks: the assistant message, finish reason and usage."""
    msg: dict = {"content": "", "reasoning_content": "", "thinking_blocks": [], "tool_calls": [],
                 "finish_reason": None, "usage": None}
    for chunk in chunks:
        msg["usage"] = chunk.get("usage") or msg["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            msg["content"] += delta.get("content") or ""
            msg["reasoning_content"] += delta.get("reasoning_content") or ""
            msg["thinking_blocks"] += delta.get("thinking_blocks") or []
            for call_delta in delta.get("tool_calls") or []:
                if call_delta["index"] == len(msg["tool_calls"]):
                    msg["tool_calls"].append({"id": call_delta["id"], "type": "function",
                                              "function": {"name": call_delta["function"]["name"], "arguments": ""}})
                msg["tool_calls"][call_delta["index"]]["function"]["arguments"] += \
                    call_delta["function"].get("arguments") or ""
            msg["finish_reason"] = choice["finish_reason"] or msg["finish_reason"]
    return msg


def check_stream_shape(chunks: list[dict], model: str, *, usage_chunk: bool) -> None:
    """The canonical chunk sequence every provider's stream must produce."""
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == model for c in chunks)
    finishes = [i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and chunks[finishes[0]]["choices"][0]["delta"] == {}
    tail = chunks[finishes[0] + 1:]
    assert len(tail) == (1 if usage_chunk else 0)
    assert all(c["choices"] == [] and c["usage"]["total_tokens"] > 0 for c in tail)
    seen: set[int] = set()
    for chunk in chunks[:finishes[0]]:
        for call_delta in chunk["choices"][0]["delta"].get("tool_calls") or []:
            fn = call_delta["function"]
            if call_delta["index"] in seen:  # later deltas of a call only carry argument fragments
                assert set(call_delta) == {"index", "function"} and set(fn) == {"arguments"}
            else:
                assert call_delta["id"] and call_delta["type"] == "function" and fn["name"] and "arguments" in fn
                assert call_delta["index"] == len(seen)
                seen.add(call_delta["index"])


def assistant_turn(msg: dict) -> dict:
    """The assistant message a client sends back, extensions included (as the OpenAI SDK keeps them)."""
    turn = {"role": "assistant", "content": msg["content"] or None}
    for key in ("tool_calls", "reasoning_content", "thinking_blocks"):
        if msg.get(key):
            turn[key] = msg[key]
    return turn


def tool_results(calls: list[dict], outputs: list[str]) -> list[dict]:
    return [{"role": "tool", "tool_call_id": c["id"], "content": out} for c, out in zip(calls, outputs, strict=True)]


def codex_turn1() -> dict:
    return json.loads((CODEX_FIXTURES / "codex_request_turn1.json").read_text())["body"]


async def responses(app, body: dict) -> dict:
    """POST /v1/responses (streamed, as Codex does) and return the final ``response`` object."""
    res = await call(app, "POST", "/v1/responses", body, AUTH)
    assert res.status == 200, res.body
    events = [json.loads(d) for d in res.sse_data() if d != "[DONE]"]
    assert events[-1]["type"] == "response.completed", events[-1]
    return events[-1]["response"]
