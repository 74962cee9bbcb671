"""``POST /v1/images/generations`` (JSON) and ``POST /v1/images/edits`` (multipart) on every backend that draws.

OpenAI-compatible credentials get the request as sent (only ``model`` rewritten);
Imagen and the Gemini image models are translated (``proxy.translators.images``).
Auth, routing, failover and the usage row (endpoint ``images``, image count, tokens
where reported) are the same as for every endpoint.

``stream: true`` is relayed natively (partial images) when every deployment of the
model speaks OpenAI's wire format; otherwise the image is made in one request and sent
as one ``*.completed`` event per image, so a streaming client still works on Google.
A safety refusal by any provider is a 400 ``content_policy_violation``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

from django.conf import settings

from .asgi import Request, Response, StreamingResponse, json_response
from .errors import ProxyError, bad_request
from .failures import upstream_shape
from .multipart import Part, parse_form
from .parsing import upstream_json
from .pipeline import Opened, native, open_upstream
from .providers import adapter_for
from .sse import SSEEvent, encode
from .translators.images import (
    ImageFile,
    ImageRequest,
    as_content_policy,
    chat_usage_from_images,
    image_family,
    image_request,
    openai_mask_to_imagen,
)
from .usage import UsageLog
from .views import authorize, guarded, parse_body, prepend, route, start_log


async def generations(req: Request) -> Response | StreamingResponse:
    log = start_log(req, "images", {}, stream=False)
    return await guarded(log, _serve(req, log, lambda: image_request(parse_body(req))))


async def edits(req: Request) -> Response | StreamingResponse:
    log = start_log(req, "images", {}, stream=False)
    return await guarded(log, _serve(req, log, lambda: _edit_request(req)))


def _edit_request(req: Request) -> ImageRequest:
    parts = parse_form(req.body, req.headers.get("content-type", ""), max_parts=settings.ROUTER_IMAGE_MAX_FILES + 32,
                       max_file_bytes=settings.ROUTER_IMAGE_MAX_BYTES)
    fields: dict[str, str] = {}
    images: list[ImageFile] = []
    mask: ImageFile | None = None
    for part in parts:
        if part.name in ("image", "image[]"):
            images.append(_file(part))
        elif part.name == "mask" and part.is_file:
            mask = _file(part)
        elif not part.is_file:
            try:
                fields[part.name] = part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request(f"Field `{part.name}` is not UTF-8 text.", param=part.name) from None
    if len(images) > settings.ROUTER_IMAGE_MAX_FILES:
        raise bad_request(f"Too many images: at most {settings.ROUTER_IMAGE_MAX_FILES} per request.", param="image")
    return image_request(fields, edit=True, images=images, mask=mask)


def _file(part: Part) -> ImageFile:
    if not part.data:
        raise bad_request(f"The uploaded file in `{part.name}` is empty.", param=part.name.rstrip("[]"))
    return ImageFile(part.data, part.content_type, part.filename or "")


async def _serve(req: Request, log: UsageLog, parse: Callable[[], ImageRequest]) -> Response | StreamingResponse:
    config = await authorize(req)
    ireq = parse()
    log.requested_model, log.stream = ireq.model[:200], ireq.stream
    plan = route(config, req, ireq.fields)
    relay = ireq.stream and all(adapter_for(d.credential.type).passthrough for d in plan.deps)
    if ireq.mask is not None and any(image_family(d.upstream_model) == "imagen" for d in plan.deps):
        ireq.imagen_mask = await asyncio.to_thread(_imagen_mask, ireq)

    def build(adapter, dep):
        upstream = adapter.images_request(dep, ireq, stream=relay)
        return native(upstream) if relay else upstream

    try:
        opened = await open_upstream(plan, build, log, stream=relay)
    except ProxyError as err:
        raise as_content_policy(err) from None
    log.first_byte()
    if relay:
        return StreamingResponse(_relay(opened, log), terminal=image_terminal)
    raw = await opened.response.aread()
    await opened.response.aclose()
    with upstream_shape(opened.adapter.provider):
        result = opened.adapter.images_response(upstream_json(raw, opened.adapter.provider), opened.req.ctx)
        log.images = len(result.get("data") or [])
        log.add_usage(chat_usage_from_images(result.get("usage")))
    if ireq.stream:
        return StreamingResponse(_completed_events(result, ireq), terminal=image_terminal)
    return Response(200, raw) if opened.adapter.passthrough else json_response(result)


def _imagen_mask(ireq: ImageRequest) -> bytes | ProxyError:
    assert ireq.mask is not None
    try:
        return openai_mask_to_imagen(ireq.mask.data, ireq.images[0].data)
    except ProxyError as err:
        return err  # raised only if an Imagen deployment ends up serving the request


# ---- streams ----------------------------------------------------------------------------

async def _relay(opened: Opened, log: UsageLog) -> AsyncIterator[bytes]:
    """OpenAI's own image events (``*.partial_image``, ``*.completed``), byte for byte."""
    chunks = opened.chunks
    assert chunks is not None
    try:
        async for event in prepend(opened.first, chunks):
            if isinstance(event, SSEEvent):
                _note(event, log)
                yield event.raw
    finally:
        await chunks.aclose()


def image_terminal(err: ProxyError) -> bytes:
    """How an image stream ends after a failure: OpenAI's ``error`` event."""
    return encode({"type": "error", "error": err.to_dict()["error"]}, event="error")


def _note(event: SSEEvent, log: UsageLog) -> None:
    try:
        data = json.loads(event.data)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    kind = str(data.get("type") or "")
    if kind.endswith(".completed"):
        log.images += 1
        usage = chat_usage_from_images(data.get("usage")) or {}
        log.prompt += int(usage.get("prompt_tokens") or 0)
        log.completion += int(usage.get("completion_tokens") or 0)
    elif kind == "error":
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        log.fail(as_content_policy(ProxyError(400, str(error.get("message") or "upstream error"),
                                              code=error.get("code"))))


async def _completed_events(result: dict, ireq: ImageRequest) -> AsyncIterator[bytes]:
    """The stream a client asked for, from a whole answer: one ``*.completed`` event per image."""
    kind = "image_edit.completed" if ireq.edit else "image_generation.completed"
    usage = result.get("usage") or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0}}
    for item in result.get("data") or []:
        yield encode({"type": kind, "b64_json": item.get("b64_json"), "created_at": result["created"],
                      "size": ireq.size or "auto", "quality": ireq.get("quality") or "auto",
                      "background": ireq.get("background") or "opaque",
                      "output_format": result.get("output_format") or "png", "usage": usage}, event=kind)
