"""From a requested model name to the ordered deployments to try."""

from __future__ import annotations

import itertools

from . import discovery
from .config import Deployment, RouterConfig
from .errors import ProxyError

_cursor = itertools.count()


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


def plan(config: RouterConfig, name: str) -> list[Deployment]:
    """Deployments in the order to try: each alias target's pool (primaries rotated, then fallbacks)."""
    order: list[Deployment] = []
    for target in targets(config, name):
        deps = pool(config, target)
        primaries = [d for d in deps if not d.credential.is_fallback]
        fallbacks = [d for d in deps if d.credential.is_fallback]
        if primaries:
            shift = next(_cursor) % len(primaries)
            primaries = primaries[shift:] + primaries[:shift]
        order.extend(primaries + fallbacks)
    if not order:
        raise model_not_found(name)
    return order


def model_not_found(name: str) -> ProxyError:
    return ProxyError(404, f"The model `{name}` does not exist or you do not have access to it.",
                      param="model", code="model_not_found")
