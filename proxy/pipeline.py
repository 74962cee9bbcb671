"""Calling upstreams: failover before the first byte, timeouts, stream reading.

``open_upstream`` walks the routing plan: it builds the provider request with
the deployment's adapter, sends it, and on a retryable failure (transport
error, time-out before headers, 429/5xx/529, a credential rejected) moves to
the next deployment, re-translating for that provider. For streams it also
reads until the first translated chunk, so an error event that arrives before
any output (Anthropic's ``overloaded_error`` after ``message_start``) still
fails over. Once the caller has sent a byte to the client there is no retry.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
from django.conf import settings

from .config import Deployment
from .errors import ProxyError
from .providers import adapter_for
from .providers.base import Adapter, StreamTranslator, UpstreamRequest
from .sse import SSEParser
from .usage import UsageLog

log = logging.getLogger(__name__)

Build = Callable[[Adapter, Deployment], UpstreamRequest]
HEARTBEAT = object()


@dataclass
class Opened:
    dep: Deployment
    adapter: Adapter
    req: UpstreamRequest
    response: httpx.Response
    # for streams: chunks already translated while checking the stream started well
    first: list[dict] = field(default_factory=list)
    chunks: AsyncIterator | None = None


async def open_upstream(plan: list[Deployment], build: Build, usage: UsageLog, *,
                        stream: bool, heartbeat: float | None = None) -> Opened:
    errors: list[ProxyError] = []
    max_attempts = max(1, settings.ROUTER_MAX_ATTEMPTS)
    for attempt, dep in enumerate(plan[:max_attempts]):
        if attempt:
            await asyncio.sleep(random.uniform(0.0, 0.05))  # jitter: do not stampede the next credential
        usage.attempts = attempt + 1
        usage.use(dep)
        adapter = adapter_for(dep.credential.type)
        req = build(adapter, dep)  # a ProxyError here is the client's request: no failover
        try:
            opened = await _attempt(adapter, dep, req, stream, heartbeat)
        except ProxyError as err:
            errors.append(err)
            if err.credential_fault:
                adapter.on_auth_failure(dep.credential)
            log.info("attempt %d on %s failed: %r", attempt + 1, dep.key, err)
            if not err.retryable:
                raise
            continue
        return opened
    raise best_error(errors)


async def _attempt(adapter: Adapter, dep: Deployment, req: UpstreamRequest, stream: bool,
                   heartbeat: float | None) -> Opened:
    try:
        headers = {**req.headers, **await adapter.auth_headers(dep.credential)}
    except ProxyError:
        raise
    except Exception as exc:  # token endpoint down, unreadable key file...
        raise ProxyError(502, f"{adapter.provider}: could not authenticate credential {dep.credential.name!r} "
                         f"({type(exc).__name__})", code="upstream_authentication_error",
                         type="upstream_authentication_error", retryable=True, credential_fault=True) from None
    try:
        async with asyncio.timeout(settings.ROUTER_FIRST_BYTE_TIMEOUT):
            response = await adapter.send(req, headers)
    except TimeoutError:
        raise ProxyError(504, f"{adapter.provider} did not answer within {settings.ROUTER_FIRST_BYTE_TIMEOUT:g}s",
                         code="upstream_timeout", retryable=True) from None
    except httpx.TransportError as exc:
        raise ProxyError(502, f"{adapter.provider} unreachable ({type(exc).__name__})",
                         code="upstream_unreachable", retryable=True) from None
    if response.status_code >= 400:
        try:
            body = await response.aread()
        except httpx.HTTPError:
            body = b""
        finally:
            await response.aclose()
        raise adapter.error(response.status_code, body, response.headers)
    opened = Opened(dep, adapter, req, response)
    if stream:
        translator = adapter.chat_stream(req.ctx) if req.ctx is not _NATIVE else None
        opened.chunks = _chunks(response, translator, heartbeat)
        try:
            opened.first = await _first(opened.chunks)
        except BaseException:
            await opened.chunks.aclose()
            await response.aclose()
            raise
    return opened


_NATIVE = object()


def native(req: UpstreamRequest) -> UpstreamRequest:
    """Mark a request whose stream is relayed as raw SSE events, untranslated."""
    req.ctx = _NATIVE
    return req


def is_native(req: UpstreamRequest) -> bool:
    return req.ctx is _NATIVE


async def _first(chunks: AsyncIterator) -> list:
    """Read until the first real output (or the end), keeping what was read."""
    first: list = []
    async for item in chunks:
        if item is HEARTBEAT:
            continue
        first.append(item)
        break
    return first


async def _chunks(response: httpx.Response, translator: StreamTranslator | None,
                  heartbeat: float | None) -> AsyncIterator:
    """Translated chunks (or raw SSE events when ``translator`` is None), HEARTBEAT on long silences."""
    parser = SSEParser()
    async for data in _read(response, heartbeat):
        if data is HEARTBEAT:
            yield HEARTBEAT
            continue
        for event in parser.feed(data):
            if translator is None:
                yield event
            else:
                for chunk in translator.feed(event):
                    yield chunk
    for event in parser.flush():
        if translator is None:
            yield event
        else:
            for chunk in translator.feed(event):
                yield chunk
    if translator is not None:
        for chunk in translator.finish():
            yield chunk


async def _read(response: httpx.Response, heartbeat: float | None) -> AsyncIterator:
    idle = settings.ROUTER_IDLE_TIMEOUT
    it = response.aiter_bytes().__aiter__()
    try:
        if heartbeat is None:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        data = await anext(it)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _silent(idle) from None
                except httpx.HTTPError as exc:
                    raise _broken(exc) from None
                yield data
        pending: asyncio.Future | None = None
        silent = 0.0
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(it))
                done, _ = await asyncio.wait((pending,), timeout=heartbeat)
                if not done:
                    silent += heartbeat
                    if silent >= idle:
                        raise _silent(idle)
                    yield HEARTBEAT
                    continue
                task, pending, silent = pending, None, 0.0
                try:
                    data = task.result()
                except StopAsyncIteration:
                    return
                except httpx.HTTPError as exc:
                    raise _broken(exc) from None
                yield data
        finally:
            if pending is not None:
                pending.cancel()
    finally:
        await response.aclose()


def _silent(idle: float) -> ProxyError:
    return ProxyError(504, f"upstream sent nothing for {idle:g}s", code="upstream_timeout", retryable=True)


def _broken(exc: Exception) -> ProxyError:
    return ProxyError(502, f"upstream stream broke ({type(exc).__name__})", code="server_error", retryable=True)


def best_error(errors: list[ProxyError]) -> ProxyError:
    """The most meaningful error once every attempt failed."""
    if not errors:
        return ProxyError(503, "no credential available for this model", code="service_unavailable")
    final = [e for e in errors if not e.retryable]
    if final:
        return final[-1]
    if all(e.status == 429 for e in errors):
        waits = [e.retry_after for e in errors if e.retry_after is not None]
        last = errors[-1]
        return ProxyError(429, f"Rate limited on all {len(errors)} attempt(s): {last.message}", code=last.code,
                          type=last.type, retry_after=min(waits) if waits else 1.0)
    last = errors[-1]
    status = 503 if len(errors) > 1 else (last.status if last.status >= 500 else 502)
    return ProxyError(status, f"All {len(errors)} attempt(s) failed; last: {last.message}",
                      code=last.code or "server_error", type=last.type, retry_after=last.retry_after)
