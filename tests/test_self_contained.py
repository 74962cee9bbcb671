"""A clone in an empty folder passes the suite: no code or test reads a path outside the repository.

.ci/run proves it end to end (it runs scripts/test in a fresh clone with nothing beside it); this test names
the offending file at once, before a CI run."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures import CODEX_FIXTURES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["manage.py", "routerproject", "credentials", "proxy", "tests", "bench", "scripts", ".ci"]
# An absolute path into the development machine's shared folders, or a climb out of the checkout.
# (spelt with character classes so the guard's own source does not match the plain-text checks it mirrors)
OUTSIDE = re.compile(r"/wor[k]/|share[d]/reference|[\"']share[d][\"']|parents\[(?:[3-9])\]|\"\.\./\.\.")


def _files():
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            yield path
        else:
            yield from (p for p in path.rglob("*") if p.is_file() and p.suffix in {"", ".py", ".sh", ".toml"}
                        and "__pycache__" not in p.parts)


def test_no_source_or_test_reads_outside_the_repository():
    offenders = []
    for path in _files():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


def test_codex_fixtures_are_in_the_repository():
    assert CODEX_FIXTURES.is_relative_to(ROOT)
    assert (CODEX_FIXTURES / "codex_request_turn1.json").is_file()
    assert len(list(CODEX_FIXTURES.glob("fixture_*.sse"))) >= 10
