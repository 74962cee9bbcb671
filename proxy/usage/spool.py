"""The local spool: usage rows the database cannot take now, kept on disk until it can.

Rows are appended as JSON lines to ``usage-<db>-<time>-<pid>.jsonl`` files in
``ROUTER_USAGE_SPOOL_DIR`` (flushed and fsynced per append, rotated past
``FILE_BYTES``), where ``<db>`` names the database they belong to, so a spool
directory shared by routers on different databases never mixes them up. The
file being appended to is held under an exclusive ``flock``; a file nobody
holds (sealed by its writer, or left by a process that died) can be claimed for
replay by any router on that database, oldest first. A claimed file is deleted
only after every row in it is committed (or set aside); replay skips rows whose
``request_id`` is already in the table, so a crash between a commit and the
delete writes nothing twice.

Rows the database refuses are appended to ``rejected-<db>.jsonl`` with the
error, for an operator to look at; they are never replayed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("proxy.usage")

FILE_BYTES = 8 * 1024 * 1024


def database_tag(settings_dict: dict[str, Any]) -> str:
    ident = "|".join(str(settings_dict.get(k) or "") for k in ("ENGINE", "HOST", "PORT", "NAME"))
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def encode(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, default=_json_default, separators=(",", ":")) + "\n" for row in rows).encode()


class Spool:
    def __init__(self, directory: Path, tag: str) -> None:
        self.dir = directory
        self.tag = tag
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._size = 0

    # ---- appending -------------------------------------------------------------------------

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` durably (OSError when the disk cannot take them)."""
        data = encode(rows)
        with self._lock:
            if self._file is None or self._size >= FILE_BYTES:
                self._open_new()
            assert self._file is not None
            try:
                self._file.write(data)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError:
                self._close()  # a half-written line stays behind: replay skips it
                raise
            self._size += len(data)

    def _open_new(self) -> None:
        self._close()
        self.dir.mkdir(parents=True, exist_ok=True)
        # time first: names sort in the order the files were started, across processes
        path = self.dir / f"usage-{self.tag}-{time.time_ns():020d}-{os.getpid()}.jsonl"
        file = path.open("ab")
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        self._file, self._path, self._size = file, path, 0

    def seal(self) -> None:
        """Close the file being appended to, so replay can take it; later rows start a new file."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # closing releases the flock
        self._file = self._path = None

    # ---- replay ----------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """Spooled files of this database, oldest first (including one still being appended to)."""
        try:
            return sorted(self.dir.glob(f"usage-{self.tag}-*.jsonl"))
        except OSError:
            return []

    def count(self) -> int:
        total = 0
        for path in self.files():
            with contextlib.suppress(OSError):
                total += path.read_bytes().count(b"\n")
        return total

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[tuple[list[dict[str, Any]], int] | None]:
        """The rows of a spooled file nobody else holds, and how many lines were unreadable; None when the
        file is busy or gone. The caller deletes it with ``done()`` once every row is committed."""
        try:
            file = path.open("rb")
        except OSError:
            yield None
            return
        with file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield None  # being appended to, or replayed by another router
                return
            if os.fstat(file.fileno()).st_nlink == 0:
                yield None  # replayed and deleted by another router while we waited
                return
            rows, torn = [], 0
            for line in file.read().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    torn += 1  # the last line of a file whose writer died mid-append
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    torn += 1
            yield rows, torn

    @staticmethod
    def done(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # ---- rows set aside --------------------------------------------------------------------

    def reject(self, row: dict[str, Any], error: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / f"rejected-{self.tag}.jsonl").open("ab") as file:
            file.write(encode([{**row, "_error": error}]))
            file.flush()
            os.fsync(file.fileno())
