"""One live router in front of one fake upstream per backend type, configured from docs/codex.md.

The router's YAML is the docs' ``router.yaml`` snippet with each credential
pointed at its fake (base URL, key, a service account the fake Google OAuth
accepts) and a ``gpt-5.5…`` alias per backend, so Codex sends its
``apply_patch`` tool to every backend.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.codex import backends as b
from tests.codex.harness import profile_model, snippets
from tests.fakes.gemini import FakeOAuth
from tests.fakes.server import FakeServer, Recorded
from tests.live import LiveRouter

VERTEX_PROJECT = "my-project"


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.oauth = FakeOAuth().start()
        self.responses = b.ResponsesBackend()
        self.chat = b.ChatBackend()
        self.anthropic = b.AnthropicBackend()
        self.gemini = b.GeminiBackend()
        self.vertex_gemini = b.VertexGeminiBackend(self.oauth, VERTEX_PROJECT)
        self.vertex_claude = b.VertexClaudeBackend(self.oauth)
        for backend in (self.responses, self.chat, self.anthropic, self.gemini):
            backend.server = FakeServer(backend.handle).start()
        # One Vertex host serves both publishers, as Google's does.
        self.vertex_server = FakeServer(self._vertex).start()
        self.vertex_gemini.server = self.vertex_claude.server = self.vertex_server
        self.router: LiveRouter | None = None

    @property
    def backends(self) -> dict[str, b.Backend]:
        return {x.name: x for x in (self.responses, self.chat, self.anthropic, self.gemini, self.vertex_gemini,
                                    self.vertex_claude)}

    async def _vertex(self, req: Recorded):
        target = self.vertex_claude if self.vertex_claude.is_model_call(req) else self.vertex_gemini
        return await target.handle(req)

    def start(self, env: dict[str, str], server: str | None = None) -> Stack:
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
            backend, fields = self._upstream(cred)
            cred.update(fields)
            cred.pop("credentials_file", None)
            if backend.plain_model:
                config["models"].append({"name": backend.plain_model, "credential": cred["name"]})
        config["model_aliases"] += [{"alias": x.patch_model, "target": x.model or profile_model(x.profile)}
                                    for x in self.backends.values() if x.patch_model not in _aliases(config)
                                    and x.patch_model not in _models(config)]
        return yaml.safe_dump(config, sort_keys=False)

    def _upstream(self, cred: dict) -> tuple[b.Backend, dict]:
        """The fake behind a docs credential, and the fields pointing the credential at it."""
        kind = cred["type"]
        if kind == "vertex-ai":
            return self.vertex_gemini, {"base_url": self.vertex_server.url, "project_id": VERTEX_PROJECT,
                                        "credentials_json": self.oauth.service_account(VERTEX_PROJECT)}
        backend = {"anthropic": self.anthropic, "gemini": self.gemini}.get(kind)
        if kind == "openai":
            backend = self.responses if cred.get("responses_api") else self.chat
        if backend is None:
            raise AssertionError(f"docs router.yaml has a credential type the e2e stack cannot fake: {kind}")
        suffix = "/v1" if kind == "openai" else ""
        return backend, {"base_url": f"{backend.server.url}{suffix}", "api_key": b.UPSTREAM_KEY}  # type: ignore


def _aliases(config: dict) -> set[str]:
    return {a["alias"] for a in config.get("model_aliases") or []}


def _models(config: dict) -> set[str]:
    return {m["name"] for m in config.get("models") or []}
