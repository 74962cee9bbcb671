"""Upstream error classification: statuses, retry hints, and no secrets in messages."""

from __future__ import annotations

import pytest

from proxy.errors import classify_upstream_error, parse_retry_after


@pytest.mark.parametrize(("status", "message", "code", "out_status", "out_code", "retryable", "credential"), [
    (429, "Rate limit reached", "rate_limit_exceeded", 429, "rate_limit_exceeded", True, False),
    (429, "You exceeded your current quota", "insufficient_quota", 429, "insufficient_quota", True, True),
    (400, "This model's maximum context length is 8192 tokens", None, 400, "context_length_exceeded", False, False),
    (401, "bad key", None, 502, "upstream_authentication_error", True, True),
    (403, "project not allowed", None, 502, "upstream_authentication_error", True, True),
    (529, "Overloaded", "overloaded_error", 503, "server_is_overloaded", True, False),
    (500, "boom", None, 502, "server_error", True, False),
    (503, "down", None, 503, "server_error", True, False),
    (400, "Invalid 'messages[0].role'", "invalid_value", 400, "invalid_value", False, False),
])
def test_classification(status, message, code, out_status, out_code, retryable, credential):
    err = classify_upstream_error(status, message, provider="p", upstream_code=code)
    assert (err.status, err.code, err.retryable, err.credential_fault) == (out_status, out_code, retryable, credential)
    assert set(err.to_dict()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("secret", ["sk-proj-abcdefghijklmnop1234", "AIzaSyA1234567890abcdefghijklmnop",
                                    "Bearer ya29.a0AfH6SMBx1234567890"])
def test_keys_echoed_by_providers_never_reach_the_message(secret):
    err = classify_upstream_error(401, f"Incorrect API key provided: {secret}", provider="p")
    assert secret not in err.message and "[redacted]" in err.message


def test_should_retry_false_is_honoured():
    assert not classify_upstream_error(500, "x", provider="p", headers={"x-should-retry": "false"}).retryable


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "7"}, 7.0), ({"retry-after-ms": "1500"}, 1.5), ({}, None), ({"retry-after": "soon"}, None),
])
def test_retry_after(headers, seconds):
    assert parse_retry_after(headers) == seconds
