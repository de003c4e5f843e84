"""The HTTP POST (webhook) entrypoint: each request body is one upstream event.

``Content-Type`` and ``X-*`` headers travel as metadata. The answer is ``202
{"status": "accepted", "id"}``: once the producers took the event, or, on ``at_least_once`` routes,
once the broker confirmed it; ``503`` when a broker is down or refused it, or when
``max_sessions`` requests are already being handled; ``413`` past ``max_body`` (nothing is
published); ``405`` for any other method; ``502`` with no route; ``403`` for an origin not in
``allowed_origins``; ``401`` without a valid token (``auth = "bearer"``); ``431`` for a request head
over ``max_header_bytes``.

What is left per request is mostly the kernel (the ``send`` of the answer, the read and
epoll), then the broker client (docs/performance.md has the cost per request before and after the
HTTP server's rewrite).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..auth import BearerVerifier
from ..config import HTTPPostEntrypoint
from ..context import EngineContext
from ..errors import MediationError, NoRoute, SessionNotFound, TooManySessions
from ..events import Event
from ..http.asgi import Request, Send, respond_encoded_json, respond_error, respond_json
from ..identity import admit_client
from ..metadata import client_metadata
from ..permissions import Permissions
from ..session import authorize_publish, publish_upstream
from ._requests import Handlers


@asynccontextmanager
async def serving(config: HTTPPostEntrypoint, context: EngineContext) -> AsyncIterator[Handlers]:
    verifier = BearerVerifier.from_config(config)
    # Requests being handled: max_sessions bounds them (a POST is a session of one event).
    handling = 0

    async def handle(request: Request, send: Send) -> None:
        nonlocal handling
        if config.max_sessions is not None and handling >= config.max_sessions:
            await respond_error(
                send,
                TooManySessions(
                    f"entrypoint {config.name} is at max_sessions ({config.max_sessions})"
                ),
            )
            return
        handling += 1
        try:
            await _handle(config, context, verifier, request, send)
        finally:
            handling -= 1

    yield Handlers(request=handle)


async def _handle(
    config: HTTPPostEntrypoint,
    context: EngineContext,
    verifier: BearerVerifier | None,
    request: Request,
    send: Send,
) -> None:
    try:
        parameters = config.parameters
        params = parameters.resolve(request.raw_path, request.query)
        if params is None:
            raise SessionNotFound(f"no webhook entrypoint at {request.path}")
        if request.method != "POST":
            await respond_json(send, 405, {"error": "method not allowed"}, {"allow": "POST"})
            return
        client = admit_client(
            request.headers,
            request.query,
            allowed_origins=config.allowed_origins,
            verifier=verifier,
            identity=config.identity,
            certificate=request.peer_certificate,
        )
        client_id = client.id
        if client.claims:
            params.update(parameters.claims(client.claims))
        routes = context.routes.for_entrypoint(config.name).upstream
        if not routes:
            raise NoRoute(f"entrypoint {config.name} has no upstream route")
        if config.authorize:
            permissions = Permissions.from_claims(client.claims, config.permissions_claim)
            authorize_publish(context, routes, permissions, params, client_id, config.name)
        elif params:
            authorize_publish(context, routes, None, params, client_id, config.name)
        body = await request.body(config.max_body)
        event = Event(
            body,
            metadata=client_metadata(request.headers.items(), header_names=True),
            client_id=client_id,
        )
        await publish_upstream(
            context,
            routes,
            event,
            entrypoint=config.name,
            client_id=client_id,
            session_id=None,
            params=params,
        )
    except MediationError as error:
        await respond_error(send, error)
    else:
        # The id is ours (new_event_id: hex digits and dashes), so it needs no JSON escaping.
        await respond_encoded_json(
            send, 202, b'{"status":"accepted","id":"%s"}' % event.id.encode()
        )
