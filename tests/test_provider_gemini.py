"""Gemini on AI Studio behind /v1/chat/completions and /v1/embeddings, end to end against the strict fake."""

from __future__ import annotations

import base64
import itertools
import json
import struct

import pytest
from asgiref.sync import sync_to_async

from tests.asgi_client import call
from tests.chat_helpers import (
    assemble,
    assistant_turn,
    chat,
    check_stream_shape,
    chunks_of,
    codex_turn1,
    responses,
    rows,
    tool_results,
    user,
)
from tests.conftest import AUTH, add_credential
from tests.fakes import gemini as g
from tests.fakes.server import FakeServer, Recorded, Reply

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "gemini-flash"
UPSTREAM = "gemini-2.5-flash"
KEY = "AIzaUpstreamSecret"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "additionalProperties": False,
                   "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"],
                                                                       "enum": ["C", "F", None]}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
_names = itertools.count()


@pytest.fixture
def gemini(router_db):
    fakes: list[g.GeminiFake] = []

    async def make(*script, model: str = UPSTREAM, public: str = MODEL, api_key: str = KEY,
                   **fields) -> g.GeminiFake:
        fake = g.GeminiFake(*script, api_key=KEY).start()
        fakes.append(fake)
        fake.credential = f"gemini_{next(_names)}"
        await sync_to_async(add_credential)(fake.credential, "gemini", models={public: model}, api_key=api_key,
                                            base_url=fake.url, **fields)
        return fake

    yield make
    for fake in fakes:
        fake.stop()


@pytest.fixture
def media(settings):
    """A loopback host serving images (private addresses allowed for it)."""
    settings.ROUTER_MEDIA_ALLOW_PRIVATE = True

    async def handle(req: Recorded) -> Reply:
        if req.path == "/cat.png":
            return Reply(body=IMAGE, content_type="image/png")
        if req.path == "/moved":
            return Reply(status=302, body=b"", headers={"location": "/cat.png"})
        if req.path == "/unlabelled.webp":
            return Reply(body=IMAGE, content_type="application/octet-stream")
        return Reply(status=404, body=b"not here", content_type="text/plain")

    server = FakeServer(handle).start()
    yield server
    server.stop()


def sent(fake: g.GeminiFake, index: int = 0) -> dict:
    return fake.requests[index].json


# ---- text ---------------------------------------------------------------------------

async def test_text_non_stream(app, gemini):
    fake = await gemini(g.Turn(g.text("Hello from Gemini."), usage=g.usage_metadata(12, 5, cached=4)))
    res = await chat(app, {"model": MODEL, "messages": [
        {"role": "system", "content": "Be brief."}, user("Hi"), {"role": "system", "content": "Answer in English."}],
        "temperature": 0.3, "max_tokens": 100, "stop": "END"})
    assert res.status == 200, res.body
    data = res.json()
    assert data["model"] == MODEL
    assert data["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Hello from Gemini."},
                                  "finish_reason": "stop"}
    assert data["usage"]["prompt_tokens"] == 12 and data["usage"]["completion_tokens"] == 5
    assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    req = fake.requests[0]
    assert req.path == f"/v1beta/models/{UPSTREAM}:generateContent" and "key" not in req.query
    assert req.headers["x-goog-api-key"] == KEY and "authorization" not in req.headers
    body = req.json
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
    assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 100, "stopSequences": ["END"]}
    [row] = await rows()
    assert (row.provider, row.credential, row.resolved_model, row.status) == ("gemini", fake.credential, UPSTREAM,
                                                                              200)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (12, 5, 4)


async def test_text_stream_over_crlf_framing(app, gemini):
    fake = await gemini(g.Turn(g.text("Hel"), g.text("lo, "), g.text("world."), usage=g.usage_metadata(7, 3),
                               early_usage=True, trailing_empty=True))
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": True,
                           "stream_options": {"include_usage": True}})
    assert res.status == 200
    chunks = chunks_of(res)
    check_stream_shape(chunks, MODEL, usage_chunk=True)
    msg = assemble(chunks)
    assert msg["content"] == "Hello, world." and msg["finish_reason"] == "stop"
    assert (msg["usage"]["prompt_tokens"], msg["usage"]["completion_tokens"]) == (7, 3)
    req = fake.requests[0]
    assert req.path.endswith(":streamGenerateContent") and req.query == {"alt": "sse"}
    [row] = await rows()
    assert row.stream and (row.prompt_tokens, row.completion_tokens) == (7, 3)


# ---- tools -------------------------------------------------------------------------------

async def test_parallel_then_sequential_tool_calls_keep_their_thought_signatures(app, gemini):
    fake = await gemini(
        g.Turn([g.call("get_weather", {"city": "Paris"}), g.call("get_time", {"tz": "Europe/Paris"})]),
        g.Turn(g.call("get_weather", {"city": "Rome"})),
        g.Turn(g.text("Paris is sunny at 14:00; Rome rains.")))
    messages = [user("Weather and time in Paris, then Rome's weather.")]
    body = {"model": MODEL, "tools": [WEATHER, CLOCK], "stream": True}

    res = await chat(app, {**body, "messages": messages})
    chunks = chunks_of(res)
    check_stream_shape(chunks, MODEL, usage_chunk=False)
    step1 = assemble(chunks)
    assert step1["finish_reason"] == "tool_calls"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in step1["tool_calls"]] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]
    # Only the first parallel call is signed; the signature rides in its id.
    assert "__thought__" in step1["tool_calls"][0]["id"] and "__thought__" not in step1["tool_calls"][1]["id"]
    messages += [assistant_turn(step1), *tool_results(step1["tool_calls"], ['{"sky": "sunny"}', "14:00"])]

    step2 = assemble(chunks_of(await chat(app, {**body, "messages": messages})))
    assert step2["tool_calls"][0]["function"]["name"] == "get_weather"
    messages += [assistant_turn(step2), *tool_results(step2["tool_calls"], ["rain"])]

    final = assemble(chunks_of(await chat(app, {**body, "messages": messages})))
    assert final["content"] == "Paris is sunny at 14:00; Rome rains." and final["finish_reason"] == "stop"
    assert fake.rejections == []
    contents = sent(fake, 2)["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert contents[1]["parts"][0]["thoughtSignature"] in fake.signatures
    assert "thoughtSignature" not in contents[1]["parts"][1]
    assert contents[3]["parts"][0]["thoughtSignature"] in fake.signatures
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}},
        {"functionResponse": {"name": "get_time", "response": {"output": "14:00"}}}]
    declared = sent(fake)["tools"][0]["functionDeclarations"][0]
    # JSON-Schema keywords Gemini rejects ($schema, additionalProperties, type lists, null in enums) are rewritten.
    assert declared["parameters"] == {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "nullable": True, "enum": ["C", "F"]}}}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"mode": "AUTO"}),
    ("required", {"mode": "ANY"}),
    ("none", {"mode": "NONE"}),
    ({"type": "function", "function": {"name": "get_time"}}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
])
async def test_tool_choice(app, gemini, choice, expected):
    fake = await gemini(g.Turn(g.call("get_time", {"tz": "UTC"})))
    res = await chat(app, {"model": MODEL, "messages": [user("Time?")], "tools": [WEATHER, CLOCK],
                           "tool_choice": choice})
    assert res.status == 200, res.body
    assert sent(fake)["toolConfig"] == {"functionCallingConfig": expected}
    choice0 = res.json()["choices"][0]
    assert choice0["finish_reason"] == "tool_calls" and choice0["message"]["tool_calls"][0]["type"] == "function"


async def test_web_search_tool_maps_to_google_search(app, gemini):
    fake = await gemini(g.Turn(g.text("Found it.")))
    res = await chat(app, {"model": MODEL, "messages": [user("News?")], "tools": [{"type": "web_search"}, CLOCK]})
    assert res.status == 200, res.body
    assert sent(fake)["tools"][1:] == [{"googleSearch": {}}]


# ---- reasoning ------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "effort", "config"), [
    ("gemini-2.5-flash", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-3-pro-preview", "low", {"thinkingLevel": "LOW", "includeThoughts": True}),
])
async def test_reasoning_comes_back_as_reasoning_content_and_tokens(app, gemini, model, effort, config):
    fake = await gemini(g.Turn(g.thought("Let me think."), g.text("42."),
                               usage=g.usage_metadata(10, 2, thoughts=30)), model=model)
    res = await chat(app, {"model": MODEL, "messages": [user("Answer?")], "reasoning_effort": effort,
                           "stream": True, "stream_options": {"include_usage": True}})
    msg = assemble(chunks_of(res))
    assert (msg["reasoning_content"], msg["content"]) == ("Let me think.", "42.")
    assert msg["usage"]["completion_tokens"] == 32
    assert msg["usage"]["completion_tokens_details"]["reasoning_tokens"] == 30
    assert sent(fake)["generationConfig"]["thinkingConfig"] == config
    [row] = await rows()
    assert (row.completion_tokens, row.reasoning_tokens) == (32, 30)


async def test_foreign_thought_signature_is_retried_once_with_the_dummy(app, gemini):
    fake = await gemini(g.Turn(g.text("Done.")))
    history = [user("Go"), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1__thought__c2lnLWZyb20tYW5vdGhlci1wcm9qZWN0", "type": "function",
         "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1__thought__c2lnLWZyb20tYW5vdGhlci1wcm9qZWN0", "content": "noon"}]
    res = await chat(app, {"model": MODEL, "messages": history, "tools": [CLOCK]})
    assert res.status == 200, res.body
    assert len(fake.requests) == 2 and "Corrupted thought signature" in fake.rejections[0][0]
    assert sent(fake, 1)["contents"][1]["parts"][0]["thoughtSignature"] == g.DUMMY_SIGNATURE


async def test_other_400s_are_not_retried(app, gemini):
    fake = await gemini(g.GoogleError(400, "INVALID_ARGUMENT", "Request contains an invalid argument."))
    history = [user("Go"), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1__thought__c2ln", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1__thought__c2ln", "content": "noon"}]
    fake.signatures.add("c2ln")
    res = await chat(app, {"model": MODEL, "messages": history, "tools": [CLOCK]})
    assert res.status == 400 and len(fake.requests) == 1


# ---- images, files, JSON -------------------------------------------------------------------

async def test_data_url_image_and_pdf_go_inline(app, gemini):
    fake = await gemini(g.Turn(g.text("Seen.")))
    png, pdf = base64.b64encode(IMAGE).decode(), base64.b64encode(b"%PDF-1.4").decode()
    content = [{"type": "text", "text": "Describe"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
               {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{pdf}"}},
               {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpg"}}]
    res = await chat(app, {"model": MODEL, "messages": [user(content)]})
    assert res.status == 200, res.body
    assert sent(fake)["contents"][0]["parts"][1:] == [
        {"inlineData": {"mimeType": "image/png", "data": png}},
        {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpg"}}]


async def test_http_images_are_downloaded_once_and_sent_inline(app, gemini, media):
    fake = await gemini(g.Turn(g.text("Two cats.")))
    content = [{"type": "image_url", "image_url": {"url": f"{media.url}/cat.png"}},
               {"type": "image_url", "image_url": {"url": f"{media.url}/moved"}},
               {"type": "image_url", "image_url": {"url": f"{media.url}/cat.png"}},
               {"type": "image_url", "image_url": {"url": f"{media.url}/unlabelled.webp"}}]
    res = await chat(app, {"model": MODEL, "messages": [user(content)], "stream": True})
    assert assemble(chunks_of(res))["content"] == "Two cats."
    data = base64.b64encode(IMAGE).decode()
    assert sent(fake)["contents"][0]["parts"] == [{"inlineData": {"mimeType": mime, "data": data}}
                                                  for mime in ("image/png", "image/png", "image/png", "image/webp")]
    assert sorted(r.path for r in media.requests) == ["/cat.png", "/cat.png", "/moved", "/unlabelled.webp"]


@pytest.mark.parametrize(("path", "limit", "allow_private", "reason"), [
    ("/missing.png", None, True, "HTTP 404"),
    ("/cat.png", 16, True, "larger than 16 bytes"),
    ("/cat.png", None, False, "private address"),
])
async def test_bad_image_urls_are_the_clients_400(app, gemini, media, settings, path, limit, allow_private, reason):
    settings.ROUTER_MEDIA_ALLOW_PRIVATE = allow_private
    if limit:
        settings.ROUTER_MEDIA_MAX_BYTES = limit
    fake = await gemini(g.Turn(g.text("unused")))
    content = [{"type": "image_url", "image_url": {"url": f"{media.url}{path}"}}]
    res = await chat(app, {"model": MODEL, "messages": [user(content)]})
    assert res.status == 400
    err = res.json()["error"]
    assert err["code"] == "invalid_image_url" and reason in err["message"]
    assert fake.requests == []


@pytest.mark.parametrize(("fmt", "config"), [
    ({"type": "json_object"}, {"responseMimeType": "application/json"}),
    ({"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "properties": {"n": {"type": "integer"}},
        "required": ["n"]}}},
     {"responseMimeType": "application/json", "responseSchema": {
         "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}),
])
async def test_response_format(app, gemini, fmt, config):
    fake = await gemini(g.Turn(g.text('{"n": 4}')))
    res = await chat(app, {"model": MODEL, "messages": [user("2+2 as JSON")], "response_format": fmt})
    assert res.json()["choices"][0]["message"]["content"] == '{"n": 4}'
    assert sent(fake)["generationConfig"] == config


# ---- finish reasons and errors -----------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("turn", "finish", "content"), [
    (g.Turn(g.text("Cut"), finish="MAX_TOKENS"), "length", "Cut"),
    (g.Turn(g.text("Uh"), finish="SAFETY"), "content_filter", "Uh"),
    (g.Turn(block="PROHIBITED_CONTENT"), "content_filter", ""),
])
async def test_finish_reasons(app, gemini, stream, turn, finish, content):
    await gemini(turn)
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": stream})
    if stream:
        msg = assemble(chunks_of(res))
        assert (msg["finish_reason"], msg["content"]) == (finish, content)
    else:
        choice = res.json()["choices"][0]
        assert (choice["finish_reason"], choice["message"]["content"]) == (finish, content)


_RETRY_INFO = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("error", "status", "code"), [
    (g.GoogleError(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", details=_RETRY_INFO),
     429, "rate_limit_exceeded"),
    (g.GoogleError(429, "RESOURCE_EXHAUSTED", "Quota exceeded for metric: generate_content_requests_per_day, "
                   "limit: 0", list_wrapped=True), 429, "insufficient_quota"),
    (g.GoogleError(400, "INVALID_ARGUMENT", "Invalid value at 'contents[0]'"), 400, "INVALID_ARGUMENT"),
    (g.GoogleError(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of tokens "
                   "allowed (1048576)."), 400, "context_length_exceeded"),
    (g.GoogleError(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), 503, "server_error"),
    (g.GoogleError(500, "INTERNAL", "An internal error has occurred."), 502, "server_error"),
    (g.GoogleError(403, "PERMISSION_DENIED", "Generative Language API has not been used in project 1 before"),
     502, "upstream_authentication_error"),
])
async def test_google_errors_are_openai_shaped(app, gemini, settings, stream, error, status, code):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await gemini(error)
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": stream})
    assert res.status == status, res.body
    err = res.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    if code == "rate_limit_exceeded":
        assert res.headers["retry-after"] == "7"
    [row] = await rows()
    assert row.status == status and row.error_type == code


async def test_invalid_api_key_is_502_and_never_echoed(app, gemini, settings):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await gemini(api_key="AIzaRevokedKey")
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")]})
    assert res.status == 502 and res.json()["error"]["code"] == "upstream_authentication_error"
    assert "AIzaRevokedKey" not in res.body.decode()


async def test_quota_on_one_key_fails_over_to_the_next(app, gemini):
    first = await gemini(g.GoogleError())
    second = await gemini(g.Turn(g.text("Served by the fallback.")), is_fallback=True)
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")]})
    assert res.json()["choices"][0]["message"]["content"] == "Served by the fallback."
    assert len(first.requests) == len(second.requests) == 1


async def test_error_event_mid_stream_reaches_the_client(app, gemini):
    partial = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Partial"}]}, "index": 0}]}
    error = g.google_error_body(503, "UNAVAILABLE", "The model is overloaded.")
    await gemini(Reply(sse=g.sse_frames([partial, error])))
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": True})
    assert res.status == 200
    data = res.sse_data()
    assert "[DONE]" not in data and "Partial" in data[1]
    assert json.loads(data[-1])["error"]["code"] == "server_error"
    [row] = await rows()
    assert row.status == 503


async def test_stream_without_finish_reason_is_an_error(app, gemini):
    await gemini(g.Turn(g.text("Never finished"), finish=None))
    res = await chat(app, {"model": MODEL, "messages": [user("Hi")], "stream": True})
    assert json.loads(res.sse_data()[-1])["error"]["code"] == "server_error"


# ---- embeddings ------------------------------------------------------------------------------------

def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def test_embeddings(app, gemini):
    fake = await gemini(model="gemini-embedding-001", public="embed")
    res = await call(app, "POST", "/v1/embeddings", {"model": "embed", "input": ["alpha", "beta"],
                                                     "dimensions": 16}, AUTH)
    assert res.status == 200, res.body
    data = res.json()
    assert data["model"] == "embed" and [d["index"] for d in data["data"]] == [0, 1]
    assert data["data"][1]["embedding"] == g.fake_vector("beta", 16)
    req = fake.requests[0]
    assert req.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert req.json["requests"][0] == {"model": "models/gemini-embedding-001",
                                       "content": {"parts": [{"text": "alpha"}]}, "outputDimensionality": 16}
    [row] = await rows()
    assert (row.endpoint, row.status, row.provider) == ("embeddings", 200, "gemini")


async def test_embeddings_over_100_inputs_are_split_and_base64_kept_in_order(app, gemini):
    fake = await gemini(model="gemini-embedding-001", public="embed")
    texts = [f"text number {i}" for i in range(150)]
    res = await call(app, "POST", "/v1/embeddings", {"model": "embed", "input": texts, "encoding_format": "base64"},
                     AUTH)
    assert res.status == 200, res.body
    vectors = [_floats(d["embedding"]) for d in res.json()["data"]]
    assert len(vectors) == 150 and vectors[149] == pytest.approx(g.fake_vector("text number 149"), abs=1e-6)
    assert sorted(len(r.json["requests"]) for r in fake.requests) == [50, 100]


async def test_embeddings_error_in_one_batch_fails_the_request(app, gemini, settings):
    settings.ROUTER_MAX_ATTEMPTS = 1
    fake = await gemini(model="gemini-embedding-001", public="embed")
    fake.add(g.GoogleError(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."))
    res = await call(app, "POST", "/v1/embeddings", {"model": "embed", "input": ["x"] * 101}, AUTH)
    assert res.status == 429 and res.json()["error"]["code"] == "rate_limit_exceeded"


async def test_codex_tool_turn_keeps_thought_signatures_in_call_ids(app, gemini):
    fake = await gemini(g.Turn(g.thought("Run it."), g.call("exec_command", {"cmd": "echo hi"})),
                        g.Turn(g.text("It printed hi.")), model="gemini-3-flash-preview")
    body = {**codex_turn1(), "model": MODEL, "reasoning": {"effort": "medium", "summary": "auto"}}
    output = (await responses(app, body))["output"]
    call_item = next(item for item in output if item["type"] == "function_call")
    turn2 = {**body, "input": [*body["input"], *output,
                               {"type": "function_call_output", "call_id": call_item["call_id"], "output": "hi"}]}
    final = await responses(app, turn2)
    assert final["output"][-1]["content"][0]["text"] == "It printed hi."
    assert fake.rejections == []
    model_turn = sent(fake, 1)["contents"][-2]
    assert model_turn["role"] == "model" and model_turn["parts"][0]["thoughtSignature"] in fake.signatures
