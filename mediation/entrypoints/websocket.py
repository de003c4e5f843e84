"""The WebSocket entrypoint (trio-websocket): both directions on one connection.

Every text or binary message from the client is one upstream event; every downstream event is one
message (text when the payload is UTF-8, unless ``frame_type`` says otherwise). With the
``mediation.v1`` subprotocol both directions use the JSON envelope of :mod:`mediation.envelope`,
and the client confirms each event, which is what ``at_least_once`` waits for.

The handshake is answered only after the session's consumers are subscribed, so whatever is
published after the client saw ``101`` reaches it. Refusals happen before the upgrade with the
documented status; once upgraded, the session's end is told with a close code (1001 shutdown, 1009
too big, 1011 broker failure, 1013 too slow). trio-websocket enforces ``max_message_bytes`` (1009)
and does not compress (no permessage-deflate), so a message can never inflate past the limit.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from ..config import WebSocketEntrypoint
from ..envelope import SUBPROTOCOL, Confirmation, decode_client_message, encode_event, encode_reply
from ..errors import (
    BrokerUnavailable,
    ListenError,
    MediationError,
    NoRoute,
    SessionNotFound,
    UnknownEvent,
    outcome_of,
)
from ..identity import check_origin, client_identity
from ..metadata import client_metadata
from ..session import EngineContext, Session, SessionDelivery, open_session

log = logging.getLogger(__name__)

# How long a closing handshake with the client may take before the connection is dropped.
CLOSE_TIMEOUT = 5.0


async def serve(
    config: WebSocketEntrypoint,
    context: EngineContext,
    host: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    async def handle(request: WebSocketRequest) -> None:
        with context.client_connection():
            await _handle(config, context, request)

    try:
        await serve_websocket(
            handle,
            host,
            config.port,
            ssl_context=None,
            max_message_size=config.max_message_bytes,
            task_status=_PortReporter(task_status),  # type: ignore[arg-type]
        )
    except OSError as error:
        raise ListenError(f"cannot listen on {host}:{config.port}: {error.strerror}") from None


class _PortReporter:
    def __init__(self, task_status: trio.TaskStatus[int]) -> None:
        self._task_status = task_status

    def started(self, server: object) -> None:
        self._task_status.started(server.port)  # type: ignore[attr-defined]


async def _handle(
    config: WebSocketEntrypoint, context: EngineContext, request: WebSocketRequest
) -> None:
    connection: WebSocketConnection | None = None
    try:
        target = urlsplit(request.path)
        if target.path != config.path:
            raise SessionNotFound(f"no WebSocket entrypoint at {target.path}")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        query = parse_qs(target.query)
        client_id = client_identity(headers, query.get("client_id", [None])[0])
        check_origin(config.allowed_origins, headers.get("origin"))
        enveloped = SUBPROTOCOL in request.proposed_subprotocols
        async with open_session(
            context,
            entrypoint=config.name,
            client_id=client_id,
            max_sessions=config.max_sessions,
            client_confirms=enveloped,
        ) as session:
            connection = await request.accept(subprotocol=SUBPROTOCOL if enveloped else None)
            await _converse(connection, session, config, enveloped)
    except MediationError as error:
        await _refuse_or_close(request, connection, error)


async def _refuse_or_close(
    request: WebSocketRequest, connection: WebSocketConnection | None, error: MediationError
) -> None:
    outcome = outcome_of(error)
    log.info(
        "websocket session ended",
        extra={
            "reason": outcome.reason,
            "status": outcome.http_status,
            "code": outcome.ws_close_code,
        },
    )
    with trio.move_on_after(CLOSE_TIMEOUT):
        if connection is None:
            await request.reject(outcome.http_status, body=outcome.reason.encode())
        else:
            # A close reason must fit a control frame (125 bytes, 2 of them the code).
            await connection.aclose(
                outcome.ws_close_code, outcome.reason.encode()[:120].decode(errors="ignore")
            )


async def _converse(
    connection: WebSocketConnection, session: Session, config: WebSocketEntrypoint, enveloped: bool
) -> None:
    """Run the upstream relay and the downstream writer until the client or the session leaves."""

    async def write(item: SessionDelivery) -> None:
        event = item.event
        if enveloped:
            await connection.send_message(encode_event(event.id, event.payload, event.metadata))
        elif config.frame_type == "binary":
            await connection.send_message(event.payload)
        else:
            try:
                await connection.send_message(event.payload.decode("utf-8"))
            except UnicodeDecodeError:
                if config.frame_type == "text":
                    raise
                await connection.send_message(event.payload)

    async with trio.open_nursery() as nursery:

        async def relay_then_stop() -> None:
            await _relay_upstream(connection, session, enveloped)
            nursery.cancel_scope.cancel(reason="client closed the connection")

        nursery.start_soon(relay_then_stop)
        try:
            await session.run_writer(write)
        except ConnectionClosed:
            nursery.cancel_scope.cancel(reason="client closed the connection")


async def _relay_upstream(
    connection: WebSocketConnection, session: Session, enveloped: bool
) -> None:
    """Each client message upstream (or, enveloped, a confirmation) until the client leaves."""
    while True:
        try:
            message = await connection.get_message()
        except ConnectionClosed:
            return
        if not enveloped:
            payload = message.encode("utf-8") if isinstance(message, str) else message
            try:
                await session.publish(payload)
            except NoRoute:
                log.warning("message dropped: no upstream route", extra={"session_id": session.id})
            continue
        parsed = decode_client_message(message)
        if isinstance(parsed, Confirmation):
            try:
                await session.confirm(parsed.event_id, accepted=parsed.accepted)
            except UnknownEvent as error:
                log.info(
                    "confirmation ignored", extra={"session_id": session.id, "reason": str(error)}
                )
            continue
        try:
            metadata = client_metadata(parsed.metadata.items(), header_names=False)
            await session.publish(parsed.payload, metadata, event_id=parsed.event_id)
        except (BrokerUnavailable, NoRoute) as error:
            reply = encode_reply(parsed.event_id, error=str(error))
        else:
            reply = encode_reply(parsed.event_id)
        try:
            await connection.send_message(reply)
        except ConnectionClosed:
            return
