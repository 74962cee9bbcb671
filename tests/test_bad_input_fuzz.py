"""Bad numbers and shapes in any field of any POST endpoint are a 400 that names the problem.

The payload families the fuzz found as 500s: non-finite numbers (``NaN``, ``Infinity``,
``-Infinity``, ``1e999``), lone surrogates, nesting 100,000 deep, a tool schema 900 deep.
Each is tried in several places of each endpoint's body, against every provider type where
the request gets that far.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from proxy.parsing import MAX_DEPTH, depth_exceeds, parse_json
from tests.asgi_client import call
from tests.conftest import AUTH, add_credential
from tests.fakes.server import FakeServer, Reply

pytestmark = pytest.mark.django_db(transaction=True)

NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]
PLACES = {
    "/v1/chat/completions": ['{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}',
                             '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": %s}',
                             '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": '
                             '"function", "function": {"name": "f", "parameters": {"type": "object", "properties": '
                             '{"x": {"type": "number", "minimum": %s}}}}}]}'],
    "/v1/embeddings": ['{"model": "m", "input": [1, 2, %s]}', '{"model": "m", "input": "hi", "dimensions": %s}'],
    "/v1/responses": ['{"model": "m", "input": "hi", "temperature": %s}',
                      '{"model": "m", "input": "hi", "max_output_tokens": %s}'],
}
SURROGATE_PLACES = {
    "/v1/chat/completions": ({"model": "m", "messages": [{"role": "user", "content": "X"}]}, "messages[0].content"),
    "/v1/embeddings": ({"model": "m", "input": ["ok", "X"]}, "input[1]"),
    "/v1/responses": ({"model": "m", "input": [{"role": "user", "content": "X"}]}, "input[0].content"),
}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def schema(levels: int) -> dict:
    node: dict = {"type": "string"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"a": node}}
    return node


@pytest.fixture(params=["openai", "anthropic", "gemini"])
async def provider(request, router_db):
    """Any upstream: a request refused at the front never reaches it (the fake fails the test if it does)."""
    server = FakeServer(lambda req: _unreached()).start()
    await sync_to_async(add_credential)("up", request.param, models={"m": "m-1"}, api_key="k",
                                        base_url=server.url + ("/v1" if request.param == "openai" else ""))
    yield request.param
    server.stop()


async def _unreached() -> Reply:
    return Reply(status=599, json={"error": {"message": "the fake upstream should not have been called"}})


def assert_400(res, *, param: str | None = None, says: str = "") -> dict:
    assert res.status == 400, res.body[:300]
    error = res.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert says in error["message"], error["message"]
    return error


@pytest.mark.parametrize("path", list(PLACES))
async def test_non_finite_numbers_are_refused_at_parse(app, provider, path):
    for template in PLACES[path]:
        for number in NUMBERS:
            res = await call(app, "POST", path, (template % number).encode(), AUTH)
            error = assert_400(res, says="Request body")
            assert "finite" in error["message"]


@pytest.mark.parametrize("path", list(SURROGATE_PLACES))
async def test_a_lone_surrogate_is_refused_naming_the_parameter(app, provider, path):
    body, param = SURROGATE_PLACES[path]
    for surrogate in ("\\ud800", "\\udfff", "a\\ud83d b"):
        raw = json.dumps(body).replace("X", surrogate).encode()
        assert_400(await call(app, "POST", path, raw, AUTH), param=param, says=f"`{param}`")
    # a proper pair (an emoji) is fine and the literal text \ud800 (escaped backslash) too
    assert parse_json(json.dumps({"a": "\U0001f600 \\ud800"}).encode())["a"] == "\U0001f600 \\ud800"


@pytest.mark.parametrize("path", list(PLACES))
async def test_nesting_100000_deep_is_a_400_not_a_recursion_error(app, provider, path):
    for raw in (deep(100_000), '{"model": "m", "metadata": ' + deep(100_000) + "}",
                '{"model": "m", "input": "hi", "x": ' + deep(MAX_DEPTH + 5) + "}"):
        assert_400(await call(app, "POST", path, raw.encode(), AUTH), says="nested")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_a_tool_schema_900_deep_is_a_400(app, provider, path):
    tool = {"type": "function", "function": {"name": "f", "parameters": schema(900)}}
    if path.endswith("responses"):
        body = {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": schema(900)}]}
    else:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}
    assert_400(await call(app, "POST", path, body, AUTH), says="nested")


def test_depth_is_measured_without_recursion_and_ignores_brackets_in_strings():
    assert not depth_exceeds(b'{"a": "' + b"[" * 2000 + b'"}', 10)
    assert not depth_exceeds(json.dumps({"a": [[{"b": [1]}]]}).encode(), 5)
    assert depth_exceeds(json.dumps({"a": [[{"b": [1]}]]}).encode(), 4)
    quoted = ('{"a": "\\"[[[", "b": ' + deep(30) + "}").encode()  # 31 deep, with brackets in an escaped string
    assert depth_exceeds(quoted, 30)
    assert not depth_exceeds(quoted, 31)
    assert depth_exceeds(deep(1_000_000).encode(), MAX_DEPTH)


# ---- Gemini: $ref inlining is bounded ---------------------------------------------------------


def fan_out_schema(levels: int = 8, width: int = 8) -> dict:
    """~2 KB of JSON whose $refs, inlined, would be width**levels nodes (16.7 million)."""
    defs = {f"d{i}": {"type": "object", "properties": {f"p{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(width)}}
            for i in range(levels)}
    defs[f"d{levels}"] = {"type": "string"}
    return {"type": "object", "properties": {"root": {"$ref": "#/$defs/d0"}}, "$defs": defs}


def test_ref_fan_out_is_refused_as_too_complex_not_expanded():
    from proxy.errors import ProxyError
    from proxy.translators.gemini import function_parameters

    schema = fan_out_schema()
    assert len(json.dumps(schema)) < 2600
    with pytest.raises(ProxyError) as refused:
        function_parameters(schema)
    assert refused.value.status == 400 and refused.value.code == "schema_too_complex"
    # the same shape, small enough, is still inlined in full
    small = function_parameters(fan_out_schema(levels=3, width=3))
    assert small["properties"]["root"]["properties"]["p2"]["properties"]["p0"]["properties"]["p1"] == {"type": "string"}


@pytest.mark.parametrize("where", ["tool", "response_format"])
async def test_gemini_request_with_a_fan_out_schema_gets_400_naming_it(app, router_db, where):
    import asyncio

    server = FakeServer(lambda req: _unreached()).start()
    try:
        await sync_to_async(add_credential)("up", "gemini", models={"m": "m-1"}, api_key="k", base_url=server.url)
        body: dict = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        if where == "tool":
            body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": fan_out_schema()}}]
            param = "tools[0].function.parameters"
        else:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": fan_out_schema()}}
            param = "response_format.json_schema.schema"
        res = await asyncio.wait_for(call(app, "POST", "/v1/chat/completions", body, AUTH), 20)  # a hang guard
        error = assert_400(res, param=param, says="too complex")
        assert error["code"] == "schema_too_complex" and not server.requests
    finally:
        server.stop()
