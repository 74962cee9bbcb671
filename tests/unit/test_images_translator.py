"""Table tests of the Images translator and the multipart parser (pure functions, no sockets, no Django)."""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest

from proxy.errors import ProxyError
from proxy.multipart import parse_form
from proxy.translators.images import (
    ImageFile,
    SizeChoice,
    as_content_policy,
    gemini_image_request,
    gemini_image_response,
    gemini_image_usage,
    image_family,
    image_request,
    imagen_edit_model,
    imagen_request,
    imagen_response,
    merge_gemini_responses,
    openai_mask_to_imagen,
    pick_size,
    size_tiers,
    sniff_mime,
)
from tests.fakes.images import decode, png


def req(**fields):
    return image_request({"model": "m", "prompt": "a fox", **fields})


@pytest.mark.parametrize("model, family", [
    ("imagen-4.0-generate-001", "imagen"), ("imagen-3.0-capability-001", "imagen"), ("imagegeneration@006", "imagen"),
    ("gemini-2.5-flash-image", "gemini"), ("gemini-3-pro-image-preview", "gemini"),
    ("publishers/google/models/gemini-2.5-flash-image", "gemini"),
    ("gemini-2.5-flash", None), ("gpt-image-1", None), ("claude-sonnet-4-5", None),
])
def test_image_family(model, family):
    assert image_family(model) == family


@pytest.mark.parametrize("model, tiers", [
    ("imagen-4.0-generate-001", ("1K", "2K")), ("imagen-4.0-ultra-generate-001", ("1K", "2K")),
    ("imagen-4.0-fast-generate-001", ("1K",)), ("imagen-3.0-generate-002", ("1K",)),
    ("gemini-2.5-flash-image", ("1K",)), ("gemini-3-pro-image-preview", ("1K", "2K", "4K")),
    ("gemini-3.1-flash-image-preview", ("1K", "2K", "4K")),
])
def test_size_tiers(model, tiers):
    assert size_tiers(model) == tiers


IMAGEN3, IMAGEN4, FLASH, PRO = ("imagen-3.0-generate-002", "imagen-4.0-generate-001", "gemini-2.5-flash-image",
                                "gemini-3-pro-image-preview")


@pytest.mark.parametrize("size, model, choice", [
    (None, IMAGEN3, SizeChoice()), ("auto", FLASH, SizeChoice()), ("1024x1024", IMAGEN3, SizeChoice("1:1")),
    ("512x512", IMAGEN3, SizeChoice("1:1")), ("1792x1024", IMAGEN3, SizeChoice("16:9")),
    ("1024x1792", IMAGEN3, SizeChoice("9:16")), ("1408x768", IMAGEN3, SizeChoice("16:9")),
    ("16:9", IMAGEN3, SizeChoice("16:9")), ("2816x1536", IMAGEN4, SizeChoice("16:9", "2K")),
    ("1536x1024", FLASH, SizeChoice("3:2")), ("1536x672", FLASH, SizeChoice("21:9")),
    ("1376x768", PRO, SizeChoice("16:9")), ("5504x3072", PRO, SizeChoice("16:9", "4K")),
    ("4096x4096", PRO, SizeChoice("1:1", "4K")),
])
def test_pick_size(size, model, choice):
    assert pick_size(size, model) == choice


@pytest.mark.parametrize("size, model", [
    ("1536x1024", "imagen-3.0-generate-002"), ("2048x2048", "imagen-3.0-generate-002"),
    ("2048x2048", "gemini-2.5-flash-image"), ("21:9", "imagen-4.0-generate-001"), ("big", "gemini-2.5-flash-image"),
    ("1024x10", "gemini-2.5-flash-image"),
])
def test_sizes_a_model_cannot_draw_list_the_allowed_ones(size, model):
    with pytest.raises(ProxyError) as exc:
        pick_size(size, model)
    assert exc.value.status == 400 and exc.value.param == "size" and "auto, 1024x1024" in exc.value.message


def test_request_validation():
    assert req(n="3", stream="true", partial_images="2").n == 3
    assert req(stream="false").stream is False and req(stream=True).stream is True
    for fields, param in (({"n": 11}, "n"), ({"n": True}, "n"), ({"size": 5}, "size"), ({"stream": 1}, "stream"),
                          ({"partial_images": 4}, "partial_images"), ({"output_compression": "x"},
                                                                       "output_compression")):
        with pytest.raises(ProxyError) as exc:
            req(**fields)
        assert exc.value.param == param
    with pytest.raises(ProxyError) as exc:
        image_request({"model": "m", "prompt": "x"}, edit=True)
    assert exc.value.param == "image"


def test_imagen_request_maps_the_openai_fields():
    body, ctx = imagen_request(req(n=4, size="896x1280", output_format="png", moderation="low", negative_prompt="dogs",
                                   enhancePrompt=False, seed=7), "imagen-3.0-generate-002")
    assert body == {"instances": [{"prompt": "a fox"}], "parameters": {
        "sampleCount": 4, "includeRaiReason": True, "aspectRatio": "3:4", "outputOptions": {"mimeType": "image/png"},
        "safetySetting": "block_only_high", "negativePrompt": "dogs", "seed": 7, "enhancePrompt": False}}
    assert ctx.model == "m"
    for fields, param in (({"output_format": "webp"}, "output_format"), ({"response_format": "url"},
                                                                          "response_format"),
                          ({"background": "transparent"}, "background"), ({"n": 5}, "n")):
        with pytest.raises(ProxyError) as exc:
            imagen_request(req(**fields), "imagen-3.0-generate-002")
        assert exc.value.status == 400 and exc.value.param == param


def test_imagen_edit_references():
    image = ImageFile(png(8, 8), "image/png")
    edit = image_request({"model": "m", "prompt": "a hat", "size": "1024x1024"}, edit=True, images=[image],
                         mask=ImageFile(png(8, 8, transparent_box=True), "image/png"))
    edit.imagen_mask = b"MASK"
    body, _ = imagen_request(edit, imagen_edit_model("imagen-3.0-generate-002"))
    refs = body["instances"][0]["referenceImages"]
    assert [r["referenceType"] for r in refs] == ["REFERENCE_TYPE_RAW", "REFERENCE_TYPE_MASK"]
    assert refs[1]["referenceImage"] == {"bytesBase64Encoded": base64.b64encode(b"MASK").decode()}
    assert "aspectRatio" not in body["parameters"]  # an edit keeps the image's own shape
    assert imagen_edit_model("imagen-3.0-capability-002") == "imagen-3.0-capability-002"
    two = image_request({"model": "m", "prompt": "x", "mask_mode": "foreground"}, edit=True, images=[image, image])
    with pytest.raises(ProxyError, match="one image per request"):
        imagen_request(two, "imagen-3.0-capability-001")
    auto = image_request({"model": "m", "prompt": "x", "mask_mode": "foreground", "edit_mode": "EDIT_MODE_BGSWAP"},
                         edit=True, images=[image])
    body, _ = imagen_request(auto, "imagen-3.0-capability-001")
    assert body["instances"][0]["referenceImages"][1] == {
        "referenceType": "REFERENCE_TYPE_MASK", "referenceId": 2,
        "maskImageConfig": {"maskMode": "MASK_MODE_FOREGROUND", "dilation": 0.01}}
    assert body["parameters"]["editMode"] == "EDIT_MODE_BGSWAP"


def test_imagen_response():
    ctx = imagen_request(req(n=2), "imagen-3.0-generate-002")[1]
    out = imagen_response({"predictions": [
        {"bytesBase64Encoded": "AAA", "mimeType": "image/jpeg", "prompt": "A fox, oil painting"},
        {"raiFilteredReason": "filtered"}]}, ctx)
    assert out["data"] == [{"b64_json": "AAA", "revised_prompt": "A fox, oil painting"}]
    assert out["output_format"] == "jpeg" and isinstance(out["created"], int)
    for data in ({}, {"predictions": [{"raiFilteredReason": "Reason A"}, {"raiFilteredReason": "Reason B"}]}):
        with pytest.raises(ProxyError) as exc:
            imagen_response(data, ctx)
        assert exc.value.status == 400 and exc.value.code == "content_policy_violation"


def test_gemini_request_and_response():
    body, ctx = gemini_image_request(req(n=3, size="3:4"), "gemini-2.5-flash-image")
    assert body["generationConfig"] == {"responseModalities": ["IMAGE", "TEXT"], "imageConfig": {"aspectRatio": "3:4"}}
    assert ctx.n == 3
    with pytest.raises(ProxyError, match="mask"):
        gemini_image_request(image_request({"model": "m", "prompt": "x"}, edit=True,
                                           images=[ImageFile(png(), "image/png")],
                                           mask=ImageFile(png(), "image/png")), "gemini-2.5-flash-image")
    with pytest.raises(ProxyError, match="not a PNG"):
        gemini_image_request(image_request({"model": "m", "prompt": "x"}, edit=True,
                                           images=[ImageFile(b"hello", "text/plain")]), "gemini-2.5-flash-image")
    answer = {"candidates": [{"content": {"parts": [{"text": "Sure"}, {"inlineData": {"mimeType": "image/png",
                                                                                      "data": "QQ=="}}]},
                              "finishReason": "STOP"}],
              "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1290, "totalTokenCount": 1295}}
    merged = merge_gemini_responses([answer, answer])
    out = gemini_image_response(merged, ctx)
    assert [d["b64_json"] for d in out["data"]] == ["QQ==", "QQ=="] and out["output_format"] == "png"
    assert out["usage"]["input_tokens"] == 10 and out["usage"]["output_tokens"] == 2580


def test_gemini_usage_by_modality():
    usage = gemini_image_usage({"promptTokenCount": 270, "candidatesTokenCount": 1300, "thoughtsTokenCount": 10,
                                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12},
                                                        {"modality": "IMAGE", "tokenCount": 258}],
                                "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290},
                                                            {"modality": "TEXT", "tokenCount": 10}]})
    assert usage == {"input_tokens": 270, "input_tokens_details": {"text_tokens": 12, "image_tokens": 258},
                     "output_tokens": 1310, "output_tokens_details": {"text_tokens": 10, "image_tokens": 1290},
                     "total_tokens": 1580}


def test_mask_conversion():
    converted = decode(base64.b64encode(openai_mask_to_imagen(png(6, 4, transparent_box=True), png(6, 4))).decode())
    assert converted.mode == "L" and converted.size == (6, 4)
    assert [converted.getpixel((x, 0)) for x in range(6)] == [255, 255, 255, 0, 0, 0]
    assert converted.getpixel((0, 3)) == 0
    for mask, image, message in ((png(6, 4), png(6, 4), "alpha channel"), (png(6, 4, transparent_box=True),
                                                                            png(4, 4), "same size"),
                                 (b"nonsense", png(), "not a readable image")):
        with pytest.raises(ProxyError, match=message):
            openai_mask_to_imagen(mask, image)


def test_content_policy_relabelling():
    refusal = ProxyError(400, "openai upstream error (400): rejected by our safety system", code="moderation_blocked")
    assert as_content_policy(refusal).code == "content_policy_violation"
    google = ProxyError(400, "violate Google's Responsible AI practices", code="INVALID_ARGUMENT")
    assert as_content_policy(google).code == "content_policy_violation"
    other = ProxyError(400, "invalid size", code="invalid_value")
    assert as_content_policy(other) is other
    assert as_content_policy(ProxyError(502, "safety system down")).status == 502


def test_sniff_mime():
    assert sniff_mime(png()) == "image/png"
    assert sniff_mime(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"????", "image/heic") == "image/heic" and sniff_mime(b"????", "text/plain") is None


# ---- multipart ----------------------------------------------------------------------------------

def encoded(fields: dict, files: list) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", data=fields, files=files)
    return request.read(), request.headers["content-type"]


def test_multipart_round_trip_of_binary_files():
    payload = os.urandom(50_000) + b"\r\n--\r\n\r\n"
    body, ctype = encoded({"prompt": "héllo", "n": "2"}, [("image[]", ("a b.png", payload, "image/png")),
                                                           ("mask", ("m.png", b"", "image/png"))])
    parts = parse_form(body, ctype, max_parts=10, max_file_bytes=10**6)
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("prompt", None, ""), ("n", None, ""), ("image[]", "a b.png", "image/png"), ("mask", "m.png", "image/png")]
    assert parts[0].data.decode() == "héllo" and parts[2].data == payload and parts[3].data == b""


@pytest.mark.parametrize("mutate, message", [
    (lambda b, c: (b, "application/json"), "multipart/form-data"),
    (lambda b, c: (b, "multipart/form-data"), "multipart/form-data"),
    (lambda b, c: (b.replace(b"--", b"++"), c), "boundary never appears"),
    (lambda b, c: (b[:-20], c), "closing boundary"),
    (lambda b, c: (b.replace(b"Content-Disposition: form-data; ", b"X: "), c), "Content-Disposition"),
])
def test_malformed_multipart(mutate, message):
    body, ctype = encoded({"prompt": "x"}, [("image", ("a.png", b"data", "image/png"))])
    body, ctype = mutate(body, ctype)
    with pytest.raises(ProxyError, match=message) as exc:
        parse_form(body, ctype, max_parts=10, max_file_bytes=100)
    assert exc.value.status == 400


def test_multipart_limits():
    body, ctype = encoded({f"f{i}": "x" for i in range(5)}, [("image", ("a.png", b"x" * 101, "image/png"))])
    with pytest.raises(ProxyError, match="at most 3"):
        parse_form(body, ctype, max_parts=3, max_file_bytes=1000)
    with pytest.raises(ProxyError) as exc:
        parse_form(body, ctype, max_parts=10, max_file_bytes=100)
    assert exc.value.status == 413 and exc.value.param == "image"


# ---- image outputs of Gemini image models on Chat and Responses ------------------------------------

def test_gemini_image_parts_become_chat_images():
    from proxy.sse import SSEEvent
    from proxy.translators.gemini import GeminiStream, chat_to_gemini, gemini_to_chat

    body, ctx = chat_to_gemini({"model": "nano", "messages": [{"role": "user", "content": "draw"}]},
                               "gemini-2.5-flash-image")
    assert body["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"]}
    plain, _ = chat_to_gemini({"model": "flash", "messages": [{"role": "user", "content": "hi"}]}, "gemini-2.5-flash")
    assert "generationConfig" not in plain
    only_images, _ = chat_to_gemini({"model": "nano", "modalities": ["image"], "messages": [
        {"role": "user", "content": "draw"}]}, "gemini-2.5-flash-image")
    assert only_images["generationConfig"]["responseModalities"] == ["IMAGE"]
    parts = [{"text": "Here"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}, "thought": True},
             {"inlineData": {"mimeType": "image/webp", "data": "BBBB"}}, {"inlineData": {"mimeType": "audio/wav",
                                                                                        "data": "CCCC"}}]
    answer = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}]}
    message = gemini_to_chat(answer, ctx)["choices"][0]["message"]
    assert message["content"] == "Here"
    assert message["images"] == [{"type": "image_url", "image_url": {"url": "data:image/webp;base64,BBBB"}}]
    stream = GeminiStream(ctx)
    chunks = stream.feed(SSEEvent(None, json.dumps(answer))) + stream.finish()
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert {"images": [{"index": 0, "type": "image_url", "image_url": {"url": "data:image/webp;base64,BBBB"}}]} \
        in deltas
    again, _ = chat_to_gemini({"model": "nano", "messages": [
        {"role": "user", "content": "draw"}, message, {"role": "user", "content": "bluer"}]}, "gemini-2.5-flash-image")
    assert again["contents"][1]["parts"] == [{"text": "Here"}, {"inlineData": {"mimeType": "image/webp",
                                                                               "data": "BBBB"}}]


def test_chat_images_become_image_generation_calls_and_back():
    from proxy.translators.responses import chat_to_response, responses_to_chat

    chat, ctx = responses_to_chat({"model": "nano", "input": "draw", "tools": [{"type": "image_generation"}]})
    assert "tools" not in chat and "image_generation" in ctx.dropped_tools
    completion = {"created": 1, "choices": [{"finish_reason": "stop", "message": {
        "role": "assistant", "content": "Here", "images": [{"type": "image_url",
                                                             "image_url": {"url": "data:image/jpeg;base64,QUJD"}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1290}}
    response = chat_to_response(completion, ctx)
    assert response["status"] == "completed"
    image = response["output"][1]
    assert image["type"] == "image_generation_call" and image["id"].startswith("ig_")
    assert (image["status"], image["result"], image["output_format"]) == ("completed", "QUJD", "jpeg")
    history, _ = responses_to_chat({"model": "nano", "input": [{"role": "user", "content": "draw"},
                                                               *response["output"]]})
    assert history["messages"][-1] == {"role": "assistant", "content": "Here", "images": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}}]}
