"""Prometheus /metrics after known traffic, its protection, and the orchestrator probes."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from prometheus_client.parser import text_string_to_metric_families

from proxy import usage
from tests.asgi_client import call
from tests.conftest import AUTH, MASTER_KEY, add_credential
from tests.fakes.openai import completion, error_reply, stream_frames
from tests.fakes.server import Reply

pytestmark = pytest.mark.django_db(transaction=True)

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def scrape(app) -> dict[tuple[str, frozenset], float]:
    res = await call(app, "GET", "/metrics", headers=AUTH)
    assert res.status == 200, res.body
    assert res.headers["content-type"].startswith("text/plain")
    return samples(res.body.decode())


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def two_credentials(router_db, openai_fake):
    async def make(first_replies, second_replies):
        fakes = []
        for name, replies in (("primary", first_replies), ("backup", second_replies)):
            fake = openai_fake(*replies)
            fakes.append(fake)
            await sync_to_async(add_credential)(
                name, "openai", models={"gpt-4o": "gpt-4o-2024-08-06"}, api_key="sk-upstream-secret",
                base_url=fake.url + "/v1", is_fallback=name == "backup")
        return fakes
    return make


async def test_counters_after_known_traffic(app, two_credentials):
    # primary: one answer, one stream, then a 500 (fails over to backup, which answers); then a 400
    await two_credentials(
        [Reply(json=completion("a", prompt=9, completion_tokens=3)),
         Reply(sse=stream_frames(["x", "y"], prompt=5)),
         error_reply(500, "boom", type_="server_error"),
         error_reply(400, "bad thing")],
        [Reply(json=completion("b", prompt=7, completion_tokens=2))],
    )
    before = await scrape(app)
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)).status == 200
    assert (await call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, AUTH)).status == 200
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)).status == 200
    assert (await call(app, "POST", "/v1/chat/completions", CHAT, AUTH)).status == 400
    await usage.aflush()
    after = await scrape(app)

    req = "auto_ai_router_requests_total"
    labels = {"model": "gpt-4o", "provider": "openai", "endpoint": "chat.completions"}
    assert delta(before, after, req, credential="primary", status_class="2xx", **labels) == 2
    assert delta(before, after, req, credential="backup", status_class="2xx", **labels) == 1
    assert delta(before, after, req, credential="primary", status_class="4xx", **labels) == 1
    tokens = "auto_ai_router_tokens_total"
    assert delta(before, after, tokens, model="gpt-4o", credential="primary", type="input") == 9 + 5
    assert delta(before, after, tokens, model="gpt-4o", credential="primary", type="output") == 3 + 2
    assert delta(before, after, tokens, model="gpt-4o", credential="primary", type="cached") == 2
    assert delta(before, after, tokens, model="gpt-4o", credential="primary", type="reasoning") == 1
    assert delta(before, after, tokens, model="gpt-4o", credential="backup", type="input") == 7
    attempts = "auto_ai_router_upstream_attempts_total"
    assert delta(before, after, attempts, credential="primary", provider="openai", status="200") == 2
    assert delta(before, after, attempts, credential="primary", provider="openai", status="500") == 1
    assert delta(before, after, attempts, credential="primary", provider="openai", status="400") == 1
    assert delta(before, after, attempts, credential="backup", provider="openai", status="200") == 1
    errors = "auto_ai_router_upstream_errors_total"
    assert delta(before, after, errors, credential="primary", provider="openai", status="500") == 1
    assert delta(before, after, errors, credential="primary", provider="openai", status="200") == 0
    assert delta(before, after, "auto_ai_router_failovers_total", model="gpt-4o") == 1
    duration = "auto_ai_router_request_duration_seconds_count"
    assert delta(before, after, duration, model="gpt-4o", endpoint="chat.completions", stream="false") == 3
    assert delta(before, after, duration, model="gpt-4o", endpoint="chat.completions", stream="true") == 1
    ttft = "auto_ai_router_time_to_first_token_seconds_count"
    assert delta(before, after, ttft, model="gpt-4o", endpoint="chat.completions") == 1  # streams only
    assert after[("auto_ai_router_in_flight_requests", frozenset())] == 1  # the scrape itself
    assert after[("auto_ai_router_open_streams", frozenset())] == 0
    assert after[("auto_ai_router_cooldowns_active", frozenset())] == 0
    pid_rows = {labels_ for (name, labels_) in after if name == "auto_ai_router_database_up"}
    assert [after[("auto_ai_router_database_up", labels_)] for labels_ in pid_rows] == [1.0]
    queue = {dict(labels_)["state"] for (name, labels_) in after if name == "auto_ai_router_usage_queue_rows"}
    assert {"pending", "written", "dropped"} <= queue


async def test_labels_are_bounded(app, two_credentials):
    await two_credentials([Reply(json=completion("a"))], [])
    await call(app, "POST", "/v1/chat/completions", {**CHAT, "user": "alice@example.com"}, AUTH)
    await usage.aflush()
    text = (await call(app, "GET", "/metrics", headers=AUTH)).body.decode()
    assert MASTER_KEY not in text and "alice" not in text and "sk-upstream-secret" not in text
    assert "req_" not in text  # no request ids


async def test_metrics_need_the_token_or_the_master_key(app, router_db, settings):
    assert (await call(app, "GET", "/metrics")).status == 401
    assert (await call(app, "GET", "/metrics", headers={"authorization": "Bearer wrong"})).status == 401
    assert (await call(app, "GET", "/metrics", headers=AUTH)).status == 200
    settings.ROUTER_METRICS_TOKEN = "scrape-token-123"
    assert (await call(app, "GET", "/metrics", headers={"authorization": "Bearer scrape-token-123"})).status == 200
    settings.ROUTER_METRICS_PUBLIC = True
    assert (await call(app, "GET", "/metrics")).status == 200


async def test_liveness_and_readiness(app, router_db):
    live = await call(app, "GET", "/health/liveness")
    assert live.status == 200 and live.json() == {"status": "ok"}
    ready = await call(app, "GET", "/health/readiness")
    assert ready.status == 200, ready.body
    assert ready.json()["checks"] == {"database": "ok", "config": "ok", "usage_writer": "ok"}


async def test_readiness_fails_without_the_database(app, router_db, monkeypatch):
    from observability import views

    monkeypatch.setattr(views, "_db_ok", lambda: False)
    ready = await call(app, "GET", "/health/readiness")
    assert ready.status == 503
    assert ready.json()["status"] == "not_ready" and ready.json()["checks"]["database"] == "unreachable"
    assert (await call(app, "GET", "/health/liveness")).status == 200


async def test_a_client_key_appears_as_its_hash_prefix_with_an_info_series(app, two_credentials):
    from keys.models import ApiKey, Team, new_secret

    await two_credentials([Reply(json=completion("a"))], [])

    def make() -> tuple[str, str]:
        team = Team.objects.create(team_alias="search-team")
        secret = new_secret()
        key = ApiKey(key_alias="ci-bot", team=team)
        key.set_secret(secret)
        key.save()
        from proxy import config

        config.invalidate()
        return secret, key.key_hash[:12], team.team_id

    secret, label, team_id = await sync_to_async(make)()
    before = await scrape(app)
    res = await call(app, "POST", "/v1/chat/completions", CHAT, {"authorization": f"Bearer {secret}"})
    assert res.status == 200, res.body
    await usage.aflush()
    after = await scrape(app)
    assert delta(before, after, "auto_ai_router_key_requests_total", key=label, status_class="2xx") == 1
    info = frozenset({"key": label, "alias": "ci-bot", "team": team_id}.items())
    assert after[("auto_ai_router_key_info", info)] == 1
    text = (await call(app, "GET", "/metrics", headers=AUTH)).body.decode()
    assert secret not in text
