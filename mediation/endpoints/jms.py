"""JMS brokers over AMQP 1.0 (ActiveMQ, Artemis, Qpid, RabbitMQ's plugin), with python-qpid-proton.

One AMQP connection per endpoint. Each consumer (one per client session) is a receiver link on an
AMQP session of its own, with link credit = ``subscription.credit``; accept = ack, ``released`` =
nack (the broker redelivers), ``rejected`` for a message that can never be delivered (undecodable,
larger than ``max_message_bytes``, a body that is neither data nor text: a JMS MapMessage or
StreamMessage, or any other error while converting it). Such a message is rejected as it arrives,
whatever the route's guarantee (the broker drops or dead-letters it rather than redelivering it),
logged and counted (``subscription.undeliverable``); the connection every session shares goes on.
Properties of any AMQP type become text (binary: UTF-8, else hex). ``modified`` is never sent:
RabbitMQ's plugin crashes the session on it. Leaving a
consumer ends its AMQP session (RabbitMQ never answers the detach of a single link), and the broker
puts back whatever the session left unsettled.

Publishing uses one sender link per target address (each on its own AMQP session, at most
:data:`MAX_SENDERS`, least recently used closed first). With ``confirm`` the message is sent
unsettled and ``publish`` returns on the broker's ``accepted``; ``rejected``, ``released``,
``modified`` or a lost connection raise :class:`BrokerUnavailable`. Without ``confirm`` it is sent
pre-settled (at most once) and ``publish`` returns once proton has it in its output buffer, which
is bounded (:data:`OUTPUT_HIGH_WATER`): a publisher waits while the socket drains.

Mapping: payload = the message's data section (or its text ``amqp-value``, UTF-8 encoded);
application properties <-> metadata (values as strings); ``message-id``, ``correlation-id``,
``subject`` and ``content-type`` are kept in metadata under those names. A published message's id
is the event id (a ``message-id`` in metadata is ignored); a consumed event's id is the message id,
or a new UUID when the message has none. ``Last-Event-ID`` resumes nothing: a queue redelivers what
a client did not confirm, to its next consumer.

Design: proton's sans-I/O engine driven by Trio, no thread. proton's ``Connection`` /
``Transport`` / ``Collector`` take bytes in and give bytes and events out; the endpoint's ``run``
task owns the socket (reader, writer and idle-timeout ticker tasks) and dispatches the events.
Consumers and publishers call the engine synchronously between checkpoints, all on the Trio thread,
which is all proton's single-threaded rule asks. The alternative, proton's ``Container`` reactor
in a dedicated thread with ``EventInjector`` requests and ``TrioToken.run_sync_soon`` replies, was
built as a prototype and measured slower on every leg but one (docs/performance.md, "The AMQP 1.0
endpoint"), and it crashed once in six runs (``free(): invalid next size``): every proton object
that crosses to Trio (a delivery to settle) must be released on the proton thread, a rule that is
easy to break. Here there is no thread to join, no cross-thread hand-off, and the hand-off to a
consumer is a plain bounded buffer that the I/O code appends to without ever waiting.

TLS and SASL: ``amqps://`` adds proton's TLS layer (``SSL`` with an ``SSLDomain`` from the
endpoint's TLS keys) to the same transport, under its SASL layer: ``sasl_mechanisms`` (default
PLAIN with a user in the URL, else ANONYMOUS; EXTERNAL logs in as the client certificate). A
refused certificate or login ends the connect like any failure: ``down``, with the reason in
``down_reason`` (``/readyz``), and another attempt after the backoff.

Credit with RabbitMQ before 4.0: its plugin adds up the credit of flow frames that cross its
transfers (rabbitmq-server#2597), so the usual "flow(1) per settlement" let it send thousands of
messages over a credit of 4 here. Credit is therefore granted only when the link's credit is used
up (nothing can be in flight then), topped up to ``credit`` minus the deliveries still unsettled.
The per-consumer buffer is bounded by ``credit``; a delivery beyond it (a broker breaking the
credit it was given) is released at once, counted in ``stats["over_credit"]`` and logged, so the
I/O code never waits for a consumer and memory never grows.

RabbitMQ 3.10 addresses: ``/amq/queue/NAME`` an existing queue; ``/queue/NAME`` declares it
(non-durable) if missing; ``/exchange/NAME`` and ``/exchange/NAME/KEY`` as targets; a bare name
is a queue. Sources ``/topic/...`` and ``/exchange/...`` create a queue per link that RabbitMQ
3.10 never deletes: use queues (``examples/jms.toml``). Deleting a queue that a link consumes
crashes RabbitMQ 3.10's AMQP session on the consumer cancel and drops the whole connection: every
session of the endpoint ends (``BrokerUnavailable``) and the endpoint reconnects.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import cast
from urllib.parse import unquote, urlsplit

import trio
from proton import (
    SSL,
    Collector,
    Condition,
    Connection,
    Data,
    DataException,
    Link,
    Message,
    MessageException,
    ProtonException,
    Receiver,
    Sender,
    Session,
    SSLDomain,
    Transport,
)
from proton import Delivery as ProtonDelivery
from proton import Event as ProtonEvent
from trio_util import AsyncValue

from ..config import JMSConfig
from ..errors import BrokerUnavailable, ConfigError
from ..events import Delivery, Event, Settle, new_event_id
from ._backoff import Backoff
from ._proton_adapter import content_type, dispatch_events
from .base import (
    CONVERSION_ERROR,
    OVERSIZE,
    UNDECODABLE,
    UNSUPPORTED,
    Deliveries,
    EndpointState,
    Outbound,
    Subscription,
)

log = logging.getLogger(__name__)

# Sender links kept open, one per target address ({client_id} addresses make many).
MAX_SENDERS = 64
# Bytes proton may hold for the socket before a publisher waits for it to drain.
OUTPUT_HIGH_WATER = 1024 * 1024

# Metadata names that live in the AMQP properties section rather than in application properties.
MESSAGE_ID = "message-id"
CORRELATION_ID = "correlation-id"
SUBJECT = "subject"
CONTENT_TYPE = "content-type"


# The proton events _Wire._dispatch acts on.
_HANDLED = frozenset(
    kind.number
    for kind in (
        ProtonEvent.DELIVERY,
        ProtonEvent.LINK_FLOW,
        ProtonEvent.LINK_REMOTE_OPEN,
        ProtonEvent.LINK_REMOTE_CLOSE,
        ProtonEvent.LINK_REMOTE_DETACH,
        ProtonEvent.SESSION_REMOTE_CLOSE,
        ProtonEvent.CONNECTION_REMOTE_OPEN,
        ProtonEvent.CONNECTION_REMOTE_CLOSE,
        ProtonEvent.TRANSPORT_ERROR,
        ProtonEvent.TRANSPORT_CLOSED,
    )
)


class Undeliverable(Exception):
    """A consumed message that no client could ever be given (it is rejected, not redelivered).

    ``reason`` is the ``subscription.undeliverable`` label.
    """

    def __init__(self, detail: str, reason: str = UNDECODABLE) -> None:
        super().__init__(detail)
        self.reason = reason


# -- messages <-> events (no I/O) --------------------------------------------------------------


def message_from_event(event: Event, *, durable: bool) -> Message:
    """The AMQP message for an event: its payload as a data section, metadata as properties."""
    metadata = dict(event.metadata)
    message = Message(body=event.payload, id=event.id)
    message.inferred = True  # bytes -> a data section (a JMS BytesMessage), not an amqp-value
    message.durable = durable
    message.creation_time = event.timestamp
    if (content_type := metadata.pop(CONTENT_TYPE, None)) is not None:
        message.content_type = content_type
    if (correlation_id := metadata.pop(CORRELATION_ID, None)) is not None:
        message.correlation_id = correlation_id
    if (subject := metadata.pop(SUBJECT, None)) is not None:
        message.subject = subject
    metadata.pop(MESSAGE_ID, None)  # the event id is the message id
    if metadata:
        message.properties = metadata  # type: ignore[assignment]  # proton declares it None
    return message


def event_from_message(encoded: bytes, *, max_bytes: int) -> Event:
    """Decode one transferred message; :class:`Undeliverable` if no client could be given it."""
    if len(encoded) > max_bytes:
        raise Undeliverable(
            f"{len(encoded)} bytes, more than max_message_bytes ({max_bytes})", OVERSIZE
        )
    message = Message()
    try:
        message.decode(encoded)
    except (MessageException, DataException, UnicodeDecodeError) as error:
        raise Undeliverable(f"undecodable: {error}") from None
    body = message.body
    if body is None:
        # proton stops at the first section it cannot read and reports no body: tell that
        # apart from a message that really has none.
        _check_sections(encoded)
        payload = b""
    elif isinstance(body, (bytes, bytearray, memoryview)):
        payload = bytes(body)
    elif isinstance(body, str):
        payload = body.encode()
    else:
        raise Undeliverable(
            f"the body is an AMQP {type(body).__name__}, not data or text", UNSUPPORTED
        )
    properties = cast("dict[object, object] | None", message.properties)
    metadata = {str(key): _text(value) for key, value in (properties or {}).items()}
    for name, value in (
        (MESSAGE_ID, message.id),
        (CORRELATION_ID, message.correlation_id),
        (SUBJECT, message.subject),
        (CONTENT_TYPE, content_type(message)),
    ):
        if value is not None and value != "":
            metadata[name] = _text(value)
    event_id = metadata.get(MESSAGE_ID) or new_event_id()
    created = message.creation_time
    if created:
        return Event(payload, id=event_id, metadata=metadata, timestamp=float(created))
    return Event(payload, id=event_id, metadata=metadata)


def _check_sections(encoded: bytes) -> None:
    view = memoryview(encoded)
    while view:
        try:
            used = Data().decode(bytes(view))
        except DataException as error:
            raise Undeliverable(f"undecodable: {error}") from None
        if used <= 0:
            raise Undeliverable("undecodable: no progress decoding a section")
        view = view[used:]


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw.hex()
    return str(value)


# -- the connection ----------------------------------------------------------------------------


class _Consumer:
    """One receiver link on an AMQP session of its own, and its bounded buffer of deliveries."""

    def __init__(
        self,
        wire: _Wire,
        address: str,
        name: str,
        credit: int,
        undeliverable: Callable[[str], None],
    ) -> None:
        self.wire = wire
        self.credit = credit
        self.undeliverable = undeliverable
        self.max_message_bytes = wire.endpoint.config.max_message_bytes
        self.session: Session = wire.connection.session()
        self.receiver: Receiver = self.session.receiver(name)
        self.receiver.source.address = address
        self.receiver.snd_settle_mode = Link.SND_UNSETTLED
        self.receiver.rcv_settle_mode = Link.RCV_FIRST
        self.buffer: deque[Delivery] = deque()
        # proton's deliveries, by serial: the engine's Delivery objects hold only the serial, so
        # that every proton object of the link can be let go before it is freed (close()).
        self.held: dict[int, ProtonDelivery] = {}
        self.serial = 0
        self.unsettled = 0  # delivered to us (buffered or handed out) and not settled
        self.attached = trio.Event()
        self.ended = trio.Event()  # the broker answered (or the connection went)
        self.failure: BrokerUnavailable | None = None
        self.closed = False
        self.readable = trio.lowlevel.ParkingLot()

    def open(self) -> None:
        self.session.open()
        self.receiver.open()
        self.top_up()

    def top_up(self) -> None:
        """Grant credit only once the last grant is used up (see the module docstring)."""
        if self.closed:
            return
        receiver = self.receiver
        want = self.credit - self.unsettled
        if receiver.credit <= 0 and want > 0:
            receiver.flow(want - receiver.credit)  # a negative credit is the broker's overdraft

    def on_delivery(self, delivery: ProtonDelivery) -> None:
        if not delivery.readable or delivery.partial:
            return
        receiver = self.receiver
        encoded = receiver.recv(delivery.pending) or b""
        receiver.advance()
        if self.closed:
            return  # ending the session hands it back to the broker
        stats = self.wire.endpoint.stats
        try:
            event = event_from_message(encoded, max_bytes=self.max_message_bytes)
        except Exception as error:  # proton's decoder may raise anything: one message only
            reason = error.reason if isinstance(error, Undeliverable) else CONVERSION_ERROR
            detail = str(error) or type(error).__name__
            delivery.local.condition = Condition("amqp:decode-error", detail[:200])
            delivery.update(ProtonDelivery.REJECTED)
            delivery.settle()
            stats["rejected"] += 1
            log.warning(
                "message rejected: it can never be delivered",
                extra={"endpoint": self.wire.endpoint.name, "reason": reason, "error": detail},
            )
            self.undeliverable(reason)
        else:
            if self.unsettled >= self.credit:
                delivery.update(ProtonDelivery.RELEASED)
                delivery.settle()
                stats["over_credit"] += 1
                log.warning(
                    "broker sent more than the link credit; released the excess",
                    extra={"endpoint": self.wire.endpoint.name, "credit": self.credit},
                )
            else:
                self.unsettled += 1
                self.serial += 1
                self.held[self.serial] = delivery
                self.buffer.append(Delivery(event, self._settler(self.serial)))
                stats["delivered"] += 1
                self.readable.unpark_all()
        self.top_up()

    def _settler(self, serial: int) -> Settle:
        async def settle(accepted: bool) -> None:
            # After the session ended or the connection went, the broker has it back already.
            if self.closed or self.failure is not None:
                return
            delivery = self.held.pop(serial)
            delivery.update(ProtonDelivery.ACCEPTED if accepted else ProtonDelivery.RELEASED)
            delivery.settle()
            self.unsettled -= 1
            self.wire.endpoint.stats["acked" if accepted else "released"] += 1
            self.top_up()
            self.wire.process()

        return settle

    async def next(self) -> Delivery:
        while True:
            if self.failure is not None:
                raise self.failure
            if self.buffer:
                return self.buffer.popleft()
            await self.readable.park()

    def fail(self, failure: BrokerUnavailable) -> None:
        if self.failure is None:
            self.failure = failure
        self.attached.set()
        self.ended.set()
        self.readable.unpark_all()

    async def close(self) -> None:
        """End the AMQP session and wait for the broker's answer (callers bound the wait).

        Whatever the session left unsettled goes back to the broker's queue.
        """
        self.closed = True
        self.buffer.clear()
        wire = self.wire
        try:
            if wire.failure is None:
                self.session.close()
                wire.process()
                await self.ended.wait()
        finally:
            wire.consumers.pop(self.receiver.name, None)
            wire.sessions.pop(self.session, None)
            self.readable.unpark_all()
            # Let proton forget the session, or every closed one stays until the connection goes
            # (~10 KiB each). Its deliveries' wrappers must be gone first and the link's before the
            # session's: proton finalising a link after its session is a double free.
            self.held.clear()
            self.session.free()
            del self.receiver, self.session


class _Sender:
    """One sender link (on an AMQP session of its own) to one target address."""

    def __init__(self, wire: _Wire, address: str) -> None:
        self.wire = wire
        self.address = address
        self.session: Session = wire.connection.session()
        self.link: Sender = self.session.sender(f"{wire.endpoint.name}:out:{uuid.uuid4()}")
        self.link.target.address = address
        self.link.snd_settle_mode = Link.SND_MIXED
        self.attached = trio.Event()
        self.credit = trio.lowlevel.ParkingLot()
        self.failure: BrokerUnavailable | None = None
        self.in_flight = 0  # unsettled deliveries
        self.users = 0  # publishers waiting for it to attach or for credit

    def open(self) -> None:
        self.session.open()
        self.link.open()

    def fail(self, failure: BrokerUnavailable) -> None:
        if self.failure is None:
            self.failure = failure
        self.attached.set()
        self.credit.unpark_all()

    def close(self) -> None:
        self.fail(BrokerUnavailable(f"sender to {self.address} closed"))
        if self.wire.failure is None:
            self.session.close()
        self.wire.senders.pop(self.address, None)
        self.wire.sessions.pop(self.session, None)
        self.session.free()  # as _Consumer.close does; no delivery of the link is held here
        del self.link, self.session


class _Confirm:
    """A publish waiting for the broker's disposition."""

    __slots__ = ("done", "error", "sender")

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender
        self.done = trio.Event()
        self.error: BrokerUnavailable | None = None

    def resolve(self, error: BrokerUnavailable | None) -> None:
        if not self.done.is_set():
            self.error = error
            self.sender.in_flight -= 1
            self.done.set()


class _Wire:
    """One AMQP connection: proton's engine, the socket, and what uses them.

    ``pump`` (the endpoint's ``run`` task) owns the socket. Everything else mutates the engine
    synchronously and calls :meth:`process`, which dispatches proton's events and wakes the
    writer; no handler ever waits.
    """

    def __init__(self, endpoint: JMSEndpoint, stream: trio.SocketStream) -> None:
        self.endpoint = endpoint
        self.stream = stream
        config = endpoint.config
        parts = urlsplit(config.url)
        self.connection = Connection()
        self.connection.container = f"mediation-{endpoint.name}-{uuid.uuid4()}"
        self.connection.hostname = parts.hostname or "localhost"
        self.collector = Collector()
        self.connection.collect(self.collector)
        self.transport = Transport()
        if parts.scheme == "amqps":
            # proton's own TLS, a layer of the same sans-I/O transport: the socket carries
            # what it encrypts, as it carries plain AMQP otherwise.
            tls = SSL(self.transport, tls_domain(config))
            tls.peer_hostname = config.tls_server_name or self.connection.hostname
        sasl = self.transport.sasl()
        sasl.allow_insecure_mechs = True  # PLAIN over plain TCP, as the URL asks
        if parts.username:
            self.connection.user = unquote(parts.username)
            self.connection.password = unquote(parts.password or "")
        default = "PLAIN" if parts.username else "ANONYMOUS"
        sasl.allowed_mechs(" ".join((config.sasl_mechanisms or default).split()))
        self.transport.idle_timeout = config.idle_timeout
        self.transport.bind(self.connection)
        self.opened = trio.Event()
        self.ready = trio.Event()  # opened, or lost before it opened
        self.lost = trio.Event()
        self.failure: BrokerUnavailable | None = None
        self.consumers: dict[str, _Consumer] = {}
        self.senders: OrderedDict[str, _Sender] = OrderedDict()
        # What each AMQP session is for, to route session-level events.
        self.sessions: dict[Session, _Consumer | _Sender] = {}
        self.confirms: dict[ProtonDelivery, _Confirm] = {}
        self._tag = 0
        self._output = trio.lowlevel.ParkingLot()  # the writer waits here for bytes to send
        self._drained = trio.lowlevel.ParkingLot()  # publishers wait here for the buffer to drain
        self._room = trio.lowlevel.ParkingLot()  # the reader waits here when proton takes no input
        self.remote_closed = False

    # -- the socket ----------------------------------------------------------------------------

    async def pump(self) -> None:
        """Move bytes between the socket and proton until the connection is lost."""
        self.connection.open()
        self.process()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read)
            nursery.start_soon(self._write)
            nursery.start_soon(self._tick)
            await self.lost.wait()
            nursery.cancel_scope.cancel(reason="AMQP connection lost")

    async def _read(self) -> None:
        transport = self.transport
        while True:
            capacity = transport.capacity()
            if capacity < 0:
                return  # proton wants no more input: the connection is closing
            if capacity == 0:
                await self._room.park()  # proton's input buffer is full until it writes
                continue
            try:
                data = await self.stream.receive_some(capacity)
            except (OSError, trio.BrokenResourceError) as error:
                self.lose(f"connection lost: {error}")
                return
            try:
                if data:
                    transport.push(data)
                else:
                    transport.close_tail()
            except ProtonException as error:
                self.lose(f"AMQP protocol error: {error}")
                return
            self.process()
            if not data:
                self.lose("the broker closed the connection")
                return

    async def _write(self) -> None:
        transport = self.transport
        while True:
            pending = transport.pending()
            if pending < 0:
                return  # proton has nothing more to say: the connection is closed
            if pending == 0:
                await self._output.park()
                continue
            try:
                # A socket send, unlike send_all, is cancelled only before it sent anything, so
                # proton always knows what went out and a goodbye can follow a cancelled writer.
                sent = await self.stream.socket.send(transport.peek(pending) or b"")
            except OSError as error:
                self.lose(f"connection lost: {error}")
                return
            transport.pop(sent)
            self._room.unpark_all()
            if transport.pending() < OUTPUT_HIGH_WATER:
                self._drained.unpark_all()

    async def _tick(self) -> None:
        """Heartbeats and idle-timeout detection: proton says when it next needs the clock."""
        await self.opened.wait()  # the broker's idle timeout is known from its open
        while True:
            deadline = self.transport.tick(trio.current_time())
            self.process()
            await trio.sleep_until(deadline if deadline > 0 else math.inf)

    # -- proton's events -----------------------------------------------------------------------

    def process(self) -> None:
        """Dispatch proton's pending events and wake the writer. Never waits.

        Most events (output ready, local state changes) need nothing from us: their type is read
        from the C event, and only the others pay for proton's Python wrappers
        (:func:`._proton_adapter.dispatch_events`).
        """
        dispatch_events(self.collector, _HANDLED, self._dispatch)
        self._output.unpark_all()
        self._room.unpark_all()

    def _dispatch(self, event: ProtonEvent) -> None:
        kind = event.type
        delivery, link, session = event.delivery, event.link, event.session
        if kind is ProtonEvent.DELIVERY and delivery is not None and link is not None:
            if link.is_receiver:
                consumer = self.consumers.get(link.name)
                if consumer is not None:
                    consumer.on_delivery(delivery)
            elif delivery.updated:
                self._on_disposition(delivery)
        elif kind is ProtonEvent.LINK_FLOW and session is not None:
            owner = self.sessions.get(session)
            if isinstance(owner, _Sender):
                owner.credit.unpark_all()
        elif kind is ProtonEvent.LINK_REMOTE_OPEN and link is not None:
            self._on_link_open(link)
        elif kind in (ProtonEvent.LINK_REMOTE_CLOSE, ProtonEvent.LINK_REMOTE_DETACH):
            if link is not None and session is not None:
                self._on_ended(session, link.remote_condition, "link")
        elif kind is ProtonEvent.SESSION_REMOTE_CLOSE and session is not None:
            self._on_ended(session, session.remote_condition, "session")
        elif kind is ProtonEvent.CONNECTION_REMOTE_OPEN:
            self.opened.set()
            self.ready.set()
        elif kind is ProtonEvent.CONNECTION_REMOTE_CLOSE:
            self.remote_closed = True
            condition = self.connection.remote_condition
            self.lose(f"the broker closed the connection{_reason(condition)}")
            self.connection.close()
        elif kind in (ProtonEvent.TRANSPORT_ERROR, ProtonEvent.TRANSPORT_CLOSED):
            self.lose(f"connection lost{_reason(self.transport.condition)}")

    def _on_link_open(self, link: Link) -> None:
        owner = self.sessions.get(link.session)
        if owner is None:
            return
        # A broker refusing an attach answers with a null terminus, then detaches.
        terminus = link.remote_source if link.is_receiver else link.remote_target
        if terminus is not None and terminus.address is not None:
            owner.attached.set()

    def _on_ended(self, session: Session, condition: Condition | None, what: str) -> None:
        owner = self.sessions.get(session)
        if owner is None:
            return
        if owner.failure is not None:
            return  # already told (its link ended, then its session)
        if isinstance(owner, _Consumer):
            if owner.closed:
                owner.ended.set()  # the answer to our own goodbye
                return
            address = owner.receiver.source.address
        else:
            address = owner.address
        failure = BrokerUnavailable(
            f"the broker ended the {what} for {address}{_reason(condition)}"
        )
        log.warning(str(failure), extra={"endpoint": self.endpoint.name})
        if isinstance(owner, _Consumer):
            owner.fail(failure)
            owner.session.close()  # complete the handshake; close() frees it
        else:
            # The broker's reason (a refused declaration names the queue and the argument) is
            # what publishers waiting for the attach are told, not just "closed".
            owner.fail(failure)
            self._fail_confirms(owner, failure)  # their wrappers go before close() frees them
            owner.close()

    def _fail_confirms(self, sender: _Sender, failure: BrokerUnavailable) -> None:
        for delivery in [d for d, confirm in self.confirms.items() if confirm.sender is sender]:
            self.confirms.pop(delivery).resolve(failure)

    def _on_disposition(self, delivery: ProtonDelivery) -> None:
        confirm = self.confirms.pop(delivery, None)
        outcome = delivery.remote_state
        delivery.settle()
        if confirm is None:
            return
        if outcome == ProtonDelivery.ACCEPTED:
            confirm.resolve(None)
            return
        names: dict[object, str] = {
            ProtonDelivery.REJECTED: "rejected",
            ProtonDelivery.RELEASED: "released",
            ProtonDelivery.MODIFIED: "modified",
        }
        verb = names.get(outcome, f"answered {outcome} to")
        confirm.resolve(
            BrokerUnavailable(f"the broker {verb} the message{_reason(delivery.remote.condition)}")
        )

    def lose(self, reason: str) -> None:
        """The connection is gone: fail everything that depends on it (idempotent)."""
        if self.failure is not None:
            return
        condition = self.transport.condition  # what proton knows may say more (auth refused)
        if condition is not None and condition.name not in reason:
            reason += _reason(condition)
        failure = self.failure = BrokerUnavailable(f"endpoint {self.endpoint.name}: {reason}")
        for consumer in list(self.consumers.values()):
            consumer.fail(failure)
        for sender in list(self.senders.values()):
            sender.fail(failure)
        for confirm in self.confirms.values():
            confirm.resolve(failure)
        self.confirms.clear()
        self._drained.unpark_all()
        self.ready.set()
        self.lost.set()

    # -- what consumers and publishers ask -------------------------------------------------------

    def consumer(
        self, address: str, name: str, credit: int, undeliverable: Callable[[str], None]
    ) -> _Consumer:
        consumer = _Consumer(self, address, name, credit, undeliverable)
        self.consumers[name] = consumer
        self.sessions[consumer.session] = consumer
        consumer.open()
        self.process()
        return consumer

    async def sender(self, address: str) -> _Sender:
        sender = self.senders.get(address)
        if sender is None:
            while len(self.senders) >= MAX_SENDERS:
                _, oldest = self.senders.popitem(last=False)
                if oldest.in_flight or oldest.users:
                    self.senders[oldest.address] = oldest  # busy: keep it, grow past the cap
                    break
                oldest.close()
                self.endpoint.stats["senders_closed"] += 1
            sender = self.senders[address] = _Sender(self, address)
            self.sessions[sender.session] = sender
            sender.open()
            self.process()
        self.senders.move_to_end(address)
        sender.users += 1
        try:
            with trio.fail_after(self.endpoint.config.open_timeout):
                await sender.attached.wait()
                while sender.failure is None and sender.link.credit <= 0:
                    await sender.credit.park()
                while self.failure is None and self.transport.pending() >= OUTPUT_HIGH_WATER:
                    await self._drained.park()
        finally:
            sender.users -= 1
        if sender.failure is not None:
            raise sender.failure
        return sender

    def send(self, sender: _Sender, message: Message, *, settled: bool) -> _Confirm | None:
        self._tag += 1
        link = sender.link
        delivery = link.delivery(str(self._tag))
        link.send(message.encode())
        link.advance()
        confirm = None
        if settled:
            delivery.settle()
        else:
            confirm = self.confirms[delivery] = _Confirm(sender)
            sender.in_flight += 1
        self.process()
        return confirm

    async def goodbye(self) -> None:
        """Close the AMQP connection once the pump has stopped (callers bound the wait).

        Sends what proton still holds (pre-settled messages included), then reads until the
        broker's close: it has handled everything sent before it by then.
        """
        if self.failure is not None or not self.opened.is_set():
            return
        self.connection.close()
        self.process()
        transport = self.transport
        try:
            while not self.remote_closed:
                while (pending := transport.pending()) > 0:
                    transport.pop(await self.stream.socket.send(transport.peek(pending) or b""))
                data = await self.stream.receive_some(max(transport.capacity(), 1))
                if not data:
                    return
                transport.push(data)
                self.process()
        except (OSError, trio.BrokenResourceError, ProtonException):
            return  # the socket went first: nothing more to say


def tls_domain(config: JMSConfig) -> SSLDomain:
    """proton's client TLS settings from the endpoint's TLS keys (made at each connect, so
    renewed files are read then). ``ca_file`` is the only trusted CA bundle when given, else
    the system's; ``tls_verify = false`` accepts any certificate."""
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    if config.ca_file is not None:
        domain.set_trusted_ca_db(config.ca_file)
    if config.tls_verify:
        domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME, config.ca_file)
    else:
        domain.set_peer_authentication(SSLDomain.ANONYMOUS_PEER)
    if config.cert_file is not None:
        domain.set_credentials(config.cert_file, config.key_file or config.cert_file, None)
    return domain


def _reason(condition: Condition | None) -> str:
    if condition is None:
        return ""
    return f": {condition.name} {condition.description or ''}".rstrip()


# -- the endpoint ------------------------------------------------------------------------------


class JMSEndpoint:
    ids_are_positions = False

    def __init__(self, name: str, config: JMSConfig) -> None:
        parts = urlsplit(config.url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigError(
                f"endpoint {name}: config.url: {parts.scheme or 'no'} scheme; "
                "amqp://[user:password@]host[:port] or amqps://... expected"
            )
        self.name = name
        self.config = config
        self.state = AsyncValue(EndpointState.CONNECTING)
        # delivered, acked, released, rejected, over_credit, published, senders_closed
        self.stats: Counter[str] = Counter()
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        # Why the endpoint is not up (the last connection's failure), for /readyz; None while up.
        self.down_reason: str | None = None
        self._wire: _Wire | None = None
        self._links = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection: connect, serve, reconnect with jittered backoff, until cancelled."""
        task_status.started()
        backoff = Backoff(self.config.retry_interval, self.config.retry_max_interval)
        try:
            while True:
                self.state.value = EndpointState.CONNECTING
                try:
                    await self._connection()
                except* (OSError, BrokerUnavailable, ProtonException) as group:
                    error = group.exceptions[0]
                    self.down_reason = str(error) or type(error).__name__
                    log.warning(
                        "AMQP connection failed",
                        extra={"endpoint": self.name, "error": self.down_reason},
                    )
                else:
                    backoff.reset()  # it was up: start the backoff afresh
                self.state.value = EndpointState.DOWN
                await trio.sleep(backoff.next())
        finally:
            self.state.value = EndpointState.DOWN

    async def _connection(self) -> None:
        """One connection's life: returns when it is lost after it came up; raises if never."""
        config = self.config
        address = f"{self._host}:{self._port}"
        with trio.move_on_after(config.open_timeout) as connecting:
            stream = await trio.open_tcp_stream(self._host, self._port)
        if connecting.cancelled_caught:
            raise BrokerUnavailable(f"no TCP connection to {address} in {config.open_timeout:g} s")
        wire = _Wire(self, stream)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wire.pump)
                with trio.move_on_after(config.open_timeout) as opening:
                    await wire.ready.wait()
                if opening.cancelled_caught:
                    raise BrokerUnavailable(
                        f"{address} did not answer the AMQP open in {config.open_timeout:g} s"
                    )
                if wire.failure is not None:
                    raise wire.failure
                self._wire = wire
                self.down_reason = None
                self.state.value = EndpointState.UP
                log.info("AMQP connection up", extra={"endpoint": self.name})
                await wire.lost.wait()
        finally:
            self._wire = None
            with trio.move_on_after(config.close_timeout, shield=True):
                try:
                    await wire.goodbye()
                finally:
                    wire.lose("the endpoint stopped")
                    await wire.stream.aclose()
        if wire.failure is not None:
            self.down_reason = str(wire.failure)
            log.warning(str(wire.failure), extra={"endpoint": self.name})

    def _live(self) -> _Wire:
        wire = self._wire
        if wire is None or wire.failure is not None:
            raise BrokerUnavailable(f"endpoint {self.name} is {self.state.value}")
        return wire

    @asynccontextmanager
    async def consume(self, subscription: Subscription) -> AsyncIterator[AsyncIterator[Delivery]]:
        if self.config.queue_in is None:
            raise BrokerUnavailable(f"endpoint {self.name} has no queue_in to consume from")
        wire = self._live()
        self._links += 1
        name = f"{self.name}:{subscription.client_id}:{subscription.session_id}:{self._links}"
        address = subscription.fill(self.config.queue_in)
        consumer = wire.consumer(address, name, subscription.credit, subscription.undeliverable)
        try:
            with trio.fail_after(self.config.open_timeout):
                await consumer.attached.wait()
            if consumer.failure is not None:
                raise consumer.failure
            yield Deliveries(consumer.next)
        finally:
            with trio.move_on_after(self.config.close_timeout, shield=True):
                await consumer.close()

    async def publish(self, message: Outbound, *, confirm: bool) -> None:
        if self.config.queue_out is None:
            raise BrokerUnavailable(f"endpoint {self.name} has no queue_out to publish to")
        wire = self._live()
        try:
            sender = await wire.sender(message.fill(self.config.queue_out))
        except trio.TooSlowError:
            raise BrokerUnavailable(f"endpoint {self.name}: the broker did not take it") from None
        encoded = message_from_event(message.event, durable=self.config.durable)
        waiting = wire.send(sender, encoded, settled=not confirm)
        if waiting is not None:
            await waiting.done.wait()
            if waiting.error is not None:
                raise waiting.error
        self.stats["published"] += 1
