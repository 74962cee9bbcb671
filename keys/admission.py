"""Client keys on the request path: who is calling, which models they may use, limits and budgets.

Every ingress calls ``admit`` once it knows the model (after routing planned the request):
it checks the key's model access (404 ``model_not_found``), then, in one store operation
(one Redis round trip when ``REDIS_URL`` is set), the key's and its team's RPM, TPM and
parallel limits and budgets, reserving the request's estimated cost. The reservation is
settled with the real cost when the request's usage log finishes (``settle``, a
``proxy.usage`` finish hook), which every path does once: success, failure, failover,
client disconnect. A process that dies mid-request leaves reservations that lapse after
``ROUTER_BUDGET_RESERVATION_SECONDS``.

The guarantee: a request is admitted while spend plus open reservations is under the
budget, so spend exceeds a budget by at most one request's cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from proxy.errors import ProxyError

from . import costing, limits, periods
from .snapshot import KeyEntry, Scope


def check_key(entry: KeyEntry) -> None:
    """401 ``invalid_api_key`` for a blocked or expired key (the message says which)."""
    if entry.blocked:
        raise ProxyError(401, f"API key `{entry.label}` is blocked; ask the router's admins to unblock it.",
                         code="invalid_api_key")
    if entry.team_blocked:
        raise ProxyError(401, f"API key `{entry.label}` belongs to team `{entry.team_alias}`, which is blocked.",
                         code="invalid_api_key")
    if entry.expires is not None and entry.expires <= time.time():
        when = datetime.fromtimestamp(entry.expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise ProxyError(401, f"API key `{entry.label}` expired on {when}.", code="invalid_api_key")


def model_not_found(model: str) -> ProxyError:
    return ProxyError(404, f"The model `{model}` does not exist or you do not have access to it.",
                      code="model_not_found")


def check_model(entry: KeyEntry | None, model: str) -> None:
    if entry is not None and not entry.may_use(model):
        raise model_not_found(model)


@dataclass(slots=True)
class Ticket:
    """An admitted request's hold on its scopes; ``settle`` releases it exactly once."""

    store: limits.LocalLimits | limits.RedisLimits
    scopes: tuple[Scope, ...]
    rid: str
    spend_keys: list[str | None]
    settled: bool = False

    def settle(self, cost: Decimal | None, tokens: int) -> None:
        if self.settled:
            return
        self.settled = True
        nano = limits.to_nano(cost) if cost is not None and cost > 0 else 0
        self.store.settle(self.scopes, self.rid, self.spend_keys, nano, max(0, tokens))


def spend_key(scope: Scope, now: datetime) -> str | None:
    if scope.max_budget is None:
        return None
    reset_at, _ = periods.current_period(scope.reset_at, scope.budget_duration, now)
    return f"{scope.name}:{int(reset_at.timestamp()) if reset_at else 0}:{scope.generation}"


async def admit(entry: KeyEntry | None, model: str, upstream_model: str, raw: bytes, body: dict,
                rid: str) -> tuple[Ticket | None, dict[str, str]]:
    """Check access, limits and budgets; (a ticket to settle when the request ends, response headers)."""
    check_model(entry, model)
    if entry is None or not entry.scopes:
        return None, {}
    scopes = entry.scopes
    now = datetime.now(UTC)
    keys = [spend_key(s, now) for s in scopes]
    estimate = 0
    if any(k is not None for k in keys):
        cost = costing.estimate(model, upstream_model, raw, body)
        estimate = limits.to_nano(cost, up=True) if cost else 0
    store = limits.get()
    verdict = await store.admit(scopes, rid, estimate, keys)
    if verdict.seed:
        from . import seeding

        for i in verdict.seed:
            await store.seed(keys[i], await seeding.live_spend(scopes[i], now))  # type: ignore[arg-type]
        verdict = await store.admit(scopes, rid, estimate, keys)
    if not verdict.ok:
        raise refusal(scopes, verdict)
    return Ticket(store, scopes, rid, keys), rate_headers(scopes, verdict.windows)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


def rate_headers(scopes: tuple[Scope, ...], windows: list[tuple[int, float, int, float]]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the tightest requests and tokens limits."""
    headers: dict[str, str] = {}
    requests = [(s.rpm - w[0], s.rpm, w[1]) for s, w in zip(scopes, windows, strict=False) if s.rpm]
    tokens = [(s.tpm - w[2], s.tpm, w[3]) for s, w in zip(scopes, windows, strict=False) if s.tpm]
    for kind, rows in (("requests", requests), ("tokens", tokens)):
        if rows:
            remaining, limit, reset = min(rows)
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(reset)
    return headers


def _money(value: Decimal) -> str:
    return f"${value:,.6f}".rstrip("0").rstrip(".")


def refusal(scopes: tuple[Scope, ...], verdict: limits.Verdict) -> ProxyError:
    scope = scopes[verdict.scope]
    who = f"{scope.kind} `{scope.label}`"
    if verdict.reason == "budget":
        spend, reserved = limits.from_nano(verdict.spend), limits.from_nano(verdict.reserved)
        held = f" (+ {_money(reserved)} reserved by requests in flight)" if reserved else ""
        period = f" per {scope.budget_duration}" if scope.budget_duration else ""
        return ProxyError(429, f"Budget exceeded for {who}: spend {_money(spend)}{held} of a budget of "
                          f"{_money(scope.max_budget)}{period}.",  # type: ignore[arg-type]
                          type="insufficient_quota", code="insufficient_quota",
                          headers={"x-should-retry": "false"})
    wait = max(1.0, verdict.wait)
    headers = {}
    if verdict.reason == "parallel":
        message = f"Too many parallel requests for {who}: the limit is {scope.parallel} at a time."
    else:
        limit = scope.rpm if verdict.reason == "rpm" else scope.tpm
        kind = "requests" if verdict.reason == "rpm" else "tokens"
        message = (f"Rate limit reached for {who} on {kind} per min ({verdict.reason.upper()}): limit {limit}. "
                   f"Please try again in {wait:.0f}s.")
        headers = {f"x-ratelimit-limit-{kind}": str(limit), f"x-ratelimit-remaining-{kind}": "0",
                   f"x-ratelimit-reset-{kind}": _duration(verdict.wait)}
    return ProxyError(429, message, type="tokens" if verdict.reason == "tpm" else "requests",
                      code="rate_limit_exceeded", retry_after=wait, headers=headers)


def settle_usage(log) -> None:
    """``proxy.usage`` finish hook: release the request's reservation, count its real cost and tokens."""
    ticket = log.ticket
    if ticket is not None:
        ticket.settle(getattr(log, "cost", None), int(log.prompt or 0) + int(log.completion or 0))
