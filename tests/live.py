"""Run the router as a real server process for end-to-end tests (Codex CLI, several instances).

Each ``LiveRouter`` gets its own SQLite file (copied from a migrated template),
loads a YAML config with ``manage.py import_config`` and serves on a free
loopback port under ``server`` (Daphne or uvicorn: ``routerproject.servers``; default
``ROUTER_TEST_SERVER``, else Daphne). Usage rows are read straight from its database file.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
_TEMPLATE: Path | None = None
SERVERS = ("daphne", "uvicorn")


#: a live test that depends on the server runs on both: ``@both_servers def test_x(server, ...)``
both_servers = pytest.mark.parametrize("server", SERVERS)


def default_server() -> str:
    return os.environ.get("ROUTER_TEST_SERVER") or "daphne"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(db: Path, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO_"))}
    env.update({"DATABASE_URL": f"sqlite:///{db}", "DJANGO_SETTINGS_MODULE": "routerproject.settings",
                "ROUTER_ENCRYPTION_KEY": "live-test-key", "PYTHONUNBUFFERED": "1"})
    env.pop("REDIS_URL", None)
    env.update(extra or {})
    return env


def _template(tmp_root: Path) -> Path:
    global _TEMPLATE
    if _TEMPLATE is None or not _TEMPLATE.exists():
        db = tmp_root / "template.sqlite3"
        subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=_env(db, None),
                       check=True, timeout=120)
        _TEMPLATE = db
    return _TEMPLATE


class LiveRouter:
    def __init__(self, config_yaml: str, tmp_path: Path, *, env: dict[str, str] | None = None,
                 db: Path | None = None, server: str | None = None, workers: int | None = None) -> None:
        self.server = server or default_server()
        self.tmp = tmp_path
        self.workers = workers  # None: one server process; N: ``manage.py serve --workers N``
        self.db = db or tmp_path / f"router-{free_port()}.sqlite3"
        # a stopped test router lets requests in flight finish for a moment, not the production 30 s
        self.extra_env = {"ROUTER_USAGE_SPOOL_DIR": str(tmp_path / f"spool-{self.db.stem}"),
                          "ROUTER_SHUTDOWN_GRACE_SECONDS": "3", **(env or {})}
        self.port = free_port()
        self.log_path = tmp_path / f"{self.server}-{self.port}.log"
        self.proc: subprocess.Popen | None = None
        if db is None:
            shutil.copy(_template(tmp_path.parent), self.db)
            cfg = tmp_path / f"router-{self.port}.yaml"
            cfg.write_text(config_yaml)
            out = subprocess.run([PYTHON, "manage.py", "import_config", str(cfg)], cwd=ROOT,
                                 env=_env(self.db, self.extra_env), capture_output=True, text=True, timeout=120)
            if out.returncode:
                raise RuntimeError(f"import_config failed:\n{out.stdout}\n{out.stderr}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        where = ["--server", self.server, "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers is not None:
            return [PYTHON, "manage.py", "serve", "--workers", str(self.workers), *where]
        return [PYTHON, "-m", "routerproject.servers", *where]

    def worker_pids(self) -> list[int]:
        """The worker processes ``manage.py serve`` runs now (Linux: the children of the parent)."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def start(self) -> LiveRouter:
        self.proc = subprocess.Popen(
            self.command(),
            cwd=ROOT, env=_env(self.db, self.extra_env), stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + (60 if self.workers else 30)  # N workers start at once: slower on 2 cores
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"router did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def usage_rows(self, wait_for: int = 1, timeout: float = 10.0) -> list[dict]:
        """Usage rows written by the router process (it flushes in the background)."""
        deadline = time.monotonic() + timeout
        while True:
            with sqlite3.connect(self.db) as conn:
                conn.row_factory = sqlite3.Row
                rows = [dict(r) for r in conn.execute("SELECT * FROM proxy_usagerecord ORDER BY id")]
            if len(rows) >= wait_for or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)
