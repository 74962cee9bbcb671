"""Loading prices in LiteLLM's price-file format: a JSON object of model name -> fields.

Sources: a file path, ``file://path`` or an http(s) URL (``read_source``). Entries
keep their names exactly (``vertex_ai/gemini-2.5-pro`` stays as is: lookups try the
upstream id without its prefix). Fields other than the price fields (``max_tokens``,
``litellm_provider``, ``mode``...) are ignored; keys starting with ``_`` and
``sample_spec`` are not models. The original router's ``input_cost_per_cached_token``
is read as ``cache_read_input_token_cost``.

``apply_prices`` is an upsert that keeps history: for each model, when the price in
force on ``effective_from`` already has these values nothing changes; a price on that
very day is updated; otherwise a new row starts on that day.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx

from .fields import ALIASES, PRICE_FIELDS

MAX_BYTES = 100 * 1024 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$")
SHIPPED = Path(__file__).resolve().parent / "data" / "prices-2026-12-01.json"
NOT_MODELS = ("sample_spec",)


class PriceError(Exception):
    pass


@dataclass
class Entry:
    model: str
    rates: dict[str, Decimal]
    provider: str = ""
    effective_from: date | None = None


@dataclass
class Parsed:
    entries: list[Entry] = field(default_factory=list)
    effective_from: date | None = None  # the file's own date (``_about.effective_from``)
    skipped: list[str] = field(default_factory=list)


def read_source(link: str, *, timeout: float = 30.0) -> Any:
    """The JSON at a path, ``file://`` path or http(s) URL (numbers as Decimal). Raises PriceError."""
    link = link.strip()
    if link.startswith(("http://", "https://")):
        try:
            with httpx.stream("GET", link, timeout=timeout, follow_redirects=True) as res:
                if res.status_code != 200:
                    raise PriceError(f"{link}: HTTP {res.status_code}")
                body = b""
                for chunk in res.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise PriceError(f"{link}: larger than {MAX_BYTES // 1024 // 1024} MB")
        except httpx.HTTPError as exc:
            raise PriceError(f"{link}: cannot fetch it ({type(exc).__name__})") from None
    else:
        path = Path(link.removeprefix("file://"))
        try:
            if path.stat().st_size > MAX_BYTES:
                raise PriceError(f"{link}: larger than {MAX_BYTES // 1024 // 1024} MB")
            body = path.read_bytes()
        except OSError as exc:
            raise PriceError(f"{link}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    try:
        return json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PriceError(f"{link}: not valid JSON ({exc})") from None


def as_price(value: Any) -> Decimal | None:
    """A non-negative number (int, float, Decimal or numeric string) as Decimal; None if it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def as_date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def parse_price_map(data: Any) -> Parsed:
    """Read a LiteLLM-format mapping; entries without any usable price are listed in ``skipped``."""
    if not isinstance(data, dict):
        raise PriceError(f"expected a JSON object of model name -> prices, got {type(data).__name__}")
    out = Parsed(effective_from=as_date((data.get("_about") or {}).get("effective_from"))
                 if isinstance(data.get("_about"), dict) else None)
    for name, item in data.items():
        if not isinstance(name, str) or name.startswith("_") or name in NOT_MODELS:
            continue
        rates = {}
        if isinstance(item, dict):
            for key, value in item.items():
                key = ALIASES.get(key, key)
                if key in PRICE_FIELDS and (price := as_price(value)) is not None:
                    rates[key] = price
        if not rates or len(name) > 200 or not NAME_RE.match(name):
            out.skipped.append(name)
            continue
        out.entries.append(Entry(name, rates))
    return out


def plan_prices(entries: list[Entry], *, effective_from: date, source: str, price_model=None):
    """(rows to create, rows to update, Counter of created/updated/unchanged) without writing."""
    if price_model is None:
        from .models import Price as price_model
    # a data migration passes its historical model, which may predate price fields added later
    known = {f.name for f in price_model._meta.get_fields()}
    fields = [name for name in PRICE_FIELDS if name in known]
    existing: dict[tuple[str, str], list] = {}
    for row in price_model.objects.all():
        existing.setdefault((row.model, row.provider), []).append(row)
    creates, updates, counts = [], [], Counter(created=0, updated=0, unchanged=0)
    seen: set[tuple[str, str, date]] = set()
    for entry in entries:
        day = entry.effective_from or effective_from
        key = (entry.model, entry.provider)
        if (*key, day) in seen:
            continue
        seen.add((*key, day))
        rows = sorted(existing.get(key, ()), key=lambda r: r.effective_from, reverse=True)
        in_force = next((r for r in rows if r.effective_from <= day), None)
        rates = {name: value for name, value in entry.rates.items() if name in known}
        if in_force is not None and _values(in_force, fields) == rates:
            counts["unchanged"] += 1
            continue
        if in_force is not None and in_force.effective_from == day:
            for name in fields:
                setattr(in_force, name, rates.get(name))
            in_force.source = source
            updates.append(in_force)
            counts["updated"] += 1
            continue
        creates.append(price_model(model=entry.model, provider=entry.provider, effective_from=day, source=source,
                                   **{name: rates.get(name) for name in fields}))
        counts["created"] += 1
    return creates, updates, counts


def _values(row, fields: list[str]) -> dict[str, Decimal]:
    return {name: getattr(row, name) for name in fields if getattr(row, name) is not None}


def apply_prices(entries: list[Entry], *, effective_from: date, source: str, price_model=None,
                 notify: bool = True) -> Counter:
    """Write ``entries`` (call inside a transaction); ``notify`` reloads every router's snapshot."""
    if price_model is None:
        from .models import Price as price_model
    creates, updates, counts = plan_prices(entries, effective_from=effective_from, source=source,
                                           price_model=price_model)
    price_model.objects.bulk_create(creates, batch_size=500)
    known = {f.name for f in price_model._meta.get_fields()}
    price_model.objects.bulk_update(updates, [*(n for n in PRICE_FIELDS if n in known), "source"], batch_size=500)
    if notify and (creates or updates):
        from .signals import prices_changed

        prices_changed()
    return counts


def load_link(link: str, *, effective_from: date | None = None, notify: bool = True) -> tuple[Counter, Parsed]:
    """Read a price file or URL and apply it (effective from the given day, else the file's, else today)."""
    from datetime import UTC, datetime

    parsed = parse_price_map(read_source(link))
    day = effective_from or parsed.effective_from or datetime.now(UTC).date()
    return apply_prices(parsed.entries, effective_from=day, source=link[:500], notify=notify), parsed
