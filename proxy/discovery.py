"""Models an ``openai``/``proxy`` credential serves, as listed by its upstream ``GET /v1/models``.

Refreshed in the background (never on the request path): the first request
of a process starts a task per event loop that lists every credential marked
``discover_models`` and repeats every ``ROUTER_MODEL_DISCOVERY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from django.conf import settings

from . import config as config_mod
from . import http
from .config import CredentialConfig

log = logging.getLogger(__name__)

_models: dict[str, frozenset[str]] = {}
_tasks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = weakref.WeakKeyDictionary()


def models_of(credential: str) -> frozenset[str]:
    return _models.get(credential, frozenset())


def ensure_started() -> None:
    loop = asyncio.get_running_loop()
    task = _tasks.get(loop)
    if task is None or task.done():
        _tasks[loop] = loop.create_task(_refresh_forever())


async def refresh_once(config: config_mod.RouterConfig) -> None:
    creds = [c for c in config.credentials.values() if c.discover_models]
    results = await asyncio.gather(*(_list(c) for c in creds), return_exceptions=True)
    for cred, result in zip(creds, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("model discovery for %s failed: %s", cred.name, type(result).__name__)
        else:
            _models[cred.name] = result


async def _list(cred: CredentialConfig) -> frozenset[str]:
    from .providers import adapter_for
    from .providers.base import join_url

    adapter = adapter_for(cred.type)
    url = join_url(adapter.base_url(cred), "/models")  # type: ignore[attr-defined]
    resp = await http.client().get(url, headers=adapter.headers(cred), timeout=15.0)  # type: ignore[attr-defined]
    resp.raise_for_status()
    return frozenset(m["id"] for m in resp.json().get("data", []) if isinstance(m, dict) and m.get("id"))


async def _refresh_forever() -> None:
    while True:
        try:
            await refresh_once(await config_mod.current())
        except Exception:
            log.exception("model discovery round failed")
        await asyncio.sleep(settings.ROUTER_MODEL_DISCOVERY_SECONDS)
