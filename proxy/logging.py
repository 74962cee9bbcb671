"""A belt-and-braces log filter: secrets must never reach a log line."""

from __future__ import annotations

import logging
import re

_SECRET = re.compile(
    r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\b(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]{8,}|\b(AIza)[A-Za-z0-9_-]{20,}"
    r"|(\"private_key\":\s*\")[^\"]+"
)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: next(g for g in m.groups() if g) + "[redacted]", text)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
