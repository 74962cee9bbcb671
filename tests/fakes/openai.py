"""A fake OpenAI-compatible upstream: chat completions, embeddings, models, responses.

``OpenAIFake(script)`` answers ``/v1/chat/completions`` from a ``Script`` of
``Reply`` objects (build them with ``completion()`` / ``stream_reply()``) and
records every request; ``/v1/models`` lists ``models``; ``/v1/embeddings``
returns a fixed vector. It checks the Bearer key like the real API.
"""

from __future__ import annotations

import json

from .server import FakeProvider, Recorded, Reply, Script


def completion(text: str = "Hello!", *, model: str = "gpt-4o-2024-08-06", prompt: int = 9,
               completion_tokens: int = 3, tool_calls: list | None = None, finish: str | None = None,
               cached: int = 2, reasoning: int = 1) -> dict:
    message: dict = {"role": "assistant", "content": text if not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-fake1", "object": "chat.completion", "created": 1700000000, "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": finish or ("tool_calls" if tool_calls else "stop")}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                  "total_tokens": prompt + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": cached},
                  "completion_tokens_details": {"reasoning_tokens": reasoning}},
    }


def stream_frames(pieces: list[str], *, model: str = "gpt-4o-2024-08-06", usage: bool = True, delay: float = 0.0,
                  prompt: int = 9) -> list:
    base = {"id": "chatcmpl-fake2", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

    def frame(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

    frames: list = [frame({"role": "assistant", "content": ""})]
    for piece in pieces:
        if delay:
            frames.append(delay)
        frames.append(frame({"content": piece}))
    frames.append(frame({}, "stop"))
    if usage:
        u = {"prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces)}
        frames.append(f"data: {json.dumps({**base, 'choices': [], 'usage': u})}\n\n")
    frames.append("data: [DONE]\n\n")
    return frames


def error_reply(status: int, message: str, *, code: str | None = None, type_: str = "invalid_request_error",
                headers: dict | None = None) -> Reply:
    return Reply(status=status, json={"error": {"message": message, "type": type_, "param": None, "code": code}},
                 headers=headers or {})


class OpenAIFake(FakeProvider):
    def __init__(self, *replies: Reply, api_key: str = "sk-upstream-secret", models: list[str] | None = None) -> None:
        self.script = Script(*replies)
        self.api_key = api_key
        self.models = models or []
        super().__init__()

    async def handle(self, req: Recorded):
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return error_reply(401, "Incorrect API key provided.", code="invalid_api_key",
                               type_="authentication_error")
        if req.path == "/v1/models":
            return Reply(json={"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        if req.path == "/v1/embeddings":
            inputs = req.json["input"] if isinstance(req.json["input"], list) else [req.json["input"]]
            return Reply(json={"object": "list", "model": req.json["model"],
                               "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                        for i in range(len(inputs))],
                               "usage": {"prompt_tokens": 4, "total_tokens": 4}})
        return await self.script(req)
