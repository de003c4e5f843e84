"""The HTTP POST (webhook) entrypoint: each request body is one upstream event.

``Content-Type`` and ``X-*`` headers travel as metadata. The answer is ``202
{"status": "accepted", "id"}``: once the producers took the event, or, on ``at_least_once`` routes,
once the broker confirmed it; ``503`` when a broker is down or refused it; ``413`` past
``max_body`` (nothing is published); ``405`` for any other method; ``502`` with no route.
"""

from __future__ import annotations

import trio

from ..config import HTTPPostEntrypoint
from ..errors import MediationError, NoRoute, SessionNotFound
from ..events import Event
from ..identity import check_origin, client_identity
from ..metadata import client_metadata
from ..session import EngineContext, publish_upstream
from ._asgi import (
    Request,
    Send,
    respond_error,
    respond_json,
    serve_requests,
)


async def serve(
    config: HTTPPostEntrypoint,
    context: EngineContext,
    host: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    async def handle(request: Request, send: Send) -> None:
        await _handle(config, context, request, send)

    await serve_requests(handle, context, host, config.port, task_status=task_status)


async def _handle(
    config: HTTPPostEntrypoint, context: EngineContext, request: Request, send: Send
) -> None:
    try:
        if request.path != config.path:
            raise SessionNotFound(f"no webhook entrypoint at {request.path}")
        if request.method != "POST":
            await respond_json(send, 405, {"error": "method not allowed"}, {"allow": "POST"})
            return
        client_id = client_identity(request.headers, request.query_value("client_id"))
        check_origin(config.allowed_origins, request.headers.get("origin"))
        routes = context.routes.for_entrypoint(config.name).upstream
        if not routes:
            raise NoRoute(f"entrypoint {config.name} has no upstream route")
        body = await request.body(config.max_body)
        event = Event(
            body,
            metadata=client_metadata(request.headers.items(), header_names=True),
            client_id=client_id,
        )
        await publish_upstream(
            context, routes, event, entrypoint=config.name, client_id=client_id, session_id=None
        )
    except MediationError as error:
        await respond_error(send, error)
    else:
        await respond_json(send, 202, {"status": "accepted", "id": event.id})
