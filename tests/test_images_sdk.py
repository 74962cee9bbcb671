"""The official OpenAI SDK's ``images.generate`` and ``images.edit`` against a real router process (Daphne)
in front of the strict OpenAI, Gemini (AI Studio), Vertex Imagen and Vertex Gemini image fakes."""

from __future__ import annotations

import base64
import json

import openai
import pytest
from openai import OpenAI

from tests.fakes import gemini as g
from tests.fakes.images import b64png, decode, png
from tests.fakes.openai import OpenAIFake
from tests.live import LiveRouter

MASTER = "sk-live-images-master"
PROJECT = "images-project"
BACKENDS = {  # public model -> (credential, upstream model)
    "openai-image": ("openai_images", "gpt-image-1"),
    "vertex-imagen": ("vertex_images", "imagen-4.0-generate-001"),
    "gemini-image": ("gemini_images", "gemini-2.5-flash-image"),
    "vertex-gemini-image": ("vertex_images", "gemini-3-pro-image-preview"),
}


@pytest.fixture(scope="module")
def fakes():
    oauth = g.FakeOAuth().start()
    ups = {"oauth": oauth, "openai": OpenAIFake(api_key="sk-img").start(),
           "gemini": g.GeminiFake(api_key="AIzaImages").start(),
           "vertex": g.GeminiFake(oauth=oauth, project=PROJECT).start()}
    yield ups
    for fake in ups.values():
        fake.stop()


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory):
    sa = json.dumps(fakes["oauth"].service_account(PROJECT))
    config = {
        "server": {"master_key": MASTER},
        "credentials": [
            {"name": "openai_images", "type": "openai", "api_key": "sk-img", "base_url": fakes["openai"].url},
            {"name": "gemini_images", "type": "gemini", "api_key": "AIzaImages", "base_url": fakes["gemini"].url},
            {"name": "vertex_images", "type": "vertex-ai", "project_id": PROJECT, "location": "us-central1",
             "credentials_json": sa, "base_url": fakes["vertex"].url},
        ],
        "models": [{"name": name, "credential": cred, "model": model} for name, (cred, model) in BACKENDS.items()],
    }
    live = LiveRouter(json.dumps(config), tmp_path_factory.mktemp("images")).start()
    yield live
    live.stop()


@pytest.fixture
def client(router) -> OpenAI:
    return OpenAI(base_url=f"{router.url}/v1", api_key=MASTER, max_retries=0, timeout=30)


class Rows:
    """The usage row each call adds (the router writes them in the background)."""

    def __init__(self, router: LiveRouter) -> None:
        self.router = router
        self.seen = len(router.usage_rows(wait_for=0))

    def next(self) -> dict:
        rows = self.router.usage_rows(wait_for=self.seen + 1)
        self.seen = len(rows)
        return rows[-1]


@pytest.fixture
def rows(router) -> Rows:
    return Rows(router)


def script_drawing(fakes, model: str, count: int = 1) -> list[str]:
    """What the Gemini-family fakes will draw (Imagen and OpenAI fakes draw by themselves)."""
    drawn = [b64png(color=(i, 99, 7)) for i in range(count)]
    fake = {"gemini-image": fakes["gemini"], "vertex-gemini-image": fakes["vertex"]}.get(model)
    if fake is not None:
        fake.add(*(g.Turn([g.text("Here it is."), g.image(b)]) for b in drawn))
    return drawn


@pytest.mark.parametrize("model", list(BACKENDS))
def test_generate(client, fakes, rows, model):
    drawn = script_drawing(fakes, model, 2)
    result = client.images.generate(model=model, prompt="A lighthouse at dusk", n=2, size="1024x1024")
    assert len(result.data) == 2 and result.created > 0
    for item in result.data:
        assert decode(item.b64_json).format == "PNG"
    if model.endswith("gemini-image"):
        assert [item.b64_json for item in result.data] == drawn
        assert result.usage is not None and result.usage.output_tokens > 0
    row = rows.next()
    assert (row["endpoint"], row["status"], row["images"], row["requested_model"]) == ("images", 200, 2, model)
    assert fakes["gemini"].rejections == fakes["vertex"].rejections == []


@pytest.mark.parametrize("model", list(BACKENDS))
def test_edit(client, fakes, rows, model):
    drawn = script_drawing(fakes, model)
    extra = {}
    if model in ("openai-image", "vertex-imagen"):
        extra["mask"] = ("mask.png", png(16, 16, transparent_box=True), "image/png")
    result = client.images.edit(model=model, image=("room.png", png(16, 16), "image/png"),
                                prompt="Add a cat on the sofa", **extra)
    assert len(result.data) == 1 and decode(result.data[0].b64_json).format == "PNG"
    if model.endswith("gemini-image"):
        assert result.data[0].b64_json == drawn[0]
    row = rows.next()
    assert (row["endpoint"], row["status"], row["images"]) == ("images", 200, 1)
    if model == "vertex-imagen":
        body = fakes["vertex"].image_bodies[-1]
        assert [r["referenceType"] for r in body["instances"][0]["referenceImages"]] == [
            "REFERENCE_TYPE_RAW", "REFERENCE_TYPE_MASK"]
    if model == "openai-image":
        sent = fakes["openai"].image_requests[-1]
        assert [name for name, _, _ in sent["files"]] == ["image", "mask"]


def test_edit_with_several_images_on_gemini(client, fakes):
    script_drawing(fakes, "gemini-image")
    result = client.images.edit(model="gemini-image", prompt="Put them side by side",
                                image=[("a.png", png(8, 8), "image/png"), ("b.png", png(8, 8, (0, 0, 9)), "image/png")])
    assert len(result.data) == 1
    parts = fakes["gemini"].requests[-1].json["contents"][0]["parts"]
    assert [list(p) for p in parts] == [["text"], ["inlineData"], ["inlineData"]]


def test_stream_partial_images_on_openai(client, rows):
    stream = client.images.generate(model="openai-image", prompt="A fox", stream=True, partial_images=2)
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert events[-1].usage.output_tokens == 272
    row = rows.next()
    assert (row["stream"], row["images"]) == (1, 1)


def test_stream_on_vertex_imagen_is_one_completed_event(client):
    events = list(client.images.generate(model="vertex-imagen", prompt="A fox", stream=True))
    assert [e.type for e in events] == ["image_generation.completed"]
    assert base64.b64decode(events[0].b64_json).startswith(b"\x89PNG")


def test_errors_reach_the_sdk_as_bad_requests(client, fakes):
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="vertex-imagen", prompt="A fox", response_format="url")
    assert "b64_json" in str(exc.value)
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="gemini-image", prompt="A fox", size="1792x1792")
    assert "1024x1024" in str(exc.value)
    fakes["gemini"].add(g.Turn(block="SAFETY"))
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="gemini-image", prompt="something unsafe")
    assert exc.value.code == "content_policy_violation"
