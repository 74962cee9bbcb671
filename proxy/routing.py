"""From a requested model name to the ordered deployments to try.

A name resolves to alias targets (tried in order: an alias is a fallback list), each
target to its pool of deployments. Within a pool the primary credentials come first,
balanced by weighted round robin (or, with a stickiness key, by a stable weighted
rendezvous hash so a session keeps its credential while it is healthy); credentials
marked ``is_fallback`` follow; deployments cooling down come last, soonest to recover
first, so the pipeline can report how long to wait or probe one when nothing else is
left. The first balanced group is rotated by the routing state at admission time, so
that when the request goes to Redis anyway (limits) the shared cursor is used.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from math import gcd
from typing import Any

from . import discovery, state
from .config import Deployment, RouterConfig
from .errors import ProxyError

MAX_SEQUENCE = 1000


@dataclass(slots=True)
class Plan:
    name: str
    deps: list[Deployment] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)  # alias target index of each dep (attempt budgets)
    rotation: state.Rotation | None = None  # applies to the first group of ``deps``
    rules: state.Fail2Ban = field(default_factory=lambda: state.Fail2Ban.from_config({}))
    hops: int = 0
    #: awaited with the request's usage log before the first attempt (a client key's limits and budget)
    admission: Callable[[Any], Awaitable[None]] | None = None

    def add(self, deps: list[Deployment], target: int) -> None:
        self.deps.extend(deps)
        self.targets.extend([target] * len(deps))


def pool(config: RouterConfig, name: str) -> tuple[Deployment, ...]:
    """Configured deployments of ``name``, else credentials that discovered it upstream."""
    found = config.pools.get(name)
    if found:
        return found
    return tuple(
        Deployment(name, cred, name) for cred in config.credentials.values()
        if cred.discover_models and name in discovery.models_of(cred.name)
    )


def targets(config: RouterConfig, name: str) -> tuple[str, ...]:
    return config.aliases.get(name) or (name,)


def exists(config: RouterConfig, name: str) -> bool:
    return any(pool(config, t) for t in targets(config, name))


def plan(config: RouterConfig, name: str, *, sticky: str | None = None, hops: int = 0) -> Plan:
    """Deployments in the order to try, for each alias target: primaries, fallbacks, then those cooling down."""
    st = state.get()
    now = st.clock()
    out = Plan(name, rules=state.fail2ban_rules(config.fail2ban), hops=hops)
    seen: set[str] = set()
    for index, target in enumerate(targets(config, name)):
        deps = [d for d in pool(config, target) if _first_time(d, seen)]
        cooling: list[tuple[float, Deployment]] = []
        for tier, members in enumerate(_tiers(deps)):
            healthy = []
            for dep in members:
                cd = st.cooling(dep, now)
                if cd is None:
                    healthy.append(dep)
                else:
                    cooling.append((cd.until, dep))
            out.add(_order(out, st, healthy, sticky, f"{target}|{tier}"), index)
        cooling.sort(key=lambda item: item[0])
        out.add([dep for _, dep in cooling], index)
    if not out.deps:
        raise model_not_found(name)
    return out


def _first_time(dep: Deployment, seen: set[str]) -> bool:
    # the same (credential, upstream model) behind two alias targets is tried once
    key = state.dep_key(dep)
    if key in seen:
        return False
    seen.add(key)
    return True


def _tiers(deps: list[Deployment]) -> tuple[list[Deployment], list[Deployment]]:
    return [d for d in deps if not d.credential.is_fallback], [d for d in deps if d.credential.is_fallback]


def _order(out: Plan, st, healthy: list[Deployment], sticky: str | None, key: str) -> list[Deployment]:
    if len(healthy) < 2:
        return healthy
    if sticky:
        return sorted(healthy, key=lambda dep: sticky_score(sticky, dep), reverse=True)
    rotation = state.Rotation(key, len(healthy), wrr_sequence(tuple(d.credential.weight for d in healthy)))
    if not out.deps:
        out.rotation = rotation  # rotated at admission (shared cursor when it goes to Redis)
        return healthy
    return state.rotate(healthy, rotation, st.cursor(key))[0]


@functools.lru_cache(maxsize=256)
def wrr_sequence(weights: tuple[int, ...]) -> tuple[int, ...]:
    """Smooth weighted round robin (nginx's): weights 3,1 give 0,0,1,0 rather than 0,0,0,1."""
    weights = _reduce(weights)
    total = sum(weights)
    current = [0] * len(weights)
    seq = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        seq.append(best)
    return tuple(seq)


def _reduce(weights: tuple[int, ...]) -> tuple[int, ...]:
    weights = tuple(max(1, w) for w in weights)
    divisor = functools.reduce(gcd, weights)
    weights = tuple(w // divisor for w in weights)
    total = sum(weights)
    if total > MAX_SEQUENCE:
        weights = tuple(max(1, round(w * MAX_SEQUENCE / total)) for w in weights)
    return weights


def sticky_score(key: str, dep: Deployment) -> float:
    """Weighted rendezvous hash: the highest score wins; removing a member only moves the keys it had."""
    digest = hashlib.blake2b(f"{key}\0{state.dep_key(dep)}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1) / (2 ** 64 + 1)
    return -max(1, dep.credential.weight) / math.log(u)


def model_not_found(name: str) -> ProxyError:
    return ProxyError(404, f"The model `{name}` does not exist or you do not have access to it.",
                      param="model", code="model_not_found")
