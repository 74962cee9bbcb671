"""ASGI entry point: ``daphne routerproject.asgi:application`` (and ``runserver``).

API paths go to the lean async handlers in ``proxy``; the admin and static
files go through Django's full stack.
"""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerproject.settings")

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from credentials.crypto import warn_if_development_key  # noqa: E402
from proxy.logging import redact_daphne_access_log  # noqa: E402
from proxy.urls import build_app  # noqa: E402
from routerproject.exposure import daphne_bind, warn_if_exposed  # noqa: E402

redact_daphne_access_log()
if (bind := daphne_bind(sys.argv)) is not None:  # the daphne command (docker): warn before it listens
    warn_if_exposed(bind)


async def refuse_websocket(scope, receive, send) -> None:
    """No endpoint speaks WebSocket: deny the upgrade (the server answers 403) rather than fail with a
    500 and a traceback per attempt. Clients that try one first (Codex) fall back to HTTP."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


warn_if_development_key()
api_app = build_app(django_app)
application = ProtocolTypeRouter({"http": api_app, "lifespan": api_app, "websocket": refuse_websocket})
