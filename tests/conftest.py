from __future__ import annotations

import itertools

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from tests.browser import browser  # noqa: F401  (a fixture: headless Chromium for admin pages)


@pytest.fixture(autouse=True)
async def _close_thread_connections():
    """Async tests touch the DB from asgiref's worker threads; close those connections
    so Postgres can drop the test database at the end."""
    yield
    from django.conf import settings

    if not settings.configured:  # pure unit tests run without Django
        return
    from proxy import config, http

    await config.stop_polling()
    await http.aclose()
    await sync_to_async(connections.close_all)()


_spool_ids = itertools.count()


@pytest.fixture(autouse=True)
def _usage_spool_dir(request, tmp_path_factory):
    """Each test spools usage rows to its own directory (created only if a test spools), never the project's."""
    from django.conf import settings

    if settings.configured:
        spool = tmp_path_factory.getbasetemp() / "usage-spool" / str(next(_spool_ids))
        request.getfixturevalue("settings").ROUTER_USAGE_SPOOL_DIR = str(spool)
    yield


@pytest.fixture
def usage_writers(monkeypatch):
    """Every ``UsageWriter`` a test creates is stopped after it, and the process-wide writer does not
    scan for spooled files meanwhile: one writer per spool directory, as in a router process."""
    from proxy import usage
    from proxy.usage import UsageWriter

    created: list[UsageWriter] = []
    init = UsageWriter.__init__

    def tracked(self) -> None:
        init(self)
        created.append(self)

    monkeypatch.setattr(UsageWriter, "__init__", tracked)
    monkeypatch.setattr(usage.writer, "_next_scan", float("inf"))
    yield
    for writer in created:
        writer.stop()


MASTER_KEY = "sk-router-test-key"
AUTH = {"authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture
def app():
    from routerproject.asgi import application

    return application


@pytest.fixture
def router_db(transactional_db):
    """A committed router config (visible to the ASGI app's worker threads) with a master key."""
    from credentials.models import RouterSettings
    from proxy import config, state, usage

    settings_row = RouterSettings.load()
    settings_row.set_master_key(MASTER_KEY)
    settings_row.save()
    config.invalidate()
    yield
    usage.writer.flush()
    config.invalidate()
    state.reset()


def add_credential(name: str, type_: str, *, models: dict[str, str] | list[str] = (), **fields):
    """Create a credential serving ``models`` ({public: upstream} or [public])."""
    from credentials.models import Credential, ProviderModel
    from proxy import config

    cred = Credential.objects.create(name=name, type=type_, **fields)
    items = models.items() if isinstance(models, dict) else [(m, "") for m in models]
    for public, upstream in items:
        ProviderModel.objects.create(name=public, credential=cred, upstream_model=upstream)
    config.invalidate()
    return cred


@pytest.fixture
def openai_fake():
    from tests.fakes.openai import OpenAIFake

    fakes = []

    def make(*replies, **kwargs):
        fake = OpenAIFake(*replies, **kwargs).start()
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.stop()

