"""What the key-limit stores share: a verdict, nano-dollars, header values."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from django.conf import settings

NANO = Decimal(1_000_000_000)  # live counters count nano-dollars: integers, exact in Lua's doubles up to $9M


def to_nano(usd: Decimal, *, up: bool = False) -> int:
    return int((usd * NANO).to_integral_value(ROUND_CEILING if up else ROUND_HALF_UP))


def from_nano(value: int) -> Decimal:
    return Decimal(value) / NANO


def reservation_seconds() -> float:
    return settings.ROUTER_BUDGET_RESERVATION_SECONDS


@dataclass(slots=True)
class Verdict:
    ok: bool
    scope: int = -1  # the refusing scope
    reason: str = ""  # "rpm" | "tpm" | "parallel" | "budget"
    wait: float = 0.0  # seconds until a retry may pass (rate limits)
    spend: int = 0  # nano-dollars (budget refusals)
    reserved: int = 0
    # per scope, after this request: (requests used, seconds until one frees, tokens used, seconds until some free)
    windows: list[tuple[int, float, int, float]] = field(default_factory=list)
    seed: list[int] | None = None  # scopes whose live spend must be seeded from the database first


def refusal(scope: int, reason: str, wait: float = 0.0, spend: int = 0, reserved: int = 0) -> Verdict:
    return Verdict(False, scope, reason, wait, spend, reserved)
