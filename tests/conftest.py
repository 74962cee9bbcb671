from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.db import connections


@pytest.fixture(autouse=True)
async def _close_thread_connections():
    """Async tests touch the DB from asgiref's worker threads; close those connections
    so Postgres can drop the test database at the end."""
    yield
    await sync_to_async(connections.close_all)()
