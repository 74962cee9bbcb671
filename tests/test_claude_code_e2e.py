"""The real Claude Code CLI (``claude -p``) against a live router, for every backend type.

One router process sits in front of one scripted fake upstream per backend
(tests/claude_code/stack.py, configured from docs/claude-code.md); each test scripts
the fake, runs Claude Code with an isolated HOME/TMPDIR and the docs' environment, and
asserts on what Claude Code printed, on what it really did to the work folder, and on
what the fake received in its own format (the strict fakes reject malformed requests).

Skipped when the CLI is not installed, unless ROUTER_REQUIRE_CLAUDE=1 (CI).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.claude_code.harness import ClaudeHome, ClaudeRun, require_claude
from tests.claude_code.stack import TARGETS, Stack, snippets
from tests.codex.backends import Answer, Backend, Call
from tests.fakes import anthropic as anth
from tests.fakes import gemini as gem
from tests.fakes.openai import error_reply

BACKENDS = list(TARGETS)
DOCS_SNIPPETS = {"router.yaml", "env.sh", "run.sh", "models.sh", "health.sh", "list-models.sh"}
BASH = Call("Bash", {"command": "echo cc-ok > out.txt", "description": "Write out.txt"})
THOUGHT = "I should run a command."


@pytest.fixture(scope="module")
def binary() -> str:
    return require_claude()


@pytest.fixture(scope="module")
def stack(binary, tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("claude-e2e")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def uvicorn_stack(binary, tmp_path_factory):
    """The same stack under uvicorn, for a representative few: the server is no part of the translation."""
    s = Stack(tmp_path_factory.mktemp("claude-e2e-uvicorn")).start(server="uvicorn")
    yield s
    s.stop()


@pytest.fixture(params=BACKENDS)
def backend(request, stack) -> Iterator[Backend]:
    backend = stack.backends[request.param]
    backend.script()
    yield backend
    assert not backend.rejections, f"the strict fake rejected a request: {backend.rejections}"


@pytest.fixture
def home(stack, binary, tmp_path) -> ClaudeHome:
    return ClaudeHome(tmp_path, stack.router.url, binary)


def claude(home: ClaudeHome, backend: Backend, prompt: str, **kwargs) -> ClaudeRun:
    return home.run(prompt, model=TARGETS[backend.name].model, **kwargs)


def tool_said(backend: Backend, body: dict) -> str:
    results = backend.tool_results(body)
    return "The command ran." if results else "No tool output."


def test_docs_snippets_are_all_tested():
    assert set(snippets()) == DOCS_SNIPPETS


def test_text_turn(home, backend):
    check_text_turn(home, backend)


def check_text_turn(home: ClaudeHome, backend: Backend) -> None:
    backend.script(Answer(f"Hello from {backend.name}."))
    run = claude(home, backend, "say hi")
    assert run.rc == 0 and run.result["is_error"] is False, run.describe()
    assert run.answer == f"Hello from {backend.name}."
    sent = backend.bodies()
    assert sent, "no request reached the backend"
    if backend.name in ("anthropic", "vertex-claude"):
        headers = backend.fake.received_headers[-1]
        assert "claude-code-20250219" in headers["anthropic-beta"]
        assert headers.get("anthropic-version") == "2023-06-01" or backend.name == "vertex-claude"


def test_bash_tool_with_thinking_across_turns(home, backend):
    check_bash_tool_with_thinking(home, backend)


def check_bash_tool_with_thinking(home: ClaudeHome, backend: Backend) -> None:
    backend.script(Answer(thinking=THOUGHT, call=BASH), Answer(lambda b, body: tool_said(b, body)))
    run = claude(home, backend, "Write cc-ok into out.txt with a shell command", tools=("Bash",))
    assert run.rc == 0 and run.answer == "The command ran.", run.describe()
    assert (home.work / "out.txt").read_text().strip() == "cc-ok"
    assert run.result["num_turns"] >= 2
    backend.check_thinking_replayed(backend.bodies()[-1], THOUGHT)


def test_write_tool_changes_a_file(home, backend):
    target = home.work / "hello.txt"
    write = Call("Write", {"file_path": str(target), "content": "written by Claude Code\n"})
    backend.script(Answer(thinking="Writing the file.", call=write), Answer("Done."))
    run = claude(home, backend, "Create hello.txt", tools=("Write",))
    assert run.rc == 0 and run.answer == "Done.", run.describe()
    assert target.read_text() == "written by Claude Code\n"


def _model_gone(backend: Backend, model: str):
    """The backend no longer serves the model: a 404 in its own words (Claude Code stops at once on a 404;
    it retries 401, 429 and 5xx, and rewrites some 400s and retries, with a long back-off)."""
    if backend.name in ("anthropic", "vertex-claude"):
        return anth.Fail.http(404, "not_found_error", f"model: {model}")
    if backend.name in ("gemini", "vertex-gemini"):
        return gem.GoogleError(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta.")
    return error_reply(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")


def test_backend_error_is_shown(home, backend):
    model = TARGETS[backend.name].model
    # After a failed stream Claude Code asks once more without streaming: both get the 404.
    backend.script(_model_gone(backend, model), _model_gone(backend, model))
    run = claude(home, backend, "say hi", timeout=60)
    assert run.rc != 0 and run.result["is_error"] is True, run.describe()
    assert run.result["api_error_status"] == 404, run.describe()
    assert f"issue with the selected model ({model})" in run.answer, run.answer
    assert [b.get("stream") for b in backend.bodies()] in ([True, None], [True, False], [None, None])


def test_unknown_model_stops_at_once(home, stack):
    run = home.run("say hi", model="no-such-model")
    assert run.rc != 0 and run.result["is_error"] is True, run.describe()
    assert "issue with the selected model" in run.answer and "no-such-model" in run.answer


def test_x_api_key_and_model_mapping_snippet(home, stack):
    """ANTHROPIC_API_KEY (x-api-key) instead of the token, and the docs' sonnet/opus/haiku mapping."""
    backend = stack.vertex_gemini  # the docs map sonnet to gemini-2.5-pro
    backend.script(Answer("Mapped."))
    token = home.env()["ANTHROPIC_AUTH_TOKEN"]
    run = home.shell(snippets()["models.sh"].text, env={"ANTHROPIC_AUTH_TOKEN": "", "ANTHROPIC_API_KEY": token})
    assert run.rc == 0 and run.answer == "Mapped.", run.describe()
    assert backend.bodies()


def test_run_and_curl_snippets(home, stack):
    stack.anthropic.script(Answer("Hello."))
    run = home.shell(snippets()["run.sh"].text)
    assert run.rc == 0 and run.answer == "Hello.", run.describe()
    health = home.shell(snippets()["health.sh"].text)
    assert '"status":"ok"' in health.stdout.replace(" ", "")
    models = home.shell(snippets()["list-models.sh"].text)
    assert '"type":"model"' in models.stdout and '"id":"claude-sonnet-4-6"' in models.stdout


def test_usage_rows(stack):
    rows = [r for r in stack.router.usage_rows(wait_for=0) if r["endpoint"] == "messages"]
    assert rows and {r["provider"] for r in rows if r["status"] == 200} >= {"anthropic", "gemini", "openai",
                                                                               "vertex-ai"}



# ---- under uvicorn: a text turn and a tool round trip, natively relayed and translated ---------------------

@pytest.mark.parametrize("name", ["anthropic", "openai-chat"])
def test_text_and_tool_round_trip_under_uvicorn(uvicorn_stack, binary, tmp_path, name):
    backend = uvicorn_stack.backends[name]
    check_text_turn(ClaudeHome(tmp_path / "text", uvicorn_stack.router.url, binary), backend)
    check_bash_tool_with_thinking(ClaudeHome(tmp_path / "tool", uvicorn_stack.router.url, binary), backend)
    assert not backend.rejections, f"the strict fake rejected a request: {backend.rejections}"
