"""fail2ban rules: which upstream failures put a deployment in cooldown, and for how long."""


from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_CODES = (401, 402, 403, 408, 429, 500, 502, 503, 504, 529)
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BAN_SECONDS = 60.0


# ---- fail2ban rules ------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, default: float | None = DEFAULT_BAN_SECONDS) -> float | None:
    """Seconds from ``90``, ``"90s"``, ``"1h30m"``, ``"500ms"``; None means permanent (``permanent`` or 0)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return None if value <= 0 else float(value)
    text = str(value).strip()
    if text == "permanent":
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_duration(float(text), default)
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return None if seconds <= 0 else seconds


@dataclass(frozen=True, slots=True)
class Rule:
    max_attempts: int
    duration: float | None  # None: permanent


@dataclass(frozen=True, slots=True)
class Fail2Ban:
    default: Rule
    codes: frozenset[int]
    rules: dict[int, Rule]
    overrides: dict[str, tuple[frozenset[int] | None, dict[int, Rule]]]

    @classmethod
    def from_config(cls, raw: dict | None) -> Fail2Ban:
        raw = raw if isinstance(raw, dict) else {}
        default = Rule(_int(raw.get("max_attempts"), DEFAULT_MAX_ATTEMPTS),
                       _duration(raw.get("ban_duration"), DEFAULT_BAN_SECONDS))
        codes = _codes(raw.get("error_codes")) or frozenset(DEFAULT_CODES)
        overrides = {}
        for name, block in (raw.get("credential_overrides") or {}).items():
            if isinstance(block, dict):
                rules = _rules(block.get("error_code_rules"), default)
                overrides[str(name)] = (_codes(block.get("error_codes")), rules)
        return cls(default, codes, _rules(raw.get("error_code_rules"), default), overrides)

    def rule(self, credential: str, status: int) -> Rule | None:
        """The rule for a failure with ``status``, or None when that status is not counted."""
        codes, rules = self.overrides.get(credential, (None, {}))
        if status not in (codes or self.codes):
            return None
        return rules.get(status) or self.rules.get(status) or self.default


def _int(value: Any, default: int) -> int:
    try:
        return max(1, int(value)) if value is not None else default
    except (TypeError, ValueError):
        return default


def _duration(value: Any, default: float | None) -> float | None:
    try:
        return parse_duration(value, default)
    except ValueError:
        log.warning("fail2ban: unreadable ban_duration %r; using %s", value, default)
        return default


def _codes(value: Any) -> frozenset[int] | None:
    if not isinstance(value, list) or not value:
        return None
    return frozenset(int(c) for c in value if str(c).isdigit())


def _rules(value: Any, default: Rule) -> dict[int, Rule]:
    out: dict[int, Rule] = {}
    for item in value if isinstance(value, list) else ():
        if isinstance(item, dict) and str(item.get("code", "")).isdigit():
            out[int(item["code"])] = Rule(_int(item.get("max_attempts"), default.max_attempts),
                                          _duration(item.get("ban_duration"), default.duration))
    return out


_rules_cache: dict[int, tuple[dict, Fail2Ban]] = {}


def fail2ban_rules(raw: dict) -> Fail2Ban:
    """Parsed once per config snapshot (keyed by the dict's identity, which the snapshot keeps alive)."""
    hit = _rules_cache.get(id(raw))
    if hit is not None and hit[0] is raw:
        return hit[1]
    rules = Fail2Ban.from_config(raw)
    if len(_rules_cache) > 32:
        _rules_cache.clear()
    _rules_cache[id(raw)] = (raw, rules)
    return rules
