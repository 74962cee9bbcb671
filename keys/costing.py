"""What admission reserves: the request's input (counted cheaply from the body) and its output cap, priced.

Prices are the ``pricing`` app's (``pricing.cost.estimate``); a model without a price reserves
nothing (its rows have no cost either, so nothing is spent against the budget).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from functools import cache

from django.conf import settings

_DATA_URL = re.compile(rb'data:[^;,"]{0,100};base64,[^"]*')
IMAGE_TOKENS = 1500  # an inline image is billed by its pixels, not by its base64 length
OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def input_tokens(raw: bytes) -> int:
    """About four bytes of JSON per token: an over-estimate for text (the JSON around it counts too)."""
    if b";base64," not in raw:
        return len(raw) // 4 + 1
    images = 0

    def drop(match: re.Match) -> bytes:
        nonlocal images
        images += 1
        return b""
    return len(_DATA_URL.sub(drop, raw)) // 4 + 1 + images * IMAGE_TOKENS


def output_tokens(body: dict) -> int:
    for name in OUTPUT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return settings.ROUTER_BUDGET_DEFAULT_MAX_TOKENS


@cache
def _pricer() -> Callable[[str, str, int, int], Decimal | None] | None:
    try:
        from pricing.cost import estimate as price
    except ImportError:  # the pricing app is not installed: nothing is priced
        return None
    return price


def estimate(public_model: str, upstream_model: str, raw: bytes, body: dict) -> Decimal | None:
    price = _pricer()
    return None if price is None else price(public_model, upstream_model, input_tokens(raw), output_tokens(body))
