"""The Server-Sent Events entrypoint: ``GET`` with ``Accept: text/event-stream``, broker -> client.

The stream opens with ``event: session`` carrying ``{"client_id", "session_id"}``, sent once the
session's consumers are subscribed. Each event is framed by :mod:`mediation.sse`, which no event
content can make fail (an id SSE cannot carry as it is is left out of its frame; the consumer
loop has given every broker event an id that obeys the id rule already); a
``: keepalive`` comment every ``heartbeat_interval`` keeps proxies from cutting idle streams. A
completed write is the confirmation ``at_least_once`` waits for (SSE has no way back from the
client). ``Last-Event-ID`` (else ``?last_event_id=``) is the resume position, its signature
checked (``400`` for a bad one); a position the broker no longer holds is told with
``event: reset`` (``{"reason"}``) right after ``event: session``. The session's end
is told in the stream: ``event: error`` with the reason (broker failure, route changed, too
slow), or, on shutdown, just the end of the response (a final chunk, not a cut connection).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..auth import BearerVerifier
from ..config import SSEEntrypoint
from ..context import EngineContext
from ..errors import EngineShuttingDown, MediationError, SessionNotFound, outcome_of
from ..http.asgi import Request, Send, respond_error, respond_json
from ..identity import admit_client
from ..params import filter_from_query
from ..permissions import Permissions
from ..session import Session, SessionDelivery, open_session
from ..sse import frame_comment, frame_event
from ._requests import Handlers

log = logging.getLogger(__name__)

# How long the last words to a client (error event, end of stream) may take: it may be the slow one.
GOODBYE_TIMEOUT = 1.0

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-like proxies not to buffer the stream
]


@asynccontextmanager
async def serving(config: SSEEntrypoint, context: EngineContext) -> AsyncIterator[Handlers]:
    verifier = BearerVerifier.from_config(config)

    async def handle(request: Request, send: Send) -> None:
        await _handle(config, context, verifier, request, send)

    yield Handlers(request=handle)


async def _handle(
    config: SSEEntrypoint,
    context: EngineContext,
    verifier: BearerVerifier | None,
    request: Request,
    send: Send,
) -> None:
    parameters = config.parameters
    stream = _Stream(send, request.headers.get("origin"))
    try:
        value_sets = parameters.resolve_subscriptions(
            request.raw_path, request.query, config.max_subscriptions
        )
        if value_sets is None:
            await respond_error(send, SessionNotFound(f"no SSE entrypoint at {request.path}"))
            return
        if request.method != "GET":
            await respond_json(send, 405, {"error": "method not allowed"}, {"allow": "GET"})
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
        claims = parameters.claims(client.claims)
        async with open_session(
            context,
            entrypoint=config.name,
            client_id=client_id,
            max_sessions=config.max_sessions,
            client_confirms=False,
            # An EventSource's own Last-Event-ID, else one a page chose (?last_event_id=).
            resume_after=(
                request.headers.get("last-event-id") or request.query_value("last_event_id")
            ),
            subscriptions=[{**values, **claims} for values in value_sets],
            max_subscriptions=config.max_subscriptions if parameters.patterns else 1,
            named=bool(parameters.patterns),
            permissions=(
                Permissions.from_claims(client.claims, config.permissions_claim)
                if config.authorize
                else None
            ),
            filter=filter_from_query(request.query),
        ) as session:
            await stream.start()
            await stream.write(
                frame_event(
                    json.dumps({"client_id": client_id, "session_id": session.id}), event="session"
                )
            )
            for reason in session.resets:  # the resume position was gone: from the oldest
                await stream.write(frame_event(json.dumps({"reason": reason}), event="reset"))
            await _stream_events(stream, session, request, config.heartbeat_interval)
    except MediationError as error:
        if not stream.started:
            await respond_error(send, error)
        elif not isinstance(error, EngineShuttingDown):
            log.info("sse session ended", extra={"reason": str(error)})
            with trio.move_on_after(GOODBYE_TIMEOUT):
                # With the id of the last event written, so that a client that tracks ids (or an
                # EventSource, which keeps the last one) resumes from there.
                await stream.write(
                    frame_event(
                        outcome_of(error).reason, event="error", event_id=stream.last_event_id
                    )
                )
    finally:
        if stream.started:
            with trio.move_on_after(GOODBYE_TIMEOUT, shield=True):
                await stream.end()


class _Stream:
    """The response body, written by the event writer and the heartbeat (one at a time)."""

    def __init__(self, send: Send, origin: str | None) -> None:
        self._send = send
        self._lock = trio.Lock()
        self._origin = origin
        self.started = False
        # A write failed: the client went away (or stopped reading and was reset).
        self.gone = False
        self.last_event_id: str | None = None

    async def start(self) -> None:
        headers = HEADERS
        if self._origin is not None:
            # The origin was admitted (allowed_origins) before the stream starts: without this
            # a browser refuses a cross-origin EventSource. No preflight: EventSource sends
            # only simple headers (Last-Event-ID included).
            headers = [
                *HEADERS,
                (b"access-control-allow-origin", self._origin.encode("latin-1")),
                (b"vary", b"origin"),
            ]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        self.started = True

    async def write(self, chunk: bytes) -> bool:
        """One body chunk, one send; False when the client is gone (it is not written)."""
        return await self._body(chunk, more=True)

    async def end(self) -> None:
        await self._body(b"", more=False)

    async def _body(self, chunk: bytes, *, more: bool) -> bool:
        async with self._lock:
            if self.gone:
                return False
            try:
                await self._send({"type": "http.response.body", "body": chunk, "more_body": more})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.gone = True
                return False
            return True


async def _stream_events(
    stream: _Stream, session: Session, request: Request, heartbeat_interval: float
) -> None:
    """Write events and heartbeats until the client goes away (or the session ends)."""
    async with trio.open_nursery() as nursery:

        def client_gone() -> None:
            nursery.cancel_scope.cancel(reason="client went away")

        async def write(batch: list[SessionDelivery]) -> None:
            # A payload that is not UTF-8 cannot be an SSE event; it is sent with replacement
            # marks. Framing never raises (see mediation.sse): no event ends the stream. The
            # batch goes out as one body chunk (one send to the socket). With more than one
            # subscription, each event is named after its own (event: prices.A).
            named = len(session.subscriptions) > 1
            chunk = b"".join(
                [
                    frame_event(
                        item.event.payload.decode("utf-8", "replace"),
                        event_id=item.event.id,
                        event=item.subscription.name if named else None,
                    )
                    for item in batch
                ]
            )
            if not await stream.write(chunk):
                client_gone()  # not written: the batch is not confirmed
                await trio.sleep_forever()
            stream.last_event_id = batch[-1].event.id

        async def heartbeat() -> None:
            while True:
                await trio.sleep(heartbeat_interval)
                if not await stream.write(frame_comment("keepalive")):
                    client_gone()
                    return

        nursery.start_soon(heartbeat)
        nursery.start_soon(session.run_writer, write)
        # A write fails once the client is gone, but a quiet stream has no writes for up to
        # heartbeat_interval: the end of the connection tells at once.
        await request.wait_disconnect()
        client_gone()
