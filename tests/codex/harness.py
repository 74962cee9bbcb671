"""Running the real ``codex exec`` against a live router, configured from docs/codex.md.

The configuration snippets of ``docs/codex.md`` are fenced blocks preceded by
``<!-- e2e: NAME -->``; ``snippets()`` reads them so the tests run exactly what
the page tells users to write (with the router's real URL in place of
``http://localhost:8080``), and the page cannot drift from what works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "codex.md"
DOCS_URL = "http://localhost:8080"
CODEX_VERSION = "0.169.0"

_SNIPPET = re.compile(r"<!-- e2e: (?P<name>\S+) -->\n```(?P<lang>\w+)\n(?P<body>.*?)^```", re.S | re.M)
_FENCE = re.compile(r"^```(\w*)$", re.M)


@dataclass(frozen=True)
class Snippet:
    name: str
    lang: str
    text: str

    def at(self, router_url: str) -> str:
        """The snippet with the docs' example URL replaced by the router under test."""
        return self.text.replace(DOCS_URL, router_url)


def snippets() -> dict[str, Snippet]:
    page = DOCS.read_text()
    return {m["name"]: Snippet(m["name"], m["lang"], m["body"]) for m in _SNIPPET.finditer(page)}


def profile_model(profile: str) -> str:
    """The ``model`` of the docs' ``PROFILE.config.toml``."""
    return tomllib.loads(snippets()[f"{profile}.config.toml"].text)["model"]


def fenced_blocks() -> int:
    """How many fenced code blocks the page has (opening fences only)."""
    fences = _FENCE.findall(DOCS.read_text())
    return len(fences) // 2


def require_codex() -> None:
    """Skip without Codex, unless CI demands it (ROUTER_REQUIRE_CODEX=1), then fail."""
    if shutil.which("codex"):
        return
    message = f"Codex CLI is not on PATH (npm install -g @openai/codex@{CODEX_VERSION})"
    if os.environ.get("ROUTER_REQUIRE_CODEX") == "1":
        pytest.fail(message + "; ROUTER_REQUIRE_CODEX=1 requires it")
    pytest.skip(message)


@dataclass
class CodexRun:
    rc: int
    stdout: str
    stderr: str
    events: list[dict] = field(default_factory=list)

    def items(self, kind: str) -> list[dict]:
        """Completed ``--json`` items of one type (agent_message, command_execution, reasoning...)."""
        return [e["item"] for e in self.events
                if e.get("type") == "item.completed" and e.get("item", {}).get("type") == kind]

    @property
    def answer(self) -> str:
        """The final agent message (``--json``: the last agent_message; plain: stdout)."""
        messages = self.items("agent_message")
        return messages[-1]["text"] if messages else self.stdout.strip()

    @property
    def errors(self) -> list[str]:
        """``ERROR:`` lines of stderr, and failure messages of ``--json`` output."""
        lines = [line.split("ERROR:", 1)[1].strip() for line in self.stderr.splitlines() if "ERROR:" in line]
        failed = [e.get("error", {}).get("message", "") for e in self.events if e.get("type") == "turn.failed"]
        return lines + [m for m in failed if m]

    @property
    def complaints(self) -> list[str]:
        """Codex's own error logs about what it received (e.g. ``OutputTextDelta without active item``)."""
        # tools::router logs a tool's own failure (a deliberate bad agent id), not a protocol problem.
        return [line for line in self.stderr.splitlines() if "ERROR codex_" in line and "tools::router" not in line]

    def failed_with(self, text: str) -> bool:
        """Codex exited 1 with an error message containing ``text``."""
        return self.rc == 1 and any(text in e for e in self.errors)

    def describe(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"


class CodexHome:
    """An isolated ``CODEX_HOME``: the docs' config.toml and profile files, pointed at ``router_url``."""

    def __init__(self, root: Path, router_url: str, *, provider_extra: dict[str, object] | None = None) -> None:
        self.path = root / "codex-home"
        self.path.mkdir(parents=True, exist_ok=True)
        self.work = root / "work"
        self.work.mkdir(exist_ok=True)
        # Users run Codex in a project; `codex exec` outside a git repository refuses to start.
        subprocess.run(["git", "init", "-q", str(self.work)], check=True)
        docs = snippets()
        config = _set_keys(docs["config.toml"].at(router_url), provider_extra or {})
        (self.path / "config.toml").write_text(config)
        for name, snippet in docs.items():
            if name.endswith(".config.toml"):
                (self.path / name).write_text(snippet.at(router_url))

    def env(self, api_key: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
        env.update({"CODEX_HOME": str(self.path), "HOME": str(self.path.parent), "NO_COLOR": "1"})
        if api_key is not None:
            env["OPENAI_API_KEY"] = api_key
        return env

    def exec(self, profile: str, prompt: str, *, api_key: str | None, model: str | None = None,
             sandbox: str = "read-only", json_output: bool = True, images: tuple[str, ...] = (),
             timeout: float = 60) -> CodexRun:
        args = ["codex", "exec", "-p", profile, "--skip-git-repo-check", "--sandbox", sandbox]
        if model:
            args += ["-m", model]
        for image in images:
            args += ["-i", image]
        if json_output:
            args.append("--json")
        return self._run([*args, prompt], api_key, timeout, json_output)

    def shell(self, script: str, *, api_key: str | None, timeout: float = 60) -> CodexRun:
        """Run a docs shell snippet (bash -e) with this CODEX_HOME."""
        return self._run(["bash", "-ec", script], api_key, timeout, False)

    def _run(self, args: list[str], api_key: str | None, timeout: float, json_output: bool) -> CodexRun:
        proc = subprocess.run(args, cwd=self.work, env=self.env(api_key), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        events = _json_lines(proc.stdout) if json_output else []
        return CodexRun(proc.returncode, proc.stdout, proc.stderr, events)


def _set_keys(toml_text: str, values: dict[str, object]) -> str:
    """Set keys of the last table (the docs' provider table), replacing the docs' own values."""
    for key, value in values.items():
        line = f"{key} = {json.dumps(value)}"
        toml_text, found = re.subn(rf"^{re.escape(key)}\s*=.*$", line, toml_text, flags=re.M)
        if not found:
            toml_text = toml_text.rstrip("\n") + f"\n{line}\n"
    return toml_text


def _json_lines(text: str) -> list[dict]:
    events = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events
