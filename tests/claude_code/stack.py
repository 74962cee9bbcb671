"""One live router in front of one scripted fake upstream per backend type, configured from docs/claude-code.md.

The router's YAML is the docs' ``router.yaml`` snippet with each credential pointed at
its fake (base URL, key, a service account the fake Google OAuth accepts). The fakes
are the Codex end-to-end ones (tests/codex/backends.py): each renders abstract
``Answer``s in its provider's wire format and the strict ones reject malformed requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.codex import backends as b
from tests.codex.harness import Snippet
from tests.fakes.gemini import FakeOAuth
from tests.fakes.server import FakeServer, Recorded
from tests.live import LiveRouter

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "claude-code.md"
VERTEX_PROJECT = "my-project"
MASTER_KEY = "sk-router-local-dev"  # server.master_key of the docs' router.yaml
_SNIPPET = re.compile(r"<!-- e2e: (?P<name>\S+) -->\n```(?P<lang>\w+)\n(?P<body>.*?)^```", re.S | re.M)


def snippets() -> dict[str, Snippet]:
    page = DOCS.read_text()
    return {m["name"]: Snippet(m["name"], m["lang"], m["body"]) for m in _SNIPPET.finditer(page)}


@dataclass(frozen=True)
class Target:
    """A backend type and the router model (from the docs' router.yaml) served by it."""

    backend: str
    model: str


# backend name -> router model of the docs' router.yaml
TARGETS = {
    "openai-chat": Target("openai-chat", "gpt-4.1"),
    "anthropic": Target("anthropic", "claude-sonnet-4-6"),
    "gemini": Target("gemini", "gemini-2.5-flash"),
    "vertex-gemini": Target("vertex-gemini", "gemini-2.5-pro"),
    "vertex-claude": Target("vertex-claude", "claude-sonnet-4-6-vertex"),
}


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.oauth = FakeOAuth().start()
        self.chat = b.ChatBackend()
        self.anthropic = b.AnthropicBackend()
        self.gemini = b.GeminiBackend()
        self.vertex_gemini = b.VertexGeminiBackend(self.oauth, VERTEX_PROJECT)
        self.vertex_claude = b.VertexClaudeBackend(self.oauth)
        for backend in (self.chat, self.anthropic, self.gemini):
            backend.server = FakeServer(backend.handle).start()
        self.vertex_server = FakeServer(self._vertex).start()  # one Vertex host serves both publishers
        self.vertex_gemini.server = self.vertex_claude.server = self.vertex_server
        self.router: LiveRouter | None = None

    @property
    def backends(self) -> dict[str, b.Backend]:
        return {x.name: x for x in (self.chat, self.anthropic, self.gemini, self.vertex_gemini, self.vertex_claude)}

    async def _vertex(self, req: Recorded):
        target = self.vertex_claude if "/publishers/anthropic/" in req.path else self.vertex_gemini
        return await target.handle(req)

    def start(self, env: dict[str, str] | None = None, server: str | None = None) -> Stack:
        self.router = LiveRouter(self.router_yaml(), self.tmp, env=env, server=server).start()
        return self

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for server in {x.server for x in self.backends.values()}:
            server.stop()  # type: ignore[union-attr]
        self.oauth.stop()

    def router_yaml(self) -> str:
        config = yaml.safe_load(snippets()["router.yaml"].text)
        for cred in config["credentials"]:
            cred.update(self._upstream(cred))
            cred.pop("credentials_file", None)
        return yaml.safe_dump(config, sort_keys=False)

    def _upstream(self, cred: dict) -> dict:
        kind = cred["type"]
        if kind == "vertex-ai":
            return {"base_url": self.vertex_server.url, "project_id": VERTEX_PROJECT,
                    "credentials_json": self.oauth.service_account(VERTEX_PROJECT)}
        backend = {"anthropic": self.anthropic, "gemini": self.gemini, "openai": self.chat}.get(kind)
        if backend is None:
            raise AssertionError(f"docs router.yaml has a credential type the stack cannot fake: {kind}")
        suffix = "/v1" if kind == "openai" else ""
        return {"base_url": f"{backend.server.url}{suffix}", "api_key": b.UPSTREAM_KEY}  # type: ignore[union-attr]
