"""Client keys on the request path (in-process ASGI app, fake OpenAI upstream on a socket):
auth reasons, model access, /v1/models, RPM/parallel limits with x-ratelimit-* headers, usage rows."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from keys.models import ApiKey, Team, new_secret
from proxy import config, usage
from proxy.models import UsageRecord
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.openai import completion
from tests.fakes.server import Reply
from tests.test_routing import forever

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def upstream(router_db, openai_fake):
    fake = openai_fake()
    fake.script = forever(Reply(json=completion("hello")))
    add_credential("openai_main", "openai", models=["gpt-4o", "gpt-4o-mini", "claude-x"], api_key="sk-upstream-secret",
                   base_url=fake.url + "/v1")
    from credentials.models import ModelAlias

    ModelAlias.objects.create(alias="fast", targets=["gpt-4o-mini"])
    return fake


def make_key(**fields) -> str:
    secret = new_secret()
    key = ApiKey(**fields)
    key.set_secret(secret)
    key.save()
    config.invalidate()
    return secret


def bearer(secret: str) -> dict:
    return {"authorization": f"Bearer {secret}"}


async def rows() -> list[UsageRecord]:
    await usage.aflush()
    return await sync_to_async(lambda: list(UsageRecord.objects.order_by("id")))()


async def test_a_client_key_calls_and_its_rows_carry_key_and_team(app, upstream):
    team = await sync_to_async(Team.objects.create)(team_alias="platform")
    secret = await sync_to_async(make_key)(key_alias="alice", team=team)
    res = await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))
    assert res.status == 200, res.body
    assert not any(h.startswith("x-ratelimit") for h in res.headers)  # no limits, no headers
    res = await call(app, "POST", "/v1/chat/completions", CHAT, {"x-api-key": secret})
    assert res.status == 200
    await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)
    key = await sync_to_async(ApiKey.objects.get)()
    [one, two, master] = await rows()
    assert (one.key_id, one.team_id) == (two.key_id, two.team_id) == (key.token, team.team_id)
    assert (master.key_id, master.team_id) == ("master", "")
    assert secret not in str([vars(r) for r in (one, two, master)])


@pytest.mark.parametrize(("fields", "reason"), [
    ({"blocked": True}, "is blocked"),
    ({"expires": timezone.now() - timedelta(minutes=1)}, "expired on"),
    ({"team_blocked": True}, "which is blocked"),
])
async def test_blocked_or_expired_keys_get_401_saying_which(app, upstream, fields, reason):
    if fields.pop("team_blocked", False):
        fields["team"] = await sync_to_async(Team.objects.create)(team_alias="frozen", blocked=True)
    secret = await sync_to_async(make_key)(key_alias="bob", **fields)
    res = await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))
    assert res.status == 401
    error = res.json()["error"]
    assert error["code"] == "invalid_api_key" and reason in error["message"] and "bob" in error["message"]
    assert not upstream.requests
    assert await rows() == []  # refused before the body is read: no usage row, so none names the key


async def test_model_access_404_and_models_listing(app, upstream):
    team = await sync_to_async(Team.objects.create)(team_alias="t", models=["gpt-4o*", "fast"])
    secret = await sync_to_async(make_key)(key_alias="k", models=["gpt-4o", "fast", "claude-x"], team=team)
    ok = await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": "fast"}, bearer(secret))
    assert ok.status == 200
    for model in ("gpt-4o-mini", "claude-x", "nope"):  # key says no / team says no / does not exist
        res = await call(app, "POST", "/v1/chat/completions", {**CHAT, "model": model}, bearer(secret))
        assert res.status == 404 and res.json()["error"]["code"] == "model_not_found"
        assert res.json()["error"]["message"] == (
            f"The model `{model}` does not exist or you do not have access to it.")
    listed = await call(app, "GET", "/v1/models", None, bearer(secret))
    assert [m["id"] for m in listed.json()["data"]] == ["fast", "gpt-4o"]
    assert (await call(app, "GET", "/v1/models/gpt-4o-mini", None, bearer(secret))).status == 404
    assert (await call(app, "GET", "/v1/models/gpt-4o", None, bearer(secret))).status == 200
    everything = await call(app, "GET", "/v1/models", None, AUTH)
    assert [m["id"] for m in everything.json()["data"]] == ["claude-x", "fast", "gpt-4o", "gpt-4o-mini"]
    assert len(upstream.requests) == 1


async def test_rpm_limit_headers_on_every_response_and_429(app, upstream):
    secret = await sync_to_async(make_key)(key_alias="ci", rpm_limit=2, tpm_limit=1000)
    first = await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))
    assert first.status == 200
    h = first.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert h["x-ratelimit-reset-requests"].endswith("s") and h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-remaining-tokens"] == "1000"
    await asyncio.sleep(0.05)  # the finish hook counted the first request's tokens
    second = await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))
    assert second.status == 200 and second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - 12)
    third = await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))
    assert third.status == 429
    error = third.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests" and "`ci`" in error["message"]
    assert 55 <= int(third.headers["retry-after"]) <= 60
    assert third.headers["x-ratelimit-remaining-requests"] == "0" and third.headers["x-ratelimit-limit-requests"] == "2"
    assert len(upstream.requests) == 2
    # the master key is never limited
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)).status == 200


async def test_team_rpm_applies_on_top_of_the_key(app, upstream):
    team = await sync_to_async(Team.objects.create)(team_alias="small", rpm_limit=1)
    one = await sync_to_async(make_key)(key_alias="one", team=team)
    two = await sync_to_async(make_key)(key_alias="two", team=team, rpm_limit=100)
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, bearer(one))).status == 200
    res = await call(app, "POST", "/v1/chat/completions", CHAT, bearer(two))
    assert res.status == 429 and "team `small`" in res.json()["error"]["message"]


async def test_parallel_limit_and_release_on_client_disconnect(app, upstream):
    upstream.script = forever(Reply(json=completion("slow"), hang=0.5))
    secret = await sync_to_async(make_key)(key_alias="par", max_parallel_requests=1)
    first = asyncio.ensure_future(call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret),
                                       disconnect_after=0.2))
    await asyncio.sleep(0.1)
    busy = await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))
    assert busy.status == 429 and "parallel" in busy.json()["error"]["message"]
    assert busy.headers["retry-after"] == "1"
    await first  # the client went away: its slot is free again
    await asyncio.sleep(0.05)
    upstream.script = forever(Reply(json=completion("fast")))
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))).status == 200


async def test_key_changes_apply_without_restart(app, upstream, settings):
    secret = await sync_to_async(make_key)(key_alias="flip")
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))).status == 200
    key = await sync_to_async(ApiKey.objects.get)(key_alias="flip")
    key.blocked = True
    await sync_to_async(key.save)()
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))).status == 401
    await sync_to_async(key.delete)()
    res = await call(app, "POST", "/v1/chat/completions", CHAT, bearer(secret))
    assert res.status == 401 and res.json()["error"]["message"] == "Incorrect API key provided."


async def test_health_details_are_for_the_master_key_only(app, upstream):
    secret = await sync_to_async(make_key)(key_alias="peek")
    public = (await call(app, "GET", "/health", None, bearer(secret))).json()
    assert "credentials" not in public and "cooldowns" not in public
    assert "credentials" in (await call(app, "GET", "/health", None, AUTH)).json()
