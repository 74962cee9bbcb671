"""What a request cost, from its final usage and the price in force.

Token counts follow the router's canonical (Chat) usage: ``prompt`` counts every input
token, cache reads and writes included; ``completion`` counts every output token,
reasoning included. Each token is billed once, at its own rate:

* uncached input (prompt - cache reads - cache writes) at ``input_cost_per_token``;
* cache reads at ``cache_read_input_token_cost`` (else the input price);
* 5-minute cache writes at ``cache_creation_input_token_cost`` (else the input price),
  1-hour writes at ``cache_creation_input_token_cost_above_1hr`` (else the 5-minute price);
* output at ``output_cost_per_token``; when ``output_cost_per_reasoning_token`` is set,
  reasoning tokens at it and the rest of the output at the output price;
* generated images at ``output_cost_per_image``.

When the prompt is over 200k tokens and the model has ``*_above_200k_tokens`` prices, the
whole request is billed at them (as Google and Anthropic bill long prompts), not only the
tokens past the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .table import Rates, current

TIER_TOKENS = 200_000
ZERO = Decimal(0)
#: stored precision of ``cost_usd``
QUANTUM = Decimal("1e-12")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0
    images: int = 0


def _rate(*choices: Decimal | None) -> Decimal:
    for value in choices:
        if value is not None:
            return value
    return ZERO


def usage_cost(rates: Rates, usage: Usage) -> Decimal:
    r = rates
    long = usage.prompt > TIER_TOKENS
    base_input = _rate(r.input_cost_per_token)
    input_rate = _rate(r.input_cost_per_token_above_200k_tokens, base_input) if long else base_input
    output_rate = _rate(r.output_cost_per_token)
    if long:
        output_rate = _rate(r.output_cost_per_token_above_200k_tokens, output_rate)
    read_rate = _rate(r.cache_read_input_token_cost, base_input)
    if long:
        read_rate = _rate(r.cache_read_input_token_cost_above_200k_tokens, read_rate)
    write_rate = _rate(r.cache_creation_input_token_cost, base_input)
    if long:
        write_rate = _rate(r.cache_creation_input_token_cost_above_200k_tokens, write_rate)
    write_1h_rate = _rate(r.cache_creation_input_token_cost_above_1hr, write_rate)

    cached, w5, w1 = max(0, usage.cached), max(0, usage.cache_write_5m), max(0, usage.cache_write_1h)
    uncached = max(0, usage.prompt - cached - w5 - w1)
    total = uncached * input_rate + cached * read_rate + w5 * write_rate + w1 * write_1h_rate
    output = max(0, usage.completion)
    if r.output_cost_per_reasoning_token is not None and usage.reasoning > 0:
        reasoning = min(usage.reasoning, output)
        total += reasoning * r.output_cost_per_reasoning_token + (output - reasoning) * output_rate
    else:
        total += output * output_rate
    if usage.images > 0:
        total += usage.images * _rate(r.output_cost_per_image)
    return total


def cost(public: str, upstream: str, usage: Usage, *, provider: str | None = None,
         at: datetime | None = None) -> Decimal | None:
    """USD for ``usage`` on this model; None when no price is in force for it."""
    rates = current().lookup(public, upstream, provider, at)
    if rates is None:
        return None
    return usage_cost(rates, usage).quantize(QUANTUM)


def estimate(public_model: str, upstream_model: str, input_tokens: int, max_output_tokens: int) -> Decimal | None:
    """An upper estimate for budget reservations: ``input_tokens`` all uncached, ``max_output_tokens``
    at the dearer of the output and reasoning prices. None when the model has no price."""
    rates = current().lookup(public_model, upstream_model)
    if rates is None:
        return None
    long = input_tokens > TIER_TOKENS
    input_rate = _rate(rates.input_cost_per_token)
    output_rate = _rate(rates.output_cost_per_token)
    if long:
        input_rate = _rate(rates.input_cost_per_token_above_200k_tokens, input_rate)
        output_rate = _rate(rates.output_cost_per_token_above_200k_tokens, output_rate)
    output_rate = max(output_rate, _rate(rates.output_cost_per_reasoning_token))
    total = max(0, input_tokens) * input_rate + max(0, max_output_tokens) * output_rate
    return total.quantize(QUANTUM)


def of_log(log) -> Decimal | None:
    """The cost of a finished ``proxy.usage.UsageLog`` (its deployment names the model and provider)."""
    dep = log.dep
    if dep is not None:
        public, upstream, provider = dep.name, dep.upstream_model, dep.credential.type
    else:
        public, upstream, provider = log.requested_model, log.resolved_model, log.provider or None
    if not public and not upstream:
        return None
    usage = Usage(prompt=log.prompt, completion=log.completion, cached=log.cached,
                  cache_write_5m=log.cache_write_5m, cache_write_1h=log.cache_write_1h,
                  reasoning=log.reasoning, images=log.images)
    return cost(public, upstream, usage, provider=provider, at=log.finished_at)
