"""Image downloads cannot be turned against the router's own network (SSRF), DNS rebinding included.

A fake DNS answers a name with a public address first and 127.0.0.1 afterwards (a rebinding
attacker's DNS server); a server on 127.0.0.1 stands for the internal service that must never
receive the request. The router resolves once per connection, checks every address, and
connects to exactly the address it checked.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket

import pytest

from proxy import media
from proxy.errors import ProxyError
from tests.fakes.server import FakeServer, Recorded, Reply

IMAGE = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

REFUSED = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "192.168.0.1",
           "::1", "::", "::127.0.0.1", "::10.0.0.1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
           "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b:1::a00:1", "2002:7f00:1::", "2002:a00:1::1",
           "2001:0:4136:e378:8000:63bf:3fff:fdd2", "fe80::1", "fc00::1", "ff02::1"]
ALLOWED = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_and_ipv6_forms_embedding_them_are_refused(address):
    assert media.is_refused(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address):
    assert not media.is_refused(ipaddress.ip_address(address))


@pytest.fixture
def internal():
    """The service inside the router's network: it must never see a request."""
    async def handle(req: Recorded) -> Reply:
        return Reply(body=b"internal secret", content_type="text/plain")

    server = FakeServer(handle).start()
    yield server
    server.stop()


@pytest.fixture
def strict(settings):
    settings.ROUTER_MEDIA_ALLOW_PRIVATE = False
    settings.ROUTER_MEDIA_TIMEOUT = 3.0
    settings.ROUTER_MEDIA_MAX_BYTES = 1024 * 1024


class FakeDNS:
    """Answers the names in ``zones`` with their next address (the last one repeats); others go to the real DNS."""

    def __init__(self, loop: asyncio.AbstractEventLoop, zones: dict[str, list[str]]) -> None:
        self.real = loop.getaddrinfo
        self.zones = {name: list(answers) for name, answers in zones.items()}
        self.queries: list[str] = []

    async def __call__(self, host, port, *, family=0, type=0, proto=0, flags=0):
        if host not in self.zones:
            return await self.real(host, port, family=family, type=type, proto=proto, flags=flags)
        self.queries.append(host)
        answers = self.zones[host]
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, int(port or 0), 0, 0) if fam == socket.AF_INET6 else (address, int(port or 0))
        return [(fam, socket.SOCK_STREAM, 6, "", sockaddr)]


@pytest.fixture
def fake_dns(monkeypatch):
    def install(zones: dict[str, list[str]]) -> FakeDNS:
        loop = asyncio.get_running_loop()
        dns = FakeDNS(loop, zones)
        monkeypatch.setattr(loop, "getaddrinfo", dns)
        return dns
    return install


async def refused(url: str) -> str:
    with pytest.raises(ProxyError) as exc:
        await media.fetch_media(url)
    assert exc.value.status == 400 and exc.value.code == "invalid_image_url"
    return exc.value.message


async def test_rebinding_name_public_first_then_loopback_never_reaches_the_internal_server(
        strict, internal, fake_dns):
    dns = fake_dns({"img.rebind.test": ["8.8.8.8", "127.0.0.1"]})
    message = await refused(f"http://img.rebind.test:{internal.port}/cat.png")
    # The check saw 8.8.8.8 and the connection went to 8.8.8.8 (unreachable here), never to a second answer.
    assert internal.requests == []
    assert dns.queries == ["img.rebind.test"]
    assert "private address" not in message


async def test_a_name_answering_loopback_is_refused_before_any_connection(strict, internal, fake_dns):
    fake_dns({"internal.rebind.test": ["127.0.0.1"]})
    assert "private address" in await refused(f"http://internal.rebind.test:{internal.port}/x")
    assert internal.requests == []


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]",
                                  "127.0.0.1", "[::1]"])
async def test_ip_literals_embedding_loopback_are_refused(strict, internal, host):
    assert "private address" in await refused(f"http://{host}:{internal.port}/cat.png")
    assert internal.requests == []


@pytest.fixture
def pretend_public(monkeypatch):
    """Treat 127.0.0.2 as a public address: the one place a test server can stand for 'the internet'."""
    original = media.is_refused
    monkeypatch.setattr(media, "is_refused", lambda ip: False if str(ip) == "127.0.0.2" else original(ip))


@pytest.fixture
def public(internal, pretend_public):
    """An image host on 127.0.0.2, on the internal server's port (so a URL could reach either)."""
    async def handle(req: Recorded) -> Reply:
        if req.path == "/to-internal":
            return Reply(status=302, body=b"", headers={"location": f"http://inside.rebind.test:{internal.port}/x"})
        if req.path == "/to-literal":
            return Reply(status=307, body=b"", headers={"location": f"http://127.0.0.1:{internal.port}/x"})
        return Reply(body=IMAGE, content_type="image/png")

    server = FakeServer(handle, host="127.0.0.2", port=internal.port).start()
    yield server
    server.stop()


async def test_the_connection_goes_to_the_checked_address_with_the_original_host_header(strict, public, internal,
                                                                                         fake_dns):
    dns = fake_dns({"img.rebind.test": ["127.0.0.2", "127.0.0.1"]})
    mime, data = await media.fetch_media(f"http://img.rebind.test:{internal.port}/cat.png")
    assert (mime, base64.b64decode(data)) == ("image/png", IMAGE)
    assert [r.headers["host"] for r in public.requests] == [f"img.rebind.test:{internal.port}"]
    assert internal.requests == [] and dns.queries == ["img.rebind.test"]


@pytest.mark.parametrize("path", ["/to-internal", "/to-literal"])
async def test_every_redirect_hop_is_checked(strict, public, internal, fake_dns, path):
    fake_dns({"img.rebind.test": ["127.0.0.2"], "inside.rebind.test": ["127.0.0.1"]})
    assert "private address" in await refused(f"http://img.rebind.test:{internal.port}{path}")
    assert [r.path for r in public.requests] == [path]
    assert internal.requests == []
