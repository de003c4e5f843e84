"""The health server: ``/healthz`` (alive), ``/readyz`` (every endpoint up), ``/metrics``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .endpoints.base import EndpointState
from .entrypoints._asgi import (
    ASGIApp,
    Receive,
    Request,
    Scope,
    Send,
    respond,
    respond_json,
)
from .session import EngineContext

# An unknown path is 404 whatever the method; a known one answers GET and HEAD only (405).
PATHS = ("/healthz", "/readyz", "/metrics")


def health_app(context: EngineContext) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if request.path not in PATHS:
            await respond_json(send, 404, {"error": "not found"})
        elif request.method not in ("GET", "HEAD"):
            await respond_json(send, 405, {"error": "method not allowed"}, {"allow": "GET, HEAD"})
        elif request.path == "/healthz":
            await respond_json(send, 200, {"status": "ok", "sessions": len(context.sessions)})
        elif request.path == "/readyz":
            states = {name: e.state.value.value for name, e in context.endpoints.items()}
            ready = all(state == EndpointState.UP for state in states.values())
            status = "ready" if ready else "not ready"
            await respond_json(send, 200 if ready else 503, {"status": status, "endpoints": states})
        else:
            body = generate_latest(context.telemetry.registry)
            await respond(send, 200, body, {"content-type": CONTENT_TYPE_LATEST})

    return app
