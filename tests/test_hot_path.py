"""Behaviour kept by the hot-path optimisations (bench/ measures their speed; nothing here is timed).

* ``ApiApp`` cancels the handler when the client disconnects and when the server cancels the app;
* Daphne no longer parses POST bodies as forms, and a form POST to the admin still works;
* usage rows go to PostgreSQL with COPY: defaults for omitted fields, values PostgreSQL would refuse
  made storable so one odd row cannot block its batch.
"""

from __future__ import annotations

import asyncio
import re
import sys

import httpx
import pytest

from proxy import asgi
from proxy.asgi import ApiApp, Response
from routerproject import servers

# ---- ApiApp cancellation -----------------------------------------------------------

OPEN = frozenset({"/v1/x"})  # no key needed: these tests are about the front, not auth


class Probe:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def handler(self, req) -> Response:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return Response(200, b"{}")


def scope() -> dict:
    return {"type": "http", "method": "POST", "path": "/v1/x", "headers": [(b"content-length", b"2")]}


def receiver(disconnect: asyncio.Event):
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await disconnect.wait()
        return {"type": "http.disconnect"}

    return receive


async def test_client_disconnect_cancels_the_handler_quietly():
    probe, disconnect, sent = Probe(), asyncio.Event(), []
    app = ApiApp({"/v1/x": {"POST": probe.handler}}, {}, None, optional_auth=OPEN)

    async def send(message):
        sent.append(message)

    running = asyncio.ensure_future(app(scope(), receiver(disconnect), send))
    await probe.started.wait()
    disconnect.set()
    await asyncio.wait_for(running, 2)  # returns normally: a client leaving is not an error
    assert probe.cancelled and sent == []


async def test_server_cancelling_the_app_cancels_the_handler():
    probe = Probe()
    app = ApiApp({"/v1/x": {"POST": probe.handler}}, {}, None, optional_auth=OPEN)

    async def send(message):
        pass

    running = asyncio.ensure_future(app(scope(), receiver(asyncio.Event()), send))
    await probe.started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert probe.cancelled


async def test_a_finished_handler_leaves_no_task_behind():
    sent = []

    async def ok(req) -> Response:
        return Response(200, b"{}")

    async def send(message):
        sent.append(message)

    before = len(asyncio.all_tasks())
    await ApiApp({"/v1/x": {"POST": ok}}, {}, None, optional_auth=OPEN)(scope(), receiver(asyncio.Event()), send)
    await asyncio.sleep(0)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert len(asyncio.all_tasks()) == before


# ---- Daphne's form parsing -----------------------------------------------------------


class FakeWebRequest:
    def __init__(self, channel, queued=None, parsePOSTFormSubmission=True):
        self.parse_forms = parsePOSTFormSubmission


def test_form_parsing_is_switched_off_only_under_daphne(monkeypatch):
    module = type(sys)("daphne.http_protocol")
    module.WebRequest = FakeWebRequest
    monkeypatch.delitem(sys.modules, "daphne.http_protocol", raising=False)
    asgi.skip_twisted_form_parsing()  # not running under Daphne: nothing to patch
    monkeypatch.setitem(sys.modules, "daphne.http_protocol", module)
    monkeypatch.setattr(FakeWebRequest, "__init__", FakeWebRequest.__init__)
    assert FakeWebRequest("channel").parse_forms is True
    monkeypatch.setattr(servers, "running", "uvicorn")  # Daphne imported (it is an installed app), not serving
    asgi.skip_twisted_form_parsing()
    assert FakeWebRequest("channel").parse_forms is True
    monkeypatch.setattr(servers, "running", "daphne")
    asgi.skip_twisted_form_parsing()
    asgi.skip_twisted_form_parsing()  # idempotent: wrapped once
    assert FakeWebRequest("channel").parse_forms is False
    assert FakeWebRequest("channel", parsePOSTFormSubmission=True).parse_forms is True


def test_admin_form_post_still_parsed_under_daphne(tmp_path):
    from tests.live import LiveRouter

    router = LiveRouter("server: {master_key: sk-live}\n", tmp_path).start()
    try:
        with httpx.Client(base_url=router.url, timeout=10) as client:
            page = client.get("/admin/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)[1]
            res = client.post("/admin/login/", data={"csrfmiddlewaretoken": token, "username": "nobody",
                                                     "password": "wrong", "next": "/admin/"})
    finally:
        router.stop()
    assert res.status_code == 200
    assert "Please enter the correct username and password" in res.text  # Django read the form fields


# ---- usage rows through COPY -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_copy_rows_get_defaults_and_storable_values():
    from django.db import connection

    from proxy.models import UsageRecord
    from proxy.usage.rows import clean, write_rows

    if connection.vendor != "postgresql":
        pytest.skip("COPY is the PostgreSQL path; other databases use bulk_create")
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    write_rows([clean(row) for row in (
        {"created_at": now, "request_id": "req_min", "endpoint": "chat.completions", "status": 200},
        {"created_at": now, "request_id": "req_odd", "endpoint": "chat.completions", "status": 502,
         "error_type": "x" * 100, "error_message": "bad\x00byte", "ttfb_ms": None},
    )])
    minimal, odd = UsageRecord.objects.order_by("id")
    assert (minimal.key_id, minimal.attempts, minimal.stream, minimal.ttfb_ms) == ("", 1, False, None)
    assert odd.error_type == "x" * 64 and odd.error_message == "badbyte"
