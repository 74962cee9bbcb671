"""A fake OpenAI-compatible upstream: chat completions, embeddings, models, responses, images.

``OpenAIFake(script)`` answers ``/v1/chat/completions`` from a ``Script`` of
``Reply`` objects (build them with ``completion()`` / ``stream_reply()``) and
records every request; ``/v1/models`` lists ``models``; ``/v1/embeddings``
returns a fixed vector; ``/v1/images/generations`` (JSON) and ``/v1/images/edits``
(multipart) are checked like the real API (unknown fields, field types, files) and
draw small PNGs, streamed as partial images when asked (``image_replies`` override
the next answers: errors, refusals). It checks the Bearer key like the real API.
"""

from __future__ import annotations

import json
import time
from email.parser import BytesParser
from email.policy import HTTP

from .images import b64png
from .server import FakeProvider, Recorded, Reply, Script, sse_frames

_IMAGE_FIELDS = frozenset({"model", "prompt", "n", "size", "quality", "background", "output_format",
                           "output_compression", "response_format", "user", "stream", "partial_images",
                           "safety_identifier"})
GENERATION_FIELDS = _IMAGE_FIELDS | {"moderation", "style"}
EDIT_FIELDS = _IMAGE_FIELDS | {"input_fidelity"}
IMAGE_USAGE = {"input_tokens": 50, "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
               "output_tokens": 272, "total_tokens": 322}


def parse_multipart(headers: dict[str, str], body: bytes) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    """(text fields, [(field, filename, bytes)]) of a multipart body, with the stdlib parser."""
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {headers.get('content-type', '')}\r\n\r\n".encode()
                                             + body)
    if not msg.is_multipart():
        raise ValueError("not multipart")
    fields: dict[str, str] = {}
    files: list[tuple[str, str, bytes]] = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files.append((name, part.get_filename(), data))
        else:
            fields[name] = data.decode()
    return fields, files


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
        self.image_replies: list[Reply] = []
        self.image_requests: list[dict] = []  # what each image request carried: fields and files
        super().__init__()

    def image(self, req: Recorded) -> Reply:
        edit = req.path.endswith("/edits")
        if edit:
            try:
                fields, files = parse_multipart(req.headers, req.body)
            except ValueError:
                return error_reply(400, "Invalid Content-Type header (expected multipart/form-data)")
            body: dict = dict(fields)
        else:
            body, files = (req.json if isinstance(req.json, dict) else {}), []
        self.image_requests.append({"fields": body, "files": files})
        problem = _image_problem(body, files, edit)
        if problem:
            return error_reply(400, problem, code="invalid_value" if "Unknown" not in problem else "unknown_parameter")
        if self.image_replies:
            return self.image_replies.pop(0)
        n = int(body.get("n") or 1)
        fmt = body.get("output_format") or "png"
        if str(body.get("stream")).lower() == "true":
            return Reply(sse=_image_stream(edit, n, int(body.get("partial_images") or 0), fmt))
        if body.get("response_format") == "url":
            data = [{"url": f"https://images.example/{i}.png"} for i in range(n)]
        else:
            data = [{"b64_json": b64png(color=(10 * i, 20, 30))} for i in range(n)]
        return Reply(json={"created": int(time.time()), "data": data, "background": "opaque", "output_format": fmt,
                           "quality": "low", "size": body.get("size") or "1024x1024", "usage": IMAGE_USAGE})

    async def handle(self, req: Recorded):
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return error_reply(401, "Incorrect API key provided.", code="invalid_api_key",
                               type_="authentication_error")
        if req.path == "/v1/models":
            return Reply(json={"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        if req.path in ("/v1/images/generations", "/v1/images/edits"):
            return self.image(req)
        if req.path == "/v1/embeddings":
            inputs = req.json["input"] if isinstance(req.json["input"], list) else [req.json["input"]]
            return Reply(json={"object": "list", "model": req.json["model"],
                               "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                        for i in range(len(inputs))],
                               "usage": {"prompt_tokens": 4, "total_tokens": 4}})
        return await self.script(req)


def _image_problem(body: dict, files: list, edit: bool) -> str | None:
    allowed = EDIT_FIELDS if edit else GENERATION_FIELDS
    for key in body:
        if key not in allowed:
            return f"Unknown parameter: '{key}'."
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "Missing required parameter: 'prompt'."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "Missing required parameter: 'model'."
    if body["model"].startswith("gpt-image") and body.get("response_format"):
        return "Unknown parameter: 'response_format'."
    if edit:
        names = [name for name, _, _ in files]
        if not any(n in ("image", "image[]") for n in names) or set(names) - {"image", "image[]", "mask"}:
            return f"Invalid files: {names}"
        if not all(data.startswith(b"\x89PNG") for _, _, data in files):
            return "Invalid image file: only PNG uploads are accepted by this fake."
    elif "n" in body and not isinstance(body["n"], int):
        return "Invalid type for 'n': expected an integer."
    return None


def _image_stream(edit: bool, n: int, partials: int, fmt: str) -> list[str]:
    prefix = "image_edit" if edit else "image_generation"
    common = {"created_at": int(time.time()), "size": "1024x1024", "quality": "low", "background": "opaque",
              "output_format": fmt}
    events = []
    for _ in range(n):
        events += [{"type": f"{prefix}.partial_image", "b64_json": b64png(color=(i, 0, 0)),
                    "partial_image_index": i, **common} for i in range(partials)]
        events.append({"type": f"{prefix}.completed", "b64_json": b64png(), "usage": IMAGE_USAGE, **common})
    return sse_frames(events, event_names=True)
