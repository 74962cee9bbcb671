"""A fast OpenAI-compatible upstream for the benchmark: raw asyncio, close to zero CPU per request.

``POST .../chat/completions`` answers a fixed ~400-byte completion, or with ``"stream": true`` a
short SSE stream written at once (role, 8 content chunks, finish, usage, ``[DONE]``). An upstream
model id ``slow-N-MS`` streams N content chunks MS milliseconds apart instead; ``many-N`` writes N
one-character content events at once (the per-event cost measurement). ``GET .../models``
lists the ids. HTTP/1.1 with keep-alive; request bodies by Content-Length or chunked.

The responses are prebuilt bytes and the body is never JSON-parsed, so the benchmark measures the
router, not this server. It runs in its own process (``python bench/fake_upstream.py --port P``
prints ``ready <port>`` once listening) so its CPU is not counted as the router's.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import sys

MODEL = "bench-upstream"
_BASE = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}
_USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20,
          "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
_SLOW = re.compile(rb'"model": ?"slow-(\d+)-(\d+)"')
_MANY = re.compile(rb'"model": ?"many-(\d+)"')
_STREAM = (b'"stream": true', b'"stream":true')


def _json(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def completion_body() -> bytes:
    return _json({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog. "
                                 "This is a fixed answer from the benchmark's fake upstream.", "refusal": None}}],
        "usage": _USAGE, "system_fingerprint": "fp_bench",
    })


def sse(data: dict | str) -> bytes:
    return b"data: " + (data.encode() if isinstance(data, str) else _json(data)) + b"\n\n"


def chunk_event(delta: dict, finish: str | None = None) -> bytes:
    return sse({**_BASE, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})


def stream_events(pieces: int) -> tuple[bytes, list[bytes], bytes]:
    """(first event, one event per content piece, the closing events: finish, usage, [DONE])."""
    first = chunk_event({"role": "assistant", "content": "", "refusal": None})
    middle = [chunk_event({"content": f"word{i} "}) for i in range(pieces)]
    tail = chunk_event({}, "stop") + sse({**_BASE, "choices": [], "usage": _USAGE}) + sse("[DONE]")
    return first, middle, tail


@functools.cache
def many_events(count: int) -> bytes:
    """A stream of ``count`` one-character content events (an echo of a long input), all at once."""
    first, _, tail = stream_events(0)
    tiny = [chunk_event({"content": "x"})] * count
    body = b"".join([first, *tiny])
    chunks = [http_chunk(body[i:i + 65536]) for i in range(0, len(body), 65536)]
    return response_head("200 OK", "text/event-stream") + b"".join(chunks) + http_chunk(tail) + b"0\r\n\r\n"


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def response_head(status: str, content_type: str, length: int | None = None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{framing}\r\n\r\n".encode()


def _fixed(status: str, content_type: str, body: bytes) -> bytes:
    return response_head(status, content_type, len(body)) + body


_COMPLETION = _fixed("200 OK", "application/json", completion_body())
_first, _middle, _tail = stream_events(8)
_FAST_STREAM = (response_head("200 OK", "text/event-stream") + b"".join(http_chunk(e) for e in (_first, *_middle))
                + http_chunk(_tail) + b"0\r\n\r\n")
_MODELS = _fixed("200 OK", "application/json",
                 _json({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "x"}]}))
_MESSAGE = {"id": "msg_bench", "type": "message", "role": "assistant", "model": MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                      "output_tokens": 1}}


def anthropic_events(pieces: int) -> list[bytes]:
    """An Anthropic Messages stream with ``pieces`` text deltas (the same answer as the Chat stream)."""
    def event(data: dict) -> bytes:
        return f"event: {data['type']}\n".encode() + sse(data)

    return [event({"type": "message_start", "message": _MESSAGE}), event({"type": "ping"}),
            event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            *(event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"word{i} "}})
              for i in range(pieces)),
            event({"type": "content_block_stop", "index": 0}),
            event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                   "usage": {"output_tokens": 8}}),
            event({"type": "message_stop"})]


_MESSAGES_STREAM = (response_head("200 OK", "text/event-stream")
                    + b"".join(http_chunk(e) for e in anthropic_events(8)) + b"0\r\n\r\n")
_MESSAGE_BODY = _fixed("200 OK", "application/json", _json({
    **_MESSAGE, "content": [{"type": "text", "text": "The quick brown fox jumps over the lazy dog."}],
    "stop_reason": "end_turn", "usage": {**_MESSAGE["usage"], "output_tokens": 8}}))
_NOT_FOUND = _fixed("404 Not Found", "application/json", _json({"error": {"message": "not found", "code": None}}))


def parse_request(buf: bytes) -> tuple[bytes, bytes, bytes, int] | None:
    """(method, path, body, bytes consumed) of the first complete request in ``buf``, or None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = buf[:head_end].split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    start = head_end + 4
    if chunked:
        decoded = dechunk(buf, start)
        if decoded is None:
            return None
        body, end = decoded
        return method, path, body, end
    if len(buf) < start + length:
        return None
    return method, path, buf[start:start + length], start + length


def dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    parts: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buf[pos:line_end].split(b";")[0], 16)
        data_start = line_end + 2
        if len(buf) < data_start + size + 2:
            return None
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", line_end)
            return (b"".join(parts), trailer_end + 4) if trailer_end >= 0 else None
        parts.append(buf[data_start:data_start + size])
        pos = data_start + size + 2


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a slow stream owns the connection until it ends

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.process()

    def process(self) -> None:
        while not self.busy and self.transport is not None and not self.transport.is_closing():
            parsed = parse_request(self.buf)
            if parsed is None:
                return
            method, path, body, used = parsed
            self.buf = self.buf[used:]
            self.answer(method, path, body)

    def answer(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if method == b"GET" and path.endswith(b"/models"):
            self.transport.write(_MODELS)
        elif method == b"POST" and path.endswith(b"/v1/messages"):
            self.transport.write(_MESSAGES_STREAM if any(flag in body for flag in _STREAM) else _MESSAGE_BODY)
        elif method != b"POST" or not path.endswith(b"/chat/completions"):
            self.transport.write(_NOT_FOUND)
        elif (many := _MANY.search(body)) is not None:
            self.transport.write(many_events(int(many[1])))
        elif (slow := _SLOW.search(body)) is not None:
            self.busy = True
            asyncio.get_running_loop().create_task(self.slow_stream(int(slow[1]), int(slow[2]) / 1000))
        elif any(flag in body for flag in _STREAM):
            self.transport.write(_FAST_STREAM)
        else:
            self.transport.write(_COMPLETION)

    async def slow_stream(self, pieces: int, gap: float) -> None:
        transport = self.transport
        assert transport is not None
        first, middle, tail = stream_events(pieces)
        transport.write(response_head("200 OK", "text/event-stream") + http_chunk(first))
        for event in middle:
            await asyncio.sleep(gap)
            if transport.is_closing():
                return
            transport.write(http_chunk(event))
        transport.write(http_chunk(tail) + b"0\r\n\r\n")
        self.busy = False
        self.process()

    def connection_lost(self, exc) -> None:
        self.transport = None


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(UpstreamProtocol, "127.0.0.1", port, backlog=4096)
    sys.stdout.write(f"ready {server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
