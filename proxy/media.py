"""Downloading the images and files clients give as http(s) URLs, for upstreams that need them inline.

Bounded in size and time and, unless ``ROUTER_MEDIA_ALLOW_PRIVATE``, never from the router's
own network: the router must not become a way into it (SSRF).

The check and the connection cannot drift apart (DNS rebinding: a name that answers a
public address to the check and 127.0.0.1 to the connection). A host name is resolved
once per connection, by the connector's own resolver (``_CheckedResolver``): every address
the answer holds is checked, and the connection goes to exactly those addresses, while
aiohttp keeps the original name for the Host header, TLS SNI and the certificate check.
Redirects are followed here, hop by hop, each hop a new connection through the same
resolver. IP literals are checked before the request (aiohttp does not resolve them, and
refuses non-canonical IPv4 spellings such as ``2130706433`` or ``127.1``).

Refused: every address Python's ``ipaddress`` does not call global, multicast, and IPv6
forms that embed an IPv4 address which is refused itself: IPv4-mapped (``::ffff:a.b.c.d``),
IPv4-compatible (``::a.b.c.d``, all of ``::/96``), NAT64 (``64:ff9b::/96``,
``64:ff9b:1::/48``), 6to4 (``2002::/16``) and Teredo (server and client).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from django.conf import settings

from . import http
from .errors import ProxyError

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_PRIVATE = "the host resolves to a private address"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, NAT64, 6to4, Teredo)."""
    out = [ip.ipv4_mapped] if ip.ipv4_mapped else []
    if any(ip in net for net in _NAT64):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour:
        out.append(ip.sixtofour)
    if ip.teredo:
        out.extend(ip.teredo)
    return out


def is_refused(ip: IPAddress) -> bool:
    """Whether the router must not connect to ``ip`` on a client's behalf."""
    if isinstance(ip, ipaddress.IPv6Address):
        if int(ip) >> 32 == 0:  # ::/96: IPv4-compatible (deprecated), ::, ::1
            return True
        if any(is_refused(v4) for v4 in embedded_ipv4(ip)):
            return True
    return not ip.is_global or ip.is_multicast


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


async def lookup(host: str, port: int, family: int) -> list[tuple]:
    """The one DNS query per connection (a module function: tests answer it with a fake DNS)."""
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)


class _CheckedResolver(AbstractResolver):
    """Resolves, refuses any answer holding a non-public address, and returns exactly what it checked."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.refused = False

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results: list[ResolveResult] = []
        for fam, _, proto, _, address in await lookup(host, port, family):
            ip = _parse_ip(address[0])
            if ip is None or (not self.allow_private and is_refused(ip)):
                self.refused = True
                raise OSError(f"{host} resolves to a refused address")
            results.append(ResolveResult(hostname=host, host=str(ip), port=port, family=fam, proto=proto,
                                         flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
        if not results:
            raise OSError(f"{host} has no address")
        return results

    async def close(self) -> None:
        return None


def media_error(url: str, reason: str) -> ProxyError:
    shown = url if len(url) <= 200 else f"{url[:200]}..."
    return ProxyError(400, f"Could not download {shown!r} to send it to the model: {reason}", param="messages",
                      code="invalid_image_url")


def _check_url(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise media_error(url, "only http(s) URLs can be downloaded")
    literal = _parse_ip(parts.hostname)
    if literal is not None and not allow_private and is_refused(literal):
        raise media_error(url, _PRIVATE)


async def _download(session: aiohttp.ClientSession, url: str, max_bytes: int,
                    allow_private: bool) -> tuple[str | None, bytes]:
    for _ in range(MAX_REDIRECTS + 1):
        _check_url(url, allow_private)
        async with session.get(url, allow_redirects=False) as response:
            if response.status in _REDIRECTS and response.headers.get("location"):
                url = urljoin(url, response.headers["location"])
                continue
            if response.status >= 400:
                raise media_error(url, f"HTTP {response.status}")
            if (response.content_length or 0) > max_bytes:
                raise media_error(url, f"larger than {max_bytes} bytes")
            data = bytearray()
            async for piece in response.content.iter_chunked(65536):
                data += piece
                if len(data) > max_bytes:
                    raise media_error(url, f"larger than {max_bytes} bytes")
            mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
            return (mime if "/" in mime and mime != "application/octet-stream" else None), bytes(data)
    raise media_error(url, "too many redirects")


async def fetch_media(url: str) -> tuple[str | None, str]:
    """(content type or None, base64 data) of ``url``; a ``ProxyError`` 400 when it cannot be had."""
    max_bytes, timeout = settings.ROUTER_MEDIA_MAX_BYTES, settings.ROUTER_MEDIA_TIMEOUT
    allow_private = settings.ROUTER_MEDIA_ALLOW_PRIVATE
    resolver = _CheckedResolver(allow_private)
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, ssl=http.ssl_context(), limit=4)
    try:
        async with asyncio.timeout(timeout), aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            mime, data = await _download(session, url, max_bytes, allow_private)
    except TimeoutError:
        raise media_error(url, f"no complete answer within {timeout:g}s") from None
    except aiohttp.ClientConnectorDNSError:
        raise media_error(url, _PRIVATE if resolver.refused else "the host name does not resolve") from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise media_error(url, type(exc).__name__) from None
    return mime, base64.b64encode(data).decode()
