"""Calling upstreams: failover before the first byte, timeouts, stream reading.

``open_upstream`` walks the routing plan: the routing state admits the first
candidate that is neither cooling down nor at an RPM/TPM limit (skipping the
others without calling them); the deployment's adapter builds the provider
request, and on a retryable failure (transport error, time-out before headers,
429/5xx/529, a credential rejected) the failure is counted for fail2ban and the
next candidate is admitted, re-translating for its provider, after a small
jitter. Each alias target gets ``ROUTER_MAX_ATTEMPTS`` attempts. For streams it
also reads until the first translated chunk, so an error event that arrives
before any output (Anthropic's ``overloaded_error`` after ``message_start``)
still fails over. Once the caller has sent a byte to the client there is no retry.

When nothing could be admitted: if some deployment is only cooling down after
errors (not rate limits, not permanently), the one that recovers soonest is
probed, at most once a second per process (a half-open circuit breaker: a lone
credential is not refused for a whole ban after a transient blip); otherwise the
client gets 429 + Retry-After when every candidate is rate limited (by us or by
the provider), else 503.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import httpx
from django.conf import settings

from . import http
from . import state as state_mod
from .config import Deployment
from .errors import ProxyError
from .failures import bad_upstream, shape_error, upstream_shape
from .providers import adapter_for
from .providers.base import Adapter, StreamTranslator, UpstreamRequest
from .providers.openai import HOP_HEADER
from .routing import Plan
from .sse import SSEParser
from .state import Skip
from .usage import UsageLog

log = logging.getLogger(__name__)

Build = Callable[[Adapter, Deployment], UpstreamRequest]
HEARTBEAT = object()
#: observers of upstream attempts (metrics, tracing): called with (deployment, attempt number, the
#: upstream request's headers) before it is sent; each returns what to call with (upstream status or
#: None, the ProxyError or None) when the attempt has its answer
AttemptEnd = Callable[[int | None, ProxyError | None], None]
attempt_observers: list[Callable[[Deployment, int, dict[str, str]], AttemptEnd]] = []
# what a broken connection or body raises: aiohttp's errors (a body longer than its Content-Length is a
# ClientResponseError), httpx's with ROUTER_HTTP_TRANSPORT=httpx
BROKEN = (httpx.HTTPError, aiohttp.ClientError)
# the status fail2ban counts when the error did not come with an HTTP status of its own
_STATUS_BY_CODE = {"upstream_authentication_error": 401, "upstream_unreachable": 502, "upstream_timeout": 504,
                   "server_is_overloaded": 529, "rate_limit_exceeded": 429, "insufficient_quota": 429}


@dataclass
class Opened:
    dep: Deployment
    adapter: Adapter
    req: UpstreamRequest
    response: http.Response
    # for streams: chunks already translated while checking the stream started well
    first: list[dict] = field(default_factory=list)
    chunks: AsyncIterator | None = None


@dataclass
class _Walk:
    plan: Plan
    build: Build
    usage: UsageLog
    stream: bool
    heartbeat: float | None
    errors: list[ProxyError] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    spent: Counter = field(default_factory=Counter)


async def open_upstream(plan: Plan, build: Build, usage: UsageLog, *,
                        stream: bool, heartbeat: float | None = None) -> Opened:
    if plan.admission is not None:  # a client key's limits and budget, once, before any attempt
        admit, plan.admission = plan.admission, None
        await admit(usage)
    walk = _Walk(plan, build, usage, stream, heartbeat)
    st = state_mod.get()
    budget = max(1, settings.ROUTER_MAX_ATTEMPTS)
    deps, targets, rotation = list(plan.deps), list(plan.targets), plan.rotation
    while deps:
        admission = await st.admit(deps, rotation)
        rotation = None
        walk.skips.extend(admission.skipped)
        if admission.index is None:
            break
        i = admission.index
        dep, target = admission.order[i], targets[i]
        deps, targets = admission.order[i + 1:], targets[i + 1:]
        opened = await _try(walk, st, dep)
        if opened is not None:
            return opened
        walk.spent[target] += 1
        if walk.spent[target] >= budget:
            kept = [(d, t) for d, t in zip(deps, targets, strict=True) if t != target]
            deps, targets = [d for d, _ in kept], [t for _, t in kept]
    probe = _probe_candidate(walk, st)
    if probe is not None:
        admission = await st.admit([probe], ignore_cooldown=True)
        if admission.index is not None:
            opened = await _try(walk, st, probe, probing=True)
            if opened is not None:
                return opened
        walk.skips.extend(admission.skipped)
    raise best_error(walk.errors, walk.skips, plan.name)


async def _try(walk: _Walk, st, dep: Deployment, *, probing: bool = False) -> Opened | None:
    """One attempt; None when it failed in a way another deployment may fix."""
    usage = walk.usage
    if usage.attempts:
        await asyncio.sleep(random.uniform(0.0, 0.05))  # jitter: do not stampede the next credential
    usage.attempts += 1
    usage.use(dep)
    adapter = adapter_for(dep.credential.type)
    req = walk.build(adapter, dep)  # a ProxyError here is the client's request: no failover
    if dep.credential.type == "proxy":
        req.headers[HOP_HEADER] = str(walk.plan.hops + 1)
    ends = [observe(dep, usage.attempts, req.headers) for observe in attempt_observers]
    try:
        opened = await _attempt(adapter, dep, req, walk.stream, walk.heartbeat)
    except ProxyError as err:
        for end in ends:
            end(upstream_status(err), err)
        walk.errors.append(err)
        if err.credential_fault:
            adapter.on_auth_failure(dep.credential)
        log.info("attempt %d on %s failed: %r", usage.attempts, dep.key, err)
        cooldown = await st.failure(dep, upstream_status(err), walk.plan.rules, retry_after=err.retry_after,
                                    reason=err.message)
        if cooldown is not None:
            log.warning("%s cools down %s after %d failure(s) (status %d)", dep.key,
                        "permanently" if cooldown.permanent else f"for {cooldown.remaining(cooldown.since):g}s",
                        cooldown.failures, cooldown.status)
        if not err.retryable:
            raise
        return None
    except BaseException:  # cancelled (the client left): the attempt still ends
        for end in ends:
            end(None, None)
        raise
    for end in ends:
        end(opened.response.status_code, None)
    await st.success(dep, lift=probing)
    return opened


def _probe_candidate(walk: _Walk, st) -> Deployment | None:
    if walk.usage.attempts:
        return None
    cooling = [s for s in walk.skips if s.reason == "cooldown" and not s.rate and s.wait is not None]
    if not cooling:
        return None
    dep = min(cooling, key=lambda s: s.wait).dep
    return dep if st.probe_allowed(dep) else None


def upstream_status(err: ProxyError) -> int:
    """The provider's HTTP status behind ``err`` (what fail2ban rules are written in)."""
    if err.upstream_status:
        return err.upstream_status
    return _STATUS_BY_CODE.get(err.code or "", err.status)


def _tagged(err: ProxyError, status: int) -> ProxyError:
    err.upstream_status = status
    return err


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
    except aiohttp.ClientResponseError as exc:  # an answer aiohttp could not parse
        raise bad_upstream(adapter.provider, f"an answer that is not valid HTTP ({type(exc).__name__})") from None
    except (httpx.TransportError, aiohttp.ClientError) as exc:
        raise ProxyError(502, f"{adapter.provider} unreachable ({type(exc).__name__})",
                         code="upstream_unreachable", retryable=True) from None
    if response.status_code >= 400:
        try:
            body = await response.aread()
        except BROKEN:
            body = b""
        finally:
            await response.aclose()
        raise _tagged(adapter.error(response.status_code, body, response.headers), response.status_code)
    opened = Opened(dep, adapter, req, response)
    if not stream:
        # nothing reaches the client before the whole body: a failure reading it may still fail over
        try:
            async with asyncio.timeout(settings.ROUTER_IDLE_TIMEOUT):
                await response.aread()
        except TimeoutError:
            raise _silent(settings.ROUTER_IDLE_TIMEOUT) from None
        except BROKEN as exc:
            raise _broken(exc) from None
        finally:
            await response.aclose()
    if stream:
        translator = adapter.chat_stream(req.ctx) if req.ctx is not _NATIVE else None
        opened.chunks = UpstreamChunks(response, translator, heartbeat, adapter.provider)
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


class UpstreamChunks:
    """Translated chunks (or raw SSE events when there is no translator), HEARTBEAT on long silences.

    Each network read is parsed and translated at once; ``buffered`` says whether chunks are
    already at hand, so a relay can join them into one write instead of one per event (an upstream
    may send thousands of tiny events per read). An event the translator cannot make sense of, or
    a 200 answer that holds no event at all (an HTML error page from a proxy in front of the
    provider), is a 502 ``bad_upstream_response``, raised after the chunks translated before it.
    """

    __slots__ = ("_done", "_error", "_events", "_parser", "_provider", "_reads", "_ready", "_response",
                 "_translator")

    def __init__(self, response: http.Response, translator: StreamTranslator | None, heartbeat: float | None,
                 provider: str) -> None:
        self._response = response
        self._reads = _read(response, heartbeat)
        self._parser = SSEParser()
        self._translator = translator
        self._provider = provider
        self._ready: deque = deque()
        self._events = 0
        self._error: ProxyError | None = None
        self._done = False

    def __aiter__(self) -> UpstreamChunks:
        return self

    @property
    def buffered(self) -> bool:
        return bool(self._ready)

    async def __anext__(self):
        ready = self._ready
        while not ready:
            if self._error is not None:
                err, self._error, self._done = self._error, None, True
                raise err
            if self._done:
                raise StopAsyncIteration
            try:
                await self._fill()
            except BaseException:
                self._done = True
                raise
        return ready.popleft()

    async def aclose(self) -> None:
        self._done = True
        await self._reads.aclose()

    async def _fill(self) -> None:
        try:
            data = await anext(self._reads)
        except StopAsyncIteration:
            self._done = True
            self._end()
            return
        if data is HEARTBEAT:
            self._ready.append(HEARTBEAT)
            return
        parsed = self._parser.feed(data)
        self._events += len(parsed)
        translator = self._translator
        if translator is None:
            self._ready.extend(parsed)
            return
        ready = self._ready
        for event in parsed:
            try:
                ready.extend(translator.feed(event))
            except ProxyError as err:
                self._error = err
                return
            except Exception as exc:  # no with-block: this loop runs for every event
                self._error = shape_error(self._provider, exc)
                return

    def _end(self) -> None:
        try:
            with upstream_shape(self._provider):
                tail = self._parser.flush()
                self._events += len(tail)
                if not self._events:
                    kind = self._response.headers.get("content-type", "no content type").split(";")[0]
                    raise bad_upstream(self._provider,
                                       f"a {self._response.status_code} answer without any event ({kind})")
                if self._translator is None:
                    self._ready.extend(tail)
                    return
                for event in tail:
                    self._ready.extend(self._translator.feed(event))
                self._ready.extend(self._translator.finish())
        except ProxyError as err:
            self._error = err


async def joined(pieces: AsyncIterator[bytes], chunks: AsyncIterator | None) -> AsyncIterator[bytes]:
    """What a relay has at hand goes out in one write: pieces are joined while ``chunks`` (an
    ``UpstreamChunks``) still holds parsed chunks, and sent as soon as it would wait for the network.
    A relay yields ``b""`` for a chunk it sends nothing for, so nothing waits behind it."""
    out: list[bytes] = []
    try:
        async for piece in pieces:
            if piece:
                out.append(piece)
            if out and not getattr(chunks, "buffered", False):
                yield out[0] if len(out) == 1 else b"".join(out)
                out = []
        if out:
            yield b"".join(out)
    except Exception:
        if out:
            yield b"".join(out)  # what came before a failure still reaches the client, then its error
        raise
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]


def _read(response: http.Response, heartbeat: float | None) -> AsyncIterator:
    """The upstream body as it arrives, closed at the end; HEARTBEAT after each ``heartbeat`` of
    silence (when given), 504 after ``ROUTER_IDLE_TIMEOUT`` of it."""
    if isinstance(response, http.UpstreamResponse):  # aiohttp: a timed wait per read, nothing else per chunk
        return _timed_reads(response, heartbeat)
    return _timed_iteration(response, heartbeat)


async def _timed_reads(response: http.UpstreamResponse, heartbeat: float | None) -> AsyncIterator:
    idle = settings.ROUTER_IDLE_TIMEOUT
    wait = heartbeat or idle
    silent = 0.0
    try:
        while True:
            try:
                async with asyncio.timeout(wait):
                    data = await response.read_some()
            except TimeoutError:
                silent += wait
                if heartbeat is None or silent >= idle:
                    raise _silent(idle) from None
                yield HEARTBEAT
                continue
            except BROKEN as exc:
                raise _broken(exc) from None
            if not data:
                return
            silent = 0.0
            yield data
    finally:
        await response.aclose()


async def _timed_iteration(response: http.Response, heartbeat: float | None) -> AsyncIterator:
    """The same over ``aiter_bytes`` (the httpx transport): a cancelled ``anext`` would end the
    iterator, so the heartbeat waits on a task that outlives the silence."""
    idle = settings.ROUTER_IDLE_TIMEOUT
    it = response.aiter_bytes().__aiter__()
    pending: asyncio.Future | None = None
    silent = 0.0
    try:
        while True:
            if heartbeat is None:
                try:
                    async with asyncio.timeout(idle):
                        data = await anext(it)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise _silent(idle) from None
                except BROKEN as exc:
                    raise _broken(exc) from None
                yield data
                continue
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
            except BROKEN as exc:
                raise _broken(exc) from None
            yield data
    finally:
        if pending is not None:
            pending.cancel()
        await response.aclose()


def _silent(idle: float) -> ProxyError:
    return ProxyError(504, f"upstream sent nothing for {idle:g}s", code="upstream_timeout", retryable=True)


def _broken(exc: Exception) -> ProxyError:
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProxyError(502, f"upstream answer is not valid HTTP ({type(exc).__name__})",
                          code="bad_upstream_response", retryable=True)
    return ProxyError(502, f"upstream stream broke ({type(exc).__name__})", code="server_error", retryable=True)


def best_error(errors: list[ProxyError], skips: Sequence[Skip] = (), name: str = "") -> ProxyError:
    """The most meaningful error once every attempt failed or every candidate was skipped."""
    if not errors and not skips:
        return ProxyError(503, "no credential available for this model", code="service_unavailable")
    final = [e for e in errors if not e.retryable]
    if final:
        return final[-1]
    if all(e.status == 429 for e in errors) and all(s.rate for s in skips):
        return _rate_limited(errors, skips, name)
    if not errors:
        return _unavailable(skips, name)
    last = errors[-1]
    status = 503 if len(errors) > 1 else (last.status if last.status >= 500 else 502)
    return ProxyError(status, f"All {len(errors)} attempt(s) failed; last: {last.message}",
                      code=last.code or "server_error", type=last.type, retry_after=last.retry_after,
                      **_single_upstream(errors))


def _single_upstream(errors: list[ProxyError]) -> dict:
    """The provider's own status and body when one attempt was made (relayed as-is where the protocols match)."""
    if len(errors) != 1 or errors[0].credential_fault:
        return {}
    return {"upstream_status": errors[0].upstream_status, "upstream_body": errors[0].upstream_body}


def _rate_limited(errors: list[ProxyError], skips: Sequence[Skip], name: str) -> ProxyError:
    waits = [e.retry_after for e in errors if e.retry_after is not None]
    waits += [s.wait for s in skips if s.wait is not None]
    retry_after = max(1.0, min(waits)) if waits else 1.0
    if errors:
        last = errors[-1]
        message = f"Rate limited on all {len(errors)} attempt(s): {last.message}"
        if skips:
            message += f" ({len(skips)} more deployment(s) at their limit or cooling down)"
        return ProxyError(429, message, code=last.code, type=last.type, retry_after=retry_after,
                          **_single_upstream(errors))
    kinds = sorted({s.reason.upper() if s.reason != "cooldown" else "provider rate limit" for s in skips})
    return ProxyError(429, f"Rate limit reached for `{name}`: all {len(skips)} deployment(s) are at their "
                      f"limit ({', '.join(kinds)}); retry after {retry_after:.0f}s.",
                      code="rate_limit_exceeded", retry_after=retry_after)


def _unavailable(skips: Sequence[Skip], name: str) -> ProxyError:
    waits = [s.wait for s in skips if s.wait is not None]
    return ProxyError(503, f"No deployment of `{name}` is available: {unavailable_summary(skips)}.",
                      code="service_unavailable", retry_after=max(1.0, min(waits)) if waits else None)


def unavailable_summary(skips: Sequence[Skip]) -> str:
    """Why every deployment was passed over, in words that fit the counts (no "the others" when none)."""
    total = len(skips)
    cooling = sum(1 for s in skips if s.reason == "cooldown" and not s.rate)
    limited = total - cooling
    if not cooling:
        return "its deployment is at its limits" if total == 1 else f"all {total} deployments are at their limits"
    if not limited:
        parts = ["its deployment is" if total == 1 else f"all {total} deployments are"]
    else:
        parts = [f"{cooling} of {total} deployments {'is' if cooling == 1 else 'are'}"]
    parts.append(" cooling down after upstream errors")
    if limited:
        parts.append(f" and {limited} {'is' if limited == 1 else 'are'} at {'its' if limited == 1 else 'their'} "
                     "limits")
    parts.append("; an admin can lift cooldowns under Proxy > Routing state")
    return "".join(parts)
