"""JSON in: the client's request body (400s that name the problem) and upstream answers (502s).

A client body is refused at parse when it holds something no API accepts and
that would otherwise fail deep inside a translator as a 500: ``NaN`` /
``Infinity`` / ``-Infinity`` or a number too large for a float (``1e999``), a
lone UTF-16 surrogate (``"\\ud800"``: it cannot be encoded to send upstream),
or nesting deeper than ``MAX_DEPTH`` (real requests stay under ~30 levels;
every translator may then recurse safely). The checks cost almost nothing on
an ordinary body: the depth check only runs when there are more brackets than
the limit, and counts without recursion; the surrogate walk only runs when the
raw bytes contain a surrogate escape.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import ProxyError, bad_request
from .failures import bad_upstream

MAX_DEPTH = 512

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_ONLY_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_CURLY_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number (only finite numbers are accepted)")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large (only finite numbers are accepted)")
    return value


_decoder = json.JSONDecoder(parse_constant=_constant, parse_float=_float)


def parse_json(raw: bytes) -> dict:
    """The client's body as a JSON object, or a 400."""
    if not raw:
        raise bad_request("Request body is empty; expected a JSON object.")
    try:
        text = raw.decode("utf-8-sig" if raw[:3] == b"\xef\xbb\xbf" else "utf-8")
        body = _decoder.decode(text)
    except UnicodeDecodeError as exc:
        raise bad_request(f"Request body is not valid UTF-8: {exc.reason} at byte {exc.start}.") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"Request body must be a JSON object, not {type(body).__name__}.")
    if depth_exceeds(raw, MAX_DEPTH):
        raise _too_deep()
    if _SURROGATE_HINT.search(raw):
        _check_surrogates(body)
    return body


def _too_deep() -> ProxyError:
    return bad_request(f"Request body is nested more than {MAX_DEPTH} levels deep.", code="nesting_too_deep")


def depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether valid JSON ``raw`` nests arrays/objects more than ``limit`` deep (no recursion)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", raw).translate(_CURLY_TO_SQUARE, _ONLY_BRACKETS)
    for _ in range(limit):
        brackets = brackets.replace(b"[]", b"")  # one level per pass: the innermost pairs
        if not brackets:
            return False
    return True


def _check_surrogates(body: dict) -> None:
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                name = path or "request body"
                raise bad_request(f"`{name}` contains a lone UTF-16 surrogate, which is not valid Unicode text.",
                                  param=path or None)
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                if _SURROGATE.search(key):
                    raise bad_request(f"A key in `{path or 'request body'}` contains a lone UTF-16 surrogate.",
                                      param=path or None)
                stack.append((item, child))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))


def upstream_json(raw: bytes, provider: str) -> dict:
    """An upstream's JSON answer: anything but a JSON object is a 502."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_upstream(provider, "a body that is not JSON") from None
    if not isinstance(data, dict):
        raise bad_upstream(provider, f"a JSON {type(data).__name__} where an object belongs")
    return data
