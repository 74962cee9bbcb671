"""The fake Gemini / Vertex / OAuth servers behave like the real ones (validator tables, then real sockets)."""

from __future__ import annotations

import base64
import copy
import json
import time

import google.auth.transport.requests
import httpx
import pytest
from google.auth.exceptions import RefreshError
from google.oauth2 import service_account

from proxy.sse import SSEParser
from tests.fakes.gemini import (
    CLOUD_PLATFORM_SCOPE,
    DUMMY_SIGNATURE,
    JWT_GRANT,
    FakeOAuth,
    GeminiFake,
    GoogleError,
    Turn,
    call,
    fake_vector,
    make_service_account,
    text,
    thought,
    usage_metadata,
    validate_batch_embed,
    validate_generate_content,
    validate_predict,
)
from tests.fakes.server import Reply

MODEL = "gemini-3-pro-preview"
STUDIO_KEY = {"x-goog-api-key": "gm-test-key"}


@pytest.fixture(autouse=True)
def _close_thread_connections():
    """Overrides the shared conftest's DB teardown: these tests touch no database and run without Django."""
    yield


# ---- validator tables --------------------------------------------------------------------

def valid_body() -> dict:
    """A request that passes: a finished tool step, then a new user message."""
    return {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "Checking."},
                                        {"functionCall": {"name": "f", "args": {"a": 1}},
                                         "thoughtSignature": DUMMY_SIGNATURE},
                                        {"functionCall": {"name": "g", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "g", "response": {"output": "2"}}},
                                       {"functionResponse": {"name": "f", "response": {"output": "1"}}}]},
            {"role": "model", "parts": [{"text": "Done."}]},
            {"role": "user", "parts": [{"text": "thanks"},
                                       {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]},
        ],
        "tools": [{"functionDeclarations": [
            {"name": "f", "description": "F", "parameters": {
                "type": "OBJECT", "properties": {"a": {"type": "integer", "nullable": True, "title": "A"},
                                                 "when": {"type": "string", "format": "date-time"},
                                                 "kind": {"type": "string", "enum": ["x", "y"]},
                                                 "list": {"type": "array", "items": {"type": "string"}},
                                                 "any": {"anyOf": [{"type": "string"}, {"type": "number"}]}},
                "required": ["a"]}},
            {"name": "g"},
        ]}, {"googleSearch": {}}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
        "generationConfig": {"maxOutputTokens": 100, "temperature": 0.2, "stopSequences": ["x"],
                             "responseMimeType": "application/json",
                             "responseSchema": {"type": "object", "properties": {"r": {"type": "string"}}},
                             "thinkingConfig": {"thinkingLevel": "LOW", "includeThoughts": True}},
    }


def test_baseline_body_is_valid_on_both_platforms():
    assert validate_generate_content(valid_body()) == []
    assert validate_generate_content(valid_body(), vertex=True) == []


def _set(path: str, value):
    def mutate(body: dict) -> None:
        *parents, last = path.split(".")
        target = body
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return mutate


_DELETE = object()
_PARAMS = "tools.0.functionDeclarations.0.parameters"


@pytest.mark.parametrize(("mutate", "message"), [
    (_set("contents", []), "contents is not specified"),
    (_set("contents.0.role", _DELETE), "valid role"),
    (_set("contents.0.role", "system"), "Content with system role is not supported"),
    (_set("contents.0.role", "assistant"), "valid role"),
    (_set("contents.4.role", "model"), "alternate between user and model"),
    (_set("contents.4", {"role": "model", "parts": [{"text": "x"}]}), "alternate between user and model"),
    (_set("contents.4.parts.0.text", ""), "empty text parameter"),
    (_set("contents.4.parts", []), "must not be empty"),
    (_set("contents.4.parts.0", {"text": "a", "inlineData": {"mimeType": "x/y", "data": "AA=="}}),
     "oneof field 'data'"),
    (_set("contents.4.parts.0", {}), "oneof field 'data'"),
    (_set("contents.4.parts.0.bogus", 1), 'Unknown name "bogus"'),
    (_set("contents.4.parts.1.inlineData.data", "not base64!"), "Base64 decoding failed"),
    (_set("contents.2.parts", [{"functionResponse": {"name": "f", "response": {}}}]),
     "number of function response parts is equal"),
    (_set("contents.2.parts.0.functionResponse.name", "h"), "do not match the function call names"),
    (_set("contents.2.parts.0.functionResponse.response", "text"), "google.protobuf.Struct"),
    (_set("contents.1.parts.1.functionCall.name", ""), "Name cannot be empty"),
    (_set("contents.3.parts", [{"text": "Done."}, {"functionCall": {"name": "f", "args": {}},
                                                   "thoughtSignature": DUMMY_SIGNATURE}]),
     "number of function response parts is equal"),
    (_set("contents.0.parts", [{"functionResponse": {"name": "f", "response": {}}}]),
     "function response turn comes immediately after a function call turn"),
    (_set("systemInstruction", {"parts": []}), "system_instruction.parts: must not be empty"),
    (_set("systemInstruction.parts.0.text", ""), "empty text parameter"),
    (_set("labels", {"a": "b"}), 'Unknown name "labels"'),
    (_set("safety_settings_typo", []), 'Unknown name "safety_settings_typo"'),
    (_set("tools.0.functionDeclarations.0.name", "1bad"), "Invalid function name"),
    (_set("tools.0.functionDeclarations.1.name", "f"), "Duplicate function declaration"),
    (_set("tools.0.functionDeclarations.0.strict", True), 'Unknown name "strict"'),
    (_set("tools.0.functionDeclarations.0.parametersJsonSchema", {}), "mutually exclusive"),
    (_set("tools.1", {"googleSearch": {}, "codeExecution": {}}), "exactly one tool type"),
    (_set(f"{_PARAMS}.type", "STRING"), "should be of type OBJECT"),
    (_set(f"{_PARAMS}.properties", {}), "should be non-empty for OBJECT type"),
    (_set(f"{_PARAMS}.additionalProperties", False), 'Unknown name "additionalProperties"'),
    (_set(f"{_PARAMS}.$schema", "x"), 'Unknown name "$schema"'),
    (_set(f"{_PARAMS}.properties.a.$ref", "#/$defs/A"), 'Unknown name "$ref"'),
    (_set(f"{_PARAMS}.$defs", {}), 'Unknown name "$defs"'),
    (_set(f"{_PARAMS}.properties.a.const", 1), 'Unknown name "const"'),
    (_set(f"{_PARAMS}.properties.a.exclusiveMinimum", 0), 'Unknown name "exclusiveMinimum"'),
    (_set(f"{_PARAMS}.properties.a.examples", [1]), 'Unknown name "examples"'),
    (_set(f"{_PARAMS}.properties.list.items.propertyNames", {}), 'Unknown name "propertyNames"'),
    (_set(f"{_PARAMS}.properties.a.type", ["integer", "null"]), "cannot start list"),
    (_set(f"{_PARAMS}.properties.a.type", "null"), "generativelanguage.v1beta.Type"),
    (_set(f"{_PARAMS}.properties.kind.enum", [1, 2]), "only allowed for STRING"),
    (_set(f"{_PARAMS}.properties.kind.enum", ["a", ""]), "only allowed for STRING"),
    (_set(f"{_PARAMS}.properties.a.enum", ["1"]), "only allowed for STRING"),
    (_set(f"{_PARAMS}.properties.when.format", "uri"), "unsupported format"),
    (_set(f"{_PARAMS}.properties.list.items", _DELETE), "items: missing field"),
    (_set(f"{_PARAMS}.required", ["a", "ghost"]), "required[1]: property is not defined"),
    (_set(f"{_PARAMS}.properties.any.anyOf.0.additionalProperties", True), 'Unknown name "additionalProperties"'),
    (_set("toolConfig.functionCallingConfig.mode", "AUTO"), "only allowed when mode is ANY"),
    (_set("toolConfig.functionCallingConfig.mode", "REQUIRED"), "mode"),
    (_set("toolConfig.functionCallingConfig.allowedFunctionNames", ["zzz"]), "zzz is not a declared function"),
    (_set("tools", [{"googleSearch": {}}]), "Function calling config is set without function_declarations"),
    (_set("generationConfig.max_tokens", 5), 'Unknown name "max_tokens"'),
    (_set("generationConfig.responseMimeType", "text/plain"), "must be application/json"),
    (_set("generationConfig.responseJsonSchema", {}), "mutually exclusive"),
    (_set("generationConfig.responseSchema.additionalProperties", False), 'Unknown name "additionalProperties"'),
    (_set("generationConfig.stopSequences", ["1", "2", "3", "4", "5", "6"]), "at most 5"),
    (_set("generationConfig.thinkingConfig.thinkingBudget", 1024), "only set one of thinking budget"),
    (_set("generationConfig.thinkingConfig.thinkingLevel", "EXTREME"), "thinking_level"),
    (_set("generationConfig.thinkingConfig.include_thoughts", True), 'Unknown name "include_thoughts"'),
])
def test_validator_rejects_what_the_real_api_rejects(mutate, message):
    body = copy.deepcopy(valid_body())
    mutate(body)
    errors = validate_generate_content(body)
    assert any(message in e for e in errors), errors


def test_labels_are_allowed_on_vertex_only():
    body = {**valid_body(), "labels": {"team": "a"}}
    assert validate_generate_content(body, vertex=True) == []
    assert validate_generate_content(body) != []


def test_a_request_ending_with_a_model_turn_is_rejected():
    body = valid_body()
    body["contents"] = body["contents"][:4]
    assert any("ends with a user role" in e for e in validate_generate_content(body))


def test_function_call_cannot_open_the_conversation():
    body = {"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f"},
                                                      "thoughtSignature": DUMMY_SIGNATURE}]},
                         {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}
    assert any("function call turn comes immediately after a user turn" in e
               for e in validate_generate_content(body))


def _current_step(signature: str | None, *, earlier_unsigned: bool = False) -> dict:
    first: dict = {"functionCall": {"name": "f", "args": {}}}
    if signature:
        first["thoughtSignature"] = signature
    contents = [{"role": "user", "parts": [{"text": "old question"}]}]
    if earlier_unsigned:
        contents += [{"role": "model", "parts": [{"functionCall": {"name": "old", "args": {}}}]},
                     {"role": "user", "parts": [{"functionResponse": {"name": "old", "response": {}}}]},
                     {"role": "model", "parts": [{"text": "old answer"}]},
                     {"role": "user", "parts": [{"text": "new question"}]}]
    contents += [{"role": "model", "parts": [first, {"functionCall": {"name": "g", "args": {}}}]},
                 {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}},
                                           {"functionResponse": {"name": "g", "response": {}}}]}]
    return {"contents": contents}


@pytest.mark.parametrize(("signature", "issued", "required", "earlier_unsigned", "error"), [
    ("S1", {"S1"}, True, False, None),
    (DUMMY_SIGNATURE, set(), True, False, None),
    (None, {"S1"}, True, False, "missing a thought_signature"),
    (None, {"S1"}, False, False, None),
    ("forged", {"S1"}, True, False, "Corrupted thought signature"),
    ("forged", None, True, False, None),
    ("S1", {"S1"}, True, True, None),  # earlier turns are not validated for presence
])
def test_thought_signature_rules(signature, issued, required, earlier_unsigned, error):
    errors = validate_generate_content(_current_step(signature, earlier_unsigned=earlier_unsigned),
                                       signatures=issued, require_signatures=required)
    if error is None:
        assert errors == []
    else:
        assert any(error in e for e in errors), errors


def test_missing_signature_message_names_the_call_and_position():
    body = _current_step(None)
    body["contents"][1]["parts"].insert(0, {"text": "before"})
    (error,) = validate_generate_content(body, signatures=set())
    assert "`default_api:f` , position 2" in error


@pytest.mark.parametrize(("body", "ok"), [
    ({"requests": [{"model": "models/emb", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4}]}, True),
    ({"requests": [{"model": "emb", "content": {"parts": [{"text": "a"}]}}]}, False),
    ({"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]}, False),
    ({"requests": [{"model": "models/emb", "content": {"parts": [{"text": ""}]}}]}, False),
    ({"requests": [{"model": "models/emb", "content": {"parts": [{"text": "a"}]}, "dimensions": 3}]}, False),
    ({"requests": []}, False),
])
def test_batch_embed_validation(body, ok):
    assert (validate_batch_embed(body, "emb") == []) is ok


@pytest.mark.parametrize(("body", "ok"), [
    ({"instances": [{"content": "a"}], "parameters": {"outputDimensionality": 8}}, True),
    ({"instances": [{"content": "a", "task_type": "RETRIEVAL_QUERY"}]}, True),
    ({"instances": [{"content": ""}]}, False),
    ({"instances": [{"text": "a"}]}, False),
    ({"instances": [{"content": "a"}], "parameters": {"dimensions": 8}}, False),
    ({"instances": []}, False),
])
def test_predict_validation(body, ok):
    assert (validate_predict(body) == []) is ok


# ---- rendering scripted turns ------------------------------------------------------------

def test_render_signs_only_the_first_call_and_puts_finish_and_usage_last():
    fake = GeminiFake()
    chunks = fake.render(Turn(thought("t"), [call("a"), call("b")], call("c"), usage=usage_metadata(3, 4),
                              early_usage=True))
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    sigs = [p.get("thoughtSignature") for p in parts]
    assert sigs[0] is None and sigs[1] in fake.signatures and sigs[2:] == [None, None]
    assert "+/" in sigs[1]
    assert [c["candidates"][0].get("finishReason") for c in chunks] == [None, None, "STOP"]
    assert chunks[-1]["usageMetadata"] == usage_metadata(3, 4)
    assert chunks[0]["usageMetadata"] == {"promptTokenCount": 3, "totalTokenCount": 3}
    assert len({c["responseId"] for c in chunks}) == 1


def test_render_variants():
    fake = GeminiFake()
    assert fake.render(Turn(block="SAFETY"))[0]["promptFeedback"] == {"blockReason": "SAFETY"}
    empty = fake.render(Turn(finish="MAX_TOKENS"))
    assert empty[0]["candidates"][0] == {"content": {"role": "model"}, "index": 0, "finishReason": "MAX_TOKENS"}
    trailing = fake.render(Turn(text("a"), trailing_empty=True))
    assert trailing[-1]["candidates"][0]["content"]["parts"] == [{"text": ""}]
    unsigned = fake.render(Turn(call("a"), sign_first_call=False))
    assert "thoughtSignature" not in unsigned[0]["candidates"][0]["content"]["parts"][0]
    signed_text = fake.render(Turn(text("x", signed=True)))
    assert signed_text[0]["candidates"][0]["content"]["parts"][0]["thoughtSignature"] in fake.signatures
    truncated = fake.render(Turn(text("a"), finish=None))
    assert "finishReason" not in truncated[-1]["candidates"][0]
    whole = fake.render_whole(Turn(text("a"), text("b"), call("c"), trailing_empty=True))
    assert [next(iter(p)) for p in whole["candidates"][0]["content"]["parts"]] == ["text", "text", "functionCall"]


# ---- over a socket: AI Studio -------------------------------------------------------------

@pytest.fixture
def gemini():
    fakes: list = []

    def make(*script, **kwargs) -> GeminiFake:
        fake = GeminiFake(*script, **kwargs).start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.stop()


@pytest.fixture
def oauth():
    fake = FakeOAuth().start()
    yield fake
    fake.stop()


def _studio(fake: GeminiFake, action: str, body: dict, headers: dict | None = None, query: str = "") -> httpx.Response:
    url = f"{fake.url}/v1beta/models/{MODEL}:{action}{query}"
    return httpx.post(url, json=body, headers=STUDIO_KEY if headers is None else headers, timeout=10)


def _hello() -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(("headers", "query", "status", "google_status"), [
    ({}, "", 403, "PERMISSION_DENIED"),
    ({"x-goog-api-key": "wrong"}, "", 400, "INVALID_ARGUMENT"),
    ({}, "?key=gm-test-key", 200, None),
    (STUDIO_KEY, "", 200, None),
])
def test_ai_studio_requires_the_api_key(gemini, headers, query, status, google_status):
    fake = gemini(Turn(text("ok")), Turn(text("ok")))
    resp = _studio(fake, "generateContent", _hello(), headers, query)
    assert resp.status_code == status
    if google_status:
        assert resp.json()["error"]["status"] == google_status
    if status == 400:
        assert resp.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_generate_content_returns_one_whole_response(gemini):
    fake = gemini(Turn(thought("t"), text("Hello "), text("there"), usage=usage_metadata(5, 2, thoughts=3)))
    resp = _studio(fake, "generateContent", _hello())
    data = resp.json()
    parts = data["candidates"][0]["content"]["parts"]
    assert parts == [{"text": "t", "thought": True}, {"text": "Hello "}, {"text": "there"}]
    assert data["candidates"][0]["finishReason"] == "STOP"
    assert data["usageMetadata"]["thoughtsTokenCount"] == 3
    assert fake.requests[0].json == _hello()


def test_stream_uses_crlf_framed_sse_without_terminator(gemini):
    fake = gemini(Turn(text("a"), [call("f", {"x": 1}), call("g")], usage=usage_metadata(2, 2)))
    resp = _studio(fake, "streamGenerateContent", _hello(), query="?alt=sse")
    assert resp.headers["content-type"].startswith("text/event-stream")
    raw = resp.content
    assert raw.count(b"\r\n\r\n") == 2 and raw.endswith(b"\r\n\r\n") and b"[DONE]" not in raw
    events = [e.json() for e in SSEParser().feed(raw)]
    assert [len(e["candidates"][0]["content"]["parts"]) for e in events] == [1, 2]
    assert events[1]["candidates"][0]["content"]["parts"][0]["thoughtSignature"] in fake.signatures


def test_stream_without_alt_sse_is_a_json_array(gemini):
    fake = gemini(Turn(text("a"), text("b")))
    data = _studio(fake, "streamGenerateContent", _hello()).json()
    assert isinstance(data, list) and len(data) == 2


def test_stream_delays_are_applied(gemini):
    fake = gemini(Turn(text("a"), text("b"), text("c"), delay=0.15))
    started = time.monotonic()
    _studio(fake, "streamGenerateContent", _hello(), query="?alt=sse")
    assert time.monotonic() - started >= 0.3


def test_invalid_request_gets_googles_400_and_keeps_the_turn(gemini):
    fake = gemini(Turn(text("ok")))
    bad = {"contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "user", "parts": [{"text": "b"}]}]}
    resp = _studio(fake, "generateContent", bad)
    assert resp.status_code == 400
    assert resp.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "alternate between user and model" in resp.json()["error"]["message"]
    assert fake.rejections and len(fake.script) == 1
    assert _studio(fake, "generateContent", _hello()).status_code == 200


def test_signatures_issued_over_http_are_accepted_on_the_next_request(gemini):
    fake = gemini(Turn(call("f")), Turn(text("done")))
    first = _studio(fake, "generateContent", _hello()).json()
    part = first["candidates"][0]["content"]["parts"][0]
    follow_up = {"contents": [*_hello()["contents"], {"role": "model", "parts": [part]},
                              {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}
    assert _studio(fake, "generateContent", follow_up).status_code == 200
    part["thoughtSignature"] = "bm90IGlzc3VlZA=="
    assert _studio(fake, "generateContent", follow_up).status_code == 400


@pytest.mark.parametrize(("item", "status", "list_wrapped"), [
    (GoogleError(), 429, False),
    (GoogleError(500, "INTERNAL", "An internal error has occurred."), 500, False),
    (GoogleError(429, "RESOURCE_EXHAUSTED", "Quota exceeded", list_wrapped=True,
                 headers={"retry-after": "3"}), 429, True),
    (GoogleError(400, "FAILED_PRECONDITION", "Project `p` is not allowed to use Publisher Model `m`",
                 list_wrapped=True), 400, True),
    (Reply(status=503, body="upstream connect error", content_type="text/plain"), 503, None),
])
def test_scripted_errors(gemini, item, status, list_wrapped):
    fake = gemini(item)
    resp = _studio(fake, "streamGenerateContent", _hello(), query="?alt=sse")
    assert resp.status_code == status
    if list_wrapped is None:
        return
    data = resp.json()
    assert isinstance(data, list) is list_wrapped
    error = (data[0] if list_wrapped else data)["error"]
    assert error["code"] == status and error["status"] == item.google_status
    if item.headers:
        assert resp.headers["retry-after"] == "3"


def test_no_scripted_turn_left_is_a_500(gemini):
    resp = _studio(gemini(), "generateContent", _hello())
    assert resp.status_code == 500 and "no scripted turn" in resp.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path"), [
    ("POST", f"/v1beta/models/{MODEL}:computeTokens"),
    ("POST", "/v1/models"),
    ("GET", f"/v1beta/models/{MODEL}:generateContent"),
])
def test_unknown_routes_are_404(gemini, method, path):
    resp = httpx.request(method, f"{gemini().url}{path}", headers=STUDIO_KEY, json={}, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["status"] == "NOT_FOUND"


def test_count_tokens_checks_its_body(gemini):
    fake = gemini()
    resp = _studio(fake, "countTokens", {"generateContentRequest": {"model": f"models/{MODEL}", **_hello()}})
    assert resp.status_code == 200 and resp.json()["totalTokens"] > 0
    resp = _studio(fake, "countTokens", {"generationConfig": {}})
    assert resp.status_code == 400 and "Unknown name" in resp.json()["error"]["message"]


def test_batch_embed_contents(gemini):
    fake = gemini()
    body = {"requests": [{"model": f"models/{MODEL}", "content": {"parts": [{"text": t}]}, "outputDimensionality": 4}
                         for t in ("a", "b")]}
    data = _studio(fake, "batchEmbedContents", body).json()
    assert data == {"embeddings": [{"values": fake_vector("a", 4)}, {"values": fake_vector("b", 4)}]}
    bad = _studio(fake, "batchEmbedContents", {"requests": [{"model": "models/x", "content": {"parts": []}}]})
    assert bad.status_code == 400


def test_embeddings_take_scripted_errors(gemini):
    fake = gemini(GoogleError())
    body = {"requests": [{"model": f"models/{MODEL}", "content": {"parts": [{"text": "a"}]}}]}
    assert _studio(fake, "batchEmbedContents", body).status_code == 429
    assert _studio(fake, "batchEmbedContents", body).status_code == 200


# ---- over a socket: Vertex + OAuth ------------------------------------------------------------

def _vertex(fake: GeminiFake, action: str, body: dict, token: str | None, project: str = "test-project",
            query: str = "") -> httpx.Response:
    url = (f"{fake.url}/v1/projects/{project}/locations/us-central1/publishers/google/models/{MODEL}:{action}"
           f"{query}")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(url, json=body, headers=headers, timeout=10)


def _google_auth_token(info: dict) -> tuple[str, service_account.Credentials]:
    creds = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM_SCOPE])
    creds.refresh(google.auth.transport.requests.Request())
    return creds.token, creds


def test_google_auth_really_talks_to_the_fake_token_endpoint(oauth):
    info = oauth.service_account()
    assert info["token_uri"] == f"{oauth.url}/token" and info["type"] == "service_account"
    token, creds = _google_auth_token(info)
    assert token == "tok-1" and oauth.calls == 1 and creds.valid
    assert oauth.claims[0]["iss"] == info["client_email"]
    assert oauth.claims[0]["scope"] == CLOUD_PLATFORM_SCOPE
    creds.refresh(google.auth.transport.requests.Request())
    assert creds.token == "tok-2" and oauth.calls == 2
    assert oauth.valid("tok-1") and oauth.valid("tok-2") and not oauth.valid("tok-3")


def test_make_service_account_gives_what_google_auth_requires(oauth):
    info = make_service_account(oauth.token_uri, "proj-x")
    assert info["project_id"] == "proj-x" and info["client_email"].endswith("@proj-x.iam.gserviceaccount.com")
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert make_service_account(oauth.token_uri)["private_key_id"] != info["private_key_id"]
    token, creds = _google_auth_token(info)
    assert token == "tok-1" and creds.service_account_email == info["client_email"]


def test_vertex_accepts_tokens_from_the_oauth_fake(gemini, oauth):
    fake = gemini(Turn(text("from vertex")), Turn(text("streamed")), oauth=oauth)
    token, _ = _google_auth_token(oauth.service_account())
    resp = _vertex(fake, "generateContent", _hello(), token)
    assert resp.status_code == 200
    assert resp.json()["candidates"][0]["content"]["parts"] == [{"text": "from vertex"}]
    streamed = _vertex(fake, "streamGenerateContent", _hello(), token, query="?alt=sse")
    assert streamed.content.startswith(b"data: ") and streamed.content.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(("token", "project", "status"), [
    (None, "test-project", 401),
    ("tok-999", "test-project", 401),
    ("VALID", "other-project", 403),
])
def test_vertex_auth_failures(gemini, oauth, token, project, status):
    fake = gemini(Turn(text("x")), oauth=oauth)
    if token == "VALID":
        token, _ = _google_auth_token(oauth.service_account())
    resp = _vertex(fake, "generateContent", _hello(), token, project)
    assert resp.status_code == status
    assert resp.json()["error"]["status"] == ("UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED")


def test_vertex_rejects_revoked_and_expired_tokens(gemini):
    oauth = FakeOAuth(expires_in=1).start()
    try:
        fake = gemini(Turn(text("a")), Turn(text("b")), oauth=oauth)
        token, _ = _google_auth_token(oauth.service_account())
        assert _vertex(fake, "generateContent", _hello(), token).status_code == 200
        time.sleep(1.1)
        assert _vertex(fake, "generateContent", _hello(), token).status_code == 401
        token, _ = _google_auth_token(oauth.service_account())
        oauth.revoke_all()
        assert _vertex(fake, "generateContent", _hello(), token).status_code == 401
    finally:
        oauth.stop()


def test_vertex_requires_roles_like_ai_studio(gemini, oauth):
    fake = gemini(Turn(text("x")), oauth=oauth)
    token, _ = _google_auth_token(oauth.service_account())
    resp = _vertex(fake, "generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}, token)
    assert resp.status_code == 400 and "valid role" in resp.json()["error"]["message"]


def test_vertex_predict_embeddings(gemini, oauth):
    fake = gemini(oauth=oauth)
    token, _ = _google_auth_token(oauth.service_account())
    body = {"instances": [{"content": "hello world"}, {"content": "x"}], "parameters": {"outputDimensionality": 3}}
    data = _vertex(fake, "predict", body, token).json()
    assert [p["embeddings"]["values"] for p in data["predictions"]] == [fake_vector("hello world", 3),
                                                                        fake_vector("x", 3)]
    assert [p["embeddings"]["statistics"]["token_count"] for p in data["predictions"]] == [2, 1]
    assert _vertex(fake, "batchEmbedContents", {"requests": []}, token).status_code == 404


def _post_token(oauth: FakeOAuth, form: dict) -> httpx.Response:
    return httpx.post(oauth.token_uri, data=form, timeout=10)


def _jwt(info: dict, **claims) -> str:
    from google.auth import crypt, jwt

    now = int(time.time())
    payload = {"iss": info["client_email"], "aud": "https://oauth2.googleapis.com/token",
               "scope": CLOUD_PLATFORM_SCOPE, "iat": now, "exp": now + 3600, **claims}
    return jwt.encode(crypt.RSASigner.from_service_account_info(info), payload).decode()


@pytest.mark.parametrize(("claims", "form_extra", "error"), [
    ({}, {}, None),
    ({"aud": "TOKEN_URI"}, {}, None),
    ({"aud": "https://evil.example/token"}, {}, "invalid_grant"),
    ({"scope": "https://www.googleapis.com/auth/userinfo.email"}, {}, "invalid_grant"),
    ({"scope": f"openid {CLOUD_PLATFORM_SCOPE}"}, {}, None),
    ({"iss": "someone@else.iam.gserviceaccount.com"}, {}, "invalid_grant"),
    ({"exp": int(time.time()) - 10}, {}, "invalid_grant"),
    ({}, {"grant_type": "client_credentials"}, "unsupported_grant_type"),
])
def test_token_endpoint_checks_the_assertion(oauth, claims, form_extra, error):
    info = oauth.service_account()
    if claims.get("aud") == "TOKEN_URI":
        claims["aud"] = oauth.token_uri
    resp = _post_token(oauth, {"grant_type": JWT_GRANT, "assertion": _jwt(info, **claims), **form_extra})
    if error is None:
        assert resp.status_code == 200
        assert resp.json() == {"access_token": "tok-1", "expires_in": 3600, "token_type": "Bearer"}
    else:
        assert resp.status_code == 400 and resp.json()["error"] == error
    assert oauth.calls == 1


def test_token_endpoint_rejects_tampered_and_unknown_keys(oauth):
    info = oauth.service_account()
    head, _, sig = _jwt(info).split(".")
    forged_payload = base64.urlsafe_b64encode(json.dumps({"iss": "x"}).encode()).decode().rstrip("=")
    unknown = dict(info, private_key_id="0" * 40)
    for assertion in (f"{head}.{forged_payload}.{sig}", _jwt(info)[:-4] + "AAAA", _jwt(unknown), "not-a-jwt"):
        resp = _post_token(oauth, {"grant_type": JWT_GRANT, "assertion": assertion})
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    assert oauth.issued == 0


def test_token_endpoint_scripted_failures_and_counts(oauth):
    oauth.failures.append(Reply(status=400, json={"error": "invalid_grant", "error_description": "scripted"}))
    info = oauth.service_account()
    with pytest.raises(RefreshError):
        _google_auth_token(info)
    token, _ = _google_auth_token(info)
    assert (token, oauth.calls, oauth.issued) == ("tok-1", 2, 1)
    assert httpx.get(oauth.token_uri, timeout=10).status_code == 404
