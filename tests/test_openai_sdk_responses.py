"""The official OpenAI Python SDK's Responses API against every provider type, through live routers.

``client.responses.create(model=..., input=...)`` leaves ``stream`` out, and OpenAI's default is
``false``: the router must answer one JSON Response object, on the translated path and on the native
relay alike. Per provider type (OpenAI with native Responses, an OpenAI-compatible Chat server,
Anthropic, Gemini, Vertex Gemini, Vertex Claude, and another router as a ``proxy`` credential, relayed
natively or translated): a text answer and a tool round trip, without ``stream`` and with
``stream=True``. Every Response object the client gets (the JSON body, and the ``response.*`` events of
streams) is validated strictly against the Open Responses schema (``openresponses-types``).

The upstreams are the scripted strict fakes of tests/codex (one per type behind the docs' router.yaml);
the ``proxy`` cases go through a second router chained to the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import httpx2
import pytest
from openai import OpenAI

from proxy.sse import SSEParser
from tests.codex.backends import Answer, Backend, Call
from tests.codex.harness import profile_model
from tests.codex.stack import Stack
from tests.live import LiveRouter
from tests.responses_schema import check_event, check_response

MASTER_KEY = "sk-router-local-dev"  # server.master_key of the docs' router.yaml
WEATHER = {"type": "function", "name": "get_weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PARIS = Call("get_weather", {"city": "Paris"})


@dataclass(frozen=True)
class Case:
    label: str
    backend: str  # the fake behind it, a key of Stack.backends
    model: str | None = None  # None: the backend's docs model
    via_proxy: bool = False


CASES = [
    Case("openai-responses", "openai-responses"),
    Case("openai-chat", "openai-chat"),
    Case("anthropic", "anthropic"),
    Case("gemini", "gemini"),
    Case("vertex-gemini", "vertex-gemini"),
    Case("vertex-claude", "vertex-claude"),
    Case("proxy-native", "anthropic", "via-router", via_proxy=True),
    Case("proxy-chat", "gemini", "via-router-chat", via_proxy=True),
]


LIFECYCLE = ("response.created", "response.in_progress", "response.completed")


class Recording(httpx2.HTTPTransport):
    """The SDK's transport, keeping the raw bytes of the last response it read (the SDK's parsed
    objects are lenient: they would hide a wrong type, e.g. a float where the schema wants an integer)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = bytearray()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        self.body = body = bytearray()
        inner = response.stream

        class Tee(httpx2.SyncByteStream):
            def __iter__(self):
                for chunk in inner:  # type: ignore[union-attr]
                    body.extend(chunk)
                    yield chunk

            def close(self) -> None:
                inner.close()  # type: ignore[union-attr]

        return httpx2.Response(response.status_code, headers=response.headers, stream=Tee(),
                               extensions=response.extensions)

    def events(self) -> list[dict]:
        parser = SSEParser()
        return [json.loads(e.data) for e in parser.feed(bytes(self.body)) + parser.flush()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("sdk-responses")).start({})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def chain(stack, tmp_path_factory) -> Iterator[LiveRouter]:
    """A second router whose credentials are the first router (``type: proxy``)."""
    upstream = {"type": "proxy", "base_url": f"{stack.router.url}/v1", "api_key": MASTER_KEY}
    config = {
        "server": {"master_key": MASTER_KEY},
        "credentials": [{"name": "router_native", **upstream, "responses_api": True},
                        {"name": "router_chat", **upstream}],
        "models": [{"name": "via-router", "credential": "router_native", "model": "claude-sonnet-4-6"},
                   {"name": "via-router-chat", "credential": "router_chat", "model": "gemini-2.5-flash"}],
    }
    live = LiveRouter(json.dumps(config), tmp_path_factory.mktemp("sdk-chain")).start()
    yield live
    live.stop()


@dataclass
class Client:
    sdk: OpenAI
    wire: Recording


@pytest.fixture(params=CASES, ids=[c.label for c in CASES])
def case(request, stack, chain) -> Iterator[tuple[Backend, Client, str]]:
    c: Case = request.param
    backend = stack.backends[c.backend]
    router = chain if c.via_proxy else stack.router
    model = c.model or backend.model or profile_model(backend.profile)
    wire = Recording()
    sdk = OpenAI(base_url=f"{router.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=30,
                 http_client=httpx2.Client(transport=wire))
    yield backend, Client(sdk, wire), model
    sdk.close()
    assert not backend.rejections, f"the strict fake rejected a request: {backend.rejections}"


def create(client: Client, stream: bool, **params) -> dict:
    """``responses.create`` as an application writes it (no ``stream`` unless streaming); returns the final
    Response object as JSON after validating everything the router sent."""
    if not stream:
        response = client.sdk.responses.create(**params)  # a str here was the bug: SSE for a JSON call
        data = json.loads(client.wire.body)
        check_response(data)
        assert response.id == data["id"] and response.output_text == text_of(data)
        return data
    kinds = [event.type for event in client.sdk.responses.create(stream=True, **params)]
    events = client.wire.events()
    assert [e["type"] for e in events] == kinds
    for event in events:
        check_event(event)
    assert all(kind in kinds for kind in LIFECYCLE) and kinds[-1] == "response.completed", kinds
    return events[-1]["response"]


def text_of(response: dict) -> str:
    return "".join(c["text"] for item in response["output"] if item["type"] == "message" for c in item["content"])


@pytest.mark.parametrize("stream", [False, True], ids=["no-stream-field", "stream"])
def test_text_answer(case, stream):
    backend, client, model = case
    backend.script(Answer(text="Hello from the fake."))
    response = create(client, stream, model=model, input="Say hi")
    assert response["status"] == "completed" and text_of(response) == "Hello from the fake."
    assert isinstance(response["completed_at"], int) and response["usage"]["output_tokens"] > 0
    [body] = backend.bodies()
    assert "Say hi" in json.dumps(body)


@pytest.mark.parametrize("stream", [False, True], ids=["no-stream-field", "stream"])
def test_tool_round_trip(case, stream):
    backend, client, model = case

    def from_tool(b: Backend, body: dict) -> str:
        return "The tool said " + " ".join(b.tool_results(body))

    backend.script(Answer(call=PARIS), Answer(text=from_tool))
    first = create(client, stream, model=model, input="Weather in Paris?", tools=[WEATHER])
    [call] = [item for item in first["output"] if item["type"] == "function_call"]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    [echoed] = first["tools"]
    assert echoed["name"] == "get_weather" and isinstance(echoed["strict"], bool)

    history = [{"role": "user", "content": "Weather in Paris?"}, *first["output"],
               {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny, 21 C"}]
    second = create(client, stream, model=model, input=history, tools=[WEATHER])
    assert text_of(second) == "The tool said sunny, 21 C"
    assert backend.declares(backend.bodies()[-1], PARIS)


@pytest.mark.parametrize("value", ["false", 1, 0, "true", [], {}])
def test_stream_must_be_a_boolean(stack, value):
    res = httpx.post(f"{stack.router.url}/v1/responses", headers={"authorization": f"Bearer {MASTER_KEY}"},
                     json={"model": "claude-sonnet-4-6", "input": "hi", "stream": value}, timeout=30)
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert error["param"] == "stream" and "stream" in error["message"]
    assert error["type"] == "invalid_request_error"
