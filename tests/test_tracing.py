"""OpenTelemetry: a failed-over request traced by a real router into a local OTLP receiver."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.fakes.openai import OpenAIFake, completion, error_reply
from tests.fakes.server import FakeServer, Recorded, Reply
from tests.live import LiveRouter
from tests.test_routing import forever

KEY = "sk-router-trace-test"


class OtlpReceiver(FakeServer):
    """Accepts OTLP/HTTP protobuf trace exports and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        super().__init__(self._receive)

    async def _receive(self, req: Recorded) -> web.StreamResponse:
        assert req.path == "/v1/traces" and req.headers["content-type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(req.body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


def attrs(span: Span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = list(v.string_value for v in value.array_value.values) if kind == "array_value" \
            else getattr(value, kind)
    return out


@pytest.fixture
def stack(tmp_path):
    receiver = OtlpReceiver().start()
    primary = OpenAIFake().start()
    primary.script = forever(error_reply(500, "primary is down", type_="server_error"))
    backup = OpenAIFake().start()
    backup.script = forever(Reply(json=completion("from backup", prompt=11, completion_tokens=4)))
    config = f"""
server: {{master_key: {KEY}}}
credentials:
  - {{name: primary, type: openai, api_key: sk-upstream-secret, base_url: "{primary.url}/v1"}}
  - {{name: backup, type: openai, api_key: sk-upstream-secret, base_url: "{backup.url}/v1", is_fallback: true}}
models:
  - {{name: gpt-4o, credential: primary, model: gpt-4o-2024-08-06}}
  - {{name: gpt-4o, credential: backup, model: gpt-4o-2024-08-06}}
"""
    router = LiveRouter(config, tmp_path, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "router-under-test"}).start()
    yield router, receiver, primary, backup
    router.stop()
    for server in (receiver, primary, backup):
        server.stop()


def test_failed_over_request_is_one_trace_with_both_attempts(stack):
    router, receiver, primary, backup = stack
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    res = httpx.post(router.url + "/v1/chat/completions", timeout=30, json={
        "model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert res.status_code == 200, res.text

    def ours() -> list[Span]:
        return [s for s in receiver.spans if s.trace_id.hex() == trace_id]

    deadline = time.monotonic() + 60  # the batch processor exports every 100 ms; a loaded machine is slower
    while len(ours()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    spans = ours()
    [server] = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    clients = sorted((s for s in spans if s.kind == Span.SPAN_KIND_CLIENT), key=lambda s: attrs(s)["router.attempt"])

    assert server.parent_span_id.hex() == parent_id  # the client's trace continues
    assert server.name == "chat gpt-4o"
    a = attrs(server)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "gpt-4o"
    assert a["gen_ai.response.model"] == "gpt-4o-2024-08-06" and a["gen_ai.provider.name"] == "openai"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (11, 4)
    assert a["gen_ai.usage.cache_read.input_tokens"] == 2 and a["gen_ai.usage.reasoning.output_tokens"] == 1
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["router.credential"] == "backup" and a["router.attempts"] == 2
    assert a["http.response.status_code"] == 200

    assert [attrs(s)["router.credential"] for s in clients] == ["primary", "backup"]
    assert all(s.parent_span_id == server.span_id for s in clients)
    assert [attrs(s)["http.response.status_code"] for s in clients] == [500, 200]
    assert attrs(clients[0])["error.type"] and "error.type" not in attrs(clients[1])
    assert attrs(clients[1])["gen_ai.request.model"] == "gpt-4o-2024-08-06"

    # each upstream saw the W3C context of its own attempt span
    for fake, span in ((primary, clients[0]), (backup, clients[1])):
        sent = fake.requests[-1].headers["traceparent"]
        assert sent == f"00-{trace_id}-{span.span_id.hex()}-01"
    assert "sk-upstream-secret" not in str(spans) and KEY not in str(spans)


def test_no_tracing_without_an_endpoint(tmp_path):
    upstream = OpenAIFake().start()
    upstream.script = forever(Reply(json=completion("hi")))
    router = LiveRouter(f"""
server: {{master_key: {KEY}}}
credentials: [{{name: up, type: openai, api_key: sk-upstream-secret, base_url: "{upstream.url}/v1"}}]
models: [{{name: gpt-4o, credential: up}}]
""", tmp_path).start()
    try:
        res = httpx.post(router.url + "/v1/chat/completions", timeout=30, json={
            "model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
            headers={"authorization": f"Bearer {KEY}", "traceparent": f"00-{'a' * 32}-{'b' * 16}-01"})
        assert res.status_code == 200
        assert "traceparent" not in upstream.requests[-1].headers  # nothing injected, nothing started
    finally:
        router.stop()
        upstream.stop()
