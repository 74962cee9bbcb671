"""Vertex AI behind /v1/chat/completions and /v1/embeddings: Gemini and Claude models, OAuth from a
service account that google-auth really exchanges at a fake token endpoint, end to end over sockets."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from asgiref.sync import sync_to_async

from credentials.models import Credential
from proxy import config
from proxy.config import CredentialConfig, Deployment
from proxy.providers import google_token
from proxy.providers.google_token import _Token
from proxy.providers.vertex import VertexAdapter, embed_batch_size, is_claude
from tests.asgi_client import call
from tests.chat_helpers import (
    assemble,
    assistant_turn,
    chat,
    check_stream_shape,
    chunks_of,
    rows,
    tool_results,
    user,
)
from tests.conftest import AUTH, add_credential
from tests.fakes import gemini as g
from tests.fakes.anthropic import AnthropicFake, Fail, Turn, claude_on_vertex, text, thinking, tool_use
from tests.fakes.server import FakeServer, Recorded, Reply

pytestmark = pytest.mark.django_db(transaction=True)

PROJECT = "test-project"
GEMINI, GEMINI_UP = "vertex-flash", "gemini-2.5-flash"
CLAUDE, CLAUDE_UP = "vertex-claude", "claude-sonnet-4-5@20250929"
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
_names = itertools.count()


class Google:
    """One fake token endpoint plus the Vertex fakes and credentials of a test."""

    def __init__(self) -> None:
        self.oauth = g.FakeOAuth().start()
        self.servers: list = [self.oauth]

    def slow_tokens(self, delay: float) -> None:
        issue = self.oauth.handle

        async def slow(req: Recorded) -> Reply:
            await asyncio.sleep(delay)
            return await issue(req)

        self.oauth.server.handler = slow

    async def credential(self, base_url: str, models: dict[str, str], *, location: str = "us-central1",
                         **fields) -> str:
        name = f"vertex_{next(_names)}"
        await sync_to_async(add_credential)(
            name, "vertex-ai", models=models, project_id=PROJECT, location=location, base_url=base_url,
            service_account_json=json.dumps(self.oauth.service_account(PROJECT)), **fields)
        return name

    async def gemini(self, *script, model: str = GEMINI_UP, public: str = GEMINI, oauth: bool = True,
                     **fields) -> g.GeminiFake:
        fake = g.GeminiFake(*script, oauth=self.oauth if oauth else None, project=PROJECT).start()
        self.servers.append(fake)
        fake.credential = await self.credential(fake.url, {public: model}, **fields)
        return fake

    async def claude(self, *script, front: list[Reply] | None = None, **fields) -> AnthropicFake:
        """Claude on Vertex; ``front`` replies come first, as Vertex's own front end would answer."""
        fake = AnthropicFake(list(script), vertex=True)
        server = FakeServer(claude_on_vertex(fake, self.oauth, front)).start()
        self.servers.append(server)
        fake.server = server
        fake.credential = await self.credential(server.url, {CLAUDE: CLAUDE_UP}, **fields)
        return fake

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def google(router_db):
    env = Google()
    yield env
    env.stop()


# ---- Gemini on Vertex ----------------------------------------------------------------------

async def test_gemini_text_with_a_token_from_the_service_account(app, google):
    fake = await google.gemini(g.Turn(g.text("Hello from Vertex."), usage=g.usage_metadata(8, 4)))
    res = await chat(app, {"model": GEMINI, "messages": [user("Hi")]})
    assert res.status == 200, res.body
    assert res.json()["choices"][0]["message"]["content"] == "Hello from Vertex."
    req = fake.requests[0]
    assert req.path == f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/{GEMINI_UP}" \
                       ":generateContent"
    assert req.headers["authorization"] == "Bearer tok-1" and "x-goog-api-key" not in req.headers
    [claims] = google.oauth.claims
    assert claims["scope"] == g.CLOUD_PLATFORM_SCOPE and claims["iss"].endswith(f"@{PROJECT}.iam.gserviceaccount.com")
    [row] = await rows()
    assert (row.provider, row.credential, row.prompt_tokens, row.completion_tokens) == (
        "vertex-ai", fake.credential, 8, 4)


async def test_gemini_stream_tool_round_trip_with_signatures(app, google):
    fake = await google.gemini(
        g.Turn([g.call("get_weather", {"city": "Paris"}), g.call("get_time", {"tz": "CET"})]),
        g.Turn(g.thought("Both known."), g.text("Sunny, 14:00."), usage=g.usage_metadata(40, 6, thoughts=9)))
    first = [user("Weather and time?")]
    body = {"model": GEMINI, "tools": [WEATHER, CLOCK], "stream": True, "reasoning_effort": "low",
            "stream_options": {"include_usage": True}}
    chunks = chunks_of(await chat(app, {**body, "messages": first}))
    check_stream_shape(chunks, GEMINI, usage_chunk=True)
    step = assemble(chunks)
    assert [c["function"]["name"] for c in step["tool_calls"]] == ["get_weather", "get_time"]
    second = [*first, assistant_turn(step), *tool_results(step["tool_calls"], ["sunny", "14:00"])]
    final = assemble(chunks_of(await chat(app, {**body, "messages": second})))
    assert (final["content"], final["reasoning_content"]) == ("Sunny, 14:00.", "Both known.")
    assert final["usage"]["completion_tokens"] == 15
    assert fake.rejections == []
    assert fake.requests[1].path.endswith(":streamGenerateContent") and fake.requests[1].query == {"alt": "sse"}
    assert fake.requests[1].json["contents"][1]["parts"][0]["thoughtSignature"] in fake.signatures


# ---- tokens --------------------------------------------------------------------------------

async def test_token_is_cached_across_requests(app, google):
    await google.gemini(*[g.Turn(g.text(f"answer {i}")) for i in range(3)])
    for _ in range(3):
        assert (await chat(app, {"model": GEMINI, "messages": [user("Hi")]})).status == 200
    assert google.oauth.calls == 1


async def test_concurrent_requests_share_one_refresh(app, google):
    google.slow_tokens(0.3)
    await google.gemini(*[g.Turn(g.text("ok")) for _ in range(8)])
    results = await asyncio.gather(*(chat(app, {"model": GEMINI, "messages": [user("Hi")]}) for _ in range(8)))
    assert [r.status for r in results] == [200] * 8
    assert google.oauth.calls == 1


async def test_401_drops_the_token_and_retries_once_with_a_fresh_one(app, google):
    fake = await google.gemini(g.Turn(g.text("first")), g.Turn(g.text("second")))
    assert (await chat(app, {"model": GEMINI, "messages": [user("Hi")]})).status == 200
    google.oauth.revoke_all()  # tok-1 is no longer accepted by Vertex
    res = await chat(app, {"model": GEMINI, "messages": [user("Hi")]})
    assert res.status == 200 and res.json()["choices"][0]["message"]["content"] == "second"
    assert google.oauth.calls == 2
    assert [r.headers["authorization"] for r in fake.requests] == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


async def test_concurrent_401s_share_one_fresh_token(app, google):
    fake = await google.gemini(*[g.Turn(g.text("ok")) for _ in range(7)])
    assert (await chat(app, {"model": GEMINI, "messages": [user("Hi")]})).status == 200
    google.oauth.revoke_all()
    google.slow_tokens(0.2)
    results = await asyncio.gather(*(chat(app, {"model": GEMINI, "messages": [user("Hi")]}) for _ in range(6)))
    assert [r.status for r in results] == [200] * 6
    assert google.oauth.calls == 2
    assert sorted(r.headers["authorization"] for r in fake.requests[1:]) == ["Bearer tok-1"] * 6 + ["Bearer tok-2"] * 6


async def test_persistent_401_is_502_upstream_authentication_error(app, google, settings):
    settings.ROUTER_MAX_ATTEMPTS = 1
    fake = await google.gemini(oauth=False)  # this Vertex accepts no token at all
    res = await chat(app, {"model": GEMINI, "messages": [user("Hi")]})
    assert res.status == 502 and res.json()["error"]["code"] == "upstream_authentication_error"
    assert len(fake.requests) == 2 and google.oauth.calls == 2


async def test_short_lived_token_is_refreshed_before_it_expires(app, google):
    google.oauth.expires_in = 2  # fresh for half its life: one second
    await google.gemini(*[g.Turn(g.text("ok")) for _ in range(3)])
    for _ in range(2):
        assert (await chat(app, {"model": GEMINI, "messages": [user("Hi")]})).status == 200
    assert google.oauth.calls == 1
    await asyncio.sleep(1.2)
    assert (await chat(app, {"model": GEMINI, "messages": [user("Hi")]})).status == 200
    assert google.oauth.calls == 2


async def test_token_endpoint_failure_is_502_upstream_authentication_error(app, google, settings):
    settings.ROUTER_MAX_ATTEMPTS = 1
    google.oauth.failures.append(Reply(status=400, json={"error": "invalid_grant",
                                                         "error_description": "Invalid JWT Signature."}))
    fake = await google.gemini(g.Turn(g.text("unused")))
    res = await chat(app, {"model": GEMINI, "messages": [user("Hi")]})
    assert res.status == 502 and res.json()["error"]["code"] == "upstream_authentication_error"
    assert fake.requests == []


# ---- endpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("location", "suffix"), [("global", ""), ("europe-west4", "/v1"), ("us-east5", "/v1beta1")])
async def test_base_url_and_location_shape_the_path(app, google, location, suffix):
    fake = await google.gemini(g.Turn(g.text("ok")), location=location)
    # the same credential, its base_url spelled with a version suffix
    await sync_to_async(Credential.objects.filter(name=fake.credential).update)(base_url=fake.url + suffix)
    config.invalidate()
    assert (await chat(app, {"model": GEMINI, "messages": [user("Hi")]})).status == 200
    version = suffix.lstrip("/") or "v1"
    assert fake.requests[0].path == (f"/{version}/projects/{PROJECT}/locations/{location}/publishers/google/models/"
                                     f"{GEMINI_UP}:generateContent")


def _dep(model: str, location: str, *, base_url: str = "", project_id: str = "p1") -> Deployment:
    cred = CredentialConfig("v", "vertex-ai", base_url=base_url, project_id=project_id, location=location,
                            service_account={"project_id": "from-key"})
    return Deployment("public", cred, model)


@pytest.mark.parametrize(("dep", "stream", "url"), [
    (_dep(GEMINI_UP, "us-central1"), False, "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/"
     "us-central1/publishers/google/models/gemini-2.5-flash:generateContent"),
    (_dep(GEMINI_UP, "global"), True, "https://aiplatform.googleapis.com/v1/projects/p1/locations/global/publishers/"
     "google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    (_dep(GEMINI_UP, "eu"), False, "https://aiplatform.eu.rep.googleapis.com/v1/projects/p1/locations/eu/publishers/"
     "google/models/gemini-2.5-flash:generateContent"),
    (_dep(CLAUDE_UP, "us-east5"), False, "https://us-east5-aiplatform.googleapis.com/v1/projects/p1/locations/"
     "us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
    (_dep(CLAUDE_UP, "global"), True, "https://aiplatform.googleapis.com/v1/projects/p1/locations/global/publishers/"
     "anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"),
    (_dep(GEMINI_UP, "us-central1", project_id=""), False, "https://us-central1-aiplatform.googleapis.com/v1/"
     "projects/from-key/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"),
    (_dep(GEMINI_UP, "us-central1", base_url="https://psc.example.internal/v1"), False,
     "https://psc.example.internal/v1/projects/p1/locations/us-central1/publishers/google/models/"
     "gemini-2.5-flash:generateContent"),
])
def test_url_shapes(dep, stream, url):
    req = VertexAdapter().chat_request(dep, {"model": "public", "messages": [user("Hi")]}, stream=stream)
    assert req.url == url


# ---- Claude on Vertex ---------------------------------------------------------------------------

async def test_claude_text_stream(app, google):
    fake = await google.claude(Turn([text("Hello from Claude on Vertex.")], fragment=6,
                                    usage={"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 7}),
                               location="us-east5")
    res = await chat(app, {"model": CLAUDE, "messages": [user("Hi")], "stream": True,
                           "stream_options": {"include_usage": True}})
    chunks = chunks_of(res)
    check_stream_shape(chunks, CLAUDE, usage_chunk=True)
    msg = assemble(chunks)
    assert msg["content"] == "Hello from Claude on Vertex." and msg["usage"]["prompt_tokens"] == 25
    req = fake.server.requests[0]
    assert req.path == f"/v1/projects/{PROJECT}/locations/us-east5/publishers/anthropic/models/{CLAUDE_UP}" \
                       ":streamRawPredict"
    assert req.headers["authorization"] == "Bearer tok-1"
    assert "model" not in fake.received[0] and fake.received[0]["anthropic_version"] == "vertex-2023-10-16"
    [row] = await rows()
    assert (row.provider, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == ("vertex-ai", 25, 5, 7)


async def test_claude_thinking_and_parallel_tools_round_trip(app, google):
    fake = await google.claude(
        Turn([thinking("Two lookups."), tool_use("get_weather", {"city": "Oslo"}), tool_use("get_time", {})]),
        Turn([text("Snow at noon.")]))
    first = [user("Weather and time in Oslo?")]
    body = {"model": CLAUDE, "tools": [WEATHER, CLOCK], "reasoning_effort": "low"}
    message = (await chat(app, {**body, "messages": first})).json()["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]
    assert message["thinking_blocks"][0]["signature"]
    second = [*first, message, *tool_results(message["tool_calls"], ["snow", "12:00"])]
    res = await chat(app, {**body, "messages": second, "stream": True})
    assert assemble(chunks_of(res))["content"] == "Snow at noon."
    assert fake.rejections == []
    assert fake.received[1]["messages"][1]["content"][0] == message["thinking_blocks"][0]
    assert fake.server.requests[0].path.endswith(":rawPredict")


@pytest.mark.parametrize(("front", "fail", "status", "code"), [
    ([g.google_error_reply(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/"
                           "online_prediction_requests_per_base_model with base model: anthropic-claude-sonnet",
                           list_wrapped=True)], None, 429, "rate_limit_exceeded"),
    ([g.google_error_reply(403, "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied")], None,
     502, "upstream_authentication_error"),
    (None, Fail.overloaded(), 503, "server_is_overloaded"),
    (None, Fail.mid_stream(), 503, "server_is_overloaded"),
    (None, Fail.bad_request("prompt is too long: 300000 tokens > 200000 maximum"), 400, "context_length_exceeded"),
])
async def test_claude_errors_in_both_shapes(app, google, settings, front, fail, status, code):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await google.claude(*([fail] if fail else []), front=front)
    res = await chat(app, {"model": CLAUDE, "messages": [user("Hi")], "stream": True})
    assert res.status == status, res.body
    assert res.json()["error"]["code"] == code


@pytest.mark.parametrize(("error", "status", "code"), [
    (g.GoogleError(400, "FAILED_PRECONDITION", f"Project `{PROJECT}` is not allowed to use Publisher Model "
                   f"`projects/{PROJECT}/locations/us-central1/publishers/google/models/{GEMINI_UP}`"),
     502, "upstream_authentication_error"),
    (g.GoogleError(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/"
                   "generate_content_requests_per_minute_per_project_per_base_model", list_wrapped=True),
     429, "rate_limit_exceeded"),
])
async def test_gemini_errors_on_vertex(app, google, settings, error, status, code):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await google.gemini(error)
    res = await chat(app, {"model": GEMINI, "messages": [user("Hi")]})
    assert res.status == status and res.json()["error"]["code"] == code


async def test_failover_from_ai_studio_to_vertex_replaces_foreign_signatures(app, google):
    """Signatures minted by one project are rejected by another: one retry with the dummy fixes turn two."""
    studio = g.GeminiFake(g.Turn(g.call("get_time", {"tz": "UTC"})), g.GoogleError(), api_key="k").start()
    google.servers.append(studio)
    await sync_to_async(add_credential)("studio", "gemini", models={GEMINI: GEMINI_UP}, api_key="k",
                                        base_url=studio.url)
    vertex = await google.gemini(g.Turn(g.text("Noon.")), is_fallback=True)
    first = [user("Time?")]
    message = (await chat(app, {"model": GEMINI, "messages": first, "tools": [CLOCK]})).json()["choices"][0]["message"]
    assert "__thought__" in message["tool_calls"][0]["id"]
    second = [*first, message, *tool_results(message["tool_calls"], ["12:00"])]
    res = await chat(app, {"model": GEMINI, "messages": second, "tools": [CLOCK]})
    assert res.status == 200 and res.json()["choices"][0]["message"]["content"] == "Noon."
    assert len(vertex.requests) == 2 and "Corrupted thought signature" in vertex.rejections[0][0]
    assert vertex.requests[1].json["contents"][1]["parts"][0]["thoughtSignature"] == g.DUMMY_SIGNATURE


# ---- embeddings -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "requests"), [("gemini-embedding-001", 3), ("text-embedding-005", 1)])
async def test_embeddings(app, google, model, requests):
    fake = await google.gemini(model=model, public="vertex-embed")
    texts = ["one", "two words", "three more words"]
    res = await call(app, "POST", "/v1/embeddings", {"model": "vertex-embed", "input": texts, "dimensions": 8}, AUTH)
    assert res.status == 200, res.body
    data = res.json()
    assert [d["embedding"] for d in data["data"]] == [g.fake_vector(t) for t in texts]
    assert data["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert len(fake.requests) == requests
    assert all(r.path.endswith(f"/publishers/google/models/{model}:predict") for r in fake.requests)
    assert fake.requests[0].json["parameters"] == {"outputDimensionality": 8}
    [row] = await rows()
    assert (row.endpoint, row.prompt_tokens, row.provider) == ("embeddings", 6, "vertex-ai")


async def test_claude_models_have_no_embeddings(app, google):
    fake = await google.claude()
    res = await call(app, "POST", "/v1/embeddings", {"model": CLAUDE, "input": "x"}, AUTH)
    assert res.status == 400 and res.json()["error"]["code"] == "unsupported_model"
    assert fake.server.requests == []


# ---- pure helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "claude", "batch"), [
    ("claude-sonnet-4-5@20250929", True, 100), ("anthropic/claude-opus-4-1", True, 100),
    ("gemini-2.5-pro", False, 100), ("gemini-embedding-001", False, 1), ("text-embedding-005", False, 100),
])
def test_model_kinds(model, claude, batch):
    assert (is_claude(model), embed_batch_size(model)) == (claude, batch)


@pytest.mark.parametrize(("lifetime", "age", "fresh"), [
    (3600, 0, True), (3600, 3299, True), (3600, 3301, False),  # five minutes early for normal tokens
    (60, 29, True), (60, 31, False),  # half the lifetime for short-lived ones
])
def test_token_freshness(monkeypatch, lifetime, age, fresh):
    token = _Token("t", expires=1000.0 + lifetime, issued=1000.0)
    monkeypatch.setattr(google_token.time, "time", lambda: 1000.0 + age)
    assert token.fresh() is fresh
