"""Prices in the router's YAML: ``server.model_prices_link`` and the ``model_prices`` section.

``model_prices`` has the shape of a LiteLLM price file (model name -> LiteLLM field
names), so entries can be pasted from one; a value may also be a list, for several
providers or dates of one model. Two extra keys: ``provider`` (a credential type;
absent = any) and ``effective_from`` (a date; absent = the day of the import)::

    server:
      model_prices_link: https://example.com/prices.json   # or a file path, file://path
    model_prices:
      gpt-4o: {input_cost_per_token: 2.5e-06, output_cost_per_token: 1.0e-05}
      claude-sonnet-4-6:
        - {input_cost_per_token: 3.0e-06, output_cost_per_token: 1.5e-05, effective_from: 2026-01-01}
        - {input_cost_per_token: 6.0e-06, output_cost_per_token: 3.0e-05, provider: vertex-ai}

The link's file is loaded on every import (history kept: unchanged prices stay as
they are); entries of ``model_prices`` override it for their models. Export writes
the link and the prices given in YAML or the admin (not those loaded from files).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from credentials.models import CredentialType

from .fields import ALIASES, PRICE_FIELDS
from .loading import (
    NAME_RE,
    Entry,
    PriceError,
    apply_prices,
    as_date,
    as_price,
    parse_price_map,
    plan_prices,
    read_source,
)

EXTRA_KEYS = ("provider", "effective_from")
ALLOWED = (*PRICE_FIELDS, *ALIASES, *EXTRA_KEYS)
YAML_SOURCES = ("yaml", "admin")

Error = Callable[[str, str], None]


def parse_model_prices(value: Any, path: str, error: Error) -> list[Entry]:
    if not isinstance(value, dict):
        error(path, "expected a mapping of model name -> prices")
        return []
    from credentials.config_io import join

    entries = []
    for name, item in value.items():
        where = join(path, name)
        if not isinstance(name, str) or len(name) > 200 or not NAME_RE.match(name):
            error(where, "a model name uses letters, digits and _ . : @ / - (no spaces)")
            continue
        items = item if isinstance(item, list) else [item]
        for i, one in enumerate(items):
            entry = _entry(name, one, f"{where}[{i}]" if isinstance(item, list) else where, error)
            if entry is not None:
                entries.append(entry)
    return entries


def _entry(name: str, item: Any, where: str, error: Error) -> Entry | None:
    if not isinstance(item, dict):
        error(where, "expected a mapping of LiteLLM price fields (input_cost_per_token...)")
        return None
    rates: dict[str, Decimal] = {}
    ok = True
    for key, value in item.items():
        if key not in ALLOWED:
            close = difflib.get_close_matches(str(key), ALLOWED, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            error(f"{where}.{key}", f"unknown price field{hint}; allowed: {', '.join(ALLOWED)}")
            ok = False
        elif key not in EXTRA_KEYS:
            price = as_price(value)
            if price is None:
                error(f"{where}.{key}", f"expected a number >= 0 (USD per token or per image), got {value!r}")
                ok = False
            else:
                rates[ALIASES.get(key, key)] = price
    provider = item.get("provider") or ""
    if provider and provider not in CredentialType.values:
        error(f"{where}.provider", f"expected a credential type ({', '.join(CredentialType.values)}), got {provider!r}")
        ok = False
    day = None
    if item.get("effective_from") is not None:
        day = as_date(item["effective_from"])
        if day is None:
            error(f"{where}.effective_from", f"expected a date YYYY-MM-DD, got {item['effective_from']!r}")
            ok = False
    if ok and not rates:
        error(where, "gives no price (e.g. input_cost_per_token, output_cost_per_token)")
        ok = False
    return Entry(name, rates, provider, day) if ok else None


def plan(entries: list[Entry], link: str | None, errors: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """(change details, a function writing them) for the YAML's prices and the link's file."""
    today = datetime.now(UTC).date()
    details: list[str] = []
    batches: list[tuple[list[Entry], date, str]] = []
    if entries:
        batches.append((entries, today, "yaml"))
    if link:
        try:
            parsed = parse_price_map(read_source(link))
        except PriceError as exc:
            errors.append(f"server.model_prices_link: {exc}")
            return [], None
        overridden = {(e.model, e.provider) for e in entries}
        batches.append(([e for e in parsed.entries if (e.model, e.provider) not in overridden],
                        parsed.effective_from or today, link[:500]))
    for batch, day, source in batches:
        _, _, counts = plan_prices(batch, effective_from=day, source=source)
        if counts["created"] or counts["updated"]:
            label = "model_prices" if source == "yaml" else source
            details.append(f"{label}: {counts['created']} new, {counts['updated']} updated, "
                           f"{counts['unchanged']} unchanged")
    if not details:
        return [], None

    def write() -> None:
        for batch, day, source in batches:
            apply_prices(batch, effective_from=day, source=source)

    return details, write


def export() -> dict[str, Any]:
    """The ``model_prices`` section: every price given in YAML or the admin, with its day and provider."""
    from .models import Price

    out: dict[str, Any] = {}
    for row in Price.objects.filter(source__in=YAML_SOURCES).order_by("model", "provider", "effective_from"):
        item: dict[str, Any] = {name: _number(value) for name, value in row.rates().items()}
        if row.provider:
            item["provider"] = row.provider
        item["effective_from"] = row.effective_from.isoformat()
        if row.model in out:
            previous = out[row.model]
            out[row.model] = [*(previous if isinstance(previous, list) else [previous]), item]
        else:
            out[row.model] = item
    return out


def _number(value: Decimal) -> float | int:
    normal = value.normalize()
    return int(normal) if normal == normal.to_integral_value() else float(normal)
