"""Google service-account keys (Vertex AI credentials): checked when saved, not at the first request.

A key that is not JSON, is of another type, lacks its email or token URI, or holds a private key that
does not load would otherwise surface as a 502 ``MalformedError`` on the first Vertex request. The same
checks serve the admin form (through ``Credential.clean``) and ``import_config`` (errors named by YAML path).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from django.conf import settings

REQUIRED = ("type", "client_email", "private_key", "token_uri")


def problems(info: Any) -> list[str]:
    """What is wrong with a parsed key file, one message per problem, each naming its JSON key."""
    if not isinstance(info, dict):
        return [f"expected a JSON object (a service-account key file), got {type(info).__name__}"]
    out = [f"`{key}` is missing" for key in REQUIRED if info.get(key) in (None, "")]
    kind = info.get("type")
    if kind not in (None, "", "service_account"):
        out.append(f'`type` is {kind!r}, not "service_account": this is not a service-account key '
                   "(create one under IAM > Service accounts > Keys)")
    email = info.get("client_email")
    if email not in (None, "") and (not isinstance(email, str) or "@" not in email):
        out.append("`client_email` is not an email address")
    key = info.get("private_key")
    if key not in (None, ""):
        error = _key_error(key)
        if error:
            out.append(f"`private_key` does not load: {error}")
    uri = info.get("token_uri")
    if uri not in (None, "") and (not isinstance(uri, str) or urlsplit(uri).scheme not in ("https", "http")
                                  or not urlsplit(uri).netloc):
        out.append("`token_uri` is not an http(s) URL")
    return out


def _key_error(key: Any) -> str | None:
    if not isinstance(key, str) or "-----BEGIN" not in key:
        return "expected a PEM block (-----BEGIN PRIVATE KEY-----...)"
    try:
        serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except Exception as exc:  # cryptography raises its own types for unsupported keys
        return type(exc).__name__
    return None


def text_problems(text: str) -> list[str]:
    """Problems of a pasted key (JSON text)."""
    try:
        info = json.loads(text)
    except ValueError as exc:
        return [f"not valid JSON ({exc})"]
    return problems(info)


def resolve(path: str, base: Path | None = None) -> Path:
    """Where a ``credentials_file`` is: absolute as given, relative from ``base`` (default: the router's
    folder, so the admin, the importer and the request path agree whatever the working directory)."""
    given = Path(path).expanduser()
    return given if given.is_absolute() else (base or Path(settings.BASE_DIR)) / given


def file_problems(path: str, base: Path | None = None, base_label: str = "the router's folder") -> list[str]:
    """Problems of a key file: missing or unreadable (saying where a relative path was looked for), or its
    content. ``base_label`` names where relative paths are resolved from, for the message."""
    base = base or Path(settings.BASE_DIR)
    where = resolve(path, base)
    try:
        text = where.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
        if Path(path).expanduser().is_absolute():
            return [f"No readable file at {path} ({reason})."]
        return [f"No readable file at {path} ({reason}): relative paths are resolved from {base_label}, "
                f"{base}, so it looked for {where}."]
    return [f"{path}: {problem}" for problem in text_problems(text)]
