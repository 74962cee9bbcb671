"""The routers' database: a throwaway PostgreSQL database (dropped at the end), or a SQLite file."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


@dataclass
class Database:
    kind: str
    url: str
    admin_url: str = ""  # PostgreSQL: where the throwaway database was created
    name: str = ""

    @classmethod
    def create(cls, choice: str, postgres_url: str, tmp: Path) -> Database:
        if choice != "sqlite":
            try:
                return cls._create_postgres(postgres_url)
            except Exception as exc:
                if choice == "postgres":
                    raise
                print(f"(PostgreSQL at {postgres_url} not usable: {type(exc).__name__}; using SQLite)")
        return cls.sqlite(tmp / "bench.sqlite3")

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls("SQLite", f"sqlite:///{path}")

    @classmethod
    def _create_postgres(cls, admin_url: str) -> Database:
        import psycopg

        name = f"bench_router_{os.getpid()}"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return cls("PostgreSQL", urlunsplit(urlsplit(admin_url)._replace(path="/" + name)), admin_url, name)

    def count_usage_rows(self) -> int:
        query = "SELECT count(*) FROM proxy_usagerecord"
        if self.kind == "SQLite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return conn.execute(query).fetchone()[0]
        import psycopg

        with psycopg.connect(self.url, connect_timeout=3) as conn:
            return conn.execute(query).fetchone()[0]

    def wait_rows(self, expected: int, timeout: float = 20.0) -> int:
        """Rows written so far, waiting for the routers' batched writers to catch up with ``expected``."""
        deadline = time.monotonic() + timeout
        while (rows := self.count_usage_rows()) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        return rows

    def drop(self) -> None:
        if self.kind != "PostgreSQL":
            return
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
