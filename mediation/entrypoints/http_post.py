"""The HTTP POST (webhook) entrypoint: each request body is one upstream event.

``Content-Type`` and ``X-*`` headers travel as metadata. The answer is ``202
{"status": "accepted", "id"}``: once the producers took the event, or, on ``at_least_once`` routes,
once the broker confirmed it; ``503`` when a broker is down or refused it, or when
``max_sessions`` requests are already being handled; ``413`` past ``max_body`` (nothing is
published); ``405`` for any other method; ``502`` with no route; ``403`` for an origin not in
``allowed_origins``; ``401`` without a valid token (``auth = "bearer"``); ``431`` for a request head
over ``max_header_bytes``.

Cost per request (benchmark S4's load: ``python -m bench.load`` kind ``post``, 64 keep-alive
connections, 100 B bodies, closed loop, 3 s runs; the engine process's CPU time (psutil user +
system) per answered request, the engine before and after alternated 4 times in one run on the
shared 2-core machine, medians with ranges). The changes: the HTTP server on httptools and its
own socket stream (:mod:`._http11`), the 202 formatted without :mod:`json`, response headers
encoded directly, one head-size check instead of two, generated client ids from the PRNG.

=====================  ==========================  ==========================
route                  before (h11 server)         after
=====================  ==========================  ==========================
memory, auto           141-146 us, 6.7-7.1 k/s     54-56 us, 17.5-18.2 k/s
Kafka, auto            161-216 us, 2.5-4.7 k/s     82-92 us, 5.2-7.9 k/s
Kafka, at_least_once   163-195 us, 2.9-4.6 k/s     72-102 us, 4.9-7.7 k/s
RabbitMQ, auto         203-239 us, 3.5-4.5 k/s     103-129 us, 6.2-7.7 k/s
RabbitMQ, alo          194-232 us, 2.8-3.6 k/s     116-142 us, 3.9-5.7 k/s
MQTT, auto             341-345 us, 2.1-2.9 k/s     207-246 us, 3.6-4.6 k/s
MQTT, at_least_once    313-343 us, 2.9-3.1 k/s     211-245 us, 3.9-4.7 k/s
=====================  ==========================  ==========================

(The memory row is from a later, quieter run than the others.) What is left per request
is mostly the kernel (the ``send`` of the answer alone is a quarter of the CPU on the memory
route, the read and epoll another tenth), then the broker client: paho's ``Properties`` and a
``send`` per publish (MQTT), pika's ``send`` per publish on its I/O thread (RabbitMQ).
"""

from __future__ import annotations

import trio

from ..auth import BearerVerifier
from ..config import HTTPPostEntrypoint
from ..errors import MediationError, NoRoute, SessionNotFound, TooManySessions
from ..events import Event
from ..identity import admit
from ..metadata import client_metadata
from ..session import EngineContext, publish_upstream
from ._asgi import (
    Request,
    Send,
    respond_encoded_json,
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

    await serve_requests(handle, context, host, config, task_status=task_status)


async def _handle(
    config: HTTPPostEntrypoint,
    context: EngineContext,
    verifier: BearerVerifier | None,
    request: Request,
    send: Send,
) -> None:
    try:
        if request.path != config.path:
            raise SessionNotFound(f"no webhook entrypoint at {request.path}")
        if request.method != "POST":
            await respond_json(send, 405, {"error": "method not allowed"}, {"allow": "POST"})
            return
        client_id = admit(
            request.headers,
            request.query,
            allowed_origins=config.allowed_origins,
            verifier=verifier,
        )
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
        # The id is ours (new_event_id: hex digits and dashes), so it needs no JSON escaping.
        await respond_encoded_json(
            send, 202, b'{"status":"accepted","id":"%s"}' % event.id.encode()
        )
