"""Management API errors in the same shape as the router's: ``{"error": {message, type, param, code}}``.

Validation errors also list every field's messages under ``error.fields``.
"""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.views import exception_handler

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error"}


def _flatten(data, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        return [item for k, v in data.items() for item in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(data, list):
        if all(not isinstance(v, (dict, list)) for v in data):
            return [(prefix, " ".join(str(v) for v in data))]
        return [item for i, v in enumerate(data) for item in _flatten(v, f"{prefix}[{i}]")]
    return [(prefix, str(data))]


def handle(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None
    status = response.status_code
    error: dict = {"type": _TYPES.get(status, "invalid_request_error"), "param": None, "code": str(status)}
    if isinstance(exc, exceptions.ValidationError):
        pairs = _flatten(response.data)
        error["message"] = "; ".join(f"{field}: {text}" if field and field != "non_field_errors" else text
                                     for field, text in pairs)
        error["param"] = next((f for f, _ in pairs if f and f != "non_field_errors"), None)
        error["fields"] = response.data
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else response.data
        error["message"] = str(detail)
        if status == 403 and not isinstance(exc, exceptions.NotFound):
            error["message"] = "The management API needs the master key or an admin session; client keys " \
                               "cannot manage keys or teams."
    response.data = {"error": error}
    return response
