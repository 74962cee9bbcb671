"""``multipart/form-data`` bodies (``/v1/images/edits``), parsed without Django's request machinery.

The framing is found with ``bytes.find`` (linear, in C: a 20 MB upload costs milliseconds);
each part's headers go through the stdlib ``email`` header parser. Bounded: at most
``max_parts`` parts, each file at most ``max_file_bytes`` (the whole body is already
capped by ``ROUTER_MAX_BODY_BYTES``). Every malformation is a 400 in OpenAI's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import HTTP

from .errors import ProxyError, bad_request

_HEADERS = BytesHeaderParser(policy=HTTP)
_MAX_FIELD_BYTES = 64 * 1024  # a text field (the prompt...) is never this long


@dataclass(slots=True)
class Part:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str = ""

    @property
    def is_file(self) -> bool:
        return self.filename is not None


def boundary_of(content_type: str) -> str | None:
    msg = Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/form-data":
        return None
    boundary = msg.get_param("boundary")
    return boundary if isinstance(boundary, str) and 0 < len(boundary) <= 200 else None


def parse_form(body: bytes, content_type: str, *, max_parts: int, max_file_bytes: int) -> list[Part]:
    boundary = boundary_of(content_type)
    if boundary is None:
        raise bad_request("This endpoint takes multipart/form-data (with a boundary); got "
                          f"{content_type.split(';')[0] or 'no content type'}.")
    delimiter = b"--" + boundary.encode("latin-1")
    pos = body.find(delimiter)
    if pos < 0:
        raise bad_request("Malformed multipart body: the boundary never appears.")
    parts: list[Part] = []
    while True:
        pos += len(delimiter)
        if body[pos:pos + 2] == b"--":
            return parts
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise bad_request("Malformed multipart body: a boundary line does not end.")
        start = line_end + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise bad_request("Malformed multipart body: the closing boundary is missing.")
        if len(parts) >= max_parts:
            raise bad_request(f"Too many multipart fields: at most {max_parts}.")
        parts.append(_part(body[start:end], max_file_bytes))
        pos = end + 2


def _part(raw: bytes, max_file_bytes: int) -> Part:
    if raw.startswith(b"\r\n"):
        head, data = b"", raw[2:]
    else:
        split = raw.find(b"\r\n\r\n")
        if split < 0:
            raise bad_request("Malformed multipart body: a part has no blank line after its headers.")
        head, data = raw[:split + 2], raw[split + 4:]
    headers = _HEADERS.parsebytes(head)
    name = headers.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        raise bad_request("Malformed multipart body: a part has no Content-Disposition name.")
    filename = headers.get_param("filename", header="content-disposition")
    filename = filename if isinstance(filename, str) else None
    if filename is not None and len(data) > max_file_bytes:
        raise ProxyError(413, f"File {filename or name!r} ({name}) is {len(data)} bytes; the limit is "
                         f"{max_file_bytes} bytes per file.", param=name, code="file_too_large")
    if filename is None and len(data) > _MAX_FIELD_BYTES:
        raise bad_request(f"Field `{name}` is longer than {_MAX_FIELD_BYTES} bytes.", param=name)
    content_type = str(headers.get("content-type", "")).split(";")[0].strip().lower()
    return Part(name, data, filename, content_type)
