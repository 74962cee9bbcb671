"""Run the router in this process under one ASGI server, Daphne or uvicorn, until it is shut down.

``run(server, host=, port=)`` listens itself; ``run(server, fd=)`` serves an inherited listening
socket (a pre-forking supervisor's children share one). Both servers get the same app and the
same behaviour, the server-specific parts being:

- graceful shutdown (``proxy.shutdown``) and the connection cap, header/body deadlines and idle
  timer (``proxy.server_limits``): Twisted patched when the app is built, or uvicorn's server and
  httptools protocol subclassed (``routerproject.uvicorn_server``);
- the access log: off unless ``ROUTER_ACCESS_LOG``, then one middleware (``proxy.logging.AccessLog``)
  writes the same redacted line under both (neither server's own access log is used);
- proxy headers (client address, scheme) trusted only with ``ROUTER_BEHIND_TLS_PROXY``;
- upstream HTTP clients: closed by the lifespan shutdown (uvicorn) or at exit (Daphne has no lifespan).

uvicorn runs with uvloop and httptools: the server's own CPU per request is well under Daphne's
(Twisted's HTTP machinery and request objects on an asyncio reactor). Before serving, the heap
built at startup is frozen (``gc.freeze``): full collections no longer walk Django and the app,
and the GIL switch interval is 1 ms, so the event loop never waits long behind the usage writer.
Command line: ``python -m routerproject.servers --server uvicorn --host 127.0.0.1 --port 8080``.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys

SERVERS = ("daphne", "uvicorn")

#: the server this process runs, once ``run()`` has chosen it (None: started some other way,
#: e.g. the ``daphne`` command line or tests)
running: str | None = None


def daphne_may_serve() -> bool:
    """Whether Daphne's patches are wanted: Daphne runs, or the server is not known (the daphne CLI)."""
    return running in (None, "daphne")


def run(server: str | None = None, *, host: str | None = None, port: int | None = None,
        fd: int | None = None) -> None:
    """Serve the router under ``server`` (default: ``ROUTER_SERVER``) on ``host``:``port`` (default:
    ``ROUTER_HOST``:``ROUTER_PORT``) or on the listening socket ``fd``, until it is shut down."""
    global running
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerproject.settings")
    from django.conf import settings

    server = (server or settings.ROUTER_SERVER).strip().lower()
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}: choose one of {', '.join(SERVERS)}")
    running = server
    if fd is None:
        host = host or settings.ROUTER_HOST
        port = settings.ROUTER_PORT if port is None else port
    if server == "daphne":
        import daphne.server  # noqa: F401  (installs Twisted's asyncio reactor before anything imports one)
    from proxy.logging import AccessLog
    from routerproject.asgi import application
    from routerproject.exposure import warn_if_exposed

    warn_if_exposed(_fd_host(fd) if fd is not None else host)
    app = AccessLog(application) if settings.ROUTER_ACCESS_LOG else application
    # Django, the app and their caches are built: out of the collector's sight from now on. A full
    # collection walked them all (about 150 ms with the loop stopped: the worst of the latency tail).
    gc.collect()
    gc.freeze()
    # The usage writer's thread runs Python for milliseconds per batch; a request waiting for the GIL
    # meanwhile waits at most this long (default 5 ms, which showed in the c=1 latency tail).
    sys.setswitchinterval(0.001)
    where = f"fd {fd}" if fd is not None else f"http://{_addr(host, port)}"
    sys.stderr.write(f"Router serving on {where} ({server}, pid {os.getpid()})\n")
    if server == "daphne":
        _run_daphne(app, host, port, fd, behind_proxy=settings.ROUTER_BEHIND_TLS_PROXY)
    else:
        _run_uvicorn(app, host, port, fd, behind_proxy=settings.ROUTER_BEHIND_TLS_PROXY)


def _addr(host: str | None, port: int | None) -> str:
    from routerproject.exposure import addrport

    return addrport(host or "127.0.0.1", port or 0)


def _fd_socket(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)  # family and type read from the descriptor


def _fd_host(fd: int) -> str:
    sock = _fd_socket(fd)
    try:
        return sock.getsockname()[0] if sock.family in (socket.AF_INET, socket.AF_INET6) else "localhost"
    finally:
        sock.detach()  # the descriptor stays open for the server


def _run_daphne(app, host: str | None, port: int | None, fd: int | None, *, behind_proxy: bool) -> None:
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server

    # an fd without ``domain=``: Twisted's fd parser would pass that string on as the address family
    # and fail ("Listen failure: INET"); its default serves IPv4 and IPv6 sockets alike
    endpoints = [f"fd:fileno={fd}"] if fd is not None else build_endpoint_description_strings(host=host, port=port)
    server = Server(
        application=app, endpoints=endpoints, action_logger=None,
        proxy_forwarded_address_header="X-Forwarded-For" if behind_proxy else None,
        proxy_forwarded_port_header="X-Forwarded-Port" if behind_proxy else None,
        proxy_forwarded_proto_header="X-Forwarded-Proto" if behind_proxy else None,
    )
    server.run()
    if server.abort_start:
        raise SystemExit(1)


def _run_uvicorn(app, host: str | None, port: int | None, fd: int | None, *, behind_proxy: bool) -> None:
    import uvicorn

    from proxy import server_limits, shutdown
    from routerproject import uvicorn_server

    config = uvicorn.Config(
        app, host=host or "127.0.0.1", port=port or 0, loop="uvloop", http=uvicorn_server.Protocol,
        ws="wsproto", lifespan="on", log_config=None, access_log=False, server_header=False,
        proxy_headers=behind_proxy, forwarded_allow_ips="*" if behind_proxy else None,
        timeout_keep_alive=server_limits.IDLE_TIMEOUT, timeout_graceful_shutdown=int(shutdown.CUT_WAIT),
    )
    server = uvicorn_server.Server(config)
    server.run(sockets=[_fd_socket(fd)] if fd is not None else None)
    if not server.started:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m routerproject.servers", description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=SERVERS, help="default: ROUTER_SERVER (uvicorn)")
    parser.add_argument("--host", help="default: ROUTER_HOST (127.0.0.1)")
    parser.add_argument("--port", type=int, help="default: ROUTER_PORT (8080)")
    parser.add_argument("--fd", type=int, help="serve this inherited listening socket instead")
    args = parser.parse_args(argv)
    run(args.server, host=args.host, port=args.port, fd=args.fd)


if __name__ == "__main__":  # run as the package's module, so the app sees the same ``running``
    from routerproject.servers import main as package_main

    package_main()
