"""Running the real Claude Code CLI (``claude -p``) against a live router, configured from docs/claude-code.md.

The CLI is pinned (``CLAUDE_CODE_VERSION``); ``.ci/run`` installs it with npm into
``CLAUDE_CODE_CACHE`` and the tests find it there or on PATH. Without it the tests skip,
unless ``ROUTER_REQUIRE_CLAUDE=1`` (CI), when they fail. Each run gets its own HOME and
TMPDIR, no inherited ``ANTHROPIC_*`` / ``CLAUDE_*`` variables or proxies, and the
variables of the docs' ``env.sh`` snippet with the router's real URL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.claude_code.stack import snippets

CLAUDE_CODE_VERSION = "2.1.332"
CLAUDE_CODE_CACHE = Path.home() / ".cache" / "auto-ai-router" / "claude-code"
DOCS_URL = "http://localhost:8080"
_EXPORT = re.compile(r'^export (?P<name>\w+)="(?P<value>[^"]*)"$', re.M)
_DROPPED_ENV = ("ANTHROPIC_", "CLAUDE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy", "NO_PROXY", "no_proxy")


def claude_binary() -> str | None:
    cached = CLAUDE_CODE_CACHE / "node_modules" / ".bin" / "claude"
    return str(cached) if cached.exists() else shutil.which("claude")


def require_claude() -> str:
    """The CLI's path; skip without it, unless CI demands it (ROUTER_REQUIRE_CLAUDE=1), then fail."""
    binary = claude_binary()
    if binary:
        return binary
    message = (f"Claude Code is not installed (npm install --prefix {CLAUDE_CODE_CACHE} "
               f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION})")
    if os.environ.get("ROUTER_REQUIRE_CLAUDE") == "1":
        pytest.fail(message + "; ROUTER_REQUIRE_CLAUDE=1 requires it")
    pytest.skip(message)


def docs_env(router_url: str) -> dict[str, str]:
    """The variables the docs' env.sh exports, pointed at ``router_url``."""
    text = snippets()["env.sh"].at(router_url)
    return {m["name"]: m["value"] for m in _EXPORT.finditer(text)}


@dataclass
class ClaudeRun:
    rc: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict:
        """The ``--output-format json`` result object (``result``, ``is_error``, ``num_turns``...)."""
        for line in reversed(self.stdout.strip().splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict) and value.get("type") == "result":
                return value
        raise AssertionError(f"no JSON result:\n{self.describe()}")

    @property
    def answer(self) -> str:
        return str(self.result.get("result") or "")

    def describe(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


class ClaudeHome:
    """An isolated HOME, TMPDIR and work folder for one or more ``claude`` runs against ``router_url``."""

    def __init__(self, root: Path, router_url: str, binary: str) -> None:
        self.root = root
        self.router_url = router_url
        self.binary = binary
        self.home, self.tmp, self.work = root / "home", root / "tmp", root / "work"
        for path in (self.home, self.tmp, self.work):
            path.mkdir(parents=True, exist_ok=True)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV)}
        env.update({"HOME": str(self.home), "TMPDIR": str(self.tmp), "NO_COLOR": "1", "DISABLE_TELEMETRY": "1",
                    "PATH": f"{Path(self.binary).parent}:{env.get('PATH', '')}"})
        env.update(docs_env(self.router_url))
        env.update(extra or {})
        return env

    def run(self, prompt: str, *, model: str, tools: tuple[str, ...] = (), env: dict[str, str] | None = None,
            timeout: float = 90) -> ClaudeRun:
        args = [self.binary, "-p", prompt, "--model", model, "--output-format", "json"]
        if tools:
            args += ["--allowedTools", ",".join(tools)]
        return self._run(args, env, timeout)

    def shell(self, script: str, *, env: dict[str, str] | None = None, timeout: float = 90) -> ClaudeRun:
        """Run a docs shell snippet (bash -e) in the work folder, with the router's URL in place of the docs'."""
        return self._run(["bash", "-ec", script.replace(DOCS_URL, self.router_url)], env, timeout)

    def _run(self, args: list[str], env: dict[str, str] | None, timeout: float) -> ClaudeRun:
        proc = subprocess.run(args, cwd=self.work, env=self.env(env), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
        return ClaudeRun(proc.returncode, proc.stdout, proc.stderr)
