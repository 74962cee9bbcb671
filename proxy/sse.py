"""Incremental Server-Sent Events parsing and encoding.

Upstreams frame events differently (OpenAI ``data:`` only, Anthropic
``event:``+``data:``, Gemini with CRLF): the parser splits on any blank line
(LF, CRLF or CR), buffers across reads, joins multi-line ``data:`` and skips
comments. ``raw`` keeps the exact bytes of each event for byte-exact relay.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")
_LINE_SPLIT = re.compile(r"\r\n|\r|\n")


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str
    raw: bytes = b""

    def json(self):
        return json.loads(self.data)


class SSEParser:
    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        events: list[SSEEvent] = []
        start = 0
        for end in _event_ends(buf):
            ev = _parse_block(buf[start:end])
            if ev is not None:
                events.append(ev)
            start = end
        self._buf = buf[start:]
        return events

    def flush(self) -> list[SSEEvent]:
        """Whatever is left when the stream ends (a last event with no blank line)."""
        block, self._buf = self._buf, b""
        ev = _parse_block(block) if block.strip() else None
        return [ev] if ev is not None else []


def _event_ends(buf: bytes) -> Iterator[int]:
    """Offsets just past each complete event in ``buf``."""
    pos = 0
    if b"\r" not in buf:  # LF-only framing (OpenAI, Anthropic): a plain find is several times cheaper
        while (i := buf.find(b"\n\n", pos)) >= 0:
            pos = i + 2
            yield pos
        return
    while (m := _EVENT_END.search(buf, pos)) is not None:
        pos = m.end()
        yield pos


def _parse_block(block: bytes) -> SSEEvent | None:
    # The usual events are one ``data:`` line (OpenAI, Gemini) or ``event:`` then ``data:`` (Anthropic),
    # LF-framed: no decoding of the whole block, no line splitting.
    if block.endswith(b"\n\n") and b"\r" not in block:
        first = block.find(b"\n")
        if block.startswith(b"data:") and first == len(block) - 2:
            return SSEEvent(None, _value(block[5:-2]), block)
        if block.startswith(b"event:") and block.startswith(b"data:", first + 1) \
                and block.find(b"\n", first + 1) == len(block) - 2:
            return SSEEvent(_value(block[6:first]), _value(block[first + 6:-2]), block)
    event: str | None = None
    data: list[str] = []
    for line in _LINE_SPLIT.split(block.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if not data and event is None:
        return None
    return SSEEvent(event, "\n".join(data), block)


def _value(field: bytes) -> str:
    return (field[1:] if field[:1] == b" " else field).decode("utf-8", errors="replace")


def encode(data: dict | str, event: str | None = None) -> bytes:
    """One SSE frame; dicts are JSON without spaces."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()
