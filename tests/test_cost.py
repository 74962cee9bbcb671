"""Every usage row's cost_usd, through the real router and the strict fake providers, by hand computation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from asgiref.sync import sync_to_async

from pricing.models import Price
from proxy import usage
from tests.asgi_client import call
from tests.chat_helpers import chat, chunks_of, responses, rows, user
from tests.conftest import add_credential
from tests.fakes import gemini as g
from tests.fakes.anthropic import AnthropicFake, Turn, text
from tests.fakes.openai import completion
from tests.fakes.server import FakeServer, Reply

pytestmark = pytest.mark.django_db(transaction=True)

TODAY = datetime.now(UTC).date()


@pytest.fixture
def prices(router_db):
    """Replace the price table (the shipped prices would otherwise be in force too)."""

    def make(**by_model: dict) -> None:
        Price.objects.all().delete()
        for model, fields in by_model.items():
            Price.objects.create(model=model, effective_from=fields.pop("effective_from", TODAY), **fields)

    return sync_to_async(make)


@pytest.fixture
def servers():
    started: list = []
    yield started
    for server in started:
        server.stop()


async def test_openai_row_prices_cached_input_at_the_cache_read_price(app, router_db, openai_fake, prices):
    await prices(**{"gpt-4.1": {"input_cost_per_token": D("2e-6"), "cache_read_input_token_cost": D("5e-7"),
                                "output_cost_per_token": D("8e-6")}})
    fake = openai_fake(Reply(json=completion("Hi", prompt=1200, cached=1000, completion_tokens=300, reasoning=100)))
    await sync_to_async(add_credential)("openai_main", "openai", models={"gpt-4.1": "gpt-4.1-2025-04-14"},
                                        api_key="sk-upstream-secret", base_url=fake.url + "/v1")
    res = await chat(app, {"model": "gpt-4.1", "messages": [user("Hi")]})
    assert res.status == 200
    [row] = await rows()
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens, row.reasoning_tokens) == (1200, 1000, 300, 100)
    # 200 uncached input + 1000 cache reads + 300 output (reasoning has no price of its own)
    assert row.cost_usd == 200 * D("2e-6") + 1000 * D("5e-7") + 300 * D("8e-6") == D("0.0033")


ANTHROPIC_USAGE = {"input_tokens": 50, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 800,
                   "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 500},
                   "output_tokens": 120}


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_row_prices_cache_reads_and_5m_and_1h_writes_apart(app, router_db, prices, servers, stream):
    await prices(**{"claude-sonnet-4-6": {
        "input_cost_per_token": D("3e-6"), "output_cost_per_token": D("1.5e-5"),
        "cache_read_input_token_cost": D("3e-7"), "cache_creation_input_token_cost": D("3.75e-6"),
        "cache_creation_input_token_cost_above_1hr": D("6e-6")}})
    fake = AnthropicFake([Turn([text("Cached.")], usage=ANTHROPIC_USAGE)], api_key="sk-ant")
    servers.append(server := FakeServer(fake.handler).start())
    await sync_to_async(add_credential)("anthropic_main", "anthropic",
                                        models={"claude-sonnet-4-6": "claude-sonnet-4-6-20260101"},
                                        api_key="sk-ant", base_url=server.url)
    body = {"model": "claude-sonnet-4-6", "messages": [user("Hi")], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    res = await chat(app, body)
    assert res.status == 200
    seen = chunks_of(res)[-1]["usage"] if stream else res.json()["usage"]
    assert seen["prompt_tokens"] == 2850
    assert seen["prompt_tokens_details"] == {"cached_tokens": 2000, "cache_write_tokens": 800,
                                             "cache_write_1h_tokens": 500}
    [row] = await rows()
    assert (row.prompt_tokens, row.cached_tokens, row.cache_write_5m_tokens, row.cache_write_1h_tokens,
            row.completion_tokens) == (2850, 2000, 300, 500, 120)
    expected = 50 * D("3e-6") + 2000 * D("3e-7") + 300 * D("3.75e-6") + 500 * D("6e-6") + 120 * D("1.5e-5")
    assert row.cost_usd == expected == D("0.006675")


async def test_codex_responses_on_anthropic_are_priced_the_same_way(app, router_db, prices, servers):
    await prices(**{"gpt-5.5-claude": {
        "input_cost_per_token": D("3e-6"), "output_cost_per_token": D("1.5e-5"),
        "cache_read_input_token_cost": D("3e-7"), "cache_creation_input_token_cost": D("3.75e-6"),
        "cache_creation_input_token_cost_above_1hr": D("6e-6")}})
    fake = AnthropicFake([Turn([text("Done.")], usage=ANTHROPIC_USAGE)], api_key="sk-ant")
    servers.append(server := FakeServer(fake.handler).start())
    await sync_to_async(add_credential)("anthropic_main", "anthropic", models={"gpt-5.5-claude": "claude-sonnet-4-6"},
                                        api_key="sk-ant", base_url=server.url)
    final = await responses(app, {"model": "gpt-5.5-claude", "input": "Hi", "stream": True})
    assert final["usage"]["input_tokens"] == 2850
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 2000, "cache_write_tokens": 800}
    [row] = await rows()
    assert (row.endpoint, row.cache_write_5m_tokens, row.cache_write_1h_tokens) == ("responses", 300, 500)
    assert row.cost_usd == D("0.006675")


async def test_gemini_row_prices_thoughts_as_reasoning(app, router_db, prices):
    await prices(**{"gemini-2.5-flash": {"input_cost_per_token": D("3e-7"), "output_cost_per_token": D("2.5e-6"),
                                         "output_cost_per_reasoning_token": D("3.5e-6"),
                                         "cache_read_input_token_cost": D("3e-8")}})
    fake = g.GeminiFake(g.Turn(g.text("Thought about it."),
                               usage=g.usage_metadata(prompt=400, candidates=50, thoughts=200, cached=100)),
                        api_key="AIza").start()
    try:
        await sync_to_async(add_credential)("gemini_main", "gemini", models={"gemini-2.5-flash": "gemini-2.5-flash"},
                                            api_key="AIza", base_url=fake.url)
        res = await chat(app, {"model": "gemini-2.5-flash", "messages": [user("Think")]})
    finally:
        fake.stop()
    assert res.status == 200
    [row] = await rows()
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens, row.reasoning_tokens) == (400, 100, 250, 200)
    expected = 300 * D("3e-7") + 100 * D("3e-8") + 200 * D("3.5e-6") + 50 * D("2.5e-6")
    assert row.cost_usd == expected == D("0.000918")


async def test_the_price_in_force_today_is_used_not_a_later_or_an_older_one(app, router_db, openai_fake, prices):
    await prices()
    for days, price in ((-30, "1e-6"), (-1, "2e-6"), (1, "4e-6")):
        await sync_to_async(Price.objects.create)(model="gpt-4o", effective_from=TODAY + timedelta(days=days),
                                                  input_cost_per_token=D(price), output_cost_per_token=D(0))
    fake = openai_fake(Reply(json=completion(prompt=1000, cached=0)))
    await sync_to_async(add_credential)("openai_main", "openai", models=["gpt-4o"], api_key="sk-upstream-secret",
                                        base_url=fake.url + "/v1")
    assert (await chat(app, {"model": "gpt-4o", "messages": [user("Hi")]})).status == 200
    [row] = await rows()
    assert row.cost_usd == 1000 * D("2e-6")


async def test_an_unpriced_model_gets_a_null_cost_and_is_counted(app, router_db, openai_fake, prices):
    await prices(**{"gpt-4o": {"input_cost_per_token": D("1e-6")}})
    fake = openai_fake(Reply(json=completion()), Reply(json=completion()))
    await sync_to_async(add_credential)("openai_main", "openai", models=["my-finetune", "gpt-4o"],
                                        api_key="sk-upstream-secret", base_url=fake.url + "/v1")
    before = usage.writer.unpriced
    assert (await chat(app, {"model": "my-finetune", "messages": [user("Hi")]})).status == 200
    assert (await chat(app, {"model": "gpt-4o", "messages": [user("Hi")]})).status == 200
    unpriced, priced = await rows()
    assert unpriced.cost_usd is None and unpriced.prompt_tokens == 9
    assert priced.cost_usd == 9 * D("1e-6")
    health = (await call(app, "GET", "/health")).json()
    assert health["usage_log"]["unpriced"] == before + 1


async def test_finish_hooks_see_the_cost_and_a_price_change_elsewhere_applies_within_a_second(
        app, router_db, openai_fake, prices, settings):
    from credentials.models import bump_config_version

    await prices(**{"gpt-4o": {"input_cost_per_token": D("1e-6"), "output_cost_per_token": D("1e-6")}})
    fake = openai_fake(*(Reply(json=completion(prompt=10, completion_tokens=0)) for _ in range(2)))
    await sync_to_async(add_credential)("openai_main", "openai", models=["gpt-4o"], api_key="sk-upstream-secret",
                                        base_url=fake.url + "/v1")
    seen: list = []
    usage.finish_hooks.append(hook := lambda log: seen.append(log.cost))
    try:
        assert (await chat(app, {"model": "gpt-4o", "messages": [user("Hi")]})).status == 200

        def change_in_another_process() -> None:  # no signal here: only the shared version moves
            Price.objects.filter(model="gpt-4o").update(input_cost_per_token=D("5e-6"))
            bump_config_version()

        await sync_to_async(change_in_another_process)()
        await asyncio.sleep(settings.ROUTER_CONFIG_POLL_SECONDS + 0.1)
        assert (await chat(app, {"model": "gpt-4o", "messages": [user("Hi")]})).status == 200
    finally:
        usage.finish_hooks.remove(hook)
    assert seen[0] == 10 * D("1e-6")
    assert seen[-1] == 10 * D("5e-6")


def test_a_fresh_database_prices_the_shipped_models_in_a_real_router(tmp_path, openai_fake):
    """migrate loads pricing/data/prices-2026-12-01.json: a fresh clone prices gpt-4.1-mini out of the box."""
    import httpx

    from tests.live import LiveRouter

    fake = openai_fake(Reply(json=completion(prompt=1000, cached=200, completion_tokens=100, reasoning=0)))
    config = (f"server: {{master_key: sk-live}}\n"
              f"credentials: [{{name: oa, type: openai, api_key: sk-upstream-secret, base_url: '{fake.url}/v1'}}]\n"
              "models: [{name: gpt-4.1-mini, credential: oa}]\n")
    router = LiveRouter(config, tmp_path).start()
    try:
        res = httpx.post(router.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-live"},
                         json={"model": "gpt-4.1-mini", "messages": [user("Hi")]}, timeout=10)
        assert res.status_code == 200
        [row] = router.usage_rows(wait_for=1)
    finally:
        router.stop()
    # shipped list prices: $0.40 input, $0.10 cached input, $1.60 output per 1M tokens
    expected = 800 * D("4e-7") + 200 * D("1e-7") + 100 * D("1.6e-6")
    assert D(str(row["cost_usd"])) == expected == D("0.0005")


def test_a_pricing_failure_never_loses_the_row(monkeypatch):
    from pricing import cost

    def broken(log):
        raise ArithmeticError("bug")

    recorded: list[dict] = []
    monkeypatch.setattr(cost, "of_log", broken)
    monkeypatch.setattr(usage, "record", recorded.append)
    log = usage.UsageLog("req_1", "chat.completions")
    log.prompt = 5
    log.finish()
    assert recorded[0]["request_id"] == "req_1" and recorded[0]["cost_usd"] is None
