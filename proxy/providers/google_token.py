"""OAuth2 access tokens for Vertex AI from a service-account key (google-auth).

google-auth's refresh is blocking HTTP, so it runs in a worker thread; the
token is cached until five minutes before it expires (half its lifetime for
short-lived tokens), and concurrent requests for the same credential wait on one
refresh instead of each starting their own. ``forget`` drops a token the
upstream rejected.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import json
import time
from dataclasses import dataclass

from .. import redaction

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
MARGIN = 300.0


@dataclass(slots=True)
class _Token:
    value: str
    expires: float  # time.time()
    issued: float

    def fresh(self) -> bool:
        margin = min(MARGIN, (self.expires - self.issued) / 2)
        return self.expires - margin > time.time()


class TokenCache:
    def __init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._inflight: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future] = {}

    @staticmethod
    def key(info: dict) -> str:
        return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()

    async def token(self, info: dict) -> str:
        key = self.key(info)
        cached = self._tokens.get(key)
        if cached and cached.fresh():
            return cached.value
        loop = asyncio.get_running_loop()
        pending = self._inflight.get((loop, key))
        if pending is None:
            pending = self._inflight[(loop, key)] = loop.run_in_executor(None, _refresh, info)
            pending.add_done_callback(lambda _f: self._inflight.pop((loop, key), None))
        token = await asyncio.shield(pending)
        redaction.add_token(token.value)  # Vertex may echo it back in an error
        self._tokens[key] = token
        return token.value

    def forget(self, info: dict, rejected: str | None = None) -> None:
        """Drop the cached token (only if it is still ``rejected``: a concurrent 401 must not drop its successor)."""
        key = self.key(info)
        cached = self._tokens.get(key)
        if cached is not None and rejected in (None, cached.value):
            del self._tokens[key]


def _refresh(info: dict) -> _Token:
    import google.auth.transport.requests
    from google.oauth2 import service_account

    issued = time.time()
    creds = service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
    creds.refresh(google.auth.transport.requests.Request())
    # google-auth's expiry is a naive UTC datetime: timegm, not timestamp() (which assumes local time).
    expiry = calendar.timegm(creds.expiry.utctimetuple()) if creds.expiry else issued + 3000
    return _Token(creds.token, expiry, issued)
