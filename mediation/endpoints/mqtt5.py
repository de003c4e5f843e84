"""MQTT 5 endpoint (paho-mqtt 2.x, MQTT 5 only): one MQTT connection per client session, on Trio.

Shape
-----
Each session's consumer (``consume()``) is an MQTT connection of its own, with one subscription to
``topic_in`` (``{client_id}`` and ``{entrypoint}`` filled) and Receive Maximum = the session's
credit (``channel_size``); entering returns after the SUBACK, leaving sends UNSUBSCRIBE and waits
for the UNSUBACK, so one client leaving touches no other client's subscription or in-flight
QoS 1/2 deliveries. The endpoint has one more connection, owned by ``run()``: it publishes, and it
is the broker's liveness check (MQTT ``keepalive``, 5 s: a broker silent for two is down). When it
is lost, ``state`` is ``down``, every consumer ends with :class:`BrokerUnavailable`, publishes are
refused, and it reconnects with jittered exponential backoff (``retry_interval`` doubling to 30 s).

No threads: every paho socket is driven from Trio's own I/O (:mod:`._mqtt_wire`, no
``loop_start()``); only paho's blocking TCP connect runs in a worker thread (at most
:data:`CONNECT_THREADS` per endpoint, Trio's thread cache). A consumer reads its socket only when
its session asks for the next event, so a slow client is TCP backpressure on its own connection:
the engine holds at most one read's worth for it, drops nothing, and no other client notices.
(The broker's flow control alone would not do: Mosquitto 2.0.11 honours Receive Maximum only until
the first ack; with 4 it sent 4 more per ack, without bound.) What a slow client has not taken
waits in the broker, in that client's own queue (Mosquitto ``max_queued_messages``, default 1000
per client: beyond it Mosquitto drops that client's messages, never anybody else's).

TLS (``mqtts://``, ``ssl://``): every connection, the endpoint's and each consumer's, uses the TLS
context made (:mod:`._tls`, from ``ca_file``, ``cert_file``/``key_file``, ``tls_server_name``,
``tls_verify``) when the endpoint's own connection last connected; the handshake is part of the
connect (:mod:`._mqtt_wire`), and a refused certificate is a failed connect: ``down``, with the
reason in ``down_reason`` (``/readyz``), and another attempt after the backoff.

Why not one shared connection
-----------------------------
A shared connection is the cheapest to hold, but it is one MQTT session: one Receive Maximum, one
broker queue for every client. Measured (docs/performance.md, "The MQTT 5 endpoint"; ``python -m
bench.mqtt_designs``), Mosquitto's per-client queue overflowed and it dropped messages for all of
them ("Outgoing messages are being dropped"); and the engine can only stop reading the shared
socket (stalling every client for the slowest), buffer without bound, or ack before clients
confirmed, none of which the design allows. Per-session connections keep flow control, the
broker's queue and the MQTT session (resume, below) per client, for one descriptor and one broker
connection per session, and Trio's I/O beats a network thread per connection on memory and
threads, at the same speed.

Acks, nacks, redelivery
-----------------------
Acks are manual (``manual_ack=True``): PUBACK (QoS 1) or PUBCOMP (QoS 2) goes to the broker when
the session acks, per its guarantee; for ``at_least_once`` only after the client confirmed. Acks
are written in batches, one packet per burst (:meth:`._mqtt_wire.Wire.send_acks`): those the
session's consumer task gives (``auto``, ``none``) and those of client confirmations
(``at_least_once``) by the consumer task before it next waits for the broker (woken for it if it
waits) and before UNSUBSCRIBE; ``at_most_once`` acks are written at once, before the event is.
A client confirmation that leaves nothing else handed out (always so at ``channel_size`` 1) is
written at once by the confirming task, with any acks batched before it: no other confirmation
can join that burst before the broker sends more, and waking the consumer task for it cost a
task switch and a cancellation per event.
A connection that breaks first loses what was not written yet: the broker resends it, which
those guarantees allow. MQTT
has no nack: a nacked event stays unacknowledged (still counted against the credit by the broker)
and the same consumer hands it out again, first. The MQTT session is the redelivery: consumer
connections use a stable client id (``client_id``, default ``mediation-{endpoint}-{client_id}``),
``clean_start=False`` and Session Expiry ``session_expiry`` (600 s), and leave with UNSUBSCRIBE
then DISCONNECT. The broker then keeps what it sent and was not acked, and what it had queued for
the client, and resends it when the client's next consumer connects within ``session_expiry``
(the DUP flag shows as ``redelivered``). Events published while a client has no consumer are not
kept for it (it has no subscription then). ``session_expiry = 0``: no resume. The endpoint's
``client_state_ttl`` caps it: the interval sent is the smaller of the two (ttl 0: session_expiry
alone). (A consumer ended
by a broker failure leaves without a goodbye: its subscription stays in the client's MQTT session,
and keeps collecting for the client, until the client comes back or the session expires.)
A second concurrent session of the same client (on one instance the engine replaces the older
session of an entrypoint, so this is the same client on two entrypoints, or a session's second
subscription) gets a throwaway MQTT session (``<client id>-<session id>``, clean, expiry 0): one
client id cannot be connected twice. Across instances the broker decides: a newer connection with
the client id takes the MQTT session over, and the older consumer, told so (DISCONNECT 0x8E),
ends its session with :class:`Replaced` (close 4409). SSE ``Last-Event-ID``
has nothing to add: the MQTT session is the resume.

``at_most_once``: the session acks just before writing, but a PUBACK still on its way when the
connection broke is lost and the broker resends the message (DUP). The endpoint remembers what its
``at_most_once`` sessions acked (:mod:`._written`) and acks such a redelivery without handing it
out (the fault tests saw such duplicates after a TCP reset before this).

``at_least_once`` routes subscribe with QoS at most 1: paho answers a QoS 2 PUBLISH with PUBREC on
receipt, after which the broker may only resend the PUBREL, never the message, so an unconfirmed
QoS 2 event could not come back. Other guarantees subscribe at ``qos`` (up to 2).

Metadata
--------
Consumed: user properties as metadata, Content Type as ``content-type``, and from the packet
``topic``, ``qos``, ``retain`` (``"true"`` for a retained message sent on subscribing) and
``redelivered`` (``"true"`` when DUP), which win over user properties of those names. The user
property ``event_id`` becomes the event id (new one otherwise), ``client_id`` the event's client.
Property strings that are not UTF-8, or hold characters MQTT forbids, are decoded with replacement
characters (:mod:`._mqtt_wire`) and a topic that is not UTF-8 becomes ``""``, so such messages are
delivered. A message that still cannot be converted is acknowledged (PUBACK/PUBCOMP: MQTT has no
reject, and the broker would resend an unacknowledged one to the client's next connection, to
fail again), whatever the route's guarantee; it is logged, counted in ``stats["undeliverable"]``
and reported to ``subscription.undeliverable``, and the session goes on.
Published: ``event_id``, ``client_id`` and the metadata (minus the consumed keys) as user
properties, ``content-type`` as Content Type, at ``qos``. ``confirm`` waits for the PUBACK or
PUBCOMP (QoS 0: for the write); a reason code >= 0x80 or a lost connection raises
:class:`BrokerUnavailable` ("No matching subscribers" is success). At most ``publish_window``
publishes are in flight; more wait for a slot.

Consumer connections ask for no keepalive (they sit unread while their client is slow; the
endpoint's connection watches the broker). A broker that imposes a Server Keep Alive gets pings
while the consumer waits for events; a consumer stalled longer than that is dropped by the broker
and its session ends with :class:`BrokerUnavailable`. Not supported yet: TLS and websockets
transports.
"""

from __future__ import annotations

import logging
import math
import ssl
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from trio_util import AsyncValue

from ..client_state import ClientLedger
from ..config import MQTT5Config
from ..errors import BrokerUnavailable, Replaced
from ..events import Delivery, Event, new_event_id
from ._backoff import Backoff
from ._mqtt_wire import ConnectionLost, EngineClient, Wire
from ._tls import client_context, describe
from ._written import Written
from .base import CONVERSION_ERROR, Deliveries, EndpointState, Outbound, Subscription

log = logging.getLogger(__name__)

# How long a consumer's goodbye (UNSUBSCRIBE, DISCONNECT) or the endpoint's may take.
GOODBYE_TIMEOUT = 5.0
# The reconnect delay doubles from ``retry_interval`` up to this.
RETRY_MAX = 30.0
# TCP connects (paho's only blocking call) in worker threads at once, per endpoint.
CONNECT_THREADS = 4

# User properties that carry the event's identity rather than client metadata.
EVENT_ID_PROPERTY = "event_id"
CLIENT_ID_PROPERTY = "client_id"
# Metadata this endpoint sets on consumed events; never sent on as user properties.
_CONSUMED_KEYS = frozenset(
    {EVENT_ID_PROPERTY, CLIENT_ID_PROPERTY, "topic", "qos", "retain", "redelivered"}
)


def broker_address(url: str) -> tuple[str, int]:
    """``tcp://host:port`` -> ``(host, port)`` (1883 when no port is given; 8883 for
    ``mqtts://`` and ``ssl://``)."""
    parts = urlsplit(url)
    default = 8883 if parts.scheme in ("mqtts", "ssl") else 1883
    return parts.hostname or "localhost", parts.port or default


# -- events <-> MQTT messages ------------------------------------------------------------------


def new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it untyped


def consumed_event(message: mqtt.MQTTMessage) -> Event:
    """The event for a received PUBLISH: user properties as metadata, plus what MQTT says of it.

    ``topic``, ``qos``, ``retain`` (``"true"`` for a retained message sent because of the
    subscription) and ``redelivered`` (the DUP flag) come from the packet and win over user
    properties of the same name. ``event_id`` (set by this endpoint's publishes) becomes the id,
    so a redelivered event keeps it; other messages get a new id.
    """
    metadata: dict[str, str] = {}
    event_id: str | None = None
    client_id: str | None = None
    properties = message.properties
    for name, value in getattr(properties, "UserProperty", None) or ():
        if name == EVENT_ID_PROPERTY:
            event_id = value
            continue
        if name == CLIENT_ID_PROPERTY:
            client_id = value
        metadata[name] = value
    content_type = getattr(properties, "ContentType", None)
    if content_type:
        metadata["content-type"] = content_type
    try:
        metadata["topic"] = message.topic
    except UnicodeDecodeError:  # the broker should have refused it; keep the event anyway
        metadata["topic"] = ""
    metadata["qos"] = str(message.qos)
    metadata["retain"] = "true" if message.retain else "false"
    if message.dup:
        metadata["redelivered"] = "true"
    return Event(
        bytes(message.payload),
        id=event_id or new_event_id(),
        metadata=metadata,
        client_id=client_id,
    )


def publish_properties(message: Outbound) -> Properties:
    """MQTT 5 properties for an upstream event: its id, the client, metadata as user properties."""
    event = message.event
    properties = new_properties(PacketTypes.PUBLISH)
    user = [(EVENT_ID_PROPERTY, event.id), (CLIENT_ID_PROPERTY, message.client_id)]
    for name, value in event.metadata.items():
        if name == "content-type":
            properties.ContentType = value
        elif name not in _CONSUMED_KEYS:
            user.append((name, value))
    properties.UserProperty = user
    return properties


# -- one session's consumer --------------------------------------------------------------------


@dataclass(eq=False)
class _Held:
    """A received message the consumer has handed out (or will again, after a nack)."""

    mid: int
    qos: int
    event: Event
    key: bytes = b""  # its identity in the endpoint's Written memory (at_most_once only)


class _Consumer:
    """One session's subscription on its own MQTT connection (see the module docstring).

    All socket reading happens in the session's consumer task (entering, iterating, leaving);
    settling may come from another task and only writes.
    """

    def __init__(
        self,
        endpoint: MQTT5Endpoint,
        subscription: Subscription,
        mqtt_client_id: str,
        persistent: bool,
    ) -> None:
        config = endpoint.config
        assert config.topic_in is not None
        self.endpoint = endpoint
        self.topic = subscription.fill(config.topic_in)
        self.mqtt_client_id = mqtt_client_id
        self.persistent = persistent
        self.credit = max(1, min(subscription.credit, 65535))
        plan = subscription.route.ack_plan
        # QoS 2 is answered with PUBREC on receipt: the message itself could never come back.
        self.qos = min(config.qos, 1) if plan.redelivers_unconfirmed else config.qos
        # Acks of at_most_once sessions are remembered there; redeliveries of them dropped.
        self.written = endpoint._written if plan.drops_acked_redeliveries else None
        # at_most_once: each PUBACK is written at once, before the event is.
        self.ack_at_once = plan.ack_awaits_broker
        self.undeliverable = subscription.undeliverable
        self.client = endpoint._new_client(mqtt_client_id, manual_ack=True)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_acknowledged
        self.client.on_unsubscribe = self._on_acknowledged
        self.wire = Wire(self.client)
        self.arrived: deque[mqtt.MQTTMessage] = deque()  # read, not yet handed out
        self.returned: deque[_Held] = deque()  # nacked, to be handed out again first
        self.requested = False  # SUBSCRIBE sent
        self.subscribed = False  # SUBACK granted it
        self.open = True
        self.failure: BrokerUnavailable | Replaced | None = None
        self.closed = trio.Event()
        self._acknowledged: dict[int, list[ReasonCode]] = {}  # SUBACK/UNSUBACK by packet id
        self._waiting: trio.CancelScope | None = None
        # Acks not yet written, as (packet id, qos); see _delivery.
        self._acks: list[tuple[int, int]] = []
        self._reader: trio.lowlevel.Task | None = None  # the task that calls next_delivery
        self.unsettled = 0  # handed out, neither acked nor nacked yet

    def fail(self, error: BrokerUnavailable | Replaced) -> None:
        """End the consumer with ``error``: raised by its next (or current) wait."""
        if self.failure is None:
            self.failure = error
        self._wake()

    async def start(self) -> None:
        """Connect, subscribe, and return once the SUBACK granted the subscription."""
        properties = new_properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = self.credit
        if self.persistent:
            properties.SessionExpiryInterval = self.endpoint.session_expiry

        async def connect() -> None:
            # No keepalive asked for: this connection may sit unread for as long as its client
            # is slow (that is the backpressure), and the endpoint's own connection watches the
            # broker. A broker that imposes a Server Keep Alive gets its pings while we wait.
            await self.endpoint._connect(
                self.wire, keepalive=0, clean_start=not self.persistent, properties=properties
            )

        await self._guarded(connect)
        _, mid = self.client.subscribe(self.topic, options=SubscribeOptions(qos=self.qos))
        if mid is None:
            raise self._lost("connection lost before SUBSCRIBE")
        self.requested = True  # from here on, leaving unsubscribes (the SUBACK may be on its way)
        await self._guarded(self.wire.flush)
        while mid not in self._acknowledged:
            await self._guarded(self._receive)
        reason = self._acknowledged.pop(mid)[0]
        if reason.is_failure:
            raise BrokerUnavailable(
                f"endpoint {self.endpoint.name}: subscription to {self.topic!r} refused: {reason}"
            )
        self.subscribed = True
        self.endpoint._subscriptions[self.topic] += 1

    async def next_delivery(self) -> Delivery:
        self._reader = trio.lowlevel.current_task()
        while True:
            if self.failure is not None:
                raise self.failure
            if self.returned:
                held = self.returned.popleft()
            elif self.arrived:
                message = self.arrived.popleft()
                try:
                    held = self._held(message)
                except Exception as error:  # one message, never the session (module doc)
                    await self._drop(message, error)
                    continue
                written = self.written
                if held.key and message.dup and written is not None and held.key in written:
                    # Written once already; its PUBACK was lost with a connection.
                    self.endpoint.stats["dropped_redelivered"] += 1
                    log.info(
                        "mqtt5 redelivered a message already written (at_most_once): dropped",
                        extra={
                            "endpoint": self.endpoint.name,
                            "topic": held.event.metadata["topic"],
                        },
                    )
                    self.client.ack(held.mid, held.qos)
                    await self._guarded(self.wire.flush)
                    continue
            else:
                # About to wait for the broker: first the acks the session gave meanwhile.
                self._send_acks()
                await self._guarded(self._receive)
                continue
            self.endpoint.stats["delivered"] += 1
            self.unsettled += 1
            return self._delivery(held)

    def _held(self, message: mqtt.MQTTMessage) -> _Held:
        held = _Held(message.mid, message.qos, consumed_event(message))
        if self.written is not None and held.qos:
            held.key = Written.key(
                self.mqtt_client_id,
                message.topic,
                repr(getattr(message.properties, "UserProperty", None)),
                held.event.payload,
            )
        return held

    async def _drop(self, message: mqtt.MQTTMessage, error: Exception) -> None:
        """A message that cannot become an event: acked (MQTT has no reject), logged, counted."""
        self.endpoint.stats["undeliverable"] += 1
        log.warning(
            "mqtt5 message dropped: it cannot be converted into an event",
            extra={
                "endpoint": self.endpoint.name,
                "reason": CONVERSION_ERROR,
                "error": str(error) or type(error).__name__,
            },
        )
        self.undeliverable(CONVERSION_ERROR)
        if message.qos and self.wire.alive:
            self._acks.append((message.mid, message.qos))
            self._send_acks()
            await self._guarded(self.wire.flush)

    async def close(self) -> None:
        """Leave: UNSUBSCRIBE and DISCONNECT (keeping the MQTT session), then close the socket.

        What was received and not acked stays unacknowledged in the client's MQTT session, which
        the broker keeps for ``session_expiry`` seconds and resends from on the client's next
        connection. Never raises; bounded by :data:`GOODBYE_TIMEOUT`.
        """
        self.open = False
        try:
            # A consumer failed because the broker is gone says no goodbye: it would only wait.
            if self.failure is None and self.wire.alive:
                with trio.move_on_after(GOODBYE_TIMEOUT, shield=True):
                    self._send_acks()
                    if self.requested:
                        _, mid = self.client.unsubscribe(self.topic)
                        await self.wire.flush()
                        while mid is not None and mid not in self._acknowledged:
                            await self._receive()
                            self.arrived.clear()  # never handed out: the broker still has them
                        self._forget_subscription()
                    self.client.disconnect()
                    await self.wire.flush()
        except ConnectionLost:
            pass
        finally:
            self._forget_subscription()
            self.wire.close()
            self.arrived.clear()
            self.returned.clear()
            self.endpoint._release(self)
            self.closed.set()

    # -- internals -----------------------------------------------------------------------------

    async def _receive(self) -> None:
        await self.wire.receive_some(budget=self.credit - len(self.arrived))

    def _send_acks(self) -> None:
        """Hand the acks given since the last time to the socket, as one write."""
        if self._acks and self.wire.alive:
            acks, self._acks = self._acks, []
            self.wire.send_acks(acks)

    async def _guarded(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run one wait on the connection, woken early by :meth:`fail` or a nack."""
        if self.failure is not None:
            raise self.failure
        with trio.CancelScope() as self._waiting:
            try:
                await step()
            except ConnectionLost as lost:
                # Taken over by the broker: a newer session of the same client, on another
                # instance (design.md, One client id, twice).
                self.fail(Replaced() if self.wire.taken_over else self._lost(str(lost)))
            finally:
                self._waiting = None
        if self.failure is not None:
            raise self.failure

    def _lost(self, reason: str) -> BrokerUnavailable:
        return BrokerUnavailable(f"endpoint {self.endpoint.name}: {reason}")

    def _wake(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()

    def _forget_subscription(self) -> None:
        if self.subscribed:
            self.subscribed = False
            self.endpoint._subscriptions[self.topic] -= 1
            if not self.endpoint._subscriptions[self.topic]:
                del self.endpoint._subscriptions[self.topic]

    def _delivery(self, held: _Held) -> Delivery:
        async def settle(accepted: bool) -> None:
            self.endpoint.stats["acked" if accepted else "nacked"] += 1
            self.unsettled -= 1
            if not accepted:
                # MQTT has no nack: keep it unacknowledged and hand it out again (the broker
                # still counts it in flight, so the credit stays right). If the consumer is gone,
                # the client's MQTT session has it for the client's next connection.
                if self.open and self.failure is None:
                    self.returned.append(held)
                    self._wake()
                return
            if self.written is not None and held.key:
                self.written.add(held.key)
            if held.qos and self.wire.alive:
                self._acks.append((held.mid, held.qos))
                if trio.lowlevel.current_task() is self._reader:
                    # The session's consumer task acks (auto, none) between two of its
                    # next_delivery calls, and the next one that has to wait for the broker
                    # writes every ack of the burst first, in one packet: one write per burst
                    # instead of one per event. (Leaving writes them too, before UNSUBSCRIBE.)
                    return
                if not self.ack_at_once:
                    # Confirmed by the client (at_least_once), from its relay task.
                    if not self.unsettled:
                        # The last one out: no other confirmation can join this burst before
                        # the broker sends more, so its acks go now, from here (paho writes
                        # inline), rather than a wake-up later from the consumer task. At
                        # channel_size 1 that is every ack: one task switch fewer per event.
                        self._send_acks()
                        return
                    # More are out: the consumer task, woken if it waits for the broker,
                    # writes the acks of all the confirmations that came meanwhile in one
                    # packet. Late only means a redelivery if the connection breaks first,
                    # which that guarantee allows.
                    self._wake()
                    return
                # at_most_once, right before the write: on the wire before the event is.
                self._send_acks()
                # If this fails it was not acked after all: the broker resends it to the client's
                # next connection.
                with suppress(ConnectionLost):
                    await self.wire.flush()

        return Delivery(held.event, settle)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.arrived.append(message)

    def _on_acknowledged(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._acknowledged[mid] = reasons


# -- the endpoint's own connection: publishing, and watching the broker ------------------------


@dataclass(eq=False)
class _Pending:
    """A publish waiting for its PUBACK/PUBCOMP; ``reason`` None means the connection ended."""

    done: trio.Event = field(default_factory=trio.Event)
    reason: ReasonCode | None = None


class _Link:
    """The endpoint's connection and its window of unconfirmed publishes."""

    def __init__(self, wire: Wire, window: int) -> None:
        self.wire = wire
        self.slots = trio.Semaphore(window)
        self.pending: dict[int, _Pending] = {}
        wire.client.on_publish = self._on_publish

    def end(self) -> None:
        """The connection is gone: every publish still waiting (for a PUBACK or a slot) fails."""
        for pending in self.pending.values():
            pending.done.set()
        self.pending.clear()
        for _ in range(self.slots.statistics().tasks_waiting):
            self.slots.release()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        pending = self.pending.pop(mid, None)
        if pending is not None:
            pending.reason = reason
            pending.done.set()
            self.slots.release()


class MQTT5Endpoint:
    ids_are_positions = False

    def __init__(
        self, name: str, config: MQTT5Config, *, clients: ClientLedger | None = None
    ) -> None:
        self.name = name
        self.config = config
        # client_state_ttl and who left when (mediation/client_state.py); made on its own
        # (tests): no expiry.
        self.clients = clients if clients is not None else ClientLedger(ttl=0)
        self.state = AsyncValue(EndpointState.CONNECTING)
        # published, delivered, acked, nacked, undeliverable, ...
        self.stats: Counter[str] = Counter()
        self._written = Written()
        self._host, self._port = broker_address(config.broker)
        self._link: _Link | None = None
        self._consumers: set[_Consumer] = set()
        self._client_ids: dict[str, _Consumer] = {}
        self._subscriptions: Counter[str] = Counter()  # granted subscriptions per topic filter
        self._connect_limiter = trio.CapacityLimiter(CONNECT_THREADS)
        # The TLS context of every connection (mqtts://), made anew at each connect of the
        # endpoint's own connection, so renewed certificate files are read then.
        self._tls: ssl.SSLContext | None = None
        # Why the endpoint is not up (the last failure), for /readyz; None while up.
        self.down_reason: str | None = None

    # -- the connection ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the endpoint's connection: connect, watch, reconnect with jittered backoff."""
        task_status.started()
        backoff = Backoff(self.config.retry_interval, RETRY_MAX)
        try:
            while True:
                self.state.value = EndpointState.CONNECTING
                reason = "connection closed"
                try:
                    await self._serve_connection()
                except ConnectionLost as lost:
                    reason = str(lost)
                if self.state.value is EndpointState.UP:
                    backoff.reset()
                delay = backoff.next()
                self.down_reason = reason
                self.state.value = EndpointState.DOWN
                log.warning(
                    "mqtt5 endpoint down",
                    extra={"endpoint": self.name, "error": reason, "retry_in": round(delay, 2)},
                )
                self._fail_consumers(f"connection to the broker lost: {reason}")
                await trio.sleep(delay)
        finally:
            self.state.value = EndpointState.DOWN
            self._fail_consumers("endpoint stopped")

    async def _serve_connection(self) -> None:
        try:
            self._tls = client_context(self.config, handshake_on_wrap=True)
        except OSError as error:  # a file gone or changed since the config was validated
            raise ConnectionLost(describe(error)) from None
        client = self._new_client(f"mediation-{self.name}-{uuid.uuid4().hex[:12]}")
        client.max_inflight_messages_set(self.config.publish_window)
        wire = Wire(client)
        try:
            await self._connect(wire, keepalive=self.config.keepalive, clean_start=True)
            window = min(self.config.publish_window, wire.server_receive_maximum)
            link = _Link(wire, window)
            self._link = link
            self.down_reason = None
            self.state.value = EndpointState.UP
            log.info("mqtt5 endpoint up", extra={"endpoint": self.name})
            try:
                while True:
                    await wire.receive_some(budget=window)
            finally:
                self._link = None
                link.end()
        finally:
            with trio.move_on_after(GOODBYE_TIMEOUT, shield=True):
                if wire.alive:
                    client.disconnect()
                    with suppress(ConnectionLost):
                        await wire.flush()
            wire.close()

    async def _connect(
        self,
        wire: Wire,
        *,
        keepalive: int,
        clean_start: bool,
        properties: Properties | None = None,
    ) -> None:
        """Connect ``wire`` within ``connect_timeout`` (the one place it applies)."""
        with trio.move_on_after(self.config.connect_timeout):
            await wire.connect(
                self._host,
                self._port,
                keepalive=keepalive,
                clean_start=clean_start,
                properties=properties,
                limiter=self._connect_limiter,
            )
            return
        wire.close()
        raise ConnectionLost(
            f"no CONNACK from {self._host}:{self._port} within {self.config.connect_timeout:g} s"
        )

    def _new_client(self, client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
        client = EngineClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.config.connect_timeout
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        return client

    def _fail_consumers(self, reason: str) -> None:
        for consumer in tuple(self._consumers):
            consumer.fail(BrokerUnavailable(f"endpoint {self.name}: {reason}"))

    # -- consuming -----------------------------------------------------------------------------

    @asynccontextmanager
    async def consume(self, subscription: Subscription) -> AsyncIterator[AsyncIterator[Delivery]]:
        self._check_up()
        if self.config.topic_in is None:
            raise BrokerUnavailable(f"endpoint {self.name} has no topic_in to consume")
        mqtt_client_id, persistent = await self._claim_client_id(subscription)
        consumer = _Consumer(self, subscription, mqtt_client_id, persistent)
        self._client_ids[mqtt_client_id] = consumer
        self._consumers.add(consumer)
        try:
            await consumer.start()
            yield Deliveries(consumer.next_delivery)
        finally:
            await consumer.close()

    async def _claim_client_id(self, subscription: Subscription) -> tuple[str, bool]:
        """The MQTT client id for a new consumer, and whether its MQTT session persists.

        A client's consumers use one stable id, so a returning client resumes its MQTT session;
        one that returns while its last consumer is still saying goodbye waits for that. A second
        concurrent session of the same client (two tabs) gets a throwaway id and session: one
        MQTT session cannot have two connections (the broker would drop the first).
        """
        wanted = subscription.fill(self.config.client_id.replace("{endpoint}", self.name))
        while (holder := self._client_ids.get(wanted)) is not None and not holder.open:
            await holder.closed.wait()
        if wanted in self._client_ids:
            return f"{wanted}-{subscription.session_id}", False
        return wanted, self.session_expiry > 0

    @property
    def session_expiry(self) -> int:
        """The Session Expiry Interval of consumer connections: ``session_expiry``, or
        ``client_state_ttl`` where that is shorter (and not 0), rounded up to whole seconds."""
        ttl = self.clients.ttl
        if ttl <= 0:
            return self.config.session_expiry
        return min(self.config.session_expiry, math.ceil(ttl))

    def _release(self, consumer: _Consumer) -> None:
        self._consumers.discard(consumer)
        if self._client_ids.get(consumer.mqtt_client_id) is consumer:
            del self._client_ids[consumer.mqtt_client_id]

    def subscription_count(self, topic_filter: str) -> int:
        """Subscriptions the broker granted this endpoint's consumers for ``topic_filter`` (SUBACK
        received, no UNSUBACK or disconnect since)."""
        return self._subscriptions[topic_filter]

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, message: Outbound, *, confirm: bool) -> None:
        """Publish at the endpoint's QoS; with ``confirm``, return once PUBACK/PUBCOMP said yes."""
        if self.config.topic_out is None:
            raise BrokerUnavailable(f"endpoint {self.name} has no topic_out to publish to")
        topic = message.fill(self.config.topic_out)
        link = self._require_link()
        await link.slots.acquire()
        if link is not self._link or not link.wire.alive:
            link.slots.release()
            raise BrokerUnavailable(f"endpoint {self.name}: connection lost")
        try:
            info = link.wire.client.publish(
                topic,
                message.event.payload,
                qos=self.config.qos,
                properties=publish_properties(message),
            )
        except ValueError as error:
            link.slots.release()
            raise BrokerUnavailable(f"endpoint {self.name}: cannot publish: {error}") from None
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            link.slots.release()
            raise BrokerUnavailable(
                f"endpoint {self.name}: not published: {mqtt.error_string(info.rc)}"
            )
        pending: _Pending | None = None
        if info.is_published():  # QoS 0, written at once
            link.slots.release()
        else:
            pending = link.pending[info.mid] = _Pending()
        try:
            await link.wire.flush()
        except ConnectionLost as lost:
            raise BrokerUnavailable(f"endpoint {self.name}: {lost}") from None
        self.stats["published"] += 1
        if not confirm or pending is None:
            return
        await pending.done.wait()
        if pending.reason is None:
            raise BrokerUnavailable(f"endpoint {self.name}: connection lost before the PUBACK")
        if pending.reason.is_failure:
            raise BrokerUnavailable(f"endpoint {self.name}: the broker refused: {pending.reason}")

    def _require_link(self) -> _Link:
        link = self._link
        if link is None or self.state.value is not EndpointState.UP:
            raise BrokerUnavailable(f"endpoint {self.name} is {self.state.value}")
        return link

    def _check_up(self) -> None:
        self._require_link()
