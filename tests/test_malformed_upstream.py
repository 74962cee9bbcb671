"""An upstream that answers with the wrong shape gets a 502, never a hang, a 500 or a 499 row.

Each provider type's stream translator is fed events of the wrong shape (a JSON list where an
object belongs, a usage count of ``"12x"``) after real output: the client gets the endpoint's
terminal error (Chat: an ``error`` event; Responses: ``response.failed``), the stream ends, and
the usage row says 502 ``bad_upstream_response``. Before any output the same is an HTTP 502.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from proxy import usage
from proxy.models import UsageRecord
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.server import FakeServer, Reply, Script

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
RESPONSES = {"model": "m", "input": "Hi", "stream": True}


def openai_event(delta: dict | None = None, **extra) -> str:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": delta or {}, "finish_reason": None}], **extra}
    return f"data: {json.dumps(chunk)}\n\n"


def anthropic_event(data: dict | list) -> str:
    kind = data.get("type", "content_block_delta") if isinstance(data, dict) else "content_block_delta"
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


ANTHROPIC_START = [
    anthropic_event({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    anthropic_event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    anthropic_event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "partial"}}),
]


def gemini_event(data: dict | list) -> str:
    return f"data: {json.dumps(data)}\r\n\r\n"


GEMINI_TEXT = {"candidates": [{"content": {"role": "model", "parts": [{"text": "partial"}]}, "index": 0}]}

# provider type -> (output events, then the malformed events to try one at a time)
STREAMS = {
    "openai": ([openai_event({"role": "assistant", "content": "partial"})], {
        "list": "data: [1, 2]\n\n",
        "usage_12x": openai_event({}, usage={"prompt_tokens": "12x", "completion_tokens": 1}),
        "choices_not_a_list": openai_event({}) .replace('"choices": [', '"choices": 5, "x": [', 1),
        "delta_is_a_string": openai_event().replace('"delta": {}', '"delta": "text"'),
    }),
    "anthropic": (ANTHROPIC_START, {
        "list": anthropic_event([1, 2]),
        "delta_is_a_list": anthropic_event({"type": "content_block_delta", "index": 0, "delta": [1]}),
        "usage_12x": anthropic_event({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                      "usage": {"output_tokens": "12x"}})
        + anthropic_event({"type": "message_stop"}),
    }),
    "gemini": ([gemini_event(GEMINI_TEXT)], {
        "list": gemini_event([1, 2]),
        "parts_is_an_object": gemini_event({"candidates": [{"content": {"parts": {"text": "x"}}}]}),
        "usage_12x": gemini_event({"candidates": [{**GEMINI_TEXT["candidates"][0], "finishReason": "STOP"}],
                                   "usageMetadata": {"promptTokenCount": "12x", "candidatesTokenCount": 1}}),
    }),
}
# An OpenAI usage chunk whose count is "12x" is relayed to Chat clients as it came (nothing in it needs
# translating) and the row records the count as unknown: test_a_non_numeric_usage_count_does_not_cut_the_stream.
CASES = [(kind, name) for kind, (_, bad) in STREAMS.items() for name in bad if (kind, name) != ("openai", "usage_12x")]


async def rows() -> list[UsageRecord]:
    await usage.aflush()
    return await sync_to_async(lambda: list(UsageRecord.objects.order_by("id")))()


@pytest.fixture
def provider(router_db, settings):
    """A credential of ``kind`` whose upstream answers the scripted replies, whatever the path."""
    settings.ROUTER_MAX_ATTEMPTS = 1
    servers: list[FakeServer] = []

    async def make(kind: str, *replies: Reply) -> FakeServer:
        server = FakeServer(Script(*replies)).start()
        servers.append(server)
        await sync_to_async(add_credential)("up", kind, models={"m": "m-1"}, api_key="sk-upstream-secret",
                                            base_url=server.url + ("/v1" if kind == "openai" else ""))
        return server

    yield make
    for server in servers:
        server.stop()


def stream_of(kind: str, name: str) -> Reply:
    good, bad = STREAMS[kind]
    return Reply(sse=[*good, bad[name], *good])


@pytest.mark.parametrize(("kind", "name"), CASES)
async def test_chat_stream_of_the_wrong_shape_ends_with_an_error_event(app, provider, kind, name):
    await provider(kind, stream_of(kind, name))
    res = await asyncio.wait_for(call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH), 10)
    assert res.status == 200, res.body
    data = res.sse_data()
    assert "partial" in data[0] or "partial" in data[1]
    error = json.loads(data[-1])["error"]
    assert error["code"] == "bad_upstream_response" and error["type"] == "server_error"
    [row] = await rows()
    assert (row.status, row.error_type, row.client_closed) == (502, "bad_upstream_response", False)


@pytest.mark.parametrize(("kind", "name"), CASES)
async def test_responses_stream_of_the_wrong_shape_ends_with_response_failed(app, provider, kind, name):
    await provider(kind, stream_of(kind, name))
    res = await asyncio.wait_for(call(app, "POST", "/v1/responses", RESPONSES, AUTH), 10)
    assert res.status == 200, res.body
    events = [json.loads(d) for d in res.sse_data()]
    assert events[0]["type"] == "response.created"
    last = events[-1]
    assert last["type"] == "response.failed", last
    assert last["response"]["error"]["code"] == "bad_upstream_response"
    [row] = await rows()
    assert (row.status, row.error_type, row.client_closed) == (502, "bad_upstream_response", False)


async def test_a_non_numeric_usage_count_does_not_cut_the_stream(app, provider):
    await provider("openai", stream_of("openai", "usage_12x"))
    res = await asyncio.wait_for(call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH), 10)
    assert res.status == 200, res.body
    assert res.sse_data()[-1] == "[DONE]"
    [row] = await rows()
    assert (row.status, row.error_type, row.tokens_estimated) == (200, "", True)


@pytest.mark.parametrize("kind", list(STREAMS))
async def test_wrong_shape_before_any_output_is_an_http_502(app, provider, kind):
    await provider(kind, Reply(sse=[STREAMS[kind][1]["list"]]))
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    assert res.status == 502 and res.json()["error"]["code"] == "bad_upstream_response"
    [row] = await rows()
    assert (row.status, row.error_type) == (502, "bad_upstream_response")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
@pytest.mark.parametrize("kind", list(STREAMS))
async def test_a_200_html_page_to_a_stream_is_a_502_not_an_empty_stream(app, provider, kind, path):
    html = "<html><body><h1>502 Bad Gateway</h1>\n\n<p>nginx</p></body></html>\n\n"
    await provider(kind, Reply(body=html, content_type="text/html"))
    body = {**CHAT, "stream": True} if path.endswith("completions") else RESPONSES
    res = await call(app, "POST", path, body, AUTH)
    assert res.status == 502, res.body
    error = res.json()["error"]
    assert error["code"] == "bad_upstream_response" and "text/html" in error["message"]
    [row] = await rows()
    assert (row.status, row.error_type, row.prompt_tokens) == (502, "bad_upstream_response", 0)


NON_JSON = {
    "html": Reply(body="<html>oops</html>", content_type="text/html"),
    "list": Reply(json=[{"choices": []}]),
    "string": Reply(json="ok"),
    "truncated": Reply(body='{"choices": [', content_type="application/json"),
}
WRONG_TYPE = {
    "openai": {"choices": "none", "usage": {"prompt_tokens": "12x"}},
    "anthropic": {"id": "m", "type": "message", "content": [], "usage": {"input_tokens": "12x"}},
    "gemini": {"candidates": {"content": 1}, "usageMetadata": "x"},
}


@pytest.mark.parametrize("answer", list(NON_JSON))
@pytest.mark.parametrize("kind", list(STREAMS))
async def test_non_stream_answer_that_is_not_a_json_object_is_a_502(app, provider, kind, answer):
    await provider(kind, NON_JSON[answer])
    res = await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)
    assert res.status == 502 and res.json()["error"]["code"] == "bad_upstream_response", res.body
    [row] = await rows()
    assert (row.status, row.error_type) == (502, "bad_upstream_response")


@pytest.mark.parametrize("kind", list(STREAMS))
async def test_non_stream_answer_of_the_wrong_type_is_a_502(app, provider, kind):
    await provider(kind, Reply(json=WRONG_TYPE[kind]), Reply(json=WRONG_TYPE[kind]))
    res = await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)
    assert res.status == 502 and res.json()["error"]["code"] == "bad_upstream_response", res.body
    res = await call(app, "POST", "/v1/responses", {**RESPONSES, "stream": False}, AUTH)
    assert res.status == 502, res.body
    assert [(r.status, r.error_type) for r in await rows()] == [(502, "bad_upstream_response")] * 2


@pytest.mark.parametrize("answer", ["list", "html"])
async def test_embeddings_answer_that_is_not_an_object_is_a_502(app, provider, answer):
    await provider("openai", NON_JSON[answer])
    res = await call(app, "POST", "/v1/embeddings", {"model": "m", "input": "hi"}, AUTH)
    assert res.status == 502 and res.json()["error"]["code"] == "bad_upstream_response"


# ---- a body longer than its Content-Length -------------------------------------------------------


@pytest.fixture
async def lying_server():
    """A raw HTTP server whose answers carry more bytes than their Content-Length says."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps({"id": "c", "object": "chat.completion", "choices": []}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n" + body * 3)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_body_longer_than_its_content_length_is_a_502(app, router_db, settings, lying_server, stream):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await sync_to_async(add_credential)("up", "openai", models={"m": "m-1"}, api_key="k", base_url=lying_server)
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": stream}, AUTH)
    assert res.status == 502, res.body
    [row] = await rows()
    assert (row.status, row.error_type) == (502, "bad_upstream_response")
