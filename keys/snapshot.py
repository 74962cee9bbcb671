"""Keys and teams as an immutable in-memory table, loaded with the routing configuration.

``proxy.config.load()`` builds a ``KeyTable`` next to the routing snapshot, so keys reload
exactly when the configuration does (``keys.signals`` bumps its version): the request path
finds a key by the SHA-256 of the presented secret in a dict, with no database query.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

ALL_TEAM_MODELS = "all-team-models"  # LiteLLM's spelling of "whatever the key's team may use"


@dataclass(frozen=True, slots=True)
class Access:
    """Which public model names (and aliases) a key or team may call."""

    names: frozenset[str]
    patterns: tuple[str, ...]
    _seen: dict[str, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, entries: list[str] | tuple[str, ...]) -> Access | None:
        """None: every model (an empty list, or ``*``)."""
        entries = [e.strip() for e in entries if isinstance(e, str) and e.strip() and e.strip() != ALL_TEAM_MODELS]
        if not entries or "*" in entries:
            return None
        globs = tuple(e for e in entries if any(c in e for c in "*?["))
        return cls(frozenset(e for e in entries if e not in globs), globs)

    def allows(self, name: str) -> bool:
        if name in self.names:
            return True
        seen = self._seen.get(name)
        if seen is None:
            seen = any(fnmatch.fnmatchcase(name, p) for p in self.patterns)
            if len(self._seen) < 1000:  # model names clients send are few; bounded against junk
                self._seen[name] = seen
        return seen


@dataclass(frozen=True, slots=True)
class Scope:
    """The limits and budget of one key or one team, as admission enforces them."""

    kind: str  # "key" | "team"
    id: str
    label: str  # the alias, for error messages
    rpm: int | None = None
    tpm: int | None = None
    parallel: int | None = None
    max_budget: Decimal | None = None
    budget_duration: str = ""
    reset_at: datetime | None = None
    generation: int = 0
    budget_nano: int = -1  # max_budget in nano-dollars (-1: no budget), as the limit stores compare it

    @property
    def name(self) -> str:
        return f"{self.kind[0]}:{self.id}"

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.parallel)

    @property
    def active(self) -> bool:
        return self.limited or self.max_budget is not None


@dataclass(frozen=True, slots=True)
class KeyEntry:
    token: str
    key_hash: str = field(repr=False)
    alias: str
    team_id: str | None = None
    team_alias: str = ""
    user_id: str = ""
    access: tuple[Access, ...] = ()  # the key's and its team's: a model must pass both
    expires: float | None = None  # epoch seconds
    blocked: bool = False
    team_blocked: bool = False
    scopes: tuple[Scope, ...] = ()  # only those that limit something

    def may_use(self, model: str) -> bool:
        return all(a.allows(model) for a in self.access)

    @property
    def label(self) -> str:
        return self.alias or self.token


@dataclass(frozen=True, slots=True)
class KeyTable:
    by_hash: dict[str, KeyEntry] = field(default_factory=dict)

    def find(self, secret: str) -> KeyEntry | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()  # as credentials.models.hash_key
        entry = self.by_hash.get(digest)
        if entry is None or not hmac.compare_digest(entry.key_hash, digest):
            return None
        return entry


EMPTY = KeyTable()


def _scope(kind: str, id_: str, label: str, obj, parallel: int | None = None) -> Scope:
    from .limits.values import to_nano

    budget = -1 if obj.max_budget is None else to_nano(obj.max_budget)
    return Scope(kind, id_, label, obj.rpm_limit, obj.tpm_limit, parallel, obj.max_budget, obj.budget_duration,
                 obj.budget_reset_at, obj.spend_generation, budget)


def load_table() -> KeyTable:
    """Build the table from the database (sync: runs in the config loader's thread)."""
    from .models import ApiKey

    table: dict[str, KeyEntry] = {}
    for key in ApiKey.objects.select_related("team"):
        team = key.team
        access = [Access.of(key.models)]
        scopes = [_scope("key", key.token, key.key_alias or key.key_name, key, key.max_parallel_requests)]
        if team is not None:
            access.append(Access.of(team.models))
            scopes.append(_scope("team", team.team_id, team.team_alias, team))
        table[key.key_hash] = KeyEntry(
            token=key.token, key_hash=key.key_hash, alias=key.key_alias, team_id=team.team_id if team else None,
            team_alias=team.team_alias if team else "", user_id=key.user_id,
            access=tuple(a for a in access if a is not None),
            expires=key.expires.timestamp() if key.expires else None, blocked=key.blocked,
            team_blocked=bool(team and team.blocked), scopes=tuple(s for s in scopes if s.active),
        )
    return KeyTable(table)
