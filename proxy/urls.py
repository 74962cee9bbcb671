"""The API route table (served by ``proxy.asgi.ApiApp``, not Django's URL resolver)."""

from __future__ import annotations

from . import images_api, messages_api, responses_api, shutdown, usage, views
from .asgi import ApiApp


def build_app(fallback) -> ApiApp:
    from observability import views as observability

    routes = {
        "/health": {"GET": views.health},
        "/health/liveness": {"GET": observability.liveness},
        "/health/readiness": {"GET": observability.readiness},
        "/metrics": {"GET": observability.metrics},
        "/v1/models": {"GET": messages_api.list_models},
        "/models": {"GET": views.list_models},
        "/v1/messages": {"POST": messages_api.messages},
        "/v1/messages/count_tokens": {"POST": messages_api.count_tokens},
    }
    for path, handler in (("/chat/completions", views.chat_completions), ("/embeddings", views.embeddings),
                          ("/responses", responses_api.responses), ("/images/generations", images_api.generations),
                          ("/images/edits", images_api.edits)):
        routes[path] = routes["/v1" + path] = {"POST": handler}
    prefixes = {"/v1/models/": {"GET": messages_api.get_model}}
    # served without a router key (a valid one shows more on /health; /metrics checks its own token)
    open_paths = frozenset({"/health", "/health/liveness", "/health/readiness", "/metrics"})
    usage.writer.start()  # rows an earlier process spooled are replayed now, not at the first request
    shutdown.install()
    shapes = {"/v1/messages": messages_api.anthropic_error_response, "/v1/models": messages_api.models_error_response}
    return ApiApp(routes, prefixes, fallback, optional_auth=open_paths, error_shapes=shapes)
