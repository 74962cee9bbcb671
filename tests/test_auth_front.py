"""The key is checked before the body is read; strangers cost no memory and no usage row.

Also: usage rows carry the caller's key id (``master`` only for the master key), and a
process-wide byte budget bounds bodies being read and parsed at once.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async

from proxy import auth, usage
from proxy.asgi import Request
from proxy.body_budget import BodyBudget
from proxy.errors import ProxyError
from proxy.models import UsageRecord
from proxy.views import start_log
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.openai import completion
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
POSTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")


async def rows() -> list[UsageRecord]:
    await usage.aflush()
    return await sync_to_async(lambda: list(UsageRecord.objects.order_by("id")))()


@pytest.fixture
def upstream(router_db, openai_fake):
    async def make(*replies):
        fake = openai_fake(*replies)
        await sync_to_async(add_credential)(
            "openai_main", "openai", models={"gpt-4o": "gpt-4o-2024-08-06"}, api_key="sk-upstream-secret",
            base_url=fake.url + "/v1")
        return fake
    return make


def scope(path: str, headers: dict[str, str]) -> dict:
    return {"type": "http", "method": "POST", "path": path, "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}


async def send_unread(app, path: str, headers: dict[str, str]) -> tuple[dict, bytes, int]:
    """POST whose body is never delivered: (response start, body, how often the app asked for the body)."""
    asked = 0
    sent: list[dict] = []

    async def receive():
        nonlocal asked
        asked += 1
        await asyncio.sleep(3600)  # a body that never comes: the app must not wait for it

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope(path, headers), receive, send), 5)
    return sent[0], b"".join(m.get("body", b"") for m in sent[1:]), asked


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}])
async def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(app, upstream, path, headers):
    await upstream()
    before = auth.failures.total
    start, body, asked = await send_unread(app, path, {"content-length": str(31 * 1024 * 1024), **headers})
    assert start["status"] == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert asked == 0  # not one body message read
    assert (b"connection", b"close") in start["headers"]  # 31 MiB are not worth reading
    assert auth.failures.total == before + 1
    assert await rows() == []


async def test_failed_auth_is_counted_in_health_not_written_as_rows(app, upstream):
    await upstream()
    for _ in range(50):
        res = await call(app, "POST", "/v1/chat/completions", CHAT, {"authorization": "Bearer nope"})
        assert res.status == 401
    health = (await call(app, "GET", "/health", None, {})).json()
    assert health["auth_failures"] >= 50
    assert await rows() == []
    # a wrong key on /health (where a key is optional) is no attack: not counted, details hidden
    before = auth.failures.total
    data = (await call(app, "GET", "/health", None, {"authorization": "Bearer nope"})).json()
    assert "credentials" not in data and auth.failures.total == before


async def test_rows_say_master_only_for_the_master_key(app, upstream):
    await upstream(Reply(json=completion()))
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, {"authorization": "Bearer nope"})).status == 401
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)).status == 200
    [row] = await rows()
    assert row.key_id == "master" and row.status == 200


def test_a_row_written_without_authentication_has_no_key_id():
    req = Request("POST", "/v1/chat/completions", {}, b"{}", "req_1")
    assert start_log(req, "chat.completions", {}, stream=False).key_id == ""
    req.principal = auth.Principal("ck_123")
    assert start_log(req, "chat.completions", {}, stream=False).key_id == "ck_123"


# ---- the body budget ------------------------------------------------------------------------


async def test_budget_lets_a_request_wait_then_refuses_with_retry_after(settings):
    settings.ROUTER_BODY_BUDGET_BYTES, settings.ROUTER_BODY_BUDGET_WAIT = 1000, 0.3
    budget = BodyBudget()
    first = await budget.reserve(800)
    waiting = asyncio.ensure_future(budget.reserve(500))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # waits for room...
    first.shrink(400)
    second = await asyncio.wait_for(waiting, 1)  # ...and gets it once the first body is smaller
    assert budget.used == 900
    with pytest.raises(ProxyError) as refused:
        await budget.reserve(200)
    assert refused.value.status == 503 and refused.value.retry_after and budget.refused == 1
    first.release()
    second.release()
    assert budget.used == 0
    big = await budget.reserve(10_000)  # larger than the whole budget: served alone
    assert big.size == 1000
    big.release()


async def test_a_stalled_body_holds_its_share_and_the_next_big_one_gets_503(app, upstream, settings):
    settings.ROUTER_BODY_BUDGET_BYTES, settings.ROUTER_BODY_BUDGET_WAIT = 100_000, 0.2
    await upstream(Reply(json=completion()))
    stalled = asyncio.ensure_future(send_unread(app, "/v1/chat/completions",
                                                {**AUTH, "content-length": "80000"}))
    await asyncio.sleep(0.3)
    body = json.dumps({**CHAT, "user": "x" * 30_000}).encode()
    res = await call(app, "POST", "/v1/chat/completions", body, AUTH)
    assert res.status == 503 and res.headers["retry-after"] == "1"
    assert res.json()["error"]["code"] == "server_busy"
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)).status == 200  # small ones fit
    stalled.cancel()
    await asyncio.gather(stalled, return_exceptions=True)
    from proxy.body_budget import budget

    assert budget.used == 0  # the stalled request gave its share back when it ended
