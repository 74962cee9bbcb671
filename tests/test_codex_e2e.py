"""The real Codex CLI (``codex exec``) against a live router, for every backend type.

One router process per module sits in front of one scripted fake upstream per
backend (tests/codex/stack.py); each test scripts the fake, runs Codex with an
isolated CODEX_HOME written from the snippets of docs/codex.md, and asserts on
what Codex printed (an exit code of 0 alone proves nothing: Codex silently drops
malformed items) and on what the fake upstream received, in its own format.

Skipped when ``codex`` is not on PATH, unless ROUTER_REQUIRE_CODEX=1 (CI).
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.codex.backends import Answer, Backend, Call, chat_sse, responses_sse
from tests.codex.harness import CodexHome, CodexRun, fenced_blocks, profile_model, require_codex, snippets
from tests.codex.stack import Stack
from tests.fakes.server import Reply
from tests.fixtures import CODEX_FIXTURES as FIXTURES

MASTER_KEY = "sk-router-local-dev"  # server.master_key of the docs' router.yaml
BACKENDS = ["openai-responses", "openai-chat", "anthropic", "gemini", "vertex-gemini", "vertex-claude"]
DOCS_SNIPPETS = {
    "router.yaml", "config.toml", "openai.config.toml", "local.config.toml", "claude.config.toml",
    "gemini.config.toml", "vertex.config.toml", "fast.config.toml", "claude-patch.config.toml", "run.sh",
    "health.sh", "models.sh",
}
ECHO = Call("exec_command", {"cmd": "echo hello-from-tool"})
CLOSE_AGENT = Call("close_agent", {"target": "no-such-agent"}, namespace="multi_agent_v1")
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+written by apply_patch\n*** End Patch\n"
NO_RETRIES = {"request_max_retries": 0, "stream_max_retries": 0}
ONE_STREAM_RETRY = {"request_max_retries": 0, "stream_max_retries": 1}


def _png() -> bytes:
    """A 1x1 red PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


PNG = _png()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_codex()
    # A short heartbeat lets test_keepalive prove it with a short Codex idle timeout.
    s = Stack(tmp_path_factory.mktemp("codex-e2e")).start({"ROUTER_KEEPALIVE_INTERVAL": "0.5"})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def uvicorn_stack(tmp_path_factory):
    """The same stack under uvicorn, for a representative few: the server is no part of the translation."""
    require_codex()
    s = Stack(tmp_path_factory.mktemp("codex-e2e-uvicorn")).start({}, server="uvicorn")
    yield s
    s.stop()


@pytest.fixture(params=BACKENDS)
def backend(request, stack) -> Iterator[Backend]:
    backend = stack.backends[request.param]
    yield backend
    assert not backend.rejections, f"the strict fake rejected a request: {backend.rejections}"


def codex(stack: Stack, tmp_path: Path, backend: Backend | None, prompt: str, *, model: str | None = None,
          provider: dict | None = None, patch: bool = False, **kwargs) -> CodexRun:
    """``codex exec`` with the backend's docs profile (``claude`` when no backend is involved).

    ``patch``: under a gpt-5.5* name, so Codex sends apply_patch and asks for reasoning effort.
    """
    home = CodexHome(tmp_path, stack.router.url, provider_extra=provider)
    profile = backend.profile if backend else "claude"
    model = model or (backend.model if backend else None)
    if patch and backend and backend.patch_profile:
        profile, model = backend.patch_profile, None
    elif patch and backend:
        model = backend.patch_model
    run = home.exec(profile, prompt, api_key=MASTER_KEY, model=model, **kwargs)
    assert run.rc or not run.complaints, run.describe()
    return run


def usage_rows(stack: Stack, model: str) -> list[dict]:
    """The router's usage rows for ``model``, oldest first (it writes them in the background)."""
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in stack.router.usage_rows(wait_for=0) if r["requested_model"] == model]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def tool_said(backend: Backend, body: dict) -> str:
    """The fake's answer after a tool ran: built from the tool result it received, in its own format."""
    results = backend.tool_results(body)
    return "The tool said hello-from-tool." if any("hello-from-tool" in r for r in results) else "No tool output."


# ---- the native relay, with the transcripts captured from real Codex runs ----------------------

@pytest.mark.parametrize("fixture", ["fixture_text_minimal", "fixture_text_canonical", "fixture_tool_roundtrip",
                                     "fixture_tool_roundtrip_minimal", "fixture_namespace_call",
                                     "fixture_reasoning_text"])
def test_native_relay_of_captured_transcripts(stack, tmp_path, fixture):
    recorded = json.loads((FIXTURES / f"{fixture}.json").read_text())
    stack.responses.script(*[Reply(body=r["sse"], content_type="text/event-stream") for r in recorded["responses"]])
    run = codex(stack, tmp_path, stack.responses, "hi", model=stack.responses.plain_model, json_output=False)
    assert (str(run.rc), run.stdout) == (recorded["rc"], recorded["stdout"]), run.describe()
    bodies = stack.responses.bodies()
    assert len(bodies) == len(recorded["responses"])
    # Relayed as Codex sent it (only the model name may change, and it does not here).
    assert bodies[0]["model"] == "gpt-4.1" and bodies[0]["prompt_cache_key"] and bodies[0]["include"]


# ---- the docs page -----------------------------------------------------------------------

def test_every_docs_snippet_is_marked_and_exercised():
    found = snippets()
    assert set(found) == DOCS_SNIPPETS
    assert fenced_blocks() == len(found), "a fenced block in docs/codex.md has no <!-- e2e: NAME --> marker"


def test_docs_run_snippet_answers_and_is_logged(stack, tmp_path):
    stack.anthropic.script(Answer(text="Hello from Claude."))
    home = CodexHome(tmp_path, stack.router.url)
    run = home.shell(snippets()["run.sh"].at(stack.router.url), api_key=None)  # the snippet exports the key
    assert run.rc == 0 and run.stdout.strip() == "Hello from Claude.", run.describe()
    row = usage_rows(stack, "claude-sonnet-4-6")[-1]
    assert (row["endpoint"], row["status"], row["credential"], row["provider"]) == \
        ("responses", 200, "anthropic_main", "anthropic")
    assert (row["prompt_tokens"], row["cached_tokens"], row["completion_tokens"]) == (120, 20, 7)


def test_docs_troubleshooting_snippets(stack, tmp_path):
    home = CodexHome(tmp_path, stack.router.url)
    health = home.shell(snippets()["health.sh"].at(stack.router.url), api_key=None)
    assert health.rc == 0 and json.loads(health.stdout)["status"] == "ok", health.describe()
    models = home.shell(snippets()["models.sh"].at(stack.router.url), api_key=MASTER_KEY)
    names = {m["id"] for m in json.loads(models.stdout)["data"]}
    assert {"gpt-5.5", "qwen3-coder", "claude-sonnet-4-6", "gemini-2.5-flash", "fast", "gpt-5.5-claude"} <= names


def test_alias_profile(stack, tmp_path):
    stack.gemini.script(Answer(text="Fast answer."))
    home = CodexHome(tmp_path, stack.router.url)
    run = home.exec("fast", "Be quick", api_key=MASTER_KEY, json_output=False)
    assert run.stdout.strip() == "Fast answer.", run.describe()
    assert len(stack.gemini.bodies()) == 1


@pytest.mark.parametrize(("extra", "message"), [
    ('[profiles.claude]\nmodel = "x"\n', "cannot be used while"),
    ('wire_api = "chat"\n', '`wire_api = "chat"` is no longer supported'),
])
def test_legacy_config_errors_named_in_docs(stack, tmp_path, extra, message):
    """The two config mistakes the docs' troubleshooting names (old guides still show them)."""
    home = CodexHome(tmp_path, stack.router.url)
    config = home.path / "config.toml"
    config.write_text(config.read_text() + extra)  # wire_api lands in the docs' provider table
    run = home.exec("claude", "hi", api_key=MASTER_KEY)
    assert run.rc == 1 and message in run.stderr + run.stdout, run.describe()


# ---- every backend: answers, tools, thinking -------------------------------------------------

def test_text_answer(stack, tmp_path, backend):
    check_text_answer(stack, tmp_path, backend)


def check_text_answer(stack: Stack, tmp_path: Path, backend: Backend) -> None:
    backend.script(Answer(text=f"Hello from {backend.name}."))
    run = codex(stack, tmp_path, backend, "Say hello", json_output=False)
    assert run.rc == 0 and run.stdout.strip() == f"Hello from {backend.name}.", run.describe()
    assert len(backend.bodies()) == 1


def test_tool_round_trip(stack, tmp_path, backend):
    check_tool_round_trip(stack, tmp_path, backend)


def check_tool_round_trip(stack: Stack, tmp_path: Path, backend: Backend) -> None:
    backend.script(Answer(call=ECHO), Answer(text=tool_said))
    run = codex(stack, tmp_path, backend, "Run echo hello-from-tool")
    commands = run.items("command_execution")
    assert commands and "hello-from-tool" in commands[0]["aggregated_output"], run.describe()
    assert run.answer == "The tool said hello-from-tool.", run.describe()
    first, second = backend.bodies()
    assert backend.declares(first, ECHO)
    assert any("hello-from-tool" in r for r in backend.tool_results(second))


def test_namespaced_tool_call(stack, tmp_path, backend):
    backend.script(Answer(call=CLOSE_AGENT), Answer(text="Agent handled."))
    run = codex(stack, tmp_path, backend, "Close the agent", model=backend.plain_model)
    assert run.answer == "Agent handled.", run.describe()
    first, second = backend.bodies()
    assert backend.declares(first, CLOSE_AGENT)  # flattened to multi_agent_v1__close_agent for non-OpenAI
    [result] = backend.tool_results(second)
    # Codex dispatched it to multi_agent_v1.close_agent (which knows no such agent), not "unsupported call".
    assert result.startswith("invalid agent id no-such-agent"), result


def test_apply_patch_edits_a_file(stack, tmp_path, backend):
    patch = Call("apply_patch", PATCH)
    backend.script(Answer(call=patch), Answer(text="Patched."))
    run = codex(stack, tmp_path, backend, "Create hello.txt", patch=True, sandbox="workspace-write")
    assert run.answer == "Patched.", run.describe()
    assert (tmp_path / "work" / "hello.txt").read_text() == "written by apply_patch\n"
    first, second = backend.bodies()
    assert backend.declares(first, patch)
    assert any("Success" in r and "hello.txt" in r for r in backend.tool_results(second))


def test_thinking_round_trip(stack, tmp_path, backend):
    thought = "The user wants the tool run first."
    backend.script(Answer(thinking=thought, call=ECHO), Answer(text=tool_said))
    # A gpt-5.5* name makes Codex ask for reasoning effort, which turns Claude's thinking on.
    run = codex(stack, tmp_path, backend, "Think, then run echo", patch=True)
    assert run.answer == "The tool said hello-from-tool.", run.describe()
    assert any(thought in json.dumps(item) for item in run.items("reasoning")), run.describe()
    backend.check_thinking_replayed(backend.bodies()[1], thought)


def test_parallel_tool_calls(stack, tmp_path, backend):
    calls = [Call("exec_command", {"cmd": "echo one-from-tool"}), Call("exec_command", {"cmd": "echo two-from-tool"})]

    def both(b: Backend, body: dict) -> str:
        results = "\n".join(b.tool_results(body))
        return f"one={'one-from-tool' in results} two={'two-from-tool' in results}"

    backend.script(Answer(call=calls), Answer(text=both))
    run = codex(stack, tmp_path, backend, "Run both")
    assert len(run.items("command_execution")) == 2, run.describe()
    assert run.answer == "one=True two=True", run.describe()
    assert len(backend.tool_results(backend.bodies()[1])) == 2


def test_image_input(stack, tmp_path, backend):
    backend.script(Answer(text="I see a pixel."))
    home = CodexHome(tmp_path, stack.router.url)
    (home.work / "pixel.png").write_bytes(PNG)
    run = home.exec(backend.profile, "What is in the image?", api_key=MASTER_KEY, model=backend.model,
                    images=("pixel.png",))
    assert run.answer == "I see a pixel.", run.describe()
    images = backend.images(backend.bodies()[0])
    assert len(images) == 1 and base64.b64encode(PNG).decode() in images[0], images


def test_compaction_request(stack, tmp_path, backend):
    """A full context makes Codex send a compaction request (`tools: []`) mid-turn, then continue."""
    backend.script(Answer(call=ECHO, input_tokens=50_000), Answer(text="SUMMARY-OF-WORK"),
                   Answer(text="Continued after compaction."))
    home = CodexHome(tmp_path, stack.router.url)
    profile = home.path / f"{backend.profile}.config.toml"
    profile.write_text(profile.read_text() + "model_auto_compact_token_limit = 2000\n")
    run = home.exec(backend.profile, "Run echo", api_key=MASTER_KEY, model=backend.model)
    assert run.answer == "Continued after compaction.", run.describe()
    _, compaction, after = backend.bodies()
    assert "CONTEXT CHECKPOINT COMPACTION" in json.dumps(compaction)
    assert "SUMMARY-OF-WORK" in json.dumps(after)


def test_web_search_left_on(stack, tmp_path, backend):
    backend.script(Answer(text="Searched."))
    home = CodexHome(tmp_path, stack.router.url)
    profile = home.path / f"{backend.profile}.config.toml"
    profile.write_text(profile.read_text().replace('web_search = "disabled"', 'web_search = "live"'))
    run = home.exec(backend.profile, "Search the web", api_key=MASTER_KEY, model=backend.model)
    assert run.answer == "Searched.", run.describe()
    backend.check_search(backend.bodies()[0])


# ---- errors, as Codex reports them -----------------------------------------------------------

def test_unknown_model_is_not_retried(stack, tmp_path):
    run = codex(stack, tmp_path, None, "hi", model="no-such-model")
    assert run.failed_with("The model `no-such-model` does not exist or you do not have access to it."), \
        run.describe()
    assert [r["status"] for r in usage_rows(stack, "no-such-model")] == [404]


def test_rate_limit_carries_retry_after(stack, tmp_path, backend):
    backend.script(*[backend.rate_limited(1)] * 3)  # Codex's request and its retry, then ours below
    started = time.monotonic()
    run = codex(stack, tmp_path, backend, "hi", provider=ONE_STREAM_RETRY)
    assert run.failed_with("exceeded retry limit, last status: 429 Too Many Requests"), run.describe()
    # Codex retries a 429 only when it carries Retry-After, and waits that long.
    assert len(backend.bodies()) == 2 and time.monotonic() - started >= 1
    body = {"model": backend.model or profile_model(backend.profile), "input": "hi", "stream": True}
    response = httpx.post(f"{stack.router.url}/v1/responses", headers={"authorization": f"Bearer {MASTER_KEY}"},
                          json=body)
    assert response.status_code == 429 and response.headers["retry-after"] == "1", response.text
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def test_context_overflow(stack, tmp_path, backend):
    backend.script(backend.context_overflow())
    run = codex(stack, tmp_path, backend, "hi")
    assert run.failed_with("Codex ran out of room in the model's context window."), run.describe()
    assert len(backend.bodies()) == 1


def test_upstream_server_error(stack, tmp_path, backend):
    backend.script(*[backend.server_error()] * 4)
    run = codex(stack, tmp_path, backend, "hi", provider={"request_max_retries": 1, "stream_max_retries": 1})
    assert run.failed_with("unexpected status 502 Bad Gateway"), run.describe()
    assert len(backend.bodies()) == 4  # (1 + 1 HTTP retry) x (1 + 1 stream retry)


def test_mid_stream_failure(stack, tmp_path, backend):
    backend.script(backend.broken_stream(), backend.broken_stream())
    run = codex(stack, tmp_path, backend, "hi", provider=ONE_STREAM_RETRY)
    assert run.failed_with("stream disconnected before completion"), run.describe()
    assert run.items("agent_message") == []
    assert len(backend.bodies()) == 2


def test_truncated_answer(stack, tmp_path, backend):
    backend.script(backend.truncated("The beginning of a long"))
    run = codex(stack, tmp_path, backend, "hi", json_output=False)
    assert run.failed_with("Incomplete response returned, reason: max_output_tokens"), run.describe()
    # Shown as progress on stderr; stdout (the final answer) stays empty.
    assert "codex\nThe beginning of a long\n" in run.stderr and run.stdout == ""
    assert len(backend.bodies()) == 1


def test_wrong_and_missing_key(stack, tmp_path):
    home = CodexHome(tmp_path, stack.router.url, provider_extra=NO_RETRIES)
    wrong = home.exec("claude", "hi", api_key="sk-not-the-router-key")
    assert wrong.failed_with("unexpected status 401 Unauthorized: Incorrect API key provided."), wrong.describe()
    missing = home.exec("claude", "hi", api_key=None)
    assert missing.failed_with("Missing environment variable: `OPENAI_API_KEY`."), missing.describe()


def _slow_stream(name: str, text: str) -> Reply:
    """The backend's answer with a 3 s silence after its first event."""
    if name == "openai-responses":
        message = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}
        usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12}
        frames = responses_sse([message], usage)
    else:
        frames = chat_sse([{"role": "assistant", "content": ""}, {"content": text}], "stop", 100)
    return Reply(sse=[frames[0], 3.0, *frames[1:]])


@pytest.mark.parametrize("name", ["openai-chat", "openai-responses"])
def test_keepalive_beats_a_short_idle_timeout(stack, tmp_path, name):
    """The upstream goes silent for 3 s; Codex gives up after 1.5 s without events, but heartbeats keep it."""
    backend = stack.backends[name]
    backend.script(_slow_stream(name, "slow answer"))
    run = codex(stack, tmp_path, backend, "hi", model=backend.plain_model,
                provider={**NO_RETRIES, "stream_idle_timeout_ms": 1500})
    assert run.rc == 0 and run.answer == "slow answer", run.describe()


# ---- under uvicorn: a text stream and a tool round trip, natively relayed and translated ----------------

@pytest.mark.parametrize("name", ["openai-responses", "anthropic"])
def test_text_and_tool_round_trip_under_uvicorn(uvicorn_stack, tmp_path, name):
    backend = uvicorn_stack.backends[name]
    check_text_answer(uvicorn_stack, tmp_path / "text", backend)
    check_tool_round_trip(uvicorn_stack, tmp_path / "tool", backend)
    assert not backend.rejections, f"the strict fake rejected a request: {backend.rejections}"
