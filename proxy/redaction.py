"""Secrets out of every text the router passes on or stores: by value first, then by pattern.

Upstreams echo what they were sent (a rejected key, a custom header) in their error
text, and that text reaches clients (502 bodies, stream error events), usage rows,
cooldown reasons (``/health``, the admin's routing-state page) and logs. Patterns alone
miss keys without a known prefix (Groq ``gsk_…``, 32-hex Azure keys, custom headers), so
every secret the router holds is replaced by value:

* the configuration snapshot (``proxy.config.load``) registers each credential's API
  key, ``extra_headers`` values and service-account secrets (the private key, line by
  line, and its id), plus ``ROUTER_MASTER_KEY``; rebuilt on every reload;
* ``google_token`` registers each OAuth access token it mints (the most recent ones).

Values shorter than ``MIN_LENGTH`` are not matched (they would redact ordinary words).
The pattern layer (``Bearer …``, ``sk-…``, ``AIza…``, ``ya29.…``, a PEM body, ``key=``
query parameters) stays as a second line for secrets the router never held (a client's
own key, a provider's partial echo).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable

MIN_LENGTH = 8
MASK = "[redacted]"
_MAX_TOKENS = 256

_PATTERN = re.compile(
    r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\b(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]{8,}"
    r"|\b(AIza)[A-Za-z0-9_-]{20,}"
    r"|\b(ya29\.)[A-Za-z0-9._-]{8,}"
    r"|(\"private_key\":\s*\")[^\"]+"
    r"|(-----BEGIN [A-Z ]*PRIVATE KEY-----)[^-]+"
    # query-string credentials (``?key=``, ``&api_key=``): access logs print the full path
    r"|([?&](?:key|api[_-]?key|access_token|token|x-api-key|auth|password|secret)=)[^&#\s\"']+",
    re.I,
)


def _pattern_sub(match: re.Match) -> str:
    return next(g for g in match.groups() if g) + MASK


class _Values:
    def __init__(self) -> None:
        self.sources: dict[str, frozenset[str]] = {}
        self.tokens: OrderedDict[str, None] = OrderedDict()
        self.regex: re.Pattern | None = None
        self.lock = threading.Lock()

    def rebuild(self) -> None:
        values = set(self.tokens)
        for group in self.sources.values():
            values |= group
        ordered = sorted(values, key=len, reverse=True)  # the longest wins where one secret contains another
        self.regex = re.compile("|".join(map(re.escape, ordered))) if ordered else None


_values = _Values()


def forms(secret: str) -> set[str]:
    """The spellings of ``secret`` that may show up in text: as is, JSON-escaped, each line of a PEM."""
    if not isinstance(secret, str):
        return set()
    secret = secret.strip()
    out = {secret, json.dumps(secret)[1:-1]}
    if "\n" in secret:
        out.update(line.strip() for line in secret.splitlines())
    return {s for s in out if len(s) >= MIN_LENGTH and not s.startswith("-----")}


def secrets_of_service_account(info: dict | None) -> set[str]:
    if not isinstance(info, dict):
        return set()
    out: set[str] = set()
    for field in ("private_key", "private_key_id", "client_secret", "refresh_token"):
        out |= forms(info.get(field) or "")
    return out


def set_source(name: str, secrets: Iterable[str]) -> None:
    """Replace the secrets registered under ``name`` (e.g. ``"config"``)."""
    values = frozenset(v for s in secrets for v in forms(s))
    with _values.lock:
        if _values.sources.get(name) == values:
            return
        _values.sources[name] = values
        _values.rebuild()


def add_token(token: str) -> None:
    """A short-lived secret minted at run time (an OAuth access token); the newest are kept."""
    new = forms(token)
    with _values.lock:
        if all(t in _values.tokens for t in new):
            return
        for value in new:
            _values.tokens[value] = None
            _values.tokens.move_to_end(value)
        while len(_values.tokens) > _MAX_TOKENS:
            _values.tokens.popitem(last=False)
        _values.rebuild()


def clear() -> None:
    """Forget every registered value (tests)."""
    with _values.lock:
        _values.sources.clear()
        _values.tokens.clear()
        _values.rebuild()


def redact(text: str) -> str:
    """``text`` with every known secret and every secret-looking pattern replaced by ``[redacted]``."""
    if not text:
        return text
    regex = _values.regex
    if regex is not None:
        text = regex.sub(MASK, text)
    return _PATTERN.sub(_pattern_sub, text)
