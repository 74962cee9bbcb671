"""The cost function and the price table lookup, without sockets or a database."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal as D

import pytest

from pricing import cost as cost_mod
from pricing import table as table_mod
from pricing.cost import Usage, estimate, usage_cost
from pricing.table import PriceTable, Rates

DAY = date(2026, 1, 1)
GPT_4O = Rates("gpt-4o", "", DAY, input_cost_per_token=D("2.5e-6"), cache_read_input_token_cost=D("1.25e-6"),
               output_cost_per_token=D("1e-5"))
SONNET = Rates("claude-sonnet-4-6", "", DAY, input_cost_per_token=D("3e-6"), output_cost_per_token=D("1.5e-5"),
               cache_read_input_token_cost=D("3e-7"), cache_creation_input_token_cost=D("3.75e-6"),
               cache_creation_input_token_cost_above_1hr=D("6e-6"),
               input_cost_per_token_above_200k_tokens=D("6e-6"), output_cost_per_token_above_200k_tokens=D("2.25e-5"),
               cache_read_input_token_cost_above_200k_tokens=D("6e-7"),
               cache_creation_input_token_cost_above_200k_tokens=D("7.5e-6"))


def test_openai_cached_input_is_billed_at_the_cache_read_price():
    # 1000 prompt tokens of which 400 cached; reasoning has no price of its own: it is output
    usage = Usage(prompt=1000, cached=400, completion=200, reasoning=50)
    assert usage_cost(GPT_4O, usage) == 600 * D("2.5e-6") + 400 * D("1.25e-6") + 200 * D("1e-5") == D("0.004")


def test_anthropic_cache_reads_and_5m_and_1h_writes_are_priced_apart():
    usage = Usage(prompt=100 + 2000 + 300 + 500, cached=2000, cache_write_5m=300, cache_write_1h=500, completion=400)
    expected = 100 * D("3e-6") + 2000 * D("3e-7") + 300 * D("3.75e-6") + 500 * D("6e-6") + 400 * D("1.5e-5")
    assert usage_cost(SONNET, usage) == expected == D("0.011025")


def test_reasoning_tokens_at_their_own_price_and_the_rest_of_the_output_at_the_output_price():
    rates = Rates("gemini-x", "", DAY, input_cost_per_token=D("3e-7"), output_cost_per_token=D("2.5e-6"),
                  output_cost_per_reasoning_token=D("3.5e-6"))
    usage = Usage(prompt=10, completion=1000, reasoning=600)
    assert usage_cost(rates, usage) == 10 * D("3e-7") + 600 * D("3.5e-6") + 400 * D("2.5e-6")


def test_a_prompt_over_200k_bills_the_whole_request_at_the_long_context_prices():
    usage = Usage(prompt=250_000, cached=50_000, cache_write_5m=1000, completion=1000)
    expected = 199_000 * D("6e-6") + 50_000 * D("6e-7") + 1000 * D("7.5e-6") + 1000 * D("2.25e-5")
    assert usage_cost(SONNET, usage) == expected
    at_threshold = Usage(prompt=200_000, completion=10)
    assert usage_cost(SONNET, at_threshold) == 200_000 * D("3e-6") + 10 * D("1.5e-5")


def test_missing_cache_prices_fall_back_to_the_input_price_and_1h_to_the_5m_price():
    rates = Rates("m", "", DAY, input_cost_per_token=D("1e-6"), output_cost_per_token=D("2e-6"))
    usage = Usage(prompt=100, cached=10, cache_write_5m=20, cache_write_1h=30, completion=5)
    assert usage_cost(rates, usage) == 100 * D("1e-6") + 5 * D("2e-6")
    with_5m = Rates("m", "", DAY, input_cost_per_token=D("1e-6"), cache_creation_input_token_cost=D("4e-6"))
    assert usage_cost(with_5m, Usage(prompt=50, cache_write_1h=50)) == 50 * D("4e-6")


def test_images_are_billed_per_image():
    rates = Rates("imagen-4.0-generate-001", "", DAY, output_cost_per_image=D("0.04"))
    assert usage_cost(rates, Usage(prompt=12, images=3)) == D("0.12")


def test_zero_usage_costs_zero_not_none():
    assert usage_cost(GPT_4O, Usage()) == 0


TABLE = PriceTable([
    GPT_4O,
    Rates("gpt-4.1", "", DAY, input_cost_per_token=D("2e-6")),
    Rates("gemini-2.5-flash", "", DAY, input_cost_per_token=D("3e-7")),
    Rates("gemini-2.5-flash", "vertex-ai", DAY, input_cost_per_token=D("9e-7")),
    Rates("claude-haiku-4-5", "", date(2026, 1, 1), input_cost_per_token=D("1e-6")),
    Rates("claude-haiku-4-5", "", date(2026, 6, 1), input_cost_per_token=D("2e-6")),
    Rates("claude-haiku-4-5", "", date(2027, 1, 1), input_cost_per_token=D("3e-6")),
])


def test_dotted_names_match_exactly_and_are_never_mangled():
    assert TABLE.lookup("gpt-4.1").input_cost_per_token == D("2e-6")
    assert TABLE.lookup("gpt-4-1") is None
    assert TABLE.lookup("gpt-41") is None
    assert TABLE.lookup("gemini-2.5-flash").input_cost_per_token == D("3e-7")
    assert TABLE.lookup("gemini-2-5-flash") is None


def test_lookup_order_public_name_then_upstream_id_then_upstream_without_prefix():
    assert TABLE.lookup("gpt-4o", "gpt-4.1").model == "gpt-4o"
    assert TABLE.lookup("my-model", "gpt-4.1").model == "gpt-4.1"
    assert TABLE.lookup("my-model", "vertex_ai/gemini-2.5-flash").model == "gemini-2.5-flash"
    assert TABLE.lookup("my-model", "anthropic/unknown") is None
    assert table_mod.candidates("a", "openrouter/google/gemini-2.5-flash") == [
        "a", "openrouter/google/gemini-2.5-flash", "gemini-2.5-flash"]


def test_a_price_for_the_credential_type_beats_a_price_for_any_provider():
    assert TABLE.lookup("gemini-2.5-flash", provider="vertex-ai").input_cost_per_token == D("9e-7")
    assert TABLE.lookup("gemini-2.5-flash", provider="gemini").input_cost_per_token == D("3e-7")


def test_effective_from_picks_the_price_in_force_on_the_usage_day():
    at = {d: TABLE.lookup("claude-haiku-4-5", at=d).input_cost_per_token
          for d in (date(2026, 3, 1), date(2026, 6, 1), datetime(2026, 12, 31, 23, 59, tzinfo=UTC), date(2027, 1, 2))}
    assert list(at.values()) == [D("1e-6"), D("2e-6"), D("2e-6"), D("3e-6")]
    assert TABLE.lookup("claude-haiku-4-5", at=date(2025, 12, 31)) is None


@pytest.fixture
def published():
    before = table_mod.current()
    table_mod.publish(PriceTable([GPT_4O, SONNET]))
    yield
    table_mod.publish(before)


def test_cost_is_none_for_an_unpriced_model_and_quantized_otherwise(published):
    assert cost_mod.cost("no-such-model", "", Usage(prompt=10)) is None
    assert cost_mod.cost("gpt-4o", "", Usage(prompt=1, completion=1)) == D("0.000012500000")


def test_estimate_reserves_all_input_uncached_and_the_full_output_allowance(published):
    assert estimate("gpt-4o", "gpt-4o-2024-08-06", 1000, 500) == 1000 * D("2.5e-6") + 500 * D("1e-5")
    assert estimate("alias-of-nothing", "claude-sonnet-4-6", 300_000, 10) == 300_000 * D("6e-6") + 10 * D("2.25e-5")
    assert estimate("unknown", "", 1000, 1000) is None


def test_native_responses_usage_keeps_cache_writes_for_the_row():
    from proxy.responses_api import chat_usage_from_responses

    usage = chat_usage_from_responses({"input_tokens": 100, "output_tokens": 20,
                                       "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
                                       "output_tokens_details": {"reasoning_tokens": 5}})
    assert usage["prompt_tokens_details"] == {"cached_tokens": 60, "cache_write_tokens": 30}
