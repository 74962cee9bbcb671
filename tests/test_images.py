"""/v1/images/generations and /v1/images/edits end to end: the router in-process, the strict OpenAI,
Imagen (AI Studio and Vertex) and Gemini image fakes on sockets, usage rows from the real writer."""

from __future__ import annotations

import base64
import itertools
import json
import os

import httpx
import pytest
from asgiref.sync import sync_to_async

from tests.asgi_client import AsgiResult, call
from tests.chat_helpers import rows
from tests.conftest import AUTH, add_credential
from tests.fakes import gemini as g
from tests.fakes.images import b64png, decode, png
from tests.fakes.openai import IMAGE_USAGE, error_reply
from tests.fakes.server import Reply, sse_frames

pytestmark = pytest.mark.django_db(transaction=True)

PROJECT = "img-project"
_names = itertools.count()


async def generate(app, body: dict) -> AsgiResult:
    return await call(app, "POST", "/v1/images/generations", body, AUTH)


def form(fields: dict, files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[bytes, dict[str, str]]:
    request = httpx.Request("POST", "http://router/v1/images/edits", data=fields, files=files)
    return request.read(), {**AUTH, "content-type": request.headers["content-type"]}


async def edit(app, fields: dict, files: list) -> AsgiResult:
    body, headers = form(fields, files)
    return await call(app, "POST", "/v1/images/edits", body, headers)


class Backends:
    """Fakes and credentials of one test: an OpenAI one, Gemini on AI Studio, Vertex (Imagen and Gemini)."""

    def __init__(self, openai_fake) -> None:
        self.openai_fake = openai_fake
        self.oauth = g.FakeOAuth().start()
        self.servers: list = [self.oauth]

    async def openai(self, models: dict[str, str]):
        fake = self.openai_fake()
        await sync_to_async(add_credential)(f"openai_{next(_names)}", "openai", models=models,
                                            api_key="sk-upstream-secret", base_url=fake.url)
        return fake

    async def studio(self, models: dict[str, str], *script) -> g.GeminiFake:
        fake = g.GeminiFake(*script, api_key="AIzaImg").start()
        self.servers.append(fake)
        await sync_to_async(add_credential)(f"gemini_{next(_names)}", "gemini", models=models, api_key="AIzaImg",
                                            base_url=fake.url)
        return fake

    async def vertex(self, models: dict[str, str], *script) -> g.GeminiFake:
        fake = g.GeminiFake(*script, oauth=self.oauth, project=PROJECT).start()
        self.servers.append(fake)
        await sync_to_async(add_credential)(
            f"vertex_{next(_names)}", "vertex-ai", models=models, project_id=PROJECT, location="us-central1",
            base_url=fake.url, service_account_json=json.dumps(self.oauth.service_account(PROJECT)))
        return fake

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def backends(router_db, openai_fake):
    env = Backends(openai_fake)
    yield env
    env.stop()


def image_turn(*images: str, text: str | None = None, usage: dict | None = None) -> g.Turn:
    parts = ([g.text(text)] if text else []) + [g.image(b) for b in images]
    meta = usage or {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302,
                     "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
                     "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}]}
    return g.Turn(parts, usage=meta)


# ---- OpenAI: passthrough ---------------------------------------------------------------------

async def test_openai_generation_is_relayed_with_the_upstream_model(app, backends):
    fake = await backends.openai({"draw": "gpt-image-1"})
    res = await generate(app, {"model": "draw", "prompt": "a red fox", "n": 2, "size": "1024x1024",
                               "quality": "low", "moderation": "low"})
    assert res.status == 200, res.body
    body = res.json()
    assert len(body["data"]) == 2 and decode(body["data"][0]["b64_json"]).size == (4, 4)
    assert body["usage"] == IMAGE_USAGE
    sent = fake.requests[0]
    assert sent.path == "/v1/images/generations" and sent.headers["authorization"] == "Bearer sk-upstream-secret"
    assert sent.json == {"model": "gpt-image-1", "prompt": "a red fox", "n": 2, "size": "1024x1024",
                         "quality": "low", "moderation": "low"}
    [row] = await rows()
    assert (row.endpoint, row.status, row.images, row.prompt_tokens, row.completion_tokens, row.provider) == (
        "images", 200, 2, 50, 272, "openai")
    assert row.requested_model == "draw" and row.resolved_model == "gpt-image-1"


async def test_openai_stream_relays_partial_images(app, backends):
    await backends.openai({"draw": "gpt-image-1"})
    res = await generate(app, {"model": "draw", "prompt": "a fox", "stream": True, "partial_images": 2})
    assert res.status == 200 and res.headers["content-type"] == "text/event-stream"
    events = [json.loads(d) for d in res.sse_data()]
    assert [e["type"] for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.get("partial_image_index") for e in events[:2]] == [0, 1]
    assert b"event: image_generation.partial_image\n" in res.body
    [row] = await rows()
    assert (row.stream, row.images, row.prompt_tokens, row.completion_tokens) == (True, 1, 50, 272)


async def test_openai_url_format_and_refusal(app, backends):
    fake = await backends.openai({"dalle": "dall-e-3"})
    res = await generate(app, {"model": "dalle", "prompt": "a fox", "response_format": "url"})
    assert res.status == 200 and res.json()["data"][0]["url"].startswith("https://")
    fake.image_replies.append(error_reply(400, "Your request was rejected as a result of our safety system.",
                                          code="moderation_blocked", type_="image_generation_user_error"))
    res = await generate(app, {"model": "dalle", "prompt": "something bad"})
    assert res.status == 400
    error = res.json()["error"]
    assert error["code"] == "content_policy_violation" and "safety system" in error["message"]
    assert [r.status for r in await rows()] == [200, 400]


async def test_openai_edit_is_relayed_as_multipart(app, backends):
    fake = await backends.openai({"draw": "gpt-image-1"})
    image, mask = png(8, 8), png(8, 8, transparent_box=True)
    res = await edit(app, {"model": "draw", "prompt": "add a hat", "n": "1", "input_fidelity": "high"},
                     [("image[]", ("a.png", image, "image/png")), ("image[]", ("b.png", image, "image/png")),
                      ("mask", ("mask.png", mask, "image/png"))])
    assert res.status == 200, res.body
    [sent] = fake.image_requests
    assert sent["fields"] == {"model": "gpt-image-1", "prompt": "add a hat", "n": "1", "input_fidelity": "high"}
    assert sent["files"] == [("image[]", "a.png", image), ("image[]", "b.png", image), ("mask", "mask.png", mask)]
    [row] = await rows()
    assert (row.endpoint, row.images) == ("images", 1)


async def test_openai_edit_stream(app, backends):
    await backends.openai({"draw": "gpt-image-1"})
    res = await edit(app, {"model": "draw", "prompt": "add a hat", "stream": "true", "partial_images": "1"},
                     [("image", ("a.png", png(), "image/png"))])
    assert [json.loads(d)["type"] for d in res.sse_data()] == ["image_edit.partial_image", "image_edit.completed"]


# ---- Imagen --------------------------------------------------------------------------------------

async def test_vertex_imagen_generation(app, backends):
    fake = await backends.vertex({"imagen": "imagen-4.0-generate-001"})
    res = await generate(app, {"model": "imagen", "prompt": "a lighthouse", "n": 3, "size": "1408x768",
                               "output_format": "jpeg", "output_compression": 80, "person_generation": "dont_allow",
                               "safety_setting": "block_medium_and_above"})
    assert res.status == 200, res.body
    body = res.json()
    assert len(body["data"]) == 3 and body["output_format"] == "jpeg" and "usage" not in body
    assert decode(body["data"][0]["b64_json"]).format == "PNG"
    sent = fake.requests[0]
    assert sent.path == f"/v1/projects/{PROJECT}/locations/us-central1/publishers/google/models/" \
                        "imagen-4.0-generate-001:predict"
    assert sent.json == {"instances": [{"prompt": "a lighthouse"}], "parameters": {
        "sampleCount": 3, "includeRaiReason": True, "aspectRatio": "16:9",
        "outputOptions": {"mimeType": "image/jpeg", "compressionQuality": 80},
        "personGeneration": "dont_allow", "safetySetting": "block_medium_and_above"}}
    assert fake.rejections == []
    [row] = await rows()
    assert (row.provider, row.images, row.prompt_tokens) == ("vertex-ai", 3, 0)


async def test_imagen_on_ai_studio_and_its_2k_tier(app, backends):
    fake = await backends.studio({"imagen": "imagen-4.0-generate-001"})
    res = await generate(app, {"model": "imagen", "prompt": "a lighthouse", "size": "2048x2048"})
    assert res.status == 200, res.body
    sent = fake.requests[0]
    assert sent.path == "/v1beta/models/imagen-4.0-generate-001:predict" and sent.headers["x-goog-api-key"] == "AIzaImg"
    assert sent.json["parameters"] == {"sampleCount": 1, "includeRaiReason": True, "aspectRatio": "1:1",
                                       "sampleImageSize": "2K"}


async def test_imagen_refusals_are_content_policy_violations(app, backends):
    filtered = Reply(json={"predictions": [{"raiFilteredReason": "39322892: detected a person"}]})
    front = g.GoogleError(400, "INVALID_ARGUMENT", "Image generation failed with the following error: The prompt "
                          "could not be submitted. This prompt contains sensitive words that violate Google's "
                          "Responsible AI practices. Support codes: 42876398")
    await backends.vertex({"imagen": "imagen-3.0-generate-002"}, filtered, front, Reply(json={}))
    messages = []
    for _ in range(3):
        res = await generate(app, {"model": "imagen", "prompt": "something"})
        assert res.status == 400, res.body
        assert res.json()["error"]["code"] == "content_policy_violation"
        messages.append(res.json()["error"]["message"])
    assert "detected a person" in messages[0] and "Responsible AI" in messages[1] and "safety filter" in messages[2]
    assert {r.error_type for r in await rows()} == {"content_policy_violation"}


async def test_vertex_imagen_edit_maps_the_mask(app, backends):
    fake = await backends.vertex({"imagen": "imagen-3.0-generate-002"})
    image, mask = png(8, 8), png(8, 8, transparent_box=True)
    res = await edit(app, {"model": "imagen", "prompt": "a cat on the sofa", "n": "2"},
                     [("image", ("room.png", image, "image/png")), ("mask", ("mask.png", mask, "image/png"))])
    assert res.status == 200, res.body
    assert len(res.json()["data"]) == 2
    sent = fake.requests[0]
    assert sent.path.endswith("/publishers/google/models/imagen-3.0-capability-001:predict")
    [instance] = sent.json["instances"]
    raw, mask_ref = instance["referenceImages"]
    assert raw == {"referenceType": "REFERENCE_TYPE_RAW", "referenceId": 1,
                   "referenceImage": {"bytesBase64Encoded": base64.b64encode(image).decode()}}
    assert mask_ref["maskImageConfig"]["maskMode"] == "MASK_MODE_USER_PROVIDED"
    converted = decode(mask_ref["referenceImage"]["bytesBase64Encoded"])
    assert converted.mode == "L" and converted.getpixel((0, 0)) == 255 and converted.getpixel((7, 7)) == 0
    assert sent.json["parameters"] == {"sampleCount": 2, "includeRaiReason": True,
                                       "editMode": "EDIT_MODE_INPAINT_INSERTION"}
    assert fake.rejections == []
    [row] = await rows()
    assert (row.images, row.resolved_model) == (2, "imagen-3.0-generate-002")


async def test_imagen_edit_needs_a_usable_mask(app, backends):
    await backends.vertex({"imagen": "imagen-3.0-generate-002"})
    image = png(8, 8)
    res = await edit(app, {"model": "imagen", "prompt": "a cat"}, [("image", ("a.png", image, "image/png"))])
    assert res.status == 400 and res.json()["error"]["param"] == "mask"
    res = await edit(app, {"model": "imagen", "prompt": "a cat"},
                     [("image", ("a.png", image, "image/png")), ("mask", ("m.png", png(8, 8), "image/png"))])
    assert res.status == 400 and "alpha channel" in res.json()["error"]["message"]
    res = await edit(app, {"model": "imagen", "prompt": "a cat"},
                     [("image", ("a.png", image, "image/png")),
                      ("mask", ("m.png", png(4, 4, transparent_box=True), "image/png"))])
    assert res.status == 400 and "same size" in res.json()["error"]["message"]
    res = await edit(app, {"model": "imagen", "prompt": "replace the sky", "mask_mode": "background"},
                     [("image", ("a.png", image, "image/png"))])
    assert res.status == 200, res.body


# ---- Gemini image models ---------------------------------------------------------------------------

async def test_gemini_generation_on_ai_studio(app, backends):
    one, two = b64png(color=(1, 2, 3)), b64png(color=(4, 5, 6))
    fake = await backends.studio({"nano": "gemini-2.5-flash-image"}, image_turn(one, text="Here you go."),
                                 image_turn(two))
    res = await generate(app, {"model": "nano", "prompt": "a banana", "n": 2, "size": "1344x768"})
    assert res.status == 200, res.body
    body = res.json()
    assert [d["b64_json"] for d in body["data"]] == [one, two]
    assert body["usage"] == {"input_tokens": 24, "input_tokens_details": {"text_tokens": 24, "image_tokens": 0},
                             "output_tokens": 2580, "output_tokens_details": {"text_tokens": 0, "image_tokens": 2580},
                             "total_tokens": 2604}
    assert len(fake.requests) == 2 and fake.rejections == []
    sent = fake.requests[0]
    assert sent.path == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert sent.json == {"contents": [{"role": "user", "parts": [{"text": "a banana"}]}], "generationConfig": {
        "responseModalities": ["IMAGE", "TEXT"], "imageConfig": {"aspectRatio": "16:9"}}}
    [row] = await rows()
    assert (row.images, row.prompt_tokens, row.completion_tokens) == (2, 24, 2580)


async def test_vertex_gemini_edit_sends_the_images_inline(app, backends):
    drawn = b64png(color=(9, 9, 9))
    fake = await backends.vertex({"nano-pro": "gemini-3-pro-image-preview"},
                                 g.Turn([g.image(b64png(), thought_image=True), g.image(drawn)]))
    first, second = png(6, 6), png(6, 6, (0, 0, 255))
    res = await edit(app, {"model": "nano-pro", "prompt": "merge them", "size": "4096x4096"},
                     [("image[]", ("a.png", first, "image/png")),
                      ("image[]", ("b.png", second, "application/octet-stream"))])
    assert res.status == 200, res.body
    assert [d["b64_json"] for d in res.json()["data"]] == [drawn]
    sent = fake.requests[0].json
    assert sent["contents"][0]["parts"] == [
        {"text": "merge them"}, {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(first).decode()}},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(second).decode()}}]
    assert sent["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "4K"}
    assert fake.rejections == []


async def test_gemini_refusals_and_text_only_answers(app, backends):
    await backends.studio({"nano": "gemini-2.5-flash-image"},
                          g.Turn(block="PROHIBITED_CONTENT"),
                          g.Turn(g.text("I can't draw that."), finish="IMAGE_SAFETY", finish_message="Unsafe image."),
                          g.Turn(g.text("Would you like a poem instead?"), finish="STOP"))
    first = await generate(app, {"model": "nano", "prompt": "x"})
    second = await generate(app, {"model": "nano", "prompt": "y"})
    third = await generate(app, {"model": "nano", "prompt": "z"})
    assert [r.status for r in (first, second, third)] == [400, 400, 400]
    assert first.json()["error"]["code"] == second.json()["error"]["code"] == "content_policy_violation"
    assert "PROHIBITED_CONTENT" in first.json()["error"]["message"]
    assert "IMAGE_SAFETY" in second.json()["error"]["message"] and "Unsafe image." in second.json()["error"]["message"]
    assert third.json()["error"]["code"] == "image_generation_failed" and "poem" in third.json()["error"]["message"]


async def test_stream_on_google_is_one_completed_event_per_image(app, backends):
    await backends.vertex({"imagen": "imagen-3.0-generate-002"})
    res = await generate(app, {"model": "imagen", "prompt": "a fox", "stream": True, "n": 2})
    assert res.status == 200
    events = [json.loads(d) for d in res.sse_data()]
    assert [e["type"] for e in events] == ["image_generation.completed"] * 2
    assert all(decode(e["b64_json"]).size == (4, 4) for e in events)


# ---- errors ---------------------------------------------------------------------------------------

async def test_url_format_and_sizes_google_cannot_do(app, backends):
    await backends.vertex({"imagen": "imagen-3.0-generate-002", "nano": "gemini-2.5-flash-image"})
    res = await generate(app, {"model": "imagen", "prompt": "a fox", "response_format": "url"})
    assert res.status == 400
    error = res.json()["error"]
    assert error["param"] == "response_format" and "only" in error["message"] and "b64_json" in error["message"]
    res = await generate(app, {"model": "imagen", "prompt": "a fox", "size": "1536x1024"})
    error = res.json()["error"]
    assert res.status == 400 and error["param"] == "size"
    assert "1024x1024" in error["message"] and "1408x768" in error["message"] and "2048" not in error["message"]
    res = await generate(app, {"model": "nano", "prompt": "a fox", "size": "2048x2048"})
    assert res.status == 400 and "1536x672" in res.json()["error"]["message"]
    res = await generate(app, {"model": "nano", "prompt": "a fox", "background": "transparent"})
    assert res.status == 400 and res.json()["error"]["param"] == "background"
    assert {r.endpoint for r in await rows()} == {"images"}


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x"}, "model"), ({"model": "draw"}, "prompt"), ({"model": "draw", "prompt": "x", "n": 0}, "n"),
    ({"model": "draw", "prompt": "x", "response_format": "png"}, "response_format"),
    ({"model": "draw", "prompt": "x", "stream": "yes"}, "stream"),
])
async def test_bad_generation_bodies(app, backends, body, param):
    await backends.openai({"draw": "gpt-image-1"})
    res = await generate(app, body)
    assert res.status == 400 and res.json()["error"]["param"] == param


async def test_bad_edit_forms(app, backends, settings):
    fake = await backends.openai({"draw": "gpt-image-1"})
    res = await edit(app, {"model": "draw", "prompt": "x"}, [("notes", ("notes.txt", b"hi", "text/plain"))])
    assert res.status == 400 and res.json()["error"]["param"] == "image"
    res = await call(app, "POST", "/v1/images/edits", {"model": "draw", "prompt": "x"}, AUTH)
    assert res.status == 400 and "multipart/form-data" in res.json()["error"]["message"]
    body, headers = form({"model": "draw", "prompt": "x"}, [("image", ("a.png", png(), "image/png"))])
    res = await call(app, "POST", "/v1/images/edits", body[:-30], headers)
    assert res.status == 400 and "Malformed multipart" in res.json()["error"]["message"]
    settings.ROUTER_IMAGE_MAX_BYTES = 1000
    noisy = png() + os.urandom(2000)
    res = await edit(app, {"model": "draw", "prompt": "x"}, [("image", ("big.png", noisy, "image/png"))])
    assert res.status == 413 and res.json()["error"]["code"] == "file_too_large"
    settings.ROUTER_MAX_BODY_BYTES = 500
    res = await edit(app, {"model": "draw", "prompt": "x"}, [("image", ("a.png", noisy[:600], "image/png"))])
    assert res.status == 413
    res = await call(app, "POST", "/v1/images/edits", b"", {})
    assert res.status == 401
    assert fake.image_requests == []


async def test_models_that_do_not_draw_and_failover(app, backends):
    await backends.studio({"flash": "gemini-2.5-flash"})
    res = await generate(app, {"model": "flash", "prompt": "a fox"})
    assert res.status == 400 and res.json()["error"]["code"] == "unsupported_model"
    broken = await backends.openai({"pool": "gpt-image-1"})
    broken.image_replies.append(error_reply(503, "overloaded", type_="server_error"))
    healthy = await backends.openai({"pool": "gpt-image-1"})
    for _ in range(2):  # whichever credential goes first, the broken one fails over to the healthy one
        res = await generate(app, {"model": "pool", "prompt": "a fox"})
        assert res.status == 200, res.body
    assert len(broken.image_requests) == 1 and len(healthy.image_requests) == 2
    last = (await rows())[-2:]
    assert [r.images for r in last] == [1, 1] and sorted(r.attempts for r in last) == [1, 2]


# ---- image outputs on /v1/chat/completions and /v1/responses ------------------------------------

async def test_chat_on_a_gemini_image_model_returns_images_on_the_message(app, backends):
    drawn = b64png(color=(7, 7, 7))
    fake = await backends.studio({"nano": "gemini-2.5-flash-image"},
                                 image_turn(drawn, text="A red square:"), image_turn(drawn))
    res = await call(app, "POST", "/v1/chat/completions",
                     {"model": "nano", "messages": [{"role": "user", "content": "Draw a red square"}]}, AUTH)
    assert res.status == 200, res.body
    message = res.json()["choices"][0]["message"]
    assert message["content"] == "A red square:"
    assert message["images"] == [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{drawn}"}}]
    assert fake.requests[0].json["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"]}
    # the next turn sends the drawing back inline, so the model can edit it; streamed this time
    history = [{"role": "user", "content": "Draw a red square"}, message, {"role": "user", "content": "Bluer"}]
    res = await call(app, "POST", "/v1/chat/completions", {"model": "nano", "messages": history, "stream": True}, AUTH)
    chunks = [json.loads(d) for d in res.sse_data() if d != "[DONE]"]
    images = [i for c in chunks for ch in c["choices"] for i in ch["delta"].get("images") or []]
    assert images == [{"index": 0, "type": "image_url", "image_url": {"url": f"data:image/png;base64,{drawn}"}}]
    model_turn = fake.requests[1].json["contents"][1]
    assert model_turn == {"role": "model", "parts": [{"text": "A red square:"},
                                                     {"inlineData": {"mimeType": "image/png", "data": drawn}}]}
    assert fake.rejections == []
    assert [r.images for r in await rows()] == [1, 1]


async def test_responses_on_a_gemini_image_model_returns_image_generation_calls(app, backends):
    drawn = b64png(color=(8, 8, 8))
    fake = await backends.vertex({"nano": "gemini-2.5-flash-image"}, image_turn(drawn, text="Here:"),
                                 image_turn(drawn))
    body = {"model": "nano", "input": "Draw a square", "stream": False,
            "tools": [{"type": "image_generation", "quality": "low"}]}
    res = await call(app, "POST", "/v1/responses", body, AUTH)
    assert res.status == 200, res.body
    output = res.json()["output"]
    assert [o["type"] for o in output] == ["message", "image_generation_call"]
    assert output[1]["result"] == drawn and output[1]["status"] == "completed"
    assert "tools" not in fake.requests[0].json  # the hosted image tool has no Gemini equivalent: dropped
    streamed = await call(app, "POST", "/v1/responses",
                          {"model": "nano", "stream": True, "input": [{"role": "user", "content": "Draw"}, *output,
                                                                      {"role": "user", "content": "Again"}]}, AUTH)
    events = [json.loads(d) for d in streamed.sse_data()]
    kinds = [e["type"] for e in events]
    assert "response.image_generation_call.in_progress" in kinds and "response.image_generation_call.completed" in kinds
    assert events[-1]["response"]["output"][0]["result"] == drawn
    assert fake.requests[1].json["contents"][1]["parts"][-1] == {"inlineData": {"mimeType": "image/png",
                                                                                "data": drawn}}
    assert fake.rejections == []
    assert [r.images for r in await rows()] == [1, 1]


async def test_image_generation_tool_goes_natively_to_openai_responses(app, backends, openai_fake):
    final = {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5",
             "output": [{"id": "ig_1", "type": "image_generation_call", "status": "completed", "result": b64png()}],
             "usage": {"input_tokens": 20, "output_tokens": 1000}}
    frames = sse_frames([{"type": "response.created", "response": {**final, "status": "in_progress", "output": []}},
                         {"type": "response.completed", "response": final}], event_names=True)
    fake = openai_fake(Reply(sse=frames))
    await sync_to_async(add_credential)("native_images", "openai", models={"gpt-5": "gpt-5"},
                                        api_key="sk-upstream-secret", base_url=fake.url, responses_api=True)
    body = {"model": "gpt-5", "input": "Draw a fox", "stream": True,
            "tools": [{"type": "image_generation", "partial_images": 1}]}
    res = await call(app, "POST", "/v1/responses", body, AUTH)
    assert res.status == 200 and res.sse_data()[-1] == json.dumps({"type": "response.completed", "response": final})
    assert fake.requests[0].json["tools"] == [{"type": "image_generation", "partial_images": 1}]
    [row] = await rows()
    assert (row.images, row.prompt_tokens) == (1, 20)


def _set_prices(by_model: dict[str, dict]) -> None:
    from datetime import UTC, datetime

    from pricing.models import Price

    Price.objects.all().delete()
    for model, fields in by_model.items():
        Price.objects.create(model=model, effective_from=datetime.now(UTC).date(), **fields)


async def test_image_rows_are_priced_per_image_and_per_token(app, backends):
    from decimal import Decimal as D

    await sync_to_async(_set_prices)({
        "imagen-3.0-generate-002": {"output_cost_per_image": D("0.04")},
        "gemini-2.5-flash-image": {"input_cost_per_token": D("3e-7"), "output_cost_per_token": D("3e-5")}})
    await backends.vertex({"imagen": "imagen-3.0-generate-002"})
    await backends.studio({"nano": "gemini-2.5-flash-image"}, image_turn(b64png()))
    assert (await generate(app, {"model": "imagen", "prompt": "a fox", "n": 3})).status == 200
    assert (await generate(app, {"model": "nano", "prompt": "a fox"})).status == 200
    imagen, nano = await rows()
    assert (imagen.images, imagen.cost_usd) == (3, D("0.12"))
    assert (nano.images, nano.prompt_tokens, nano.completion_tokens) == (1, 12, 1290)
    assert nano.cost_usd == 12 * D("3e-7") + 1290 * D("3e-5")


async def test_a_broken_image_stream_ends_with_an_error_event(app, backends):
    fake = await backends.openai({"draw": "gpt-image-1"})
    partial = sse_frames([{"type": "image_generation.partial_image", "b64_json": b64png(), "partial_image_index": 0}],
                         event_names=True)
    fake.image_replies.append(Reply(sse=[*partial, *partial], reset_after=1))
    res = await generate(app, {"model": "draw", "prompt": "a fox", "stream": True, "partial_images": 2})
    assert res.status == 200
    events = [json.loads(d) for d in res.sse_data()]
    assert [e["type"] for e in events] == ["image_generation.partial_image", "error"]
    assert res.body.endswith(b"\n\n") and b"event: error\n" in res.body
    [row] = await rows()
    assert row.status == 502 and row.error_type and row.images == 0
