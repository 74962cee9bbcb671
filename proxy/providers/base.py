"""The one shape every provider adapter has.

An adapter turns the internal (Chat Completions) request into an
``UpstreamRequest`` for one deployment, and the provider's answer back:
a full response (``chat_response``), a stream (``chat_stream`` returns a
translator with ``feed(SSEEvent) -> list[chunk]`` and ``finish()``), or an
error (``error``); embeddings and images (``images_request`` / ``images_response``)
go the same way. The translation itself lives in ``proxy.translators``
(pure functions); adapters only add URLs, auth and headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import http
from ..config import CredentialConfig, Deployment
from ..errors import ProxyError
from ..sse import SSEEvent
from ..translators.images import ImageRequest


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    ctx: Any = None
    method: str = "POST"
    #: the deployment it was built for and the client's body: for adapters whose ``send`` must
    #: re-authenticate or re-translate once (Vertex after a 401, Gemini after a bad thought signature)
    dep: Deployment | None = None
    source: dict | None = None
    #: multipart uploads (``body`` then holds the form's text fields): (field, (filename, bytes, type))
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None


class StreamTranslator(Protocol):
    def feed(self, event: SSEEvent) -> list[dict]: ...

    def finish(self) -> list[dict]: ...


class RawChunk(dict):
    """A chunk relayed byte for byte (same wire format upstream and downstream)."""

    __slots__ = ("raw",)


class Adapter:
    provider = "base"
    #: the upstream speaks OpenAI Chat: chunks and bodies can be relayed unchanged
    passthrough = False

    async def auth_headers(self, cred: CredentialConfig) -> dict[str, str]:
        return {}

    async def send(self, req: UpstreamRequest, headers: dict[str, str]) -> http.Response:
        """Send and return once the status and headers are in (the body is read by the caller)."""
        if req.files is not None:
            return await http.send(req.method, req.url, headers, form=req.body, files=req.files)
        return await http.send(req.method, req.url, headers, body=req.body)

    def chat_request(self, dep: Deployment, body: dict, *, stream: bool) -> UpstreamRequest:
        raise NotImplementedError

    def chat_response(self, data: dict, ctx: Any) -> dict:
        raise NotImplementedError

    def chat_stream(self, ctx: Any) -> StreamTranslator:
        raise NotImplementedError

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProxyError:
        raise NotImplementedError

    def embeddings_request(self, dep: Deployment, body: dict) -> UpstreamRequest:
        raise ProxyError(400, f"model {dep.name!r} ({self.provider}) does not serve embeddings",
                         param="model", code="unsupported_model")

    def embeddings_response(self, data: dict, ctx: Any) -> dict:
        return data

    def images_request(self, dep: Deployment, req: ImageRequest, *, stream: bool) -> UpstreamRequest:
        """``/v1/images/generations`` or ``/edits`` (``req.edit``); ``stream`` only for native relays."""
        raise ProxyError(400, f"model {dep.name!r} ({self.provider}) does not generate images",
                         param="model", code="unsupported_model")

    def images_response(self, data: dict, ctx: Any) -> dict:
        return data

    # -- /v1/messages: Anthropic-speaking upstreams get the client's request as sent

    def messages_native(self, dep: Deployment) -> bool:
        return False

    def messages_request(self, dep: Deployment, body: dict, client_headers: dict[str, str], *,
                         stream: bool) -> UpstreamRequest:
        raise NotImplementedError

    def count_tokens_request(self, dep: Deployment, body: dict, chat: dict,
                             client_headers: dict[str, str]) -> UpstreamRequest | None:
        """The provider's own token counter for a Messages body (or its Chat translation); None: none."""
        return None

    def count_tokens_response(self, data: dict) -> int | None:
        value = data.get("input_tokens", data.get("totalTokens")) if isinstance(data, dict) else None  # Gemini
        return value if isinstance(value, int) else None

    def on_auth_failure(self, cred: CredentialConfig) -> None:
        """Called when the upstream rejected our credential (token caches drop their token)."""


def join_url(base: str, path: str) -> str:
    """``base`` may or may not end in ``/v1``; ``path`` starts after ``/v1``."""
    base = base.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    return f"{base}/v1{path}"
