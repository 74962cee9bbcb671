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
    label: str = ""  # how the report names it (default: its kind)

    def __post_init__(self) -> None:
        self.label = self.label or self.kind

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
    def sqlite(cls, path: Path, label: str = "") -> Database:
        return cls("SQLite", f"sqlite:///{path}", label=label)

    @classmethod
    def _create_postgres(cls, admin_url: str) -> Database:
        import psycopg

        name = f"bench_router_{os.getpid()}"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return cls("PostgreSQL", urlunsplit(urlsplit(admin_url)._replace(path="/" + name)), admin_url, name)

    def _query(self, sql: str) -> list[tuple]:
        if self.kind == "SQLite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as conn:
                return conn.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(self.url, connect_timeout=3) as conn:
            return conn.execute(sql).fetchall()

    def rows_by_key(self) -> dict[str, int]:
        """Usage rows per client key alias (each router has its own key, aliased by its name)."""
        return dict(self._query("SELECT k.key_alias, count(*) FROM proxy_usagerecord u "
                                "JOIN keys_apikey k ON k.token = u.key_id GROUP BY k.key_alias"))

    def wait_rows(self, expected: dict[str, int], timeout: float = 60.0, stall: float = 10.0) -> dict[str, int]:
        """Rows per key alias, once every alias has ``expected`` rows (the routers write in batches), or
        once nothing new has been written for ``stall`` seconds."""
        deadline = time.monotonic() + timeout
        last, changed = None, time.monotonic()
        while True:
            rows = self.rows_by_key()
            if all(rows.get(alias, 0) >= n for alias, n in expected.items()):
                return rows
            now = time.monotonic()
            if rows != last:
                last, changed = rows, now
            if now > deadline or now - changed > stall:
                return rows
            time.sleep(0.25)

    def drop(self) -> None:
        if self.kind != "PostgreSQL":
            return
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
