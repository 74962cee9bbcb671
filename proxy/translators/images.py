"""OpenAI's Images API (``/v1/images/generations`` and ``/edits``) <-> Google's image models.

Two Google families draw: Imagen (``imagen-*``: ``:predict`` with ``instances`` and
``parameters``; edits through the capability model with reference images) and the Gemini
image models (``gemini-*-image*``: ``generateContent`` with ``responseModalities`` IMAGE;
edits send the input images as inline parts). Both answer base64 only, so
``response_format: url`` is refused; sizes map to the aspect ratios (and size tiers) the
model can draw, anything else is refused with the list. A refusal by the provider's
safety filter is a 400 ``content_policy_violation`` carrying the provider's reason.

Everything here is pure: the request is validated into an ``ImageRequest`` first (the
multipart form of edits is parsed by ``proxy.multipart``).
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProxyError, bad_request
from .common import now

RESPONSE_FORMATS = ("url", "b64_json")
_MIME_BY_FORMAT = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
_FORMAT_BY_MIME = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif"}
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


@dataclass(slots=True)
class ImageFile:
    data: bytes
    content_type: str
    filename: str = ""


@dataclass(slots=True)
class ImageRequest:
    """A validated image request; ``fields`` is what the client sent (relayed to OpenAI as is)."""

    model: str
    prompt: str
    fields: dict[str, Any]
    edit: bool = False
    n: int = 1
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    stream: bool = False
    images: list[ImageFile] = field(default_factory=list)
    mask: ImageFile | None = None
    #: the mask in Imagen's convention (white = edit), or the reason it cannot be had
    imagen_mask: bytes | ProxyError | None = None

    def get(self, name: str) -> Any:
        return self.fields.get(name)


def sniff_mime(data: bytes, declared: str = "") -> str | None:
    """The image type from its magic bytes (a client's declared type is often octet-stream)."""
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return declared if declared.startswith("image/") else None


# ---- the client's request -----------------------------------------------------------

def _integer(fields: dict, name: str, low: int, high: int) -> int | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad_request(f"`{name}` must be an integer from {low} to {high}.", param=name)
    return value


def _string(fields: dict, name: str, choices: tuple[str, ...] = ()) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request(f"`{name}` must be a string.", param=name)
    if choices and value not in choices:
        raise bad_request(f"`{name}` must be one of {', '.join(choices)}; got {value!r}.", param=name)
    return value


def _flag(fields: dict, name: str) -> bool:
    value = fields.get(name)
    if isinstance(value, str):
        if value.lower() not in ("true", "false", ""):
            raise bad_request(f"`{name}` must be true or false.", param=name)
        return value.lower() == "true"
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"`{name}` must be a boolean.", param=name)
    return bool(value)


def image_request(fields: dict, *, edit: bool = False, images: list[ImageFile] | None = None,
                  mask: ImageFile | None = None) -> ImageRequest:
    """Validate a generations body (JSON) or an edits form (string values) into an ``ImageRequest``."""
    model = fields.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("`model` is required and must be a non-empty string.", param="model")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad_request("`prompt` is required and must be a non-empty string.", param="prompt")
    if edit and not images:
        raise bad_request("`image` is required: upload one or more image files (multipart field `image`, or "
                          "`image[]` for several).", param="image")
    n = _integer(fields, "n", 1, 10) or 1
    _integer(fields, "partial_images", 0, 3)
    _integer(fields, "output_compression", 0, 100)
    return ImageRequest(
        model=model, prompt=prompt, fields=fields, edit=edit, n=n, size=_string(fields, "size"),
        response_format=_string(fields, "response_format", RESPONSE_FORMATS),
        output_format=_string(fields, "output_format"), stream=_flag(fields, "stream"),
        images=list(images or ()), mask=mask)


# ---- model families and sizes ---------------------------------------------------------

_VERSION = re.compile(r"gemini-(\d+(?:\.\d+)?)")


def image_family(model: str) -> str | None:
    """``imagen`` or ``gemini`` for Google models that draw; None for the others."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith(("imagen-", "imagegeneration")):
        return "imagen"
    if name.startswith("gemini") and "image" in name:
        return "gemini"
    return None


# Pixel sizes at the 1K tier; the 2K and 4K tiers double and quadruple them.
IMAGEN_SIZES = {"1:1": (1024, 1024), "3:4": (896, 1280), "4:3": (1280, 896), "9:16": (768, 1408),
                "16:9": (1408, 768)}
GEMINI_SIZES = {"1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1184),
                "4:3": (1184, 864), "4:5": (896, 1152), "5:4": (1152, 896), "9:16": (768, 1344),
                "16:9": (1344, 768), "21:9": (1536, 672)}
_TIER_SCALE = {"1K": 1, "2K": 2, "4K": 4}
_RATIO_TOLERANCE = 0.03


def size_tiers(model: str) -> tuple[str, ...]:
    name = model.lower()
    if image_family(name) == "imagen":
        return ("1K", "2K") if "imagen-4" in name and "fast" not in name else ("1K",)
    match = _VERSION.search(name)
    return ("1K", "2K", "4K") if match and float(match.group(1)) >= 3 else ("1K",)


@dataclass(frozen=True, slots=True)
class SizeChoice:
    aspect_ratio: str | None = None
    tier: str | None = None  # None: the model's default (1K)


def _exact_sizes(table: dict[str, tuple[int, int]], tiers: tuple[str, ...]) -> dict[str, SizeChoice]:
    return {f"{w * _TIER_SCALE[t]}x{h * _TIER_SCALE[t]}": SizeChoice(ratio, None if t == "1K" else t)
            for t in tiers for ratio, (w, h) in table.items()}


def _nominal(ratio: str) -> float:
    width, _, height = ratio.partition(":")
    return int(width) / int(height)


def pick_size(size: str | None, model: str) -> SizeChoice:
    """``size`` (``WxH``, an aspect ratio ``W:H`` or ``auto``) -> the aspect ratio and tier to ask for.

    A ``WxH`` the model draws exactly is taken as is; another one is taken when it is within 3 % of
    one of the model's aspect ratios (1792x1024 is 16:9) at a size tier the model has (by area:
    about 1, 4 or 16 megapixels).
    """
    table = IMAGEN_SIZES if image_family(model) == "imagen" else GEMINI_SIZES
    tiers = size_tiers(model)
    exact = _exact_sizes(table, tiers)
    if size is None or size == "auto":
        return SizeChoice()
    if size in table:
        return SizeChoice(size)
    if size in exact:
        return exact[size]
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", size)
    if match:
        width, height = int(match.group(1)), int(match.group(2))
        ratio = next((r for r in table if abs(width / height - _nominal(r)) <= _RATIO_TOLERANCE * _nominal(r)), None)
        megapixels = width * height / 1e6
        tier = "1K" if megapixels <= 2.2 else "2K" if megapixels <= 8 else "4K"
        if ratio is not None and tier in tiers:
            return SizeChoice(ratio, None if tier == "1K" else tier)
    raise bad_request(
        f"size {size!r} is not available for model {model!r}: it draws {', '.join(['auto', *exact])} "
        f"(or an aspect ratio: {', '.join(table)}).", param="size", code="invalid_size")


def _check_url_format(req: ImageRequest, model: str) -> None:
    if req.response_format == "url":
        raise bad_request(f"response_format 'url' is not available for model {model!r}: it only returns images "
                          "inline. Use response_format 'b64_json' (the default).", param="response_format",
                          code="unsupported_response_format")


def _check_background(req: ImageRequest, model: str) -> None:
    if req.get("background") == "transparent":
        raise bad_request(f"background 'transparent' is not available for model {model!r}; use 'opaque' or 'auto'.",
                          param="background", code="unsupported_value")


# ---- Imagen ---------------------------------------------------------------------------

IMAGEN_EDIT_MODEL = "imagen-3.0-capability-001"
IMAGEN_MAX_IMAGES = 4
# Imagen parameters a client may pass through (snake_case like the rest of the body, or Google's own names).
_IMAGEN_PASSTHROUGH = {"safety_setting": "safetySetting", "person_generation": "personGeneration",
                       "negative_prompt": "negativePrompt", "seed": "seed", "add_watermark": "addWatermark",
                       "enhance_prompt": "enhancePrompt", "language": "language", "guidance_scale": "guidanceScale",
                       "include_safety_attributes": "includeSafetyAttributes", "edit_mode": "editMode",
                       "base_steps": "baseSteps"}
_MASK_MODES = {"background": "MASK_MODE_BACKGROUND", "foreground": "MASK_MODE_FOREGROUND",
               "semantic": "MASK_MODE_SEMANTIC"}


@dataclass(slots=True)
class ImagenContext:
    model: str  # the client's model name
    requested: int


def imagen_edit_model(model: str) -> str:
    """Imagen edits run on the capability model unless the deployment already names one."""
    return model if "capability" in model else IMAGEN_EDIT_MODEL


def _imagen_parameters(req: ImageRequest, model: str) -> dict:
    if req.n > IMAGEN_MAX_IMAGES:
        raise bad_request(f"model {model!r} (Imagen) draws at most {IMAGEN_MAX_IMAGES} images per request; "
                          f"got n={req.n}.", param="n")
    params: dict[str, Any] = {"sampleCount": req.n, "includeRaiReason": True}
    choice = pick_size(req.size, model)
    if choice.aspect_ratio and not req.edit:
        params["aspectRatio"] = choice.aspect_ratio
    if choice.tier:
        params["sampleImageSize"] = choice.tier
    if req.output_format:
        mime = _MIME_BY_FORMAT.get(req.output_format)
        if mime not in ("image/png", "image/jpeg"):
            raise bad_request(f"output_format {req.output_format!r} is not available for model {model!r}: "
                              "use png or jpeg.", param="output_format", code="unsupported_value")
        params["outputOptions"] = {"mimeType": mime}
        compression = req.get("output_compression")
        if compression not in (None, "") and mime == "image/jpeg":
            params["outputOptions"]["compressionQuality"] = int(compression)
    if req.get("moderation") == "low":
        params["safetySetting"] = "block_only_high"
    for snake, camel in _IMAGEN_PASSTHROUGH.items():
        for name in (snake, camel):
            if req.get(name) not in (None, ""):
                params[camel] = req.get(name)
    return params


def imagen_request(req: ImageRequest, model: str) -> tuple[dict, ImagenContext]:
    """The ``:predict`` body for generations, or for edits on the capability model."""
    _check_url_format(req, model)
    _check_background(req, model)
    params = _imagen_parameters(req, model)
    instance: dict[str, Any] = {"prompt": req.prompt}
    if req.edit:
        instance["referenceImages"] = _imagen_references(req, model, params)
    return {"instances": [instance], "parameters": params}, ImagenContext(req.model, req.n)


def _imagen_references(req: ImageRequest, model: str, params: dict) -> list[dict]:
    if len(req.images) != 1:
        raise bad_request(f"model {model!r} (Imagen) edits one image per request; got {len(req.images)}.",
                          param="image")
    refs: list[dict] = [{"referenceType": "REFERENCE_TYPE_RAW", "referenceId": 1,
                         "referenceImage": {"bytesBase64Encoded": _b64(req.images[0].data)}}]
    mask_mode = _string(req.fields, "mask_mode", tuple(_MASK_MODES))
    if req.mask is not None:
        if isinstance(req.imagen_mask, ProxyError):
            raise req.imagen_mask
        if req.imagen_mask is None:
            raise ProxyError(500, "the mask was not converted", code="internal_error")
        refs.append({"referenceType": "REFERENCE_TYPE_MASK", "referenceId": 2,
                     "referenceImage": {"bytesBase64Encoded": _b64(req.imagen_mask)},
                     "maskImageConfig": {"maskMode": "MASK_MODE_USER_PROVIDED", "dilation": 0.01}})
    elif mask_mode:
        refs.append({"referenceType": "REFERENCE_TYPE_MASK", "referenceId": 2,
                     "maskImageConfig": {"maskMode": _MASK_MODES[mask_mode], "dilation": 0.01}})
    else:
        raise bad_request(f"model {model!r} (Imagen) edits inside a mask: upload `mask` (a PNG the size of the image, "
                          "transparent where the image should change) or set `mask_mode` to background, foreground "
                          "or semantic.", param="mask")
    params.setdefault("editMode", "EDIT_MODE_INPAINT_INSERTION")
    return refs


def imagen_response(data: dict, ctx: ImagenContext) -> dict:
    """``:predict`` answer -> ``ImagesResponse``; all images filtered -> 400 ``content_policy_violation``."""
    predictions = [p for p in data.get("predictions") or [] if isinstance(p, dict)]
    images = [p for p in predictions if p.get("bytesBase64Encoded")]
    if not images:
        reasons = [str(p["raiFilteredReason"]) for p in predictions if p.get("raiFilteredReason")]
        reason = "; ".join(reasons) or "every image was removed by the provider's safety filter"
        raise content_policy(f"Imagen refused the prompt: {reason}")
    out: list[dict] = []
    for p in images:
        item = {"b64_json": p["bytesBase64Encoded"]}
        if p.get("prompt"):
            item["revised_prompt"] = p["prompt"]
        out.append(item)
    result: dict[str, Any] = {"created": now(), "data": out}
    fmt = _FORMAT_BY_MIME.get(str(images[0].get("mimeType") or ""))
    if fmt:
        result["output_format"] = fmt
    return result


# ---- Gemini image models ---------------------------------------------------------------

@dataclass(slots=True)
class GeminiImageContext:
    model: str  # the client's model name
    n: int  # one generateContent call per image (these models answer one candidate)


def gemini_image_request(req: ImageRequest, model: str) -> tuple[dict, GeminiImageContext]:
    _check_url_format(req, model)
    _check_background(req, model)
    if req.mask is not None:
        raise bad_request(f"model {model!r} (Gemini) does not take a mask: it edits from the prompt alone; describe "
                          "the area to change in the prompt and send the image without `mask`.", param="mask")
    parts: list[dict] = [{"text": req.prompt}]
    for i, image in enumerate(req.images):
        mime = sniff_mime(image.data, image.content_type)
        if mime is None:
            raise bad_request(f"image {i} is not a PNG, JPEG, WEBP or GIF image.", param="image")
        parts.append({"inlineData": {"mimeType": mime, "data": _b64(image.data)}})
    config: dict[str, Any] = {"responseModalities": ["IMAGE", "TEXT"]}
    choice = pick_size(req.size, model)
    image_config = {}
    if choice.aspect_ratio:
        image_config["aspectRatio"] = choice.aspect_ratio
    if choice.tier:
        image_config["imageSize"] = choice.tier
    if image_config:
        config["imageConfig"] = image_config
    body = {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}
    return body, GeminiImageContext(req.model, req.n)


def merge_gemini_responses(datas: list[dict]) -> dict:
    """Several ``generateContent`` answers (one per image asked for) as one: candidates joined, usage summed."""
    merged: dict[str, Any] = {"candidates": [c for d in datas for c in d.get("candidates") or []]}
    feedback = next((d["promptFeedback"] for d in datas if d.get("promptFeedback")), None)
    if feedback:
        merged["promptFeedback"] = feedback
    metas = [d["usageMetadata"] for d in datas if isinstance(d.get("usageMetadata"), dict)]
    if metas:
        usage: dict[str, Any] = {}
        for key in ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "totalTokenCount"):
            usage[key] = sum(int(m.get(key) or 0) for m in metas)
        for key in ("promptTokensDetails", "candidatesTokensDetails"):
            usage[key] = [item for m in metas for item in m.get(key) or []]
        merged["usageMetadata"] = usage
    return merged


_REFUSED = frozenset({"SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST",
                      "SPII", "RECITATION", "IMAGE_RECITATION"})


def gemini_image_parts(candidate: dict) -> list[dict]:
    """The drawn images of a candidate (thought images, drafts of Gemini 3, are left out)."""
    parts = (candidate.get("content") or {}).get("parts") or []
    return [p["inlineData"] for p in parts
            if isinstance(p, dict) and isinstance(p.get("inlineData"), dict) and not p.get("thought")
            and str(p["inlineData"].get("mimeType", "")).startswith("image/") and p["inlineData"].get("data")]


def gemini_image_response(data: dict, ctx: GeminiImageContext) -> dict:
    """A (merged) ``generateContent`` answer -> ``ImagesResponse``."""
    candidates = [c for c in data.get("candidates") or [] if isinstance(c, dict)]
    images = [img for c in candidates for img in gemini_image_parts(c)]
    if not images:
        raise _gemini_no_image(data, candidates)
    result: dict[str, Any] = {"created": now(), "data": [{"b64_json": img["data"]} for img in images]}
    fmt = _FORMAT_BY_MIME.get(str(images[0].get("mimeType")))
    if fmt:
        result["output_format"] = fmt
    if isinstance(data.get("usageMetadata"), dict):
        result["usage"] = gemini_image_usage(data["usageMetadata"])
    return result


def _gemini_no_image(data: dict, candidates: list[dict]) -> ProxyError:
    feedback = data.get("promptFeedback") or {}
    if feedback.get("blockReason"):
        detail = feedback.get("blockReasonMessage") or ""
        return content_policy(f"Gemini blocked the prompt ({feedback['blockReason']}){': ' + detail if detail else ''}")
    reasons = [str(c.get("finishReason")) for c in candidates if c.get("finishReason")]
    said = " ".join(p["text"] for c in candidates for p in (c.get("content") or {}).get("parts") or []
                    if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")).strip()
    messages = " ".join(str(c["finishMessage"]) for c in candidates if c.get("finishMessage"))
    detail = "; ".join(x for x in (messages, said[:1000]) if x)
    refused = next((r for r in reasons if r in _REFUSED), None)
    if refused:
        return content_policy(f"Gemini refused to draw ({refused}){': ' + detail if detail else ''}")
    return ProxyError(400, f"Gemini returned no image (finish reason {', '.join(reasons) or 'none'})"
                      f"{': ' + detail if detail else ''}", code="image_generation_failed")


def _modality_tokens(details: list | None) -> dict[str, int]:
    out = {"text_tokens": 0, "image_tokens": 0}
    for item in details or []:
        if isinstance(item, dict):
            key = "image_tokens" if item.get("modality") == "IMAGE" else "text_tokens"
            out[key] += int(item.get("tokenCount") or 0)
    return out


def gemini_image_usage(meta: dict) -> dict:
    """``usageMetadata`` -> the Images API ``usage`` (input/output tokens split by modality)."""
    prompt = int(meta.get("promptTokenCount") or 0)
    output = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    inputs = _modality_tokens(meta.get("promptTokensDetails"))
    if not meta.get("promptTokensDetails"):
        inputs["text_tokens"] = prompt
    outputs = _modality_tokens(meta.get("candidatesTokensDetails"))
    if not meta.get("candidatesTokensDetails"):
        outputs["image_tokens"] = output
    return {"input_tokens": prompt, "input_tokens_details": inputs, "output_tokens": output,
            "output_tokens_details": outputs, "total_tokens": prompt + output}


# ---- masks, usage, errors --------------------------------------------------------------------

def openai_mask_to_imagen(mask: bytes, image: bytes) -> bytes:
    """OpenAI's mask (a PNG whose fully transparent pixels mark the area to edit) -> Imagen's (white = edit).

    Raises a 400 when the mask has no alpha channel or its size differs from the image's.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(mask)) as m, Image.open(io.BytesIO(image)) as base:
            if m.size != base.size:
                raise bad_request(f"the mask is {m.size[0]}x{m.size[1]} but the image is {base.size[0]}x"
                                  f"{base.size[1]}: they must be the same size.", param="mask")
            if "A" not in m.getbands() and "transparency" not in m.info:
                raise bad_request("the mask must be a PNG with an alpha channel: fully transparent pixels mark "
                                  "where the image should change.", param="mask")
            alpha = m.convert("RGBA").getchannel("A")
            edit = alpha.point(lambda a: 255 if a == 0 else 0, mode="L")
            out = io.BytesIO()
            edit.save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if isinstance(exc, ProxyError):
            raise
        raise bad_request("the mask or the image is not a readable image (PNG, JPEG or WEBP).",
                          param="mask") from None


def chat_usage_from_images(usage: Any) -> dict | None:
    """The Images API ``usage`` (``input_tokens``...) in the Chat shape the usage log reads."""
    if not isinstance(usage, dict):
        return None
    return {"prompt_tokens": usage.get("input_tokens") or 0, "completion_tokens": usage.get("output_tokens") or 0}


_POLICY_TEXT = re.compile(r"moderation_blocked|content[_ ]policy|safety (system|filter)|Responsible AI|"
                          r"sensitive words|prohibited", re.I)


def content_policy(message: str) -> ProxyError:
    return ProxyError(400, message, code="content_policy_violation", type="invalid_request_error")


def as_content_policy(err: ProxyError) -> ProxyError:
    """A provider's 400 that is a safety refusal, re-labelled ``content_policy_violation`` (others unchanged)."""
    if err.status == 400 and err.code != "content_policy_violation" and \
            (err.code == "moderation_blocked" or _POLICY_TEXT.search(err.message)):
        return content_policy(err.message)
    return err


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
