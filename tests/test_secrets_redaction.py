"""Secrets the router holds never come back out: redaction by value, wherever upstream text goes.

A fake upstream echoes what it was sent (the key and a custom header) in its error text, as
real providers do. Keys without a known prefix (Groq ``gsk_…``, 32-hex Azure keys) and custom
header values must be absent from the client's 502 body, the stream error event, the usage
row, ``/health``'s cooldown reasons, the admin's routing-state page and the logs.
"""

from __future__ import annotations

import json
import logging

import pytest
from asgiref.sync import sync_to_async

from proxy import redaction, state, usage
from proxy.logging import RedactSecretsFilter
from proxy.models import UsageRecord
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.server import FakeServer, Recorded, Reply
from tests.live import LiveRouter, both_servers

GROQ_KEY = "gsk_" + "Zq7RtY2pLm9XwV4bNc8KdF3hJs6GtA1eUo5IyPq0WxE2rT"
AZURE_KEY = "3f9c2a7be41d4c08a6f5e2d19b7c0a44"
HEADER_SECRET = "tenant-7731-Hc9Vx2QpL0"
SECRETS = (GROQ_KEY, AZURE_KEY, HEADER_SECRET)
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(autouse=True)
def _fresh_redactor():
    redaction.clear()
    yield
    redaction.clear()


def echo_body(req: Recorded) -> str:
    """What a careless provider says: every credential it was given, verbatim."""
    return (f"Invalid API key {req.headers.get('authorization', '')!r} / api-key={req.headers.get('api-key', '')} "
            f"for tenant {req.headers.get('x-tenant-token', '')}")


async def echo_401(req: Recorded) -> Reply:
    return Reply(status=401, json={"error": {"message": echo_body(req), "type": "invalid_request_error"}})


async def echo_in_stream(req: Recorded) -> Reply:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}
    return Reply(sse=[f"data: {json.dumps(chunk)}\n\n",
                      f"data: {json.dumps({'error': {'message': echo_body(req), 'code': 'server_error'}})}\n\n"])


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    assert "[redacted]" in text


# ---- the redactor itself -------------------------------------------------------------------------

def test_values_are_replaced_longest_first_and_short_values_are_left_alone():
    redaction.set_source("config", [GROQ_KEY, GROQ_KEY[:20], "short", AZURE_KEY])
    text = f"a {GROQ_KEY} b {AZURE_KEY} c short"
    assert redaction.redact(text) == "a [redacted] b [redacted] c short"
    redaction.set_source("config", [])
    assert GROQ_KEY in redaction.redact(text)


def test_a_service_account_key_is_redacted_whole_json_escaped_and_line_by_line():
    from tests.factories import service_account_info

    info = service_account_info()
    redaction.set_source("config", redaction.secrets_of_service_account(info))
    pem_lines = [line for line in info["private_key"].splitlines() if not line.startswith("-----")]
    for text in (info["private_key"], json.dumps(info), f"bad key line: {pem_lines[3]}"):
        out = redaction.redact(text)
        assert not any(line in out for line in pem_lines) and info["private_key_id"] not in out


def test_minted_tokens_are_added_and_the_pattern_layer_still_runs():
    token = "ya29.c.b0AXv0zTNz7Q-very-long-token-value"
    opaque = "opaque-access-token-0000111122223333"
    redaction.add_token(opaque)
    assert redaction.redact(f"token {opaque} rejected") == "token [redacted] rejected"
    assert token not in redaction.redact(f"token {token}")  # ya29. pattern, never registered
    assert redaction.redact("GET /v1/models?key=abc123&x=1 200") == "GET /v1/models?key=[redacted]&x=1 200"
    assert redaction.redact("GET /v1/x?alt=sse&api_key=zzz") == "GET /v1/x?alt=sse&api_key=[redacted]"


def test_log_filter_redacts_messages_arguments_and_tracebacks():
    redaction.set_source("config", SECRETS)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactSecretsFilter())
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("upstream said %s", f"bad key {GROQ_KEY}")
        try:
            raise ValueError(f"header {HEADER_SECRET} rejected, azure {AZURE_KEY}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert_clean("\n".join(records))
    assert "Traceback" in records[1]


def test_gemini_credential_errors_are_redacted():
    from proxy.translators.gemini import gemini_error

    key = "custom-gemini-key-without-prefix-0042"
    redaction.set_source("config", [key])
    body = json.dumps({"error": {"code": 403, "status": "PERMISSION_DENIED",
                                 "message": f"API key {key} is not valid for this project"}})
    err = gemini_error(403, body.encode(), {})
    assert err.code == "upstream_authentication_error" and key not in err.message and "[redacted]" in err.message


# ---- end to end in-process: client body, stream event, usage row, /health, admin page ---------------

@pytest.fixture
def echoing(router_db, settings):
    settings.REDIS_URL = None
    state.reset()
    servers: list[FakeServer] = []

    async def make(handler, name: str, api_key: str) -> FakeServer:
        server = FakeServer(handler).start()
        servers.append(server)
        await sync_to_async(add_credential)(
            name, "openai", models=["gpt-4o"], api_key=api_key, base_url=server.url + "/v1",
            extra_headers={"x-tenant-token": HEADER_SECRET, "api-key": AZURE_KEY})
        return server

    yield make
    for server in servers:
        server.stop()
    state.reset()


async def usage_messages() -> str:
    await usage.aflush()
    return "\n".join(await sync_to_async(lambda: list(UsageRecord.objects.values_list("error_message", flat=True)))())


@pytest.mark.django_db(transaction=True)
async def test_echoed_secrets_are_absent_from_502s_usage_health_and_the_admin(app, echoing, admin_client):
    upstream = await echoing(echo_401, "groq", GROQ_KEY)
    bodies = [await call(app, "POST", "/v1/chat/completions", CHAT, AUTH) for _ in range(3)]
    assert len(upstream.requests) == 3 and GROQ_KEY in echo_body(upstream.requests[0])  # the fake did echo
    for res in bodies:
        assert res.status == 502 and res.json()["error"]["code"] == "upstream_authentication_error"
        assert_clean(res.body.decode())
    assert_clean(await usage_messages())
    health = await call(app, "GET", "/health", None, AUTH)
    assert health.json()["cooldowns"], "three 401s in a row put the credential in cooldown"
    assert_clean(health.body.decode())
    from django.urls import reverse

    page = await sync_to_async(admin_client.get)(reverse("admin:proxy_routingstate_changelist"))
    assert_clean(page.content.decode())


@pytest.mark.django_db(transaction=True)
async def test_echoed_secrets_are_absent_from_a_stream_error_event(app, echoing):
    await echoing(echo_in_stream, "groq", GROQ_KEY)
    res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)
    assert res.status == 200
    events = res.sse_data()
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hel"
    assert "error" in json.loads(events[-1])
    assert_clean(res.body.decode())
    assert_clean(await usage_messages())


# ---- a real server process: its log and access log ----------------------------------------------

@both_servers
def test_live_router_logs_neither_provider_secrets_nor_query_string_keys(tmp_path, server):
    upstream = FakeServer(echo_401).start()
    config = f"""
server: {{master_key: sk-router-live-test}}
credentials:
  - {{name: groq, type: openai, api_key: "{GROQ_KEY}", base_url: "{upstream.url}/v1",
     extra_headers: {{x-tenant-token: "{HEADER_SECRET}", api-key: "{AZURE_KEY}"}}}}
models:
  - {{name: gpt-4o, credential: groq}}
"""
    router = LiveRouter(config, tmp_path, env={"LOG_LEVEL": "INFO", "ROUTER_ACCESS_LOG": "1"}, server=server).start()
    try:
        import httpx

        auth = {"authorization": "Bearer sk-router-live-test"}
        with httpx.Client(base_url=router.url, timeout=30) as client:
            for _ in range(3):
                res = client.post("/v1/chat/completions?key=query-secret-0001", json=CHAT, headers=auth)
                assert res.status_code == 502
                assert_clean(res.text)
            client.get("/v1/models?api_key=query-secret-0002")
        rows = router.usage_rows(wait_for=3)
    finally:
        router.stop()
        upstream.stop()
    assert_clean("\n".join(r["error_message"] for r in rows))
    log = router.log()
    assert "/v1/chat/completions?key=[redacted]" in log, log  # the access log line is there, cleaned
    assert "query-secret" not in log
    assert "upstream_authentication_error" in log or "failed" in log
    for secret in SECRETS:
        assert secret not in log, log

