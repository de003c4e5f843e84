"""The health server: ``/healthz`` (alive), ``/readyz`` (ready for traffic), ``/metrics``.

``/readyz`` is 200 ``{"status": "ready", "endpoints": {name: "up", ...}}`` only while every
entrypoint listens and every endpoint is up; else 503 ``{"status": "not ready", ...}`` with the
reason: each endpoint's state, and ``"entrypoints": "starting"`` until the engine has started every
entrypoint (the health server is started before them, so a load balancer polling it sees 503
rather than ports that refuse connections), ``"entrypoints": "shutting down"`` once the engine
refuses new sessions. An endpoint that is not up and knows why (its last connection failed: a
TLS certificate refused, a broker not answering) says so under ``"reasons"``
(``{"endpoints": {"mqtt": "down"}, "reasons": {"mqtt": "cannot connect to ...: TLS: ..."}}``);
endpoints publish it as a ``down_reason`` attribute (None while up), where they have one.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .context import EngineContext
from .endpoint_state import EndpointState
from .http.asgi import (
    ASGIApp,
    Receive,
    Request,
    Scope,
    Send,
    respond,
    respond_json,
)

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
            await _readiness(context, send)
        else:
            body = generate_latest(context.telemetry.registry)
            await respond(send, 200, body, {"content-type": CONTENT_TYPE_LATEST})

    return app


async def _readiness(context: EngineContext, send: Send) -> None:
    states = {name: e.state.value.value for name, e in context.endpoints.items()}
    if context.shutting_down:
        entrypoints = "shutting down"
    elif not context.entrypoints_listening:
        entrypoints = "starting"
    else:
        entrypoints = None
    ready = entrypoints is None and all(s == EndpointState.UP for s in states.values())
    body: dict[str, object] = {"status": "ready" if ready else "not ready"}
    if entrypoints is not None:
        body["entrypoints"] = entrypoints  # said only when they are the reason (or one of them)
    body["endpoints"] = states
    reasons = {
        name: reason
        for name, e in context.endpoints.items()
        if states[name] != EndpointState.UP and (reason := getattr(e, "down_reason", None))
    }
    if reasons:
        body["reasons"] = reasons
    await respond_json(send, 200 if ready else 503, body)
