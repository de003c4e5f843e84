"""The HTTP GET long-polling entrypoint: a session that lives between requests.

``POST /subscribe`` (``X-Client-ID`` required) starts the client's session and answers ``201
{"session_id", "client_id"}`` once its consumers are subscribed; subscribing again while the session
lives answers the same session. ``GET /poll`` answers ``200`` with the next event's payload
(``X-Event-ID``, metadata as ``X-Meta-*``), or ``204`` after ``poll_timeout`` with nothing.
``POST /ack`` with ``X-Event-ID`` confirms one event (``204``; ``404`` for an id nobody waits for):
``at_least_once`` routes keep each event unacked on the broker until then and hold at most
``channel_size`` unconfirmed events. ``DELETE /unsubscribe`` ends the session (``200``; unconfirmed
events are nacked for redelivery; later polls get ``404``). A session not polled for
``session_idle_timeout`` expires; the engine ending a session (expiry, broker failure) makes later
requests ``410`` (``409`` when a newer session of the client took over: a broker's takeover).
Subscribing again while the session lives is the same client, not a second connection: it
answers the same session.

``/subscribe?last_event_id=ID`` resumes right after that event where the broker has positions
(its signature checked, ``400`` for a bad one); when that position was gone, the answer carries
``"reset": {"reason"}`` and the session starts from the oldest one.

Every request is admitted like a connect elsewhere: ``Origin`` against ``allowed_origins`` (403),
then, with ``auth = "bearer"``, the token (401), whose identity claim then names the client
instead of ``X-Client-ID``. Metadata is passed as ``X-Meta-*`` only where it can be a header
safely (see :func:`mediation.metadata.header_safe`), and the id as ``X-Event-ID`` only when it
is printable ASCII without spaces (:func:`mediation.events.writable_event_id`; the consumer loop
gives every broker event such an id, so a response without one is an engine bug, never a
header made of event content).

The sessions run in this entrypoint's own nursery, beside its HTTP server, since they outlive the
requests that touch them. A session that fails unexpectedly (a bug: not a
:class:`MediationError`) ends alone: logged with its traceback, counted in
``mediation_connection_errors``, remembered as ended (``410``); the entrypoint and the other
sessions go on. A request that fails unexpectedly is answered ``500`` by the HTTP server and
ends nothing else.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..auth import BearerVerifier
from ..config import HTTPGetEntrypoint
from ..context import EngineContext
from ..errors import (
    BadRequest,
    BrokerUnavailable,
    EngineShuttingDown,
    MediationError,
    Replaced,
    SessionClosed,
    SessionNotFound,
)
from ..events import writable_event_id
from ..http.asgi import Request, Send, respond, respond_error, respond_json
from ..identity import admit_client
from ..metadata import header_safe
from ..params import Filter, filter_from_query
from ..permissions import Permissions
from ..session import Session, open_session
from ._requests import Handlers

log = logging.getLogger(__name__)

# How many ended sessions are remembered to answer 410 rather than 404.
ENDED_MEMORY = 10_000

ROUTES = {
    "/subscribe": "POST",
    "/poll": "GET",
    "/ack": "POST",
    "/unsubscribe": "DELETE",
}


@dataclass
class _Polled:
    """One client's session, as the polling requests see it."""

    session: Session
    last_activity: float
    polling: trio.Lock = field(default_factory=trio.Lock)
    unsubscribed: trio.Event = field(default_factory=trio.Event)
    # Set once the session is over: consumers stopped, unconfirmed events nacked, forgotten here.
    ended: trio.Event = field(default_factory=trio.Event)


class _PollingEntrypoint:
    def __init__(self, config: HTTPGetEntrypoint, context: EngineContext) -> None:
        self.config = config
        self.context = context
        self.verifier = BearerVerifier.from_config(config)
        self.live: dict[str, _Polled] = {}
        self.ended: OrderedDict[str, MediationError] = OrderedDict()
        # One /subscribe at a time per client, so two at once cannot start two sessions.
        self.subscribing: dict[str, trio.Lock] = {}

    async def run_session(
        self,
        client_id: str,
        value_sets: list[dict[str, str]],
        permissions: Permissions | None,
        filter: Filter,
        resume_after: str | None = None,
        *,
        task_status: trio.TaskStatus[_Polled] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        polled: _Polled | None = None
        with self.context.client_connection():
            try:
                async with open_session(
                    self.context,
                    entrypoint=self.config.name,
                    client_id=client_id,
                    max_sessions=self.config.max_sessions,
                    client_confirms=True,
                    resume_after=resume_after,
                    subscriptions=value_sets,
                    max_subscriptions=(
                        self.config.max_subscriptions if self.config.parameters.patterns else 1
                    ),
                    named=bool(self.config.parameters.patterns),
                    permissions=permissions,
                    filter=filter,
                ) as session:
                    polled = _Polled(session, trio.current_time())
                    self.live[client_id] = polled
                    self.ended.pop(client_id, None)
                    task_status.started(polled)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._expire_when_idle, polled)
                        await polled.unsubscribed.wait()
                        nursery.cancel_scope.cancel()
            except MediationError as error:
                if polled is None:
                    raise  # refused at subscribe time: the /subscribe request answers it
                self._remember_ended(client_id, error)
                log.info(
                    "polling session ended", extra={"client_id": client_id, "reason": str(error)}
                )
            except Exception:
                if polled is None:
                    raise  # before it started: the /subscribe request fails with it (a 500)
                # A bug, or input nothing foresaw. The sessions share this entrypoint's nursery:
                # raised on, it would end the entrypoint, every other session and the engine.
                # (trio.Cancelled is no Exception: cancellation still goes through.)
                log.exception("polling session failed", extra={"client_id": client_id})
                self.context.telemetry.connection_errors.labels(self.config.name).inc()
                self._remember_ended(client_id, SessionClosed("internal error"))
            finally:
                if polled is not None:
                    if self.live.get(client_id) is polled:
                        del self.live[client_id]
                    polled.ended.set()

    def _remember_ended(self, client_id: str, reason: MediationError) -> None:
        """Later requests of the client are told the session ended (410 or 503), not 404."""
        self.ended[client_id] = reason
        while len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)

    async def _expire_when_idle(self, polled: _Polled) -> None:
        timeout = self.config.session_idle_timeout
        while True:
            await trio.sleep_until(polled.last_activity + timeout)
            if polled.polling.locked():
                # A poll is in progress (longer than the timeout, or a slow write): not idle.
                # Its end moves last_activity; look again then (sleeping, not spinning).
                await trio.sleep(timeout)
            elif trio.current_time() >= polled.last_activity + timeout:
                polled.session.close(SessionClosed(f"session not polled for {timeout:g} s"))
                return

    def find(self, client_id: str) -> _Polled:
        polled = self.live.get(client_id)
        if polled is not None:
            polled.last_activity = trio.current_time()
            return polled
        if client_id in self.ended:
            raise _ended_error(self.ended[client_id])
        raise SessionNotFound("not subscribed")

    async def handle(self, request: Request, send: Send, nursery: trio.Nursery) -> None:
        # The entrypoint's path is where its four routes are: "/" serves /subscribe, /poll,
        # /ack, /unsubscribe; "/orders/{order_id}" serves /orders/42/subscribe and so on, its
        # parameters (and the declared query parameters) read from the /subscribe request.
        mount, _, action = request.raw_path.rpartition("/")
        expected = ROUTES.get("/" + action)
        if expected is None:
            await respond_json(send, 404, {"error": "not found"})
            return
        parameters = self.config.parameters
        try:
            if action == "subscribe":
                params = parameters.resolve_subscriptions(
                    mount or "/", request.query, self.config.max_subscriptions
                )
            else:
                # A poll, an ack or an unsubscribe is about the client's session, named by its
                # client id: its path only has to be one of this entrypoint's.
                path_values = parameters.path.match(mount or "/", parameters.patterns)
                params = None if path_values is None else [path_values]
        except MediationError as error:
            await respond_error(send, error)
            return
        if params is None:
            await respond_json(send, 404, {"error": "not found"})
            return
        if request.method != expected:
            await respond_json(send, 405, {"error": "method not allowed"}, {"allow": expected})
            return
        try:
            # The client_id query parameter is not read here: polling requests name their
            # client with X-Client-ID (or the token, with auth = "bearer").
            client = admit_client(
                request.headers,
                {k: v for k, v in request.query.items() if k != "client_id"},
                allowed_origins=self.config.allowed_origins,
                verifier=self.verifier,
                client_id_header_required=True,
                identity=self.config.identity,
                certificate=request.peer_certificate,
            )
            client_id = client.id
            if action == "subscribe":
                claims = self.config.parameters.claims(client.claims)
                value_sets = [{**values, **claims} for values in params]
                permissions = (
                    Permissions.from_claims(client.claims, self.config.permissions_claim)
                    if self.config.authorize
                    else None
                )
                polled = await self.subscribe(
                    client_id,
                    value_sets,
                    permissions,
                    filter_from_query(request.query),
                    nursery,
                    resume_after=request.query_value("last_event_id"),
                )
                answer: dict[str, object] = {
                    "session_id": polled.session.id,
                    "client_id": client_id,
                }
                if polled.session.resets:  # the resume position was gone: from the oldest
                    answer["reset"] = {"reason": polled.session.resets[0]}
                await respond_json(send, 201, answer)
            elif action == "poll":
                await self.poll(self.find(client_id), send)
            elif action == "ack":
                event_id = request.headers.get("x-event-id")
                if not event_id:
                    raise BadRequest("X-Event-ID header required")
                await self.find(client_id).session.confirm(event_id)
                await respond(send, 204)
            else:
                polled = self.find(client_id)
                polled.unsubscribed.set()
                # Answer once it is over, so that a /poll after the 200 gets 404 and the
                # unconfirmed events are back on the broker.
                await polled.ended.wait()
                await respond_json(
                    send, 200, {"status": "unsubscribed", "session_id": polled.session.id}
                )
        except MediationError as error:
            await respond_error(send, error)

    async def subscribe(
        self,
        client_id: str,
        value_sets: list[dict[str, str]],
        permissions: Permissions | None,
        filter: Filter,
        nursery: trio.Nursery,
        *,
        resume_after: str | None = None,
    ) -> _Polled:
        """The client's live session, started if it has none (a live one is answered as it is,
        whatever parameters this request gave)."""
        lock = self.subscribing.setdefault(client_id, trio.Lock())
        try:
            async with lock:
                return self.live.get(client_id) or await nursery.start(
                    self.run_session, client_id, value_sets, permissions, filter, resume_after
                )
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self.subscribing.pop(client_id, None)

    async def poll(self, polled: _Polled, send: Send) -> None:
        session = polled.session
        async with polled.polling:
            item = None
            try:
                with trio.move_on_after(self.config.poll_timeout):
                    item = await session.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise _ended_error(session.close_reason) from None
            finally:
                polled.last_activity = trio.current_time()
            if item is None:
                await respond(send, 204)
                return
            await session.before_write(item)
            # Metadata comes from the broker, set by whoever produced the event: only what can
            # be an HTTP header safely (a token name, a printable Latin-1 value) is passed on.
            # So is the id: one that could not be a header as it is (never one of ours) is left
            # out rather than written raw (a line break would be a 500, a NUL or a vertical tab
            # would go out).
            event_id = item.event.id
            metadata = dict(header_safe(item.event.metadata.items()))
            headers = {"content-type": metadata.pop("content-type", "application/octet-stream")}
            if writable_event_id(event_id):
                headers["x-event-id"] = event_id
            else:
                log.error("event id not written: not header-safe", extra={"event_id": event_id})
            for key, value in metadata.items():
                headers[f"x-meta-{key}"] = value
            if session.named:
                headers["x-subscription"] = item.subscription.name
            await respond(send, 200, item.event.payload, headers)
            await session.written([item])


def _ended_error(reason: MediationError | None) -> MediationError:
    """What a request about an ended session gets: 503 while the broker is down or the engine
    stops (the client may retry), 409 when a newer session of the client took over (the
    broker's takeover, from another instance), 410 when the engine ended the session for good
    (idle expiry)."""
    if isinstance(reason, BrokerUnavailable | EngineShuttingDown | Replaced):
        return reason
    return SessionClosed(f"session ended: {reason or 'consumer stopped'}")


@asynccontextmanager
async def serving(config: HTTPGetEntrypoint, context: EngineContext) -> AsyncIterator[Handlers]:
    """The polling handlers, with the nursery of the sessions around the listener's life."""
    entrypoint = _PollingEntrypoint(config, context)
    async with trio.open_nursery() as sessions:

        async def handle(request: Request, send: Send) -> None:
            await entrypoint.handle(request, send, sessions)

        yield Handlers(request=handle)
