"""Provider adapters by credential type."""

from __future__ import annotations

from ..errors import ProxyError
from .anthropic import AnthropicAdapter
from .base import Adapter
from .demo import DemoAdapter
from .gemini import GeminiAdapter
from .openai import OpenAIAdapter, ProxyAdapter
from .vertex import VertexAdapter

_ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIAdapter(),
    "proxy": ProxyAdapter(),
    "demo": DemoAdapter(),
    "anthropic": AnthropicAdapter(),
    "gemini": GeminiAdapter(),
    "vertex-ai": VertexAdapter(),
}


def adapter_for(kind: str) -> Adapter:
    try:
        return _ADAPTERS[kind]
    except KeyError:
        raise ProxyError(502, f"no adapter for credential type {kind!r}", code="unsupported_provider") from None
