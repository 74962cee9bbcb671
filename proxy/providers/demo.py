"""The built-in ``demo`` credential: answers locally, so a fresh install streams without any provider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from .. import http
from ..config import Deployment
from ..errors import ProxyError
from ..translators.common import chat_chunk, chat_completion, chat_usage, content_text, new_id, now, usage_chunk
from .base import UpstreamRequest
from .openai import OpenAIAdapter

CHUNK_DELAY = 0.02


def _answer(body: dict) -> str:
    messages = body.get("messages") or []
    last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") in ("user", "tool")), None)
    said = content_text(last.get("content")) if last else ""
    said = said.strip().splitlines()[-1][:200] if said.strip() else ""
    return (f"Hello from Auto AI Router's demo model. You said: {said!r}. "
            "Add a real credential in the admin to talk to a provider.")


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class DemoAdapter(OpenAIAdapter):
    provider = "demo"

    def base_url(self, cred) -> str:
        return "http://demo.invalid/v1"

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        raise ProxyError(400, f"model {dep.name!r} is served by the built-in demo credential, which answers chat "
                         "(and Responses) requests only: it does not serve embeddings. Add an openai, gemini or "
                         "vertex-ai credential for embeddings.", param="model", code="unsupported_model")

    async def send(self, req: UpstreamRequest, headers: dict[str, str]) -> http.Response:
        if not req.url.endswith("/chat/completions"):
            return httpx.Response(400, json={"error": {"message": "the demo credential only answers chat requests",
                                                       "type": "invalid_request_error", "code": None}})
        text = _answer(req.body)
        model = req.body.get("model", "demo")
        prompt = _tokens(json.dumps(req.body.get("messages", [])))
        usage = chat_usage(prompt, _tokens(text))
        if not req.stream:
            return httpx.Response(200, json=chat_completion(new_id("chatcmpl-"), model, now(),
                                                            {"role": "assistant", "content": text}, "stop", usage))
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=_stream(text, model, usage))


async def _stream(text: str, model: str, usage: dict) -> AsyncIterator[bytes]:
    cid, created = new_id("chatcmpl-"), now()

    def frame(obj: dict) -> bytes:
        return f"data: {json.dumps(obj)}\n\n".encode()

    yield frame(chat_chunk(cid, model, created, {"role": "assistant", "content": ""}))
    for i, word in enumerate(text.split(" ")):
        await asyncio.sleep(CHUNK_DELAY)
        yield frame(chat_chunk(cid, model, created, {"content": f" {word}" if i else word}))
    yield frame(chat_chunk(cid, model, created, {}, "stop"))
    yield frame(usage_chunk(cid, model, created, usage))
    yield b"data: [DONE]\n\n"
