"""Routing that survives, end to end: the ASGI app against fake upstreams that fail on cue.

Failover order and attempt limits, no retry after the first byte, cooldowns (entry, expiry,
reset, probe, admin lift), RPM/TPM limits with Retry-After, stickiness, weights, alias
fallback lists, fallback credentials, loop prevention, usage rows. Routing state is an
in-process ``LocalState`` on a fake clock, so cooldowns and windows expire without sleeping.
"""

from __future__ import annotations

import itertools
import json

import pytest
from asgiref.sync import sync_to_async

from proxy import config, state, usage
from proxy.models import UsageRecord
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.openai import completion, error_reply, stream_frames
from tests.fakes.server import Reply
from tests.test_state import REDIS_TEST_URL, Clock, drop_prefix, redis_available

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}
OK = Reply(json=completion("ok"))


def forever(*replies: Reply):
    """A fake's script: the replies in order, the last one repeated forever."""
    queue = list(replies)

    async def handler(req):
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return handler


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def st(settings, clock):
    settings.REDIS_URL = None
    settings.ROUTER_PROBE_INTERVAL = 1.0
    state.reset()
    state._state = local = state.LocalState(clock)
    yield local
    state.reset()


@pytest.fixture
def creds(router_db, openai_fake):
    """``await creds(name, *replies, models=[...], **credential fields)``: a credential on its own fake."""
    async def make(name: str, *replies: Reply, models=("gpt-4o",), **fields):
        fake = openai_fake()
        fake.script = forever(*(replies or (OK,)))
        await sync_to_async(add_credential)(name, "openai", models=list(models), api_key="sk-upstream-secret",
                                            base_url=fake.url + "/v1", **fields)
        return fake
    return make


def pin_cursor(st: state.LocalState, key: str = "gpt-4o|0", start: int = 0) -> None:
    """Make the pool rotation deterministic: the first request starts at member ``start``."""
    st.cursors[key] = itertools.count(start)


async def chat(app, body: dict | None = None, headers: dict | None = None, **extra):
    return await call(app, "POST", "/v1/chat/completions", {**(body or CHAT), **extra}, {**AUTH, **(headers or {})})


async def rows() -> list[UsageRecord]:
    await usage.aflush()
    return await sync_to_async(lambda: list(UsageRecord.objects.order_by("id")))()


async def set_fail2ban(raw: dict) -> None:
    def save():
        from credentials.models import RouterSettings

        row = RouterSettings.load()
        row.fail2ban = raw
        row.save()
        config.invalidate()
    await sync_to_async(save)()


async def set_model_limits(name: str, credential: str, **limits) -> None:
    def save():
        from credentials.models import ProviderModel

        ProviderModel.objects.filter(name=name, credential__name=credential).update(**limits)
        config.invalidate()
    await sync_to_async(save)()


async def add_alias(alias: str, targets: list[str]) -> None:
    from credentials.models import ModelAlias

    await sync_to_async(ModelAlias.objects.create)(alias=alias, targets=targets)


def dep_of(cred: str, model: str = "gpt-4o"):
    return next(d for d in config._snapshot.config.pools[model] if d.credential.name == cred)


# ---- balancing ---------------------------------------------------------------------------------

async def test_round_robin_spreads_requests(app, creds):
    a, b, c = await creds("a"), await creds("b"), await creds("c")
    for _ in range(6):
        assert (await chat(app)).status == 200
    assert [len(f.requests) for f in (a, b, c)] == [2, 2, 2]


async def test_weights_are_honoured(app, creds):
    heavy, light = await creds("heavy", weight=3), await creds("light")
    for _ in range(8):
        assert (await chat(app)).status == 200
    assert (len(heavy.requests), len(light.requests)) == (6, 2)


@pytest.mark.parametrize(("where", "value"), [
    ("body", {"user": "alice"}),
    ("header", {"session-id": "thread-1"}),
    ("header", {"x-session-id": "thread-1"}),
])
async def test_stickiness_keeps_a_session_on_one_credential(app, creds, where, value):
    fakes = [await creds(n) for n in "abc"]
    for _ in range(6):
        res = await chat(app, **value) if where == "body" else await chat(app, headers=value)
        assert res.status == 200
    assert sorted(len(f.requests) for f in fakes) == [0, 0, 6]


async def test_different_sessions_spread(app, creds):
    fakes = [await creds(n) for n in "abc"]
    for i in range(30):
        await chat(app, user=f"user-{i}")
    assert all(len(f.requests) >= 3 for f in fakes)


async def test_responses_prompt_cache_key_is_sticky_and_falls_back_while_unhealthy(app, creds, st):
    fakes = {n: await creds(n, Reply(sse=stream_frames(["hi"]))) for n in "abc"}
    body = {"model": "gpt-4o", "input": "Hi", "prompt_cache_key": "thread-42", "stream": False}
    for _ in range(3):
        assert (await call(app, "POST", "/v1/responses", body, AUTH)).status == 200
    [home] = [n for n, f in fakes.items() if f.requests]
    assert len(fakes[home].requests) == 3
    # the home credential cools down: the session moves, then comes back once it is healthy
    st.failure_now(dep_of(home), 500, state.Fail2Ban.from_config({"max_attempts": 1}))
    assert (await call(app, "POST", "/v1/responses", body, AUTH)).status == 200
    assert len(fakes[home].requests) == 3
    st.clear()
    assert (await call(app, "POST", "/v1/responses", body, AUTH)).status == 200
    assert len(fakes[home].requests) == 4


# ---- failover ------------------------------------------------------------------------------------

FAILURES = {
    "500": Reply(status=500, body="boom", content_type="text/plain"),
    "429 + Retry-After": error_reply(429, "Rate limit reached", code="rate_limit_exceeded",
                                     headers={"retry-after": "7"}),
    "529 overloaded": Reply(status=529, json={"type": "error", "error": {"type": "overloaded_error",
                                                                         "message": "Overloaded"}}),
    "503": error_reply(503, "unavailable", type_="server_error"),
    "revoked key 401": error_reply(401, "Incorrect API key provided", code="invalid_api_key"),
    "project not allowed 403": error_reply(403, "Project does not have access", code="model_not_allowed"),
    "hang": Reply(json=completion("late"), hang=2.0),
    "reset before the first chunk": Reply(sse=stream_frames(["x"]), reset_after=0),
}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("stream", [False, True])
async def test_failover_to_the_next_credential(app, creds, st, settings, failure, stream):
    settings.ROUTER_FIRST_BYTE_TIMEOUT = 0.3
    pin_cursor(st)
    a = await creds("a", FAILURES[failure])
    b = await creds("b", Reply(sse=stream_frames(["from b"])) if stream else Reply(json=completion("from b")))
    res = await chat(app, stream=stream)
    assert res.status == 200, res.body
    assert b"from b" in res.body
    assert (len(a.requests), len(b.requests)) == (1, 1)
    [row] = await rows()
    assert (row.status, row.attempts, row.credential) == (200, 2, "b")


async def test_connect_error_fails_over(app, creds, st, router_db):
    pin_cursor(st)
    await sync_to_async(add_credential)("a", "openai", models=["gpt-4o"], api_key="k",
                                        base_url="http://127.0.0.1:9/v1")
    b = await creds("b")
    assert (await chat(app)).status == 200 and len(b.requests) == 1


async def test_malformed_or_policy_400_is_not_retried(app, creds, st):
    pin_cursor(st)
    await creds("a", error_reply(400, "Invalid 'messages[0].role'"))
    b = await creds("b")
    res = await chat(app)
    assert res.status == 400 and not b.requests
    [row] = await rows()
    assert row.attempts == 1 and row.credential == "a"


async def test_attempts_are_capped(app, creds, settings):
    settings.ROUTER_MAX_ATTEMPTS = 2
    fakes = [await creds(n, FAILURES["500"]) for n in "abcd"]
    res = await chat(app)
    assert sum(len(f.requests) for f in fakes) == 2
    assert res.status == 503 and res.json()["error"]["message"].startswith("All 2 attempt(s) failed")
    [row] = await rows()
    assert (row.attempts, row.status) == (2, 503)


async def test_upstream_401s_never_reach_the_client_as_401(app, creds):
    await creds("a", FAILURES["revoked key 401"])
    await creds("b", FAILURES["revoked key 401"])
    res = await chat(app)
    assert res.status == 503 and res.json()["error"]["code"] == "upstream_authentication_error"


async def test_all_rate_limited_gives_429_with_the_shortest_retry_after(app, creds):
    await creds("a", error_reply(429, "slow", code="rate_limit_exceeded", headers={"retry-after": "7"}))
    await creds("b", error_reply(429, "slow", code="rate_limit_exceeded", headers={"retry-after": "3"}))
    res = await chat(app)
    assert res.status == 429 and res.headers["retry-after"] == "3"
    assert res.json()["error"]["code"] == "rate_limit_exceeded"


async def test_no_retry_after_the_first_byte(app, creds, st):
    pin_cursor(st)
    a = await creds("a", Reply(sse=stream_frames(["partial", "more", "end"]), reset_after=2))
    b = await creds("b")
    res = await chat(app, stream=True)
    data = res.sse_data()
    assert res.status == 200 and "partial" in data[1] and "error" in json.loads(data[-1])
    assert len(a.requests) == 1 and not b.requests
    [row] = await rows()
    assert row.attempts == 1 and row.credential == "a" and row.status == 502


# ---- alias fallback lists and fallback credentials ---------------------------------------------------

async def test_alias_fallback_list_is_tried_in_order(app, creds):
    await add_alias("fast", ["gemini-2.5-flash", "gpt-4o-mini"])
    first = await creds("a", FAILURES["500"], models=["gemini-2.5-flash"])
    second = await creds("b", models=["gpt-4o-mini"])
    res = await chat(app, model="fast")
    assert res.status == 200 and len(first.requests) == 1 and len(second.requests) == 1
    assert second.requests[0].json["model"] == "gpt-4o-mini"
    [row] = await rows()
    assert (row.requested_model, row.resolved_model, row.attempts) == ("fast", "gpt-4o-mini", 2)


async def test_each_alias_target_gets_its_own_attempts(app, creds, settings):
    settings.ROUTER_MAX_ATTEMPTS = 1
    await add_alias("fast", ["m1", "m2"])
    a1 = await creds("a1", FAILURES["500"], models=["m1"])
    a2 = await creds("a2", FAILURES["500"], models=["m1"])
    b = await creds("b", models=["m2"])
    assert (await chat(app, model="fast")).status == 200
    assert len(a1.requests) + len(a2.requests) == 1 and len(b.requests) == 1


async def test_fallback_credentials_wait_for_the_primaries(app, creds, st):
    primary = await creds("primary", OK, OK, OK, FAILURES["500"], OK)
    backup = await creds("backup", is_fallback=True)
    for _ in range(3):
        assert (await chat(app)).status == 200
    assert (len(primary.requests), len(backup.requests)) == (3, 0)
    assert (await chat(app)).status == 200  # the primary fails: the fallback serves
    assert (len(primary.requests), len(backup.requests)) == (4, 1)
    st.failure_now(dep_of("primary"), 500, state.Fail2Ban.from_config({"max_attempts": 1}))
    assert (await chat(app)).status == 200  # the primary cools down: not even tried
    assert (len(primary.requests), len(backup.requests)) == (4, 2)


# ---- cooldowns ---------------------------------------------------------------------------------------

async def test_cooldown_entry_and_expiry(app, creds, clock):
    await set_fail2ban({"max_attempts": 2, "ban_duration": "30s"})
    bad = await creds("bad", FAILURES["500"])
    good = await creds("good")
    for _ in range(10):
        assert (await chat(app)).status == 200
    assert len(bad.requests) == 2  # benched after its second failure
    assert len(good.requests) == 10
    health = (await call(app, "GET", "/health", None, AUTH)).json()
    assert [(c["credential"], c["model"], c["status"]) for c in health["cooldowns"]] == [("bad", "gpt-4o", 500)]
    assert health["routing_state"] == {"backend": "local", "cooldowns": 1}
    clock.advance(31)
    for _ in range(4):
        assert (await chat(app)).status == 200
    assert len(bad.requests) == 4  # tried again after the ban, and benched again


async def test_a_success_resets_the_failure_count(app, creds, st):
    await set_fail2ban({"max_attempts": 2})
    a = await creds("a", FAILURES["500"], OK, FAILURES["500"], OK)
    await creds("b")
    pin_cursor(st, start=0)  # a goes first on every other request
    for _ in range(8):
        assert (await chat(app)).status == 200
    assert len(a.requests) == 4 and st.cooling(dep_of("a")) is None


async def test_retry_after_429_benches_for_that_long(app, creds, st, clock):
    pin_cursor(st)
    a = await creds("a", error_reply(429, "slow", code="rate_limit_exceeded", headers={"retry-after": "20"}), OK)
    await creds("b")
    assert (await chat(app)).status == 200
    assert st.cooling(dep_of("a")).remaining(clock()) == 20
    for _ in range(4):
        await chat(app)
    assert len(a.requests) == 1
    clock.advance(20.5)
    for _ in range(2):
        await chat(app)
    assert len(a.requests) == 2


async def test_every_deployment_rate_limited_answers_429_without_calling(app, creds):
    a = await creds("a", error_reply(429, "slow", code="rate_limit_exceeded", headers={"retry-after": "20"}))
    res = await chat(app)
    assert res.status == 429 and res.headers["retry-after"] == "20"
    res = await chat(app)
    assert res.status == 429 and 19 <= int(res.headers["retry-after"]) <= 20
    assert len(a.requests) == 1
    [_, row] = await rows()
    assert row.status == 429 and row.error_type == "rate_limit_exceeded"


async def test_everything_cooling_after_errors_probes_once_a_second(app, creds, settings):
    settings.ROUTER_PROBE_INTERVAL = 60.0
    await set_fail2ban({"max_attempts": 1, "ban_duration": "5m"})
    a = await creds("a", FAILURES["500"], FAILURES["500"], OK)
    assert (await chat(app)).status == 502  # fails, benched
    assert (await chat(app)).status == 502  # all benched after errors: one probe, fails again
    res = await chat(app)  # no second probe within the interval: fail fast, say when
    assert res.status == 503 and res.json()["error"]["code"] == "service_unavailable"
    assert 290 <= int(res.headers["retry-after"]) <= 300
    assert len(a.requests) == 2
    settings.ROUTER_PROBE_INTERVAL = 0.0
    assert (await chat(app)).status == 200  # the probe succeeds: the ban is lifted
    assert (await chat(app)).status == 200
    assert len(a.requests) == 4


async def test_permanent_bans_are_not_probed(app, creds):
    await set_fail2ban({"max_attempts": 1, "ban_duration": "permanent"})
    a = await creds("a", FAILURES["revoked key 401"])
    assert (await chat(app)).status == 502
    res = await chat(app)
    assert res.status == 503 and "retry-after" not in res.headers and len(a.requests) == 1


async def test_fixing_a_credential_in_the_admin_lifts_its_cooldown(app, creds, st):
    await creds("a")
    await chat(app)
    a = dep_of("a")
    st.failure_now(a, 500, state.Fail2Ban.from_config({"max_attempts": 1, "ban_duration": "permanent"}))

    def rotate_key():
        from credentials.models import Credential

        cred = Credential.objects.get(name="a")
        cred.api_key = "sk-upstream-secret"
        cred.save()
    await sync_to_async(rotate_key)()
    assert st.cooling(a) is None


# ---- limits -------------------------------------------------------------------------------------------

async def test_credential_rpm_limit_answers_429_with_time_until_the_window_frees(app, creds, clock):
    a = await creds("a", rpm=2)
    assert (await chat(app)).status == 200
    clock.advance(10)
    assert (await chat(app)).status == 200
    clock.advance(5)
    res = await chat(app)
    assert res.status == 429 and res.headers["retry-after"] == "45"
    err = res.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and "RPM" in err["message"]
    assert len(a.requests) == 2
    clock.advance(45)
    assert (await chat(app)).status == 200


async def test_a_deployment_at_its_limit_is_skipped(app, creds, st):
    pin_cursor(st)
    a, b = await creds("a"), await creds("b")
    await set_model_limits("gpt-4o", "a", rpm=1)
    for _ in range(5):
        assert (await chat(app)).status == 200
    assert (len(a.requests), len(b.requests)) == (1, 4)


async def test_the_whole_pool_at_its_limit(app, creds, clock):
    await creds("a", rpm=1)
    await creds("b", rpm=1)
    assert (await chat(app)).status == 200
    clock.advance(1)
    assert (await chat(app)).status == 200
    clock.advance(1)
    res = await chat(app)
    assert res.status == 429 and res.headers["retry-after"] == "58"


async def test_tpm_counts_the_tokens_of_finished_requests(app, creds, clock):
    a = await creds("a", tpm=20)  # each answer uses 9 + 3 tokens
    assert (await chat(app)).status == 200
    assert (await chat(app)).status == 200
    clock.advance(30)
    res = await chat(app)
    assert res.status == 429 and "TPM" in res.json()["error"]["message"] and res.headers["retry-after"] == "30"
    assert len(a.requests) == 2


async def test_streamed_tokens_count_too(app, creds, clock):
    await creds("a", Reply(sse=stream_frames(["a", "b"], prompt=50)), tpm=40)
    assert (await chat(app, stream=True)).status == 200
    assert (await chat(app, stream=True)).status == 429


# ---- router chains -----------------------------------------------------------------------------------

async def test_proxy_credentials_forward_the_hop_count(app, router_db, openai_fake):
    fake = openai_fake()
    fake.script = forever(OK)
    await sync_to_async(add_credential)("next_router", "proxy", models=["gpt-4o"], api_key="sk-upstream-secret",
                                        base_url=fake.url + "/v1")
    assert (await chat(app)).status == 200
    assert (await chat(app, headers={"x-router-hops": "2"})).status == 200
    assert [r.headers["x-router-hops"] for r in fake.requests] == ["1", "3"]


async def test_other_providers_do_not_get_the_hop_header(app, creds):
    fake = await creds("a")
    await chat(app, headers={"x-router-hops": "1"})
    assert "x-router-hops" not in fake.requests[0].headers


@pytest.mark.parametrize(("hops", "status"), [("4", 200), ("5", 508), ("17", 508), ("junk", 200)])
async def test_loops_are_refused_with_508(app, creds, hops, status):
    fake = await creds("a")
    res = await chat(app, headers={"x-router-hops": hops})
    assert res.status == status
    if status == 508:
        err = res.json()["error"]
        assert err["code"] == "loop_detected" and set(err) == {"message", "type", "param", "code"}
        assert not fake.requests


# ---- Redis -----------------------------------------------------------------------------------------

@pytest.fixture
async def shared_state(settings, clock):
    if not redis_available():
        pytest.skip(f"Redis not reachable at {REDIS_TEST_URL}")
    import secrets

    settings.REDIS_URL = REDIS_TEST_URL
    settings.ROUTER_REDIS_PREFIX = prefix = f"{{test-{secrets.token_hex(4)}}}:"
    state._state = st = state.RedisState(REDIS_TEST_URL, clock)
    yield st
    await drop_prefix(prefix)
    await st.aclose()


async def test_limits_and_cooldowns_through_redis(app, creds, shared_state, clock):
    await set_fail2ban({"max_attempts": 1})
    a = await creds("a", rpm=2)
    for _ in range(2):
        assert (await chat(app)).status == 200
    clock.advance(20)
    res = await chat(app)
    assert res.status == 429 and res.headers["retry-after"] == "40" and len(a.requests) == 2
    bad = await creds("bad", FAILURES["500"], models=["m"])
    good = await creds("good", models=["m"])
    for _ in range(4):
        assert (await chat(app, model="m")).status == 200
    assert len(bad.requests) == 1 and len(good.requests) == 4
    other_process = state.RedisState(REDIS_TEST_URL, clock)
    await other_process.sync()
    assert [cd.key for cd in other_process.list_cooldowns()] == ["bad|m"]
    await other_process.aclose()
    health = (await call(app, "GET", "/health", None, AUTH)).json()
    assert health["status"] == "ok" and health["routing_state"] == {"backend": "redis", "redis": "ok", "cooldowns": 1}


async def test_redis_outage_keeps_serving_with_local_state(app, creds, settings, clock):
    from tests.test_state import _closed_port

    settings.REDIS_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    state._state = state.RedisState(settings.REDIS_URL, clock)
    a = await creds("a", rpm=2)
    assert (await chat(app)).status == 200
    assert (await chat(app)).status == 200
    assert (await chat(app)).status == 429  # the limit still holds, per process
    assert len(a.requests) == 2
    res = await call(app, "GET", "/health", None, {})
    data = res.json()
    assert res.status == 200 and data["status"] == "degraded" and data["routing_state"]["redis"] == "unreachable"
    assert "redis_error" not in data["routing_state"]  # the Redis host is for authenticated eyes only
    data = (await call(app, "GET", "/health", None, AUTH)).json()
    assert "Connect" in data["routing_state"]["redis_error"]


# ---- admin -------------------------------------------------------------------------------------------

@pytest.fixture
def pool_with_cooldowns(st, clock):
    from credentials.models import Credential, ProviderModel

    for name, rpm in (("a", 5), ("b", None)):
        cred = Credential.objects.create(name=name, type="openai", api_key="sk-upstream-secret", rpm=rpm)
        ProviderModel.objects.create(name="gpt-4o", credential=cred)
    cfg = config.load()
    a, b = cfg.pools["gpt-4o"]
    st.admit_now([a])  # one request in a's RPM window
    st.failure_now(a, 429, state.Fail2Ban.from_config({}), retry_after=30, reason="slow down please")
    st.failure_now(b, 500, state.Fail2Ban.from_config({"max_attempts": 1}), reason="it broke")
    return a, b


def routing_page() -> str:
    from django.urls import reverse

    return reverse("admin:proxy_routingstate_changelist")


def test_admin_shows_cooldowns_limits_and_backend(admin_client, pool_with_cooldowns):
    index = admin_client.get("/admin/").content.decode()
    assert routing_page() in index
    html = admin_client.get(routing_page()).content.decode()
    assert "slow down please" in html and "it broke" in html and "State backend: <strong>local" in html
    assert "RPM (credential): 1 / 5" in html
    assert "sk-upstream-secret" not in html
    # The admin's own breadcrumb markup (Django 6: an <ol>, styled; the old <div> renders as plain text).
    crumbs = html[html.index('<nav aria-label="Breadcrumbs">'):]
    crumbs = crumbs[:crumbs.index("</nav>")]
    assert '<ol class="breadcrumbs">' in crumbs and '<li aria-current="page">Routing state</li>' in crumbs
    assert 'href="/admin/"' in crumbs and 'href="/admin/proxy/"' in crumbs


def test_admin_lifts_selected_then_all_cooldowns(admin_client, pool_with_cooldowns, st):
    a, b = pool_with_cooldowns
    res = admin_client.post(routing_page(), {"key": ["a|gpt-4o"], "lift": "Lift selected cooldowns"})
    assert res.status_code == 302
    assert st.cooling(a) is None and st.cooling(b) is not None
    admin_client.post(routing_page(), {"lift_all": "Lift all cooldowns"})
    assert st.cooling(b) is None
    assert "No deployment is cooling down." in admin_client.get(routing_page()).content.decode()


def test_admin_lifting_needs_the_change_permission(client, django_user_model, pool_with_cooldowns, st):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_routingstate"))
    client.force_login(user)
    html = client.get(routing_page()).content.decode()
    assert "slow down please" in html and "Lift all" not in html
    assert client.post(routing_page(), {"lift_all": "1"}).status_code == 403
    assert st.cooling(pool_with_cooldowns[1]) is not None
