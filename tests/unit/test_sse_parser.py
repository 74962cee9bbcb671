"""``SSEParser`` keeps its framing rules with its fast paths: every stream, cut anywhere, parses
exactly as the straightforward reference parser below (the one it replaced) parses it."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from proxy.sse import SSEEvent, SSEParser

_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")
_LINES = re.compile(r"\r\n|\r|\n")


def reference_parse(chunks: list[bytes]) -> list[SSEEvent]:
    events, buf = [], b""
    for chunk in chunks:
        buf += chunk
        while (m := _END.search(buf)) is not None:
            block, buf = buf[:m.end()], buf[m.end():]
            events += _reference_block(block)
    if buf.strip():
        events += _reference_block(buf)
    return events


def _reference_block(block: bytes) -> list[SSEEvent]:
    event, data = None, []
    for line in _LINES.split(block.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    return [SSEEvent(event, "\n".join(data), block)] if data or event is not None else []


def parse(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [ev for chunk in chunks for ev in parser.feed(chunk)]
    return events + parser.flush()


STREAMS = {
    "openai LF": b'data: {"a":1}\n\ndata: {"b":"\xc3\xa9t\xc3\xa9"}\n\ndata: [DONE]\n\n',
    "anthropic event+data": b'event: message_start\ndata: {"x":1}\n\nevent: ping\ndata: {}\n\n',
    "gemini CRLF": b'data: {"c":1}\r\n\r\ndata: {"d":2}\r\n\r\n',
    "CR only": b"data: one\r\rdata: two\r\r",
    "mixed terminators": b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\r\n\ndata: e\n\r\n",
    "comments and keep-alives": b": ping\n\ndata: x\n\n:\n\ndata: y\n\n",
    "multi-line data": b"data: line1\ndata: line2\n\ndata:no-space\n\n",
    "no space, empty data": b"data:\n\ndata:  two spaces\n\n",
    "event only": b"event: done\n\n",
    "event then data, edge cases": b"event:x\ndata:y\n\nevent: e\ndata: \n\nevent: e\ndata: a\ndata: b\n\n"
                                   b"data: a\nevent: b\n\nevent: e\n: c\ndata: q\n\nevent: \xc3\xa9\ndata: \xc3\n\n",
    "unknown fields": b"id: 7\nretry: 100\ndata: z\n\nfoo\n\n",
    "no final blank line": b"data: a\n\ndata: tail",
    "data without colon": b"data\n\ndata: q\n\n",
    "split UTF-8": "data: \u00e9\u00e8\u4e2d\u6587\U0001f600\n\n".encode(),
    "empty": b"",
    "only blank lines": b"\n\n\n\n",
}


def cuts(stream: bytes, rng: random.Random) -> list[bytes]:
    """``stream`` cut at up to 6 random places."""
    points = rng.sample(range(1, len(stream)), min(max(0, len(stream) - 1), rng.randint(0, 6)))
    edges = [0, *sorted(points), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("name", STREAMS)
def test_whole_stream_matches_the_reference(name):
    stream = STREAMS[name]
    assert parse([stream]) == reference_parse([stream])


@pytest.mark.parametrize("name", STREAMS)
def test_any_cut_matches_the_reference(name):
    stream = STREAMS[name]
    rng = random.Random(name)
    for _ in range(300):
        chunks = cuts(stream, rng)
        assert parse(chunks) == reference_parse(chunks), chunks


@pytest.mark.parametrize("name", STREAMS)
def test_byte_by_byte_matches_the_reference(name):
    chunks = [bytes([b]) for b in STREAMS[name]]
    assert parse(chunks) == reference_parse(chunks)


def test_random_mixtures_match_the_reference():
    rng = random.Random(1234)
    pieces = [b"data: x", b"data: {\"k\":\"v\"}", b"event: e", b": c", b"\n", b"\r", b"\r\n", b"\n\n", b"\xc3\xa9",
              b"event:", b"data:", b" ", b"event: message_start\ndata: {}\n\n"]
    for _ in range(4000):
        stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        chunks = cuts(stream, rng)
        assert parse(chunks) == reference_parse(chunks), chunks


@pytest.mark.parametrize(("raw", "expected"), [
    (b"data: {\"a\":1}\n\n", SSEEvent(None, "{\"a\":1}", b"data: {\"a\":1}\n\n")),
    (b"event: ping\ndata: {}\n\n", SSEEvent("ping", "{}", b"event: ping\ndata: {}\n\n")),
    (b"data: a\r\n\r\n", SSEEvent(None, "a", b"data: a\r\n\r\n")),
])
def test_raw_keeps_the_exact_bytes(raw, expected):
    assert parse([raw]) == [expected]
