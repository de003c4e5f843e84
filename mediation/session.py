"""A client session: one client's broker consumers, its session channel, and its acks.

``open_session`` is the session manager of the design. Entering it admits the client (routes,
``max_sessions``), subscribes one consumer per downstream route (the client's broker-side
subscription: it exists exactly while the session does) and publishes the ``connect`` presence
event. The entrypoint then writes what :meth:`Session.next_delivery` returns to its client, and
relays what the client sends with :meth:`Session.publish`. Leaving the block, by any path, stops the
consumers, nacks every delivery the client did not get or did not confirm, and publishes
``disconnect``.

::

    broker -> consumer task --(session channel, channel_size)--> writer -> client
                  |  ack per ack_policy: received / channel entered / before write / confirmed
    client -> relay -> Session.publish -> endpoint.publish (confirmed for at_least_once)

Per event the session does no work that could be done once per route (``_RoutePlan``: the
route's name, the ack steps of its guarantee, its packet counters), and ``receive`` hands the
writer a ready event without a checkpoint: before, the window's and the channel's checkpoints
cost the writer two rounds of the scheduler per batch (every caller checkpoints when it writes).

While the client has events to confirm, a batch smaller than ``COALESCE_BELOW`` waits one round
of the scheduler before it is written (``run_writer``). Without it, a client confirming event
by event could pull the engine into answering each confirmation with a write of one event, and
both sides then spent twice the CPU per event. Routes without client confirmation never wait.
The measurements are in docs/performance.md.

Errors: a consumer that fails (broker gone) cancels the session and its ``MediationError`` is
raised out of the ``async with``; so is the reason given to :meth:`Session.close` (engine shutdown,
route changed, idle expiry). Entrypoints turn that error into the client's close code or status.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from itertools import groupby
from urllib.parse import urlencode

import trio

from .ack_policy import Step
from .client_state import ClientLedger
from .config import RouteConfig, endpoint_type_of
from .context import EngineContext
from .endpoints.base import Endpoint, Outbound, Subscription
from .errors import (
    BadRequest,
    BrokerUnavailable,
    ClientTooSlow,
    EngineShuttingDown,
    Forbidden,
    MediationError,
    NoRoute,
    Replaced,
    SessionClosed,
    TooManyClients,
    TooManySessions,
    UnknownEvent,
)
from .events import MAX_EVENT_ID, Delivery, Event, new_event_id, valid_event_id, with_valid_id
from .exception_groups import single_error
from .params import NO_FILTER, Filter, check_names, stream_name
from .permissions import Permissions
from .resume_gate import ResumeGate
from .routing import EntrypointRoutes
from .telemetry import PacketSource

log = logging.getLogger(__name__)

# The most a writer hands the client's socket in one send (see Session.run_writer): enough to
# make the per-send cost small, small enough that one burst does not hold up the heartbeat or a
# reply for long.
WRITE_BATCH_EVENTS = 64
WRITE_BATCH_BYTES = 256 * 1024
# A batch smaller than this, while the client has events to confirm, waits one scheduler round.
COALESCE_BELOW = 8

# How long a session's last words to the broker (nacks, the disconnect presence event) may take.
SETTLE_TIMEOUT = 5.0


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one live session, as ``engine.sessions`` lists it."""

    id: str
    client_id: str
    entrypoint: str
    routes: tuple[str, ...]
    channel_depth: int
    # The names of its subscriptions (see SessionSubscription), in the order they were made.
    subscriptions: tuple[str, ...] = ()


class _RoutePlan:
    """What a session's per-event steps need to know about one downstream route, worked out
    once per session instead of once per event (the route's name is built on each access)."""

    __slots__ = (
        "acks_before_write",
        "acks_entered",
        "acks_received",
        "confirms",
        "name",
        "packets",
        "route",
    )

    def __init__(self, route: RouteConfig) -> None:
        plan = route.ack_plan
        self.route = route
        self.name = route.name
        self.acks_received = plan.acks_at(Step.RECEIVED)
        self.acks_entered = plan.acks_at(Step.CHANNEL_ENTERED)
        self.acks_before_write = plan.acks_at(Step.BEFORE_WRITE)
        self.confirms = plan.keeps_until_confirmed
        self.packets: PacketSource | None = None  # made on the first write


class SessionSubscription:
    """One of a session's subscriptions: a set of parameter values (one per parameter: the
    path's, one value of each query parameter, the token's claims) and the consumers, one per
    downstream route, that it runs at the brokers.

    ``name`` is what events and replies call it: the resolved stream name of the client's first
    downstream route (``prices.A``), or, where that is not an id the envelope's rule allows, its
    parameters as a query string. ``consumer_id`` is the ``Subscription.session_id`` its
    consumers get: the session's id for the first one (as before there were several), that id
    and a number for the others, so that broker-side names made from it (RabbitMQ's
    ``session_queue``, a second MQTT connection's client id) are each consumer's own.
    """

    __slots__ = ("closed", "consumer_id", "done", "name", "params", "room", "scope")

    def __init__(
        self, name: str, params: Mapping[str, str], consumer_id: str, room: int | None = None
    ) -> None:
        self.name = name
        # Its share of the session channel (Session._enter_channel), where it may have company.
        self.room = None if room is None else trio.Semaphore(room)
        self.params = params
        self.consumer_id = consumer_id
        # Made when it runs in a task of its own (a session whose subscriptions may change, see
        # open_session): unsubscribe cancels ``scope``, and ``done`` is set once its consumers
        # have left (their broker-side subscriptions removed).
        self.scope: trio.CancelScope | None = None
        self.done: trio.Event | None = None
        # Unsubscribed: what is still in the session channel of it is skipped, not written.
        self.closed = False


class SessionDelivery:
    """A delivery inside a session, with the route and the subscription it came along."""

    __slots__ = ("delivery", "plan", "subscription")

    def __init__(
        self, delivery: Delivery, plan: _RoutePlan, subscription: SessionSubscription
    ) -> None:
        self.delivery = delivery
        self.plan = plan
        self.subscription = subscription

    @property
    def event(self) -> Event:
        return self.delivery.event


class _Window:
    """The at-least-once window: events written and not yet confirmed, at most ``size``. A
    semaphore whose size follows the session's subscriptions (each brings its routes' share)."""

    __slots__ = ("_lot", "size", "used")

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._lot = trio.lowlevel.ParkingLot()

    def acquire_nowait(self) -> bool:
        if self.used < self.size:
            self.used += 1
            return True
        return False

    async def acquire(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.acquire_nowait():
            await self._lot.park()

    def release(self) -> None:
        self.used -= 1
        if self.used < self.size and self._lot:  # (unpark() costs a list even for nobody)
            self._lot.unpark()

    def resize(self, size: int) -> None:
        self.size = size
        self._lot.unpark_all()


class _SubscribeRequest:
    __slots__ = ("done", "error", "started", "subscription")

    def __init__(self, subscription: SessionSubscription) -> None:
        self.subscription = subscription
        self.done = trio.Event()
        self.started = False
        self.error: MediationError | None = None


class Session:
    # Slots: past 29 attributes an instance dict no longer shares its keys with the class's
    # other instances and costs 1.6 KiB a session instead of 0.3 (CPython 3.11).
    __slots__ = (
        "_awaiting_confirmation",
        "_cancel_scope",
        "_check_names",
        "_confirm_timeout",
        "_consumers_made",
        "_context",
        "_in_hand",
        "_permissions",
        "_plans",
        "_receive",
        "_receivers",
        "_recently_written",
        "_room",
        "_send",
        "_subscribe_requests",
        "_window",
        "_window_share",
        "client_confirms",
        "client_id",
        "close_reason",
        "ended",
        "entrypoint",
        "filter",
        "id",
        "max_subscriptions",
        "named",
        "params",
        "publish_refused",
        "resets",
        "resume_gate",
        "routes",
        "subscriptions",
    )

    def __init__(
        self,
        context: EngineContext,
        *,
        entrypoint: str,
        client_id: str,
        routes: EntrypointRoutes,
        client_confirms: bool,
        params: Mapping[str, str] | None = None,
        filter: Filter = NO_FILTER,
        max_subscriptions: int = 1,
        named: bool = False,
        permissions: Permissions | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        # The live subscriptions by name, in the order they were made (see SessionSubscription).
        self.subscriptions: dict[str, SessionSubscription] = {}
        self.max_subscriptions = max_subscriptions
        # Whether each event names its subscription (envelope "subscription", X-Subscription):
        # on an entrypoint with parameters; a plain one has one subscription, never named.
        self.named = named
        self._permissions = permissions
        self._check_names = True  # set by open_session
        self._consumers_made = 0
        self._plans = {route: _RoutePlan(route) for route in routes.downstream}
        # WebSocket subscribe requests, for the task that starts consumers in the session nursery:
        # only on a session whose subscriptions may change (open_session's ``changeable``).
        self._subscribe_requests: trio.MemorySendChannel[_SubscribeRequest] | None = None
        # The client's server-side filter (?filter.NAME=...), applied in the consumer tasks.
        self.filter = filter
        # The client's parameters and usable token claims (mediation.params), checked on admission.
        self.params: Mapping[str, str] = params or {}
        # Set when the token does not grant publishing on the upstream routes (authorize).
        self.publish_refused: Forbidden | None = None
        self.entrypoint = entrypoint
        self.client_id = client_id
        self.routes = routes
        # True when the client answers each event (envelope acks, /ack); otherwise a completed
        # write is the confirmation at_least_once waits for.
        self.client_confirms = client_confirms
        self._context = context
        # Room for what every subscription the session may have can hand it at once (each its
        # routes' channel_size, its room: see _enter_channel).
        self._room = sum(route.channel_size for route in routes.downstream) or 1
        self._send, self._receive = trio.open_memory_channel[SessionDelivery](
            self._room * max_subscriptions
        )
        # The at-least-once window: events written to the client and not yet confirmed, counted
        # against the routes' channel_size per subscription, so a client that never confirms
        # stops its consumers. Sized as subscriptions come and go (_resize_window).
        self._window_share = sum(
            r.channel_size for r in routes.downstream if r.ack_plan.keeps_until_confirmed
        )
        self._window = _Window(0) if self._window_share else None
        # With broker credit equal to channel_size, a client that stops confirming never makes a
        # consumer wait on the channel: the slow-client policy also watches the window.
        self._confirm_timeout = min(
            (
                r.slow_client_timeout
                for r in routes.downstream
                if r.ack_plan.keeps_until_confirmed and r.slow_client == "disconnect"
            ),
            default=math.inf,
        )
        self._in_hand: dict[SessionDelivery, None] = {}  # unsettled, in insertion order
        self._awaiting_confirmation: dict[str, SessionDelivery] = {}
        self._recently_written: deque[str] = deque(maxlen=64)
        self._receivers: set[trio.CancelScope] = set()  # receive() calls waiting for the window
        self._cancel_scope = trio.CancelScope()
        # Why the session ended (or is ending): the reason given to close(), or the error it
        # ended with (a consumer's BrokerUnavailable, ClientTooSlow).
        self.close_reason: MediationError | None = None
        # Resume positions the broker no longer held, one reason per route that had to start
        # from the oldest position instead (Subscription.position_gone): the entrypoint tells
        # the client right after confirming the session.
        self.resets: list[str] = []
        # Set once the session is over: consumers gone, what it held unsettled nacked.
        self.ended = trio.Event()
        # Holds the consumers with positions until the client's first message may resume them
        # (the envelope's {"resume": id}; open_session's hold_for_resume).
        self.resume_gate: ResumeGate | None = None

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            client_id=self.client_id,
            entrypoint=self.entrypoint,
            routes=self.routes.names,
            channel_depth=self._receive.statistics().current_buffer_used,
            subscriptions=tuple(self.subscriptions),
        )

    def close(self, reason: MediationError) -> None:
        """End the session from outside; ``reason`` is raised out of its ``async with``."""
        if self.close_reason is None:
            self.close_reason = reason
        self._cancel_scope.cancel(reason=str(reason))

    # -- downstream: the writer's side ---------------------------------------------------------

    async def receive(self) -> SessionDelivery:
        """Wait for the next event for the client.

        Cancelling this wait loses nothing. Once the session has ended it raises
        :class:`trio.ClosedResourceError`, also to a wait already in progress (a poller waiting
        for the at-least-once window, say).

        An event that is ready (and allowed by the window) is returned without a checkpoint:
        the window's and the channel's own checkpoints cost the writer two rounds of the
        scheduler per batch, and every caller checkpoints when it writes what it got.

        What is still in the channel of a subscription that ended (unsubscribed, its deliveries
        already nacked) is skipped.
        """
        while True:
            ready = self.receive_nowait()
            if ready is not None:
                return ready
            if self._window is not None:
                # A window that is full of unconfirmed events is the client's slowness; one
                # that is empty because the session has no subscription left is not.
                timeout = self._confirm_timeout if self._window.used else math.inf
                with trio.CancelScope() as waiting:
                    self._receivers.add(waiting)
                    try:
                        with trio.move_on_after(timeout) as unconfirmed:
                            await self._window.acquire()
                    finally:
                        self._receivers.discard(waiting)
                if waiting.cancelled_caught:
                    raise trio.ClosedResourceError("the session has ended")
                if unconfirmed.cancelled_caught:
                    too_slow = ClientTooSlow(
                        f"client too slow: confirmed nothing for {self._confirm_timeout:g} s"
                    )
                    self.close(too_slow)
                    raise too_slow
            try:
                item = await self._receive.receive()
            except BaseException:
                if self._window is not None:
                    self._window.release()
                raise
            taken = self._taken(item)
            if taken is not None:
                return taken

    async def before_write(self, item: SessionDelivery) -> None:
        """The event is about to be written: ack it (``at_most_once``), or expect the client's
        confirmation from now on. Not only once written: the client may have it, and its
        confirmation may be read (by another task) before the writer is back from the write;
        taken as unknown, that confirmation was lost and the event held its window slot for
        good (a fast client's stream stopped a window short)."""
        if item.plan.acks_before_write:
            await self._settle(item, accepted=True)
        elif item.plan.confirms and self.client_confirms:
            self._awaiting_confirmation[item.event.id] = item

    async def written(self, items: Sequence[SessionDelivery]) -> None:
        """The events (one write's, in order) reached the client: count and log them (per
        route, one count for a run of events of one route) and, per guarantee, ack each or await
        its confirmation."""
        telemetry = self._context.telemetry
        for plan, run in groupby(items, key=lambda item: item.plan):  # plans compare as objects
            telemetry.packets_from(self._packets(plan), [item.event for item in run])
        for item in items:
            if not item.plan.confirms:
                self._recently_written.append(item.event.id)
            elif not self.client_confirms:
                await self._confirmed(item, accepted=True)
            # else: awaiting the client's confirmation since before_write

    def _packets(self, plan: _RoutePlan) -> PacketSource:
        source = plan.packets
        if source is None:
            source = plan.packets = self._context.telemetry.packet_source(
                source_id=plan.route.source,
                client_id=self.client_id,
                session_id=self.id,
                route=plan.name,
                direction="downstream",
            )
        return source

    async def next_delivery(self) -> SessionDelivery:
        """:meth:`receive` and :meth:`before_write`: the next event, ready to be written."""
        item = await self.receive()
        await self.before_write(item)
        return item

    def receive_nowait(self) -> SessionDelivery | None:
        """The next event if one is ready now (and the at-least-once window allows it), or None."""
        while True:
            if self._window is not None and not self._window.acquire_nowait():
                return None
            try:
                item = self._receive.receive_nowait()
            except trio.WouldBlock:
                if self._window is not None:
                    self._window.release()
                return None
            taken = self._taken(item)
            if taken is not None:
                return taken

    def _taken(self, item: SessionDelivery) -> SessionDelivery | None:
        """An event left the channel: it holds its window slot only until it is confirmed (and
        none if its subscription ended: it is skipped, None)."""
        subscription = item.subscription
        if subscription.room is not None:
            subscription.room.release()
        if self._window is not None and (not item.plan.confirms or subscription.closed):
            self._window.release()
        return None if subscription.closed else item

    async def run_writer(
        self,
        write: Callable[[list[SessionDelivery]], Awaitable[None]],
        *,
        max_events: int = WRITE_BATCH_EVENTS,
        max_bytes: int = WRITE_BATCH_BYTES,
    ) -> None:
        """The downstream writer: events to ``write``, acked per guarantee. Never returns.

        ``write`` gets what is ready in the channel, in order, at least one event (waiting for
        it) and at most ``max_events`` or about ``max_bytes`` of payload (taken without waiting),
        and hands them to the client's socket in one send: one system call for a burst instead
        of one per event. Each event still goes through :meth:`before_write` before the write
        and :meth:`written` after it, in order.
        """
        if not all(r.ack_plan.writes_in_batches for r in self.routes.downstream):
            # at_most_once acks each event right before its own write: batched, the acks of a
            # burst would all come before its first write (and a Kafka at_most_once session then
            # lost its successor's events in tests/test_kafka.py).
            max_events = 1
        while True:
            first = await self.receive()
            waited = not self._awaiting_confirmation  # (written events: before this one's)
            await self.before_write(first)
            batch = [first]
            size = len(first.delivery.event.payload)
            while len(batch) < max_events and size < max_bytes:
                item = self.receive_nowait()
                if item is None:
                    if waited or len(batch) >= COALESCE_BELOW:
                        break
                    # A client confirming event by event: one round of the scheduler lets the
                    # confirmations already arriving free the window for more events first.
                    waited = True
                    await trio.lowlevel.checkpoint()
                    continue
                await self.before_write(item)
                batch.append(item)
                size += len(item.delivery.event.payload)
            await write(batch)
            await self.written(batch)

    async def confirm(self, event_id: str, *, accepted: bool = True) -> None:
        """The client confirmed (or, ``accepted=False``, refused) an event it was sent."""
        item = self._awaiting_confirmation.pop(event_id, None)
        if item is not None:
            await self._confirmed(item, accepted=accepted)
        elif event_id not in self._recently_written:
            raise UnknownEvent(f"no event {event_id!r} awaits confirmation in this session")

    # -- upstream: the relay's side ------------------------------------------------------------

    async def publish(
        self, payload: bytes, metadata: Mapping[str, str] | None = None, event_id: str | None = None
    ) -> Event:
        """Send one client event along every upstream route; per guarantee, wait for the broker.

        :class:`Forbidden` when the token does not grant publishing there (nothing is sent)."""
        if self.publish_refused is not None:
            raise self.publish_refused
        event = Event(
            payload,
            id=event_id or new_event_id(),
            metadata=dict(metadata or {}),
            client_id=self.client_id,
        )
        await publish_upstream(
            self._context,
            self.routes.upstream,
            event,
            entrypoint=self.entrypoint,
            client_id=self.client_id,
            session_id=self.id,
            params=self.params,
        )
        return event

    # -- internals -----------------------------------------------------------------------------

    # -- subscriptions -------------------------------------------------------------------------

    def resolve_subscription(self, params: Mapping[str, str]) -> SessionSubscription:
        """A subscription for ``params`` (not started): every name its consumers would fill is
        checked (:class:`BadRequest`), and with ``authorize``, granted (:class:`Forbidden`)."""
        name = self.subscription_name(params, authorize=True)
        consumer_id = self.id if not self._consumers_made else f"{self.id}-{self._consumers_made}"
        self._consumers_made += 1
        return SessionSubscription(
            name, params, consumer_id, self._room if self.max_subscriptions > 1 else None
        )

    def subscription_name(self, params: Mapping[str, str], *, authorize: bool = False) -> str:
        """The resolved stream of the first downstream route, or the parameters as a query
        string where that is no id the envelope's rule allows (see SessionSubscription)."""
        streams = check_route_names(
            self._context,
            self.routes.downstream,
            "downstream",
            params,
            self.client_id,
            self.entrypoint,
            check=self._check_names,
        )
        if authorize and self._permissions is not None:
            for stream in streams:
                self._permissions.check("subscribe", stream)
        if streams and valid_event_id(streams[0]):
            return streams[0]
        own = sorted((k, v) for k, v in params.items() if not k.startswith("claims."))
        return (urlencode(own, safe="") or "-")[:MAX_EVENT_ID]

    async def subscribe(self, params: Mapping[str, str]) -> str:
        """Add a subscription (a WebSocket ``{"subscribe"}``) and return its name once its
        consumers are subscribed at the brokers. :class:`BadRequest` (a name not allowed,
        already subscribed, ``max_subscriptions`` reached), :class:`Forbidden`,
        :class:`BrokerUnavailable`: nothing is subscribed."""
        if self._subscribe_requests is None:
            raise BadRequest("this session's subscriptions cannot change")
        subscription = self.resolve_subscription(params)
        self._check_new(subscription)
        request = _SubscribeRequest(subscription)
        try:
            await self._subscribe_requests.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise EngineShuttingDown("the session is ending") from None
        await request.done.wait()
        if request.error is not None:
            raise request.error
        if not request.started:
            raise self.close_reason or SessionClosed("the session ended")
        return subscription.name

    def _check_new(self, subscription: SessionSubscription) -> None:
        if subscription.name in self.subscriptions:
            raise BadRequest(f"already subscribed to {subscription.name}")
        if len(self.subscriptions) >= self.max_subscriptions:
            raise BadRequest(f"at max_subscriptions ({self.max_subscriptions})")

    async def unsubscribe(self, params: Mapping[str, str]) -> str:
        """End the subscription ``params`` resolve to and return its name once its consumers
        have left the brokers; what it left unsettled is nacked and what of it is still in the
        session channel is not written. :class:`BadRequest` if there is none."""
        if self._subscribe_requests is None:
            raise BadRequest("this session's subscriptions cannot change")
        name = self.subscription_name(params, authorize=False)
        subscription = self.subscriptions.pop(name, None)
        if subscription is None:
            raise BadRequest(f"not subscribed to {name}")
        subscription.closed = True
        scope, done = subscription.scope, subscription.done
        assert scope is not None and done is not None  # every one of a changeable session's
        scope.cancel(reason="unsubscribed")
        await done.wait()
        with trio.move_on_after(SETTLE_TIMEOUT, shield=True):
            for item in [i for i in self._in_hand if i.subscription is subscription]:
                await self._settle(item, accepted=False)
            for event_id, item in list(self._awaiting_confirmation.items()):
                if item.subscription is subscription:
                    del self._awaiting_confirmation[event_id]
                    if self._window is not None:
                        self._window.release()
        self._resize_window()
        return name

    def _resize_window(self) -> None:
        if self._window is not None:
            self._window.resize(self._window_share * len(self.subscriptions))

    async def _run_subscription(
        self,
        subscription: SessionSubscription,
        resume_after: str | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """A subscription's consumers, one per downstream route, subscribed at once; started
        once all are. Cancelling its scope removes them."""
        subscription.scope = scope = trio.CancelScope()
        subscription.done = done = trio.Event()
        try:
            with scope:
                async with trio.open_nursery() as consumers:
                    # Subscribe on every route at once (a Kafka group join alone takes seconds).
                    async with trio.open_nursery() as subscribing:
                        for route in self.routes.downstream:
                            subscribing.start_soon(
                                consumers.start, self._consume, route, subscription, resume_after
                            )
                    self.subscriptions[subscription.name] = subscription
                    self._resize_window()
                    task_status.started()
        finally:
            done.set()

    async def _serve_subscribe_requests(
        self, requests: trio.MemoryReceiveChannel[_SubscribeRequest], nursery: trio.Nursery
    ) -> None:
        """Start the subscriptions asked for with :meth:`subscribe` in the session nursery."""
        async for request in requests:
            try:
                self._check_new(request.subscription)  # (asked for at the same time as another)
                await nursery.start(self._run_subscription, request.subscription, None)
                request.started = True
            except MediationError as refused:
                request.error = refused
            except BaseExceptionGroup as group:
                first = single_error(group)
                if not isinstance(first, MediationError):
                    raise
                request.error = first
            finally:
                request.done.set()

    async def _consume(
        self,
        route: RouteConfig,
        owner: SessionSubscription,
        resume_after: str | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        endpoint = self._context.endpoints[route.source]
        subscription = Subscription(
            client_id=self.client_id,
            session_id=owner.consumer_id,
            entrypoint=self.entrypoint,
            route=route,
            resume_after=resume_after,
            params=owner.params,
            undeliverable=lambda reason: self._context.telemetry.undeliverable.labels(
                route.source, reason
            ).inc(),
            position_gone=lambda reason: self._position_gone(route, reason),
        )
        plan = self._plans[route]
        refuses = self.filter.matches if self.filter else None
        filtered = self._context.telemetry.filtered.labels(route.name)
        cursors = self._context.cursors
        sign = endpoint.ids_are_positions and cursors.signing
        gate = self.resume_gate
        async with (
            gate.consume(endpoint, subscription) if gate else endpoint.consume(subscription)
        ) as deliveries:
            task_status.started()
            async for delivery in deliveries:
                if refuses is not None and not refuses(delivery.event.metadata):
                    # Delivered to nobody: settled here, before the channel, so the client's
                    # credit never waits behind an event it does not want.
                    self._context.telemetry.settled(plan.name, True)
                    await delivery.ack()
                    filtered.inc()
                    continue
                if sign:
                    # A position goes out signed, so that any instance of the fleet can take it
                    # back as a resume cursor (mediation/cursors.py).
                    delivery.event = replace(delivery.event, id=cursors.sign(delivery.event.id))
                elif not endpoint.ids_are_positions and not valid_event_id(delivery.event.id):
                    # A broker's id, which nobody checked (RabbitMQ message_id, an MQTT or AMQP
                    # property): one that breaks the id rule gets replaced here, once for every
                    # entrypoint, the original kept (escaped) in metadata "original-id". Kafka's
                    # ids are its resume positions (topic:partition:offset, printable; over the
                    # rule's length only for a topic name over 224 characters): never replaced.
                    delivery.event = with_valid_id(delivery.event)
                item = SessionDelivery(delivery, plan, owner)
                self._in_hand[item] = None
                if plan.acks_received:
                    await self._settle(item, accepted=True)
                await self._enter_channel(item, endpoint)
                if plan.acks_entered:
                    await self._settle(item, accepted=True)

    def _position_gone(self, route: RouteConfig, reason: str) -> None:
        self.resets.append(reason)
        self._context.telemetry.resume_resets.labels(route.source).inc()
        log.info(
            "resume position gone: from the oldest",
            extra={"session_id": self.id, "route": route.name, "reason": reason},
        )

    async def _enter_channel(self, item: SessionDelivery, endpoint: Endpoint) -> None:
        """Put a delivery in the session channel, waiting as long as the slow-client policy allows.

        The wait is where every kind of slowness shows (a write that does not complete, a client
        that does not confirm or does not poll), so this is the one place the policy is applied.
        While it waits, the consumer does not iterate its endpoint and would not hear of a broker
        failure from it: the endpoint's state tells it instead.

        A session that may have several subscriptions holds each to its own share of the
        channel (``room``: its routes' channel_size), so that one busy subscription never
        takes another's place, nor more than one subscription's worth of events on its own.
        """
        room = item.subscription.room
        needs_room = room is not None
        if room is not None:
            try:
                room.acquire_nowait()
                needs_room = False
            except trio.WouldBlock:
                pass
        if not needs_room:
            try:
                self._send.send_nowait(item)
                return
            except trio.WouldBlock:
                pass
        route = item.plan.route
        timeout = route.slow_client_timeout if route.slow_client == "disconnect" else math.inf
        with self._context.watches[route.source].cancel_when_down() as down:
            with trio.move_on_after(timeout) as waiting:
                if room is not None and needs_room:
                    await room.acquire()
                await self._send.send(item)
        if down.cancelled_caught:
            raise BrokerUnavailable(f"endpoint {endpoint.name} is down")
        if waiting.cancelled_caught:
            raise ClientTooSlow(f"client too slow: took no event for {timeout:g} s")

    async def _confirmed(self, item: SessionDelivery, *, accepted: bool) -> None:
        await self._settle(item, accepted=accepted)
        if self._window is not None:
            self._window.release()

    async def _settle(self, item: SessionDelivery, *, accepted: bool) -> None:
        self._in_hand.pop(item, None)
        if not item.delivery.settled:
            self._context.telemetry.settled(item.plan.name, accepted)
            await (item.delivery.ack() if accepted else item.delivery.nack())

    async def _nack_unsettled(self) -> None:
        for item in list(self._in_hand):
            await self._settle(item, accepted=False)

    async def _announce(self, kind: str) -> None:
        """Publish the presence event along routes with ``lifecycle_events = true``."""
        routes = tuple(r for r in self.routes.upstream if r.lifecycle_events)
        if not routes:
            return
        document = {
            "type": kind,
            "client_id": self.client_id,
            "session_id": self.id,
            "entrypoint": self.entrypoint,
        }
        presence = Event(
            payload=json.dumps(document, separators=(",", ":")).encode(),
            metadata={"content-type": "application/json", "mediation-event": kind},
            client_id=self.client_id,
        )
        try:
            await publish_upstream(
                self._context,
                routes,
                presence,
                entrypoint=self.entrypoint,
                client_id=self.client_id,
                session_id=self.id,
                params=self.params,
            )
        except BrokerUnavailable as error:
            log.warning(
                "presence event not published", extra={"session_id": self.id, "error": str(error)}
            )


async def publish_upstream(
    context: EngineContext,
    routes: tuple[RouteConfig, ...],
    event: Event,
    *,
    entrypoint: str,
    client_id: str,
    session_id: str | None,
    params: Mapping[str, str] | None = None,
) -> None:
    """Hand ``event`` to the target of every route, awaiting confirms where the route asks."""
    if not routes:
        raise NoRoute(f"entrypoint {entrypoint} has no upstream route")
    for route in routes:
        endpoint = context.endpoints[route.target]
        message = Outbound(
            event=event,
            route=route,
            client_id=client_id,
            entrypoint=entrypoint,
            params=params or {},
        )
        await endpoint.publish(message, confirm=route.ack_plan.upstream_awaits_confirm)
        context.telemetry.packet(
            event=event,
            source_id=entrypoint,
            client_id=client_id,
            session_id=session_id,
            route=route.name,
            direction="upstream",
        )


def check_route_names(
    context: EngineContext,
    routes: tuple[RouteConfig, ...],
    direction: str,
    params: Mapping[str, str],
    client_id: str,
    entrypoint: str,
    *,
    check: bool = True,
) -> list[str]:
    """Fill, without subscribing or publishing, every name the endpoints of ``routes`` fill for
    ``direction`` with the client's ``params``, and check each against its broker's rule
    (:func:`mediation.params.check_names`): the client is refused (400, 403) before anything
    happens at a broker. Returns the stream names (what permissions are checked against);
    with ``check=False`` only those, unchecked."""
    values = {**params, "client_id": client_id, "entrypoint": entrypoint}
    streams = []
    for route in routes:
        endpoint = context.endpoints[route.source if direction == "downstream" else route.target]
        config = getattr(endpoint, "config", None)  # every endpoint has one; test fakes may not
        endpoint_type = endpoint_type_of(config)
        if endpoint_type is not None:
            if check:
                check_names(endpoint_type, config, direction, values)
            stream = stream_name(endpoint_type, config, direction, values)
            if stream is not None:
                streams.append(stream)
    return streams


def authorize_publish(
    context: EngineContext,
    routes: tuple[RouteConfig, ...],
    permissions: Permissions | None,
    params: Mapping[str, str],
    client_id: str,
    entrypoint: str,
) -> None:
    """Check the names a publish along ``routes`` fills (400) and, with ``permissions``, that
    the token grants publishing to each (:class:`Forbidden`)."""
    streams = check_route_names(context, routes, "upstream", params, client_id, entrypoint)
    if permissions is not None:
        for stream in streams:
            permissions.check("publish", stream)


@asynccontextmanager
async def open_session(
    context: EngineContext,
    *,
    entrypoint: str,
    client_id: str,
    max_sessions: int | None,
    client_confirms: bool,
    resume_after: str | None = None,
    params: Mapping[str, str] | None = None,
    permissions: Permissions | None = None,
    filter: Filter = NO_FILTER,
    subscriptions: Sequence[Mapping[str, str]] | None = None,
    max_subscriptions: int = 1,
    named: bool = False,
    changeable: bool = False,
    hold_for_resume: bool = False,
) -> AsyncIterator[Session]:
    """Admit a client and run its session for the duration of the block (see module docstring).

    ``params``: the client's parameters and usable token claims; every name its routes'
    endpoints would fill with them is checked first (:func:`check_route_names`). With
    ``permissions`` (``authorize = true``), a stream the token does not grant to subscribe to is
    :class:`Forbidden` here; one it does not grant to publish to makes every
    :meth:`Session.publish` raise it (the client is nacked, the session goes on).

    ``subscriptions``: several such value sets (a repeated query parameter), one subscription
    each, all checked as ``params`` is; upstream names are filled with the first. At most
    ``max_subscriptions``, then and later (:meth:`Session.subscribe`). ``named``: events name
    their subscription (see :class:`Session`). ``changeable``: the client may subscribe and
    unsubscribe while the session runs (:meth:`Session.subscribe`, a ``mediation.v1`` WebSocket
    on an entrypoint with parameters); otherwise both are :class:`BadRequest`, and the session
    runs its consumers with no task, scope or channel per subscription.

    ``filter``: the client's server-side filter; every downstream route must allow each of its
    fields (``filter_fields``), else :class:`BadRequest`.

    ``hold_for_resume``: without ``resume_after``, the consumers with positions are held until
    the client's first message may resume them (``session.resume_gate``,
    :mod:`mediation.resume_gate`)."""
    if context.shutting_down:
        raise EngineShuttingDown("the engine is shutting down")
    routes = context.routes.for_entrypoint(entrypoint)
    if not routes:
        raise NoRoute(f"entrypoint {entrypoint} has no route")
    if filter:
        for route in routes.downstream:
            filter.check_allowed(route.filter_fields, route.name)
    value_sets = list(subscriptions) if subscriptions else [params or {}]
    if len(value_sets) > max_subscriptions:
        raise BadRequest(f"more than max_subscriptions ({max_subscriptions}) subscriptions")
    params = value_sets[0]
    session = Session(
        context,
        entrypoint=entrypoint,
        client_id=client_id,
        routes=routes,
        client_confirms=client_confirms,
        params=params,
        filter=filter,
        max_subscriptions=max_subscriptions,
        named=named,
        permissions=permissions,
    )
    # Names are checked for a client with parameters, claims or permissions (a plain client's
    # names are the operator's templates with its client id, as they always were).
    session._check_names = any(value_sets) or permissions is not None
    made: dict[str, SessionSubscription] = {}
    for values in value_sets:
        subscription = session.resolve_subscription(values)
        if subscription.name in made:
            raise BadRequest(f"two subscriptions would both be {subscription.name}")
        made[subscription.name] = subscription
    if session._check_names:
        try:
            authorize_publish(context, routes.upstream, permissions, params, client_id, entrypoint)
        except Forbidden as refused:
            session.publish_refused = refused
    if resume_after is not None and any(
        context.endpoints[route.source].ids_are_positions for route in routes.downstream
    ):
        # A cursor whose signature is wrong is BadCursor (400) here, before the session; one
        # this fleet never signed resumes nothing (mediation/cursors.py).
        resume_after = context.cursors.resume_position(resume_after)
    elif hold_for_resume and any(
        context.endpoints[route.source].ids_are_positions for route in routes.downstream
    ):
        session.resume_gate = ResumeGate(context.cursors)
    # One client id, two connections (design.md): the newer session takes over. The older
    # one's place counts as free for max_sessions; the check is repeated once it has gone.
    older = _sessions_of(context, entrypoint, client_id)
    if max_sessions is not None and context.session_count(entrypoint) - len(older) >= max_sessions:
        raise TooManySessions(f"entrypoint {entrypoint} is at max_sessions ({max_sessions})")
    await _replace(context, entrypoint, client_id)
    if max_sessions is not None and context.session_count(entrypoint) >= max_sessions:
        raise TooManySessions(f"entrypoint {entrypoint} is at max_sessions ({max_sessions})")
    # Count the client at every endpoint it consumes from (max_clients: TooManyClients, 503).
    ledgers = _ledgers(context, routes.downstream)
    entered: list[ClientLedger] = []
    try:
        for ledger in ledgers:
            ledger.enter(client_id, now=trio.current_time())
            entered.append(ledger)
    except TooManyClients:
        for ledger in entered:
            ledger.leave(client_id, now=trio.current_time())
        raise
    context.sessions[session.id] = session
    context.telemetry.sessions.labels(entrypoint).inc()
    try:
        with session._cancel_scope:
            try:
                async with trio.open_nursery() as nursery:
                    # Every subscription at once (a Kafka group join alone takes seconds).
                    if changeable:
                        # Each in a task of its own that unsubscribe cancels, and a task that
                        # starts those the client asks for later.
                        async with trio.open_nursery() as subscribing:
                            for subscription in made.values():
                                subscribing.start_soon(
                                    nursery.start,
                                    session._run_subscription,
                                    subscription,
                                    resume_after,
                                )
                        session._subscribe_requests, requests = trio.open_memory_channel[
                            _SubscribeRequest
                        ](0)
                        nursery.start_soon(session._serve_subscribe_requests, requests, nursery)
                    else:
                        # Subscriptions that never change: their consumers straight in the
                        # session nursery, as before there were several. A task, nurseries and a
                        # channel per session cost some 15 KiB of RSS each (docs/performance.md).
                        async with trio.open_nursery() as subscribing:
                            for subscription in made.values():
                                for route in routes.downstream:
                                    subscribing.start_soon(
                                        nursery.start,
                                        session._consume,
                                        route,
                                        subscription,
                                        resume_after,
                                    )
                        session.subscriptions.update(made)
                        session._resize_window()
                    await session._announce("connect")
                    yield session
                    nursery.cancel_scope.cancel(reason="session ended")
            except BaseExceptionGroup as group:
                error = single_error(group)
                if isinstance(error, MediationError) and session.close_reason is None:
                    session.close_reason = error
                raise error from None
        if session.close_reason is not None:
            raise session.close_reason
    finally:
        del context.sessions[session.id]
        context.telemetry.sessions.labels(entrypoint).dec()
        for ledger in entered:
            ledger.leave(client_id, now=trio.current_time())
        session._send.close()
        session._receive.close()
        if session._subscribe_requests is not None:
            session._subscribe_requests.close()
        for waiting in session._receivers:
            waiting.cancel()
        try:
            with trio.move_on_after(SETTLE_TIMEOUT, shield=True):
                await session._nack_unsettled()
                await session._announce("disconnect")
        finally:
            session.ended.set()


def _ledgers(context: EngineContext, downstream: Sequence[RouteConfig]) -> list[ClientLedger]:
    """The client ledgers of the endpoints ``downstream`` consumes from, each once."""
    names = dict.fromkeys(route.source for route in downstream)
    return [context.clients[name] for name in names if name in context.clients]


def _sessions_of(context: EngineContext, entrypoint: str, client_id: str) -> list[Session]:
    return [
        s
        for s in context.sessions.values()
        if s.entrypoint == entrypoint and s.client_id == client_id
    ]


async def _replace(context: EngineContext, entrypoint: str, client_id: str) -> None:
    """End the live sessions of ``client_id`` on ``entrypoint`` (:class:`Replaced`) and wait
    until they are over: their consumers have left the brokers and what they held unsettled is
    nacked, so that a newer session subscribing after this gets it again where the broker keeps
    the client's place (Kafka's group, an MQTT session, a per-client queue).

    The wait is bounded by the older sessions' own exit (their consumers' goodbyes and
    SETTLE_TIMEOUT). It ends with no session of the client left: one that two newcomers raced
    for is replaced by the later of them. Returns without a checkpoint when there is none."""
    while older := _sessions_of(context, entrypoint, client_id):
        for session in older:
            session.close(Replaced())
        for session in older:
            await session.ended.wait()
