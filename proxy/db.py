"""Database access off Django's request cycle.

The API handlers bypass Django's request signals, so nothing would return a
worker thread's connection to the pool: every such call closes it (with the
psycopg pool, "close" hands the connection back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import connection

T = TypeVar("T")


def closing[T](fn: Callable[[], T]) -> T:
    try:
        return fn()
    finally:
        connection.close()


async def run[T](fn: Callable[[], T]) -> T:
    """Run a sync ORM function in a worker thread, off the event loop."""
    return await sync_to_async(closing, thread_sensitive=False)(fn)
