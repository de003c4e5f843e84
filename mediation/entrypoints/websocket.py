"""The WebSocket entrypoint: both directions on one connection.

Every text or binary message from the client is one upstream event; every downstream event is one
message (text when the payload is UTF-8, unless ``frame_type`` says otherwise; with ``frame_type =
"text"`` a payload that is not UTF-8 goes out with replacement characters, as SSE sends it). A
binary message travels with the metadata ``content-type: application/octet-stream``, and an event
with that content type goes out binary, so a binary message stays binary even when its bytes are
UTF-8. With the ``mediation.v1`` subprotocol both directions use the JSON envelope of
:mod:`mediation.envelope`, and the client confirms each event, which is what ``at_least_once``
waits for; an upstream event whose id breaks the id rule is answered ``{"nack": id, "error"}``
and the connection goes on.

The handshake is read and checked by the same HTTP server, head limits and header rules as every
HTTP entrypoint (:mod:`mediation.http.server`: ``max_header_bytes``, ``header_timeout``, one
``Host``, ASCII header values, a valid ``Sec-WebSocket-Key``, version 13, HTTP/1.1 GET), then
admitted here (path, origin, token, identity, routes, ``max_sessions``) and refused before the
upgrade with the documented status. It is answered ``101`` only after the session's consumers are
subscribed, so whatever is published after the client saw ``101`` reaches it; frames the client
sent with its handshake are processed first, in order. A ``mediation.v1`` session without
``?last_event_id=`` holds its consumers with positions (Kafka) until its first message, or
``resume_grace`` without one: a first ``{"resume": id}`` starts them again right after ``id``
(:mod:`mediation.resume_gate`). A request without ``Upgrade: websocket``
is not this entrypoint's: it goes to an HTTP entrypoint on the same port and path (an SSE one,
say), and on a port with none it gets ``426``.
Once upgraded, the session's end is told with a close code (1001 shutdown, 1009 too big, 1011
broker failure or an unexpected error, 1013 too slow, 1001 "idle"). The connection is wsproto's
(through its public API, :mod:`mediation.http.websocket`); compression is never negotiated.

A client silent for ``idle_timeout`` (no message, ack or pong, and nothing written to it; the
engine pings it half way) is closed with 1001 "idle".

Per message: the writer sends what is ready in the session channel as one socket write; the
relay handles every client message already read before it yields, so a run of envelope acks is
settled (and opens the at-least-once window) at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ..auth import BearerVerifier
from ..config import WebSocketEntrypoint
from ..context import EngineContext
from ..cursors import BadCursor
from ..envelope import (
    SUBPROTOCOL,
    Confirmation,
    Publication,
    Resume,
    SubscriptionChange,
    decode_client_message,
    encode_event,
    encode_reply,
    encode_reset,
)
from ..errors import (
    BrokerUnavailable,
    ClientIdle,
    Forbidden,
    InvalidEventId,
    MediationError,
    NoRoute,
    SessionNotFound,
    UnknownEvent,
    outcome_of,
    response_headers,
)
from ..http.asgi import Scope, header_map, peer_certificate, query_map
from ..http.server import Upgrade
from ..http.websocket import ConnectionClosed, HandshakeFailed, WebSocket
from ..http.wsframes import BINARY, TEXT
from ..identity import admit_client
from ..metadata import client_metadata
from ..params import EntrypointParams, filter_from_query
from ..permissions import Permissions
from ..resume_gate import ResumeGate
from ..session import Session, SessionDelivery, open_session
from ._requests import Handlers

log = logging.getLogger(__name__)

# The content type that marks an event as binary (a binary frame, or a POST saying so).
OCTET_STREAM = "application/octet-stream"

INTERNAL_ERROR = 1011


@asynccontextmanager
async def serving(config: WebSocketEntrypoint, context: EngineContext) -> AsyncIterator[Handlers]:
    """The handshake handler. A plain request is not the WebSocket entrypoint's: on a port
    with no HTTP entrypoint, the listener answers it ``426``."""
    verifier = BearerVerifier.from_config(config)
    count_error = context.telemetry.connection_errors.labels(config.name).inc

    async def handle(upgrade: Upgrade) -> None:
        with context.client_connection():
            await _handle(config, context, verifier, upgrade, count_error)

    yield Handlers(upgrade=handle)


def offered_subprotocols(scope: Scope) -> list[str]:
    """The subprotocols a handshake offers, from every ``Sec-WebSocket-Protocol`` header."""
    offered = []
    for name, value in scope["headers"]:
        if name == b"sec-websocket-protocol":
            offered += [token.strip() for token in value.decode("ascii").split(",")]
    return [token for token in offered if token]


async def _handle(
    config: WebSocketEntrypoint,
    context: EngineContext,
    verifier: BearerVerifier | None,
    upgrade: Upgrade,
    count_error: Callable[[], None],
) -> None:
    """One handshake and, if admitted, its session. The barrier of the connection: whatever
    happens ends this connection alone (an unexpected error: 500 before the upgrade, 1011 after,
    logged and counted)."""
    websocket: WebSocket | None = None
    try:
        scope = upgrade.scope
        query = query_map(scope)
        parameters = config.parameters
        value_sets = parameters.resolve_subscriptions(
            scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
            query,
            config.max_subscriptions,
        )
        if value_sets is None:
            raise SessionNotFound(f"no WebSocket entrypoint at {scope['path']}")
        client = admit_client(
            header_map(scope),
            query,
            allowed_origins=config.allowed_origins,
            verifier=verifier,
            identity=config.identity,
            certificate=peer_certificate(scope),
        )
        client_id = client.id
        claims = parameters.claims(client.claims)
        enveloped = SUBPROTOCOL in offered_subprotocols(scope)
        activity = _Activity()
        async with open_session(
            context,
            entrypoint=config.name,
            client_id=client_id,
            max_sessions=config.max_sessions,
            client_confirms=enveloped,
            resume_after=next(iter(query.get("last_event_id", ())), None),
            subscriptions=[{**values, **claims} for values in value_sets],
            max_subscriptions=config.max_subscriptions if parameters.patterns else 1,
            named=bool(parameters.patterns),
            # Only a mediation.v1 client of an entrypoint with parameters can send {"subscribe"}
            # or {"unsubscribe"} (EntrypointParams.override refuses any other parameter).
            changeable=enveloped and bool(parameters.patterns),
            hold_for_resume=enveloped and config.resume_grace > 0,
            permissions=(
                Permissions.from_claims(client.claims, config.permissions_claim)
                if config.authorize
                else None
            ),
            filter=filter_from_query(query),
        ) as session:
            websocket = await WebSocket.accept(
                upgrade,
                subprotocol=SUBPROTOCOL if enveloped else None,
                max_message_bytes=config.max_message_bytes,
                heard=activity.seen,
            )
            if enveloped:  # the resume position was gone: the events start from the oldest
                for reason in session.resets:
                    await websocket.send_messages([(TEXT, encode_reset(reason).encode())])
            await _converse(websocket, session, config, enveloped, activity)
    except MediationError as error:
        await _refuse_or_close(upgrade, websocket, error)
    except HandshakeFailed as error:
        await upgrade.refuse(400, str(error))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # The client left during its handshake (the 101 found the socket gone): its session,
        # if any, ended with it; nothing else is affected.
        log.info("websocket client left during the handshake")
    except Exception:
        log.exception("websocket connection failed")
        count_error()
        if websocket is not None:
            await websocket.aclose(INTERNAL_ERROR, "internal error")
        elif not upgrade.accepted:
            await upgrade.refuse(500, "internal server error")


async def _refuse_or_close(
    upgrade: Upgrade, websocket: WebSocket | None, error: MediationError
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
    if websocket is None:
        headers = [(k.encode(), v.encode()) for k, v in response_headers(error).items()]
        await upgrade.refuse(outcome.http_status, outcome.reason, headers)
    else:
        await websocket.aclose(outcome.ws_close_code, outcome.reason)


class _Activity:
    """When the client last showed it is there (for ``idle_timeout``)."""

    def __init__(self) -> None:
        self.last = trio.current_time()
        # Messages from the client the engine is still handling (a publish waiting for the
        # broker): the wait is the engine's, not the client's silence.
        self.busy = 0

    def seen(self) -> None:
        self.last = trio.current_time()


async def _converse(
    websocket: WebSocket,
    session: Session,
    config: WebSocketEntrypoint,
    enveloped: bool,
    activity: _Activity,
) -> None:
    """Run the reader, the upstream relay and the downstream writer until the client or the
    session leaves."""

    def message(item: SessionDelivery) -> tuple[int, bytes]:
        """The event as (opcode, data): its payload goes out as it is, decoded only to check
        that a text frame may carry it."""
        event = item.event
        if enveloped:
            name = item.subscription.name if session.named else None
            return TEXT, encode_event(event.id, event.payload, event.metadata, name)
        if config.frame_type == "binary" or (
            config.frame_type == "auto" and event.metadata.get("content-type") == OCTET_STREAM
        ):
            return BINARY, event.payload
        if event.payload.isascii():  # UTF-8, found without decoding
            return TEXT, event.payload
        try:
            event.payload.decode("utf-8")
        except UnicodeDecodeError:
            if config.frame_type == "text":
                # A text frame must be UTF-8: replacement characters, as SSE sends it.
                return TEXT, event.payload.decode("utf-8", "replace").encode("utf-8")
            return BINARY, event.payload
        return TEXT, event.payload

    async def write(batch: list[SessionDelivery]) -> None:
        await websocket.send_messages([message(item) for item in batch])
        # The client's TCP window took it: it is reading.
        activity.seen()

    async with trio.open_nursery() as nursery:

        async def relay_then_stop() -> None:
            await _relay_upstream(websocket, session, config.parameters, enveloped, activity)
            nursery.cancel_scope.cancel(reason="client closed the connection")

        nursery.start_soon(websocket.run_reader)
        nursery.start_soon(relay_then_stop)
        if session.resume_gate is not None:
            nursery.start_soon(_open_after, session.resume_gate, config.resume_grace)
        if config.idle_timeout > 0:
            nursery.start_soon(_close_when_idle, websocket, session, activity, config.idle_timeout)
        try:
            await session.run_writer(write)
        except ConnectionClosed:
            nursery.cancel_scope.cancel(reason="client closed the connection")


async def _close_when_idle(
    websocket: WebSocket, session: Session, activity: _Activity, idle_timeout: float
) -> None:
    """End the session with :class:`ClientIdle` once the client was silent for ``idle_timeout``.

    After half of it the client is pinged: a live client answers by itself (browsers and every
    WebSocket library do), and its pong is activity, so only a client that is gone, or stuck,
    reaches the timeout.
    """
    half = idle_timeout / 2
    pinged = -1.0  # when the last ping went out
    while True:
        await trio.sleep_until(activity.last + half)
        if activity.busy:
            await trio.sleep(half)  # look again later; the relay marks its end as activity
            continue
        now = trio.current_time()
        if now < activity.last + half:
            continue
        if now >= activity.last + idle_timeout:
            session.close(ClientIdle("idle"))
            return
        if pinged <= activity.last:  # heard since the last ping (its pong, say): ping again
            # Bounded: the ping waits behind a write that a client not reading never takes.
            with trio.move_on_at(activity.last + idle_timeout):
                try:
                    await websocket.ping()
                except ConnectionClosed:
                    return  # the relay sees it too and ends the conversation
            pinged = trio.current_time()
        await trio.sleep_until(activity.last + idle_timeout)


async def _relay_upstream(
    websocket: WebSocket,
    session: Session,
    parameters: EntrypointParams,
    enveloped: bool,
    activity: _Activity,
) -> None:
    """Each client message upstream (or, enveloped, a confirmation) until the client leaves."""
    while True:
        try:
            message: str | bytes | None = await websocket.get_message()
        except ConnectionClosed:
            return
        activity.busy += 1
        try:
            # Then whatever else the client sent that is already read, without a checkpoint
            # in between: a run of acks is confirmed before the writer runs, which then sends
            # as many events as they freed the at-least-once window for, in one write.
            while message is not None:
                if not await _handle_message(websocket, session, parameters, enveloped, message):
                    return
                message = websocket.get_message_nowait()
        finally:
            activity.busy -= 1
            activity.seen()


async def _handle_message(
    websocket: WebSocket,
    session: Session,
    parameters: EntrypointParams,
    enveloped: bool,
    message: str | bytes,
) -> bool:
    """Relay one client message; False once the client is gone."""
    if not enveloped:
        try:
            if isinstance(message, str):
                await session.publish(message.encode("utf-8"))
            else:
                await session.publish(message, {"content-type": OCTET_STREAM})
        except (NoRoute, Forbidden) as error:
            log.warning("message dropped", extra={"session_id": session.id, "reason": str(error)})
        return True
    try:
        parsed = decode_client_message(message)
    except InvalidEventId as error:
        _first_message(session)
        reply = encode_reply(error.event_id, error=str(error))
    else:
        if isinstance(parsed, Resume):
            return await _resume(websocket, session, parsed.cursor)
        _first_message(session)
        if isinstance(parsed, Confirmation):
            try:
                await session.confirm(parsed.event_id, accepted=parsed.accepted)
            except UnknownEvent as error:
                log.info(
                    "confirmation ignored", extra={"session_id": session.id, "reason": str(error)}
                )
            return True
        if isinstance(parsed, SubscriptionChange):
            reply = await _change_subscription(session, parameters, parsed)
        else:
            reply = await _publish(session, parsed)
    try:
        await websocket.send_message(reply)
    except ConnectionClosed:
        return False
    return True


async def _open_after(gate: ResumeGate, grace: float) -> None:
    """No ``{"resume"}`` within ``resume_grace`` of the ``101``: the held consumers go on."""
    await trio.sleep(grace)
    gate.open()


def _first_message(session: Session) -> None:
    """Any message but ``{"resume"}``: the held consumers go on (a no-op after the first)."""
    if session.resume_gate is not None:
        session.resume_gate.open()


async def _resume(websocket: WebSocket, session: Session, cursor: str) -> bool:
    """``{"resume": id}``: as the session's first message, its consumers with positions start
    again right after ``id`` (:mod:`mediation.resume_gate`), answered ``{"ack": "resume"}``
    then a ``{"reset"}`` per position the broker no longer had, before any of their events; a
    bad signature is ``{"nack": "resume", "error"}`` and they go on from the client's place at
    the broker. Anywhere else: a nack, nothing changes. False once the client is gone."""
    gate = session.resume_gate
    replies: list[str] = []
    if gate is None or gate.decided:
        replies.append(
            encode_reply(
                "resume",
                error="resume: only as the first message, within resume_grace, of a session "
                "without ?last_event_id= whose routes have positions",
            )
        )
    else:
        resets = len(session.resets)
        try:
            await gate.resume(cursor)
        except BadCursor as error:
            gate.open()
            replies.append(encode_reply("resume", error=str(error)))
        else:
            replies.append(encode_reply("resume"))
            replies.extend(encode_reset(reason) for reason in session.resets[resets:])
    try:
        await websocket.send_messages([(TEXT, reply.encode()) for reply in replies])
    except ConnectionClosed:
        return False
    finally:
        if gate is not None:
            gate.release()  # after the answer: the resets come before any event
    return True


async def _change_subscription(
    session: Session, parameters: EntrypointParams, change: SubscriptionChange
) -> str:
    """``{"subscribe": {...}}`` / ``{"unsubscribe": {...}}``: the parameters given replace the
    session's (those of its first subscription) and name the subscription; the answer names it
    (or the action, when the parameters do not resolve to a name) once its consumers are
    subscribed at the brokers, or removed."""
    action = "subscribe" if change.subscribe else "unsubscribe"
    try:
        values = parameters.override(session.params, change.params)
        name = session.subscription_name(values)
    except MediationError as error:
        return encode_reply(action, error=str(error))
    try:
        if change.subscribe:
            await session.subscribe(values)
        else:
            await session.unsubscribe(values)
    except MediationError as error:
        return encode_reply(name, error=str(error))
    return encode_reply(name)


async def _publish(session: Session, parsed: Publication) -> str:
    """One upstream envelope event, answered once the broker took (or confirmed) it."""
    try:
        metadata = client_metadata(parsed.metadata.items(), header_names=False)
        await session.publish(parsed.payload, metadata, event_id=parsed.event_id)
    except (BrokerUnavailable, NoRoute, Forbidden) as error:
        return encode_reply(parsed.event_id, error=str(error))
    return encode_reply(parsed.event_id)
