"""The API handlers: ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``, ``/health``.

Handlers take a lean ``Request`` (see ``proxy.asgi``) and return a response;
any ``ProxyError`` becomes an OpenAI-shaped error. Config comes from the
in-memory snapshot, usage goes to the batched writer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

from django.conf import settings

from keys import admission

from . import auth, body_budget, db, discovery, routing, server_limits, shutdown, usage
from . import config as config_mod
from . import state as state_mod
from .asgi import Request, Response, StreamingResponse, json_response
from .auth import authenticate
from .config import RouterConfig
from .errors import ProxyError, bad_request
from .failures import as_proxy_error, upstream_shape
from .parsing import parse_json, upstream_json
from .pipeline import HEARTBEAT, joined, open_upstream
from .providers.openai import HOP_HEADER
from .sse import encode
from .usage import UsageLog

DONE = b"data: [DONE]\n\n"


# ---- shared steps ------------------------------------------------------------

def presented_key(req: Request) -> str:
    """The key the client sent: ``Authorization: Bearer`` or ``x-api-key``."""
    return auth.presented_key(req.headers)


async def authorize(req: Request) -> RouterConfig:
    """The config snapshot for a request whose caller the front has checked (``proxy.auth``)."""
    if req.principal is None:  # a handler called without the front (or a route whose key is optional)
        req.principal = await authenticate(req.headers)
    return await config_mod.current()


def hops(req: Request) -> int:
    """How many routers this request already went through; a loop (A -> B -> A ...) is refused with 508."""
    raw = req.headers.get(HOP_HEADER, "").strip()
    count = int(raw) if raw.isdigit() else 0
    limit = settings.ROUTER_MAX_HOPS
    if count >= limit:
        raise ProxyError(508, f"Loop detected: this request already went through {count} routers "
                         f"(`{HOP_HEADER}`, limit {limit}). Check the `proxy` credentials of the routers involved.",
                         code="loop_detected")
    return count


_SESSION_HEADERS = ("session-id", "x-session-id", "session_id", "x-claude-code-session-id")


def sticky_key(req: Request, body: dict) -> str | None:
    """What keeps a conversation on one credential (its provider prompt cache): the Responses
    ``prompt_cache_key`` (Codex: the thread id), a session header (Claude Code's
    ``X-Claude-Code-Session-Id``), the ``user`` field, or Messages' ``metadata.user_id``."""
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    for value in (body.get("prompt_cache_key"), *(req.headers.get(h) for h in _SESSION_HEADERS), body.get("user"),
                  user_id):
        if isinstance(value, str) and value:
            return value
    return None


def route(config: RouterConfig, req: Request, body: dict) -> routing.Plan:
    """Plan the request. For a client key this is also where its rights apply, so every ingress gets them:
    a model the key may not use is a 404 here, and its limits and budget are admitted (429) by
    ``open_upstream`` before the first attempt, through ``plan.admission``."""
    model = body["model"]
    admission.check_model(req.key, model)
    plan = routing.plan(config, model, sticky=sticky_key(req, body), hops=hops(req))
    if req.key is not None:
        plan.admission = functools.partial(_admit_key, req, body, plan)
    return plan


async def _admit_key(req: Request, body: dict, plan: routing.Plan, log: UsageLog) -> None:
    entry = req.key
    if entry is not None and entry.scopes:
        upstream = plan.deps[0].upstream_model if plan.deps else plan.name
        log.ticket, headers = await admission.admit(entry, plan.name, upstream, req.body, body, req.request_id)
        req.response_headers.update(headers)


def parse_body(req: Request) -> dict:
    try:
        return parse_json(req.body)
    finally:
        req.body_parsed()


def require_model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("`model` is required and must be a non-empty string.", param="model")
    return model


def check_types(body: dict, spec: dict[str, tuple[type, ...]]) -> None:
    for name, types in spec.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            names = " or ".join(t.__name__ for t in types)
            raise bad_request(f"`{name}` must be {names}, not {type(value).__name__}.", param=name)


# OpenAI's types for the chat parameters; a missing or null one takes OpenAI's default (`stream`: false).
_CHAT_TYPES = {
    "stream": (bool,), "temperature": (int, float), "top_p": (int, float), "max_tokens": (int,),
    "max_completion_tokens": (int,), "n": (int,), "tools": (list,), "stop": (str, list),
    "stream_options": (dict,), "response_format": (dict,), "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,), "user": (str,), "reasoning_effort": (str,),
    "presence_penalty": (int, float), "frequency_penalty": (int, float), "seed": (int,), "logprobs": (bool,),
    "top_logprobs": (int,), "logit_bias": (dict,), "metadata": (dict,), "store": (bool,), "modalities": (list,),
    "service_tier": (str,), "prompt_cache_key": (str,), "safety_identifier": (str,),
}
_EMBEDDINGS_TYPES = {"encoding_format": (str,), "dimensions": (int,), "user": (str,)}


def validate_chat(body: dict) -> None:
    require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` is required and must be a non-empty array.", param="messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise bad_request(f"`messages[{i}]` must be an object with a string `role`.", param=f"messages[{i}]")
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"`messages[{i}].content` must be a string or an array of content parts.",
                              param=f"messages[{i}].content")
    check_types(body, _CHAT_TYPES)


def start_log(req: Request, endpoint: str, body: dict, *, stream: bool) -> UsageLog:
    log = UsageLog(req.request_id, endpoint, stream=stream)
    principal = req.principal
    if principal is not None:
        log.key_id = principal.key_id
        log.team_id = principal.key.team_id or "" if principal.key is not None else ""
    log.requested_model = str(body.get("model", ""))[:200]
    return log


async def guarded(log: UsageLog, coro):
    """Run a handler body and see its usage row written exactly once: here for a JSON answer or an
    error, by the front (``StreamingResponse.usage``) once a stream is over."""
    try:
        response = await coro
    except Exception as exc:
        err = as_proxy_error(exc, log.request_id, started=False)
        log.fail(err)
        log.finish()
        raise err from None
    except BaseException as exc:
        cut = shutdown.cut_error() if isinstance(exc, asyncio.CancelledError) else None
        if cut is not None:  # SIGTERM's grace ran out before the answer: 503, not "the client left"
            log.fail(cut)
            log.finish()
            raise cut from None
        log.status, log.client_closed = 499, True
        log.finish()
        raise
    if isinstance(response, StreamingResponse):
        response.usage = log
    else:
        log.finish()
    return response


def estimate(log: UsageLog, seen_chars: int) -> None:
    """No usage from the upstream (a stream cut short): about four characters a token."""
    if log.prompt == 0 and log.completion == 0 and seen_chars > 0:
        log.completion, log.estimated = max(1, seen_chars // 4), True


# ---- /v1/chat/completions ------------------------------------------------------

async def chat_completions(req: Request) -> Response | StreamingResponse:
    body = parse_body(req)
    log = start_log(req, "chat.completions", body, stream=body.get("stream") is True)
    return await guarded(log, _chat(req, body, log))


async def _chat(req: Request, body: dict, log: UsageLog) -> Response | StreamingResponse:
    config = await authorize(req)
    validate_chat(body)
    stream = body.get("stream") is True
    plan = route(config, req, body)
    opened = await open_upstream(
        plan, lambda adapter, dep: adapter.chat_request(dep, body, stream=stream), log, stream=stream)
    log.first_byte()
    if not stream:
        raw = await opened.response.aread()
        await opened.response.aclose()
        with upstream_shape(opened.adapter.provider):
            result = opened.adapter.chat_response(upstream_json(raw, opened.adapter.provider), opened.req.ctx)
            log.add_usage(result.get("usage"))
            for choice in result.get("choices") or ():
                log.finish_reason(choice.get("finish_reason"))
                log.images += len((choice.get("message") or {}).get("images") or ())
        if opened.adapter.passthrough:
            return Response(200, raw)
        return json_response(result)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(joined(_relay_chat(opened.first, opened.chunks, log, include_usage), opened.chunks),
                             terminal=chat_terminal)


def chat_terminal(err: ProxyError) -> bytes:
    return encode(err.to_dict())


async def _relay_chat(first: list[dict], chunks: AsyncIterator, log: UsageLog,
                      include_usage: bool) -> AsyncIterator[bytes]:
    seen_chars = 0
    try:
        async for chunk in prepend(first, chunks):
            if chunk is HEARTBEAT or not _relayed(chunk, log, include_usage):
                yield b""
                continue
            for choice in chunk.get("choices") or ():
                log.images += len((choice.get("delta") or {}).get("images") or ())
                chars = delta_chars(choice.get("delta"))
                if chars:
                    seen_chars += chars
                    log.first_token()
                log.finish_reason(choice.get("finish_reason"))
            raw = getattr(chunk, "raw", None)
            yield raw if raw is not None else encode(chunk)
        yield DONE
    finally:
        await chunks.aclose()
        estimate(log, seen_chars)


def _relayed(chunk: dict, log: UsageLog, include_usage: bool) -> bool:
    """Record the chunk's usage; False for a usage-only chunk the client did not ask for."""
    if not chunk.get("usage"):
        return True
    log.add_usage(chunk["usage"])
    return bool(chunk.get("choices")) or include_usage


async def prepend(first: list, rest: AsyncIterator) -> AsyncIterator:
    for item in first:
        yield item
    async for item in rest:
        yield item


def delta_chars(delta: dict | None) -> int:
    if not delta:
        return 0
    n = len(delta.get("content") or "") + len(delta.get("reasoning_content") or "")
    for call in delta.get("tool_calls") or ():
        n += len((call.get("function") or {}).get("arguments") or "")
    return n


# ---- /v1/embeddings -----------------------------------------------------------

async def embeddings(req: Request) -> Response:
    body = parse_body(req)
    log = start_log(req, "embeddings", body, stream=False)
    return await guarded(log, _embeddings(req, body, log))


async def _embeddings(req: Request, body: dict, log: UsageLog) -> Response:
    config = await authorize(req)
    require_model(body)
    value = body.get("input")
    if not (isinstance(value, str) and value) and not (isinstance(value, list) and value):
        raise bad_request("`input` is required: a string or a non-empty array.", param="input")
    check_types(body, _EMBEDDINGS_TYPES)
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise bad_request("`encoding_format` must be float (the default) or base64.", param="encoding_format")
    if body.get("dimensions") is not None and body["dimensions"] < 1:
        raise bad_request("`dimensions` must be a positive integer.", param="dimensions")
    plan = route(config, req, body)
    opened = await open_upstream(plan, lambda adapter, dep: adapter.embeddings_request(dep, body), log, stream=False)
    log.first_byte()
    raw = await opened.response.aread()
    await opened.response.aclose()
    with upstream_shape(opened.adapter.provider):
        data = opened.adapter.embeddings_response(upstream_json(raw, opened.adapter.provider), opened.req.ctx)
        u = data.get("usage")
        if isinstance(u, dict):
            log.add_usage({"prompt_tokens": u.get("prompt_tokens") or u.get("total_tokens")})
    return json_response(data)


# ---- /v1/models ----------------------------------------------------------------

def _model_entry(config: RouterConfig, name: str) -> dict:
    deps = routing.pool(config, routing.targets(config, name)[0])
    owner = deps[0].credential.type if deps else "router"
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


def all_model_names(config: RouterConfig) -> list[str]:
    names = set(config.pools) | set(config.aliases)
    for cred in config.credentials.values():
        if cred.discover_models:
            names |= discovery.models_of(cred.name)
    return sorted(n for n in names if routing.exists(config, n))


async def list_models(req: Request) -> Response:
    config = await authorize(req)
    names = all_model_names(config)
    if req.key is not None:
        names = [n for n in names if req.key.may_use(n)]
    return json_response({"object": "list", "data": [_model_entry(config, n) for n in names]})


async def get_model(req: Request) -> Response:
    config = await authorize(req)
    name = req.path_param
    admission.check_model(req.key, name)
    if not routing.exists(config, name):
        raise routing.model_not_found(name)
    return json_response(_model_entry(config, name))


# ---- /health -------------------------------------------------------------------

def _db_ok() -> bool:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:
        return False


async def health(req: Request) -> Response:
    db_ok = await db.run(_db_ok)
    payload: dict = {"status": "ok" if db_ok else "degraded", "database": "ok" if db_ok else "unreachable"}
    try:
        config = await config_mod.current()
    except Exception:
        config = None
    payload["credentials_enabled"] = len(config.credentials) if config else None
    payload["models"] = len(config.pools) if config else None
    payload["usage_log"] = usage.writer.stats()
    if payload["usage_log"]["state"] != "ok":
        payload["status"] = "degraded"  # rows are kept, but the writer is failing or far behind
    payload["auth_failures"] = auth.failures.total
    payload["body_budget"] = body_budget.budget.stats()
    payload["connections"] = server_limits.stats()
    routing_state = state_mod.get()
    routing_health = routing_state.health()
    payload["routing_state"] = {k: v for k, v in routing_health.items() if k != "redis_error"}  # names hosts
    if routing_health.get("redis") == "unreachable":
        payload["status"] = "degraded"  # still serving: limits and cooldowns are per process meanwhile
    if config is not None and req.principal is not None and req.key is None:  # details: master key only
        payload["credentials"] = sorted(config.credentials)
        payload["routing_state"] = routing_health
        payload["cooldowns"] = [cd.to_dict() for cd in await routing_state.acooldowns()]
    return json_response(payload, 200 if db_ok else 503)
