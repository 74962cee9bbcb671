"""The in-memory price snapshot: no database query per request.

``reload()`` builds it from the ``Price`` table; ``proxy.config.load()`` calls it, so
prices share the router configuration's version and reload within about a second
in every process after any change (``pricing.signals`` bumps the version).

Lookup order, first hit wins: the exact public model name, then the exact upstream
model id, then the upstream id without its provider prefix (``vertex_ai/gemini-2.5-pro``
-> ``gemini-2.5-pro``). Names are never normalised otherwise: ``gpt-4.1`` matches
``gpt-4.1`` only. For one name, a price for the request's credential type beats a
price for any provider; among those, the latest ``effective_from`` not after the
usage's day is in force.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from .fields import PRICE_FIELDS


@dataclass(frozen=True, slots=True)
class Rates:
    """One price row's values (None: not set)."""

    model: str
    provider: str
    effective_from: date
    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    cache_read_input_token_cost: Decimal | None = None
    cache_creation_input_token_cost: Decimal | None = None
    cache_creation_input_token_cost_above_1hr: Decimal | None = None
    output_cost_per_reasoning_token: Decimal | None = None
    input_cost_per_token_above_200k_tokens: Decimal | None = None
    output_cost_per_token_above_200k_tokens: Decimal | None = None
    cache_read_input_token_cost_above_200k_tokens: Decimal | None = None
    cache_creation_input_token_cost_above_200k_tokens: Decimal | None = None
    input_cost_per_image: Decimal | None = None
    output_cost_per_image: Decimal | None = None


class PriceTable:
    def __init__(self, rows: Iterable[Rates] = ()) -> None:
        by_name: dict[str, list[Rates]] = {}
        for rates in rows:
            by_name.setdefault(rates.model, []).append(rates)
        # newest first, so the first row in force is the one to use
        self._by_name = {name: sorted(items, key=lambda r: r.effective_from, reverse=True)
                         for name, items in by_name.items()}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    def lookup(self, public: str, upstream: str = "", provider: str | None = None,
               at: datetime | date | None = None) -> Rates | None:
        day = _day(at)
        for name in candidates(public, upstream):
            rows = self._by_name.get(name)
            if rows is None:
                continue
            found = _in_force(rows, provider, day)
            if found is not None:
                return found
        return None


    def in_force(self, model: str, provider: str = "", at: datetime | date | None = None) -> Rates | None:
        """The row in force for exactly this model name and provider (the admin's "in force" column)."""
        day = _day(at)
        return next((r for r in self._by_name.get(model, ()) if r.provider == provider and r.effective_from <= day),
                    None)


def candidates(public: str, upstream: str = "") -> list[str]:
    names = [n for n in (public, upstream) if n]
    if "/" in upstream:
        names.append(upstream.rsplit("/", 1)[1])
    return list(dict.fromkeys(names))


def _day(at: datetime | date | None) -> date:
    if at is None:
        return datetime.now(UTC).date()
    if isinstance(at, datetime):
        return at.astimezone(UTC).date() if at.tzinfo else at.date()
    return at


def _in_force(rows: list[Rates], provider: str | None, day: date) -> Rates | None:
    generic = None
    for rates in rows:
        if rates.effective_from > day:
            continue
        if not provider or rates.provider == provider:
            return rates
        if not rates.provider and generic is None:
            generic = rates
    return generic


def from_rows(rows: Iterable) -> PriceTable:
    """A table from ``Price`` objects (or anything with the same attributes)."""
    return PriceTable(
        Rates(model=row.model, provider=row.provider, effective_from=row.effective_from,
              **{name: getattr(row, name) for name in PRICE_FIELDS})
        for row in rows)


EMPTY = PriceTable()
_current = EMPTY


def current() -> PriceTable:
    return _current


def publish(table: PriceTable) -> None:
    global _current
    _current = table


def reload() -> PriceTable:
    """Build the snapshot from the database and publish it (sync: call it in a worker thread)."""
    from .models import Price

    table = from_rows(Price.objects.all())
    publish(table)
    return table
