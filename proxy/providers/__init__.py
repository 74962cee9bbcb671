"""Provider adapters by credential type."""

from __future__ import annotations

from ..errors import ProxyError
from .base import Adapter
from .demo import DemoAdapter
from .openai import OpenAIAdapter, ProxyAdapter

_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "proxy": ProxyAdapter(),
    "demo": DemoAdapter(),
}


def register(kind: str, adapter: Adapter) -> None:
    _ADAPTERS[kind] = adapter


def adapter_for(kind: str) -> Adapter:
    try:
        return _ADAPTERS[kind]
    except KeyError:
        raise ProxyError(502, f"no adapter for credential type {kind!r}", code="unsupported_provider") from None
