"""The RabbitMQ endpoint (AMQP 0-9-1, pika): one connection per endpoint, one channel per session.

Threads: one I/O thread per connection
--------------------------------------
pika is not thread-safe, so each connection belongs to one thread: :meth:`RabbitMQEndpoint.run`
starts it (``trio.to_thread.run_sync`` under a per-endpoint limiter of one, never abandoned), and
it runs a ``SelectConnection`` on pika's own ``IOLoop`` until the connection ends; ``run`` joins it
before it reconnects or returns, so no thread outlives the endpoint. Every pika call happens on
that thread. The two sides talk through two mailboxes that never block either of them:

- Trio -> thread (open or close a session's channel, publish, ack, nack, shut down): a deque and
  one ``IOLoop.add_callback_threadsafe`` per batch (the only thread-safe call pika has).
- Thread -> Trio (deliveries, ConsumeOk, publisher confirms, channel and connection failures):
  the endpoint's :class:`._handoff.ToTrio`, a deque and one ``TrioToken.run_sync_soon`` per batch;
  what runs on Trio never ends the run (a callable that raises is logged and counted).

Writes: pika's transport never writes when asked (it buffers each frame, turns on the socket's
write watch and sends on the ioloop's next pass: two ``epoll_ctl``, an ``epoll_wait`` and a
``send`` per frame). What a Trio -> thread batch emits is collected instead and written at the end
of the batch in one ``send`` (:class:`._pika_adapter.Writer`), behind nothing pika still holds;
what the socket does not take, TLS, and pika's own frames (heartbeats, handshakes) keep pika's
path. The figures for this and for the comparisons below: docs/performance.md, "The RabbitMQ
endpoint".

So a slow session never blocks the thread: a session's channel has ``basic_qos(prefetch_count =
credit)``, and what the thread hands a session is unacked on the broker, so the session's buffer
(``credit`` entries, checked) always has room. The session channel is the buffer; what a client
does not take stays in the broker's queue.

Why not a ``BlockingConnection``: its ``confirm_delivery`` waits for each confirm in turn and its
consumers need ``process_data_events`` polling, so one thread could not serve publishes and many
sessions at once; with ``SelectConnection`` many confirms are in flight and nothing polls.

The thread hops cost most at prefetch 1, where every message waits for the previous ack to travel
Trio -> thread -> broker; with a channel of a few dozen the endpoint comes close to raw pika.
``confirm=True`` publishes are persistent, so the broker's disk sets their pace.

Consuming
---------
Each session gets its own channel: ``basic_qos(prefetch_count = credit)``, manual acks, then
``basic_consume``; :meth:`RabbitMQEndpoint.consume` returns once the broker answered ConsumeOk, so
anything published afterwards reaches the session. ``queue_in`` (durable, declared when
``declare``) is shared by every session: competing consumers. Without it, ``exchange`` gives each
session its own exclusive, auto-delete queue (``session_queue``) bound with ``binding_key``:
broadcast. ``{client_id}`` and ``{entrypoint}`` may appear in every name. ``ack`` is
``basic_ack``; ``nack`` is ``basic_nack(requeue=True)``: the broker delivers it again. The acks
and nacks of one Trio -> thread batch go out together (:class:`AckRanges`): a run of acks with
every lower tag settled is one ``basic_ack(multiple=True)``, so a burst costs one frame and one
socket write, not one each. Settling never waits, and has no checkpoint: a session's consumer
moves everything buffered into its channel in one go, and the writer sends it as one batch.
Leaving the block, by any path, closes the channel (which cancels the consumer and requeues
whatever the session left unacked), waiting for the broker's CloseOk at most ``CLOSE_TIMEOUT``.

``at_most_once`` and a lost ack: the session acks just before writing, but ``basic.ack`` has no
answer, so an ack that was still on its way when the connection broke (or that a broker killed
with SIGKILL had not yet written down) is lost, and the broker delivers the message again, flagged
``redelivered``. The endpoint remembers what it acked on ``at_most_once`` sessions (queue,
``message_id`` and body, see :mod:`._written`) and acks such a redelivery without handing it to
the session (the fault tests saw such duplicates after a broker SIGKILL before this). Memory
only: it does not survive an engine restart.

There is no resuming from an SSE ``Last-Event-ID`` (a queue has no positions): on a shared queue a
client's next session gets what the last one left unacked; a broadcast queue ends with its session.

Events: the id is the ``message_id`` property when there is one, else a new UUID. Metadata: the
headers (as strings), ``content-type``, ``message_id``, ``correlation_id``, ``exchange``,
``routing_key``, ``redelivered`` (``true``/``false``).

Hostile messages: pika leaves a short string that is not UTF-8 (a ``message_id``, a header name)
as bytes and a header value may be any AMQP field type (tables, arrays, bytes, decimals); all of
them become text (UTF-8 with replacement characters, ``str()`` otherwise), and header names or
values with control characters are left out. A message that still cannot be converted (pika
cannot decode its content header at all, such as a timestamp header beyond the year 9999, which
would otherwise end the connection of every session; or an error converting it) is rejected
with ``basic_nack(requeue=False)`` from the I/O thread, whatever the route's guarantee: the
broker drops it or dead-letters it (a queue's ``x-dead-letter-exchange``) rather than
delivering it again; it is logged and counted (``subscription.undeliverable``). The connection
and the other sessions carry on.

Publishing
----------
One channel per connection in confirm mode carries every publish, to ``queue_out`` (default
exchange) or else to ``exchange`` with ``routing_key`` (``{client_id}`` filled). Properties:
``message_id`` = event id, ``content-type`` and ``correlation_id`` from the metadata, the rest of
the metadata as headers. ``confirm=True`` publishes are persistent and mandatory and return once
the broker acked them; a nack, a return (unroutable) or the connection going away raises
:class:`BrokerUnavailable`. ``confirm=False`` returns once the I/O thread has the message. At most
``PUBLISH_WINDOW`` publishes are unconfirmed by the broker at a time (both kinds: the channel's
confirms are the flow control), so a broker that stops answering stops publishers instead of
growing a queue.

A confirmed publish takes its window slot without a checkpoint when there is room (waiting for
the confirm is its checkpoint): under load the scheduler round before the hand-off was most of
the time from ``publish`` to the I/O thread.

Connection
----------
``connecting`` until the first connection is up (connection, publish channel, declarations),
``up``, ``down`` after a loss. A loss fails every consumer of the endpoint and every unconfirmed
publish with :class:`BrokerUnavailable`; the endpoint then reconnects with jittered exponential
backoff (``RETRY_MIN`` doubling up to ``RETRY_MAX``).
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]
import pika.frame  # type: ignore[import-untyped]
import pika.spec  # type: ignore[import-untyped]
import trio
from pika.adapters.select_connection import IOLoop  # type: ignore[import-untyped]
from trio_util import AsyncValue

from ..client_state import ClientLedger
from ..config import RabbitMQConfig
from ..errors import BrokerUnavailable, MediationError, TargetNotFound
from ..events import Delivery, Event, new_event_id
from ._backoff import Backoff
from ._handoff import ToTrio
from ._pika_adapter import LenientConnection, UndecodableProperties, Writer, cut
from ._tls import client_context, describe
from ._written import Written
from .base import (
    CONVERSION_ERROR,
    UNDECODABLE,
    Deliveries,
    EndpointState,
    Outbound,
    Subscription,
)

log = logging.getLogger(__name__)

# How long a channel's or the connection's close handshake may take before it is cut.
CLOSE_TIMEOUT = 5.0
# Reconnecting: from RETRY_MIN, doubling per failed attempt up to RETRY_MAX, each delay drawn
# between half and all of that (jitter, so that many gateways do not reconnect in step).
RETRY_MIN = 0.5
RETRY_MAX = 5.0
# Publishes handed to the I/O thread and not yet confirmed by the broker, per endpoint.
PUBLISH_WINDOW = 1024
# basic.qos prefetch-count is an AMQP short.
MAX_PREFETCH = 65535
# Declared names of templated queue_out values remembered per connection (then forgotten).
MAX_DECLARED = 4096

# Metadata keys that are the broker's or ours to set, never copied into outgoing headers.
_PROPERTY_KEYS = frozenset(
    {"content-type", "correlation_id", "message_id", "exchange", "routing_key", "redelivered"}
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- events <-> AMQP -----------------------------------------------------------------------------


def _text(value: object) -> str:
    """Any AMQP field value as text (pika gives bytes for strings that are not UTF-8)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Unconvertible(Exception):
    """A consumed message that cannot become an event; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def event_from_message(method: Any, properties: Any, body: bytes) -> Event:
    """The event a consumed message is (see the module docstring for ids and metadata).

    Total for whatever pika decoded; :class:`Unconvertible` for a content header it could not.
    """
    if isinstance(properties, UndecodableProperties):
        raise Unconvertible(UNDECODABLE, f"content header not decodable: {properties.error}")
    metadata: dict[str, str] = {}
    for name, value in (properties.headers or {}).items():
        key, text = _text(name), _text(value)
        if not _CONTROL.search(key) and not _CONTROL.search(text):
            metadata[key] = text
    for key, value in (
        ("content-type", properties.content_type),
        ("message_id", properties.message_id),
        ("correlation_id", properties.correlation_id),
    ):
        if value is not None and (text := _text(value)) and not _CONTROL.search(text):
            metadata[key] = text
    metadata["exchange"] = _text(method.exchange)
    metadata["routing_key"] = _text(method.routing_key)
    metadata["redelivered"] = _text(bool(method.redelivered))
    timestamp = properties.timestamp
    return Event(
        payload=bytes(body),
        id=metadata.get("message_id") or new_event_id(),
        metadata=metadata,
        timestamp=float(timestamp) if isinstance(timestamp, int) else time.time(),
    )


def properties_for(event: Event, *, persistent: bool) -> Any:
    """The AMQP properties an event is published with."""
    headers = {k: v for k, v in event.metadata.items() if k not in _PROPERTY_KEYS}
    return pika.BasicProperties(
        content_type=event.metadata.get("content-type"),
        message_id=event.id,
        correlation_id=event.metadata.get("correlation_id"),
        headers=headers or None,
        delivery_mode=pika.DeliveryMode.Persistent if persistent else None,
        timestamp=int(event.timestamp),
    )


def _reason(error: BaseException | None) -> str:
    """A short text for pika's close reasons."""
    if isinstance(error, pika.exceptions.ChannelClosed | pika.exceptions.ConnectionClosed):
        return f"{error.reply_code} {error.reply_text}"
    return repr(error) if error is not None else "closed"


def _open_reason(error: BaseException) -> str:
    """A short text for a failed connect: pika wraps the socket's or TLS handshake's error in
    a workflow error (``exceptions``, the last attempt's last) and a connector error
    (``exception``); the innermost one says what went wrong."""
    while True:
        inner = getattr(error, "exceptions", None) or [getattr(error, "exception", None)]
        if not isinstance(inner[-1], BaseException):
            break
        error = inner[-1]
    if isinstance(error, OSError):
        return describe(error)
    text = _reason(error)
    # A broker that hangs up right after the TLS handshake (a client certificate it refused,
    # or none) is a protocol error to pika, with the TLS error in its text.
    return f"TLS: {text}" if "SSL" in text else text


def _consumer_error(reason: BaseException | None) -> MediationError:
    if isinstance(reason, pika.exceptions.ChannelClosedByBroker) and reason.reply_code == 404:
        return TargetNotFound(f"rabbitmq: {reason.reply_text}")
    return BrokerUnavailable(f"rabbitmq channel closed: {_reason(reason)}")


class AckRanges:
    """One consumer channel's settled delivery tags, to say a batch of acks in fewer frames.

    Pure. Delivery tags on a channel count up from 1. ``basic.ack(tag, multiple=True)`` acks
    every unacked tag up to ``tag``, so it may stand for a batch's acks only where every lower
    tag has been settled already (acked or nacked) or is acked in this batch. ``floor`` is the
    highest tag with every tag up to it settled; ``above`` the settled tags beyond it.
    """

    __slots__ = ("above", "floor")

    def __init__(self) -> None:
        self.floor = 0
        self.above: set[int] = set()

    def plan(self, batch: Iterable[tuple[int, bool | None]]) -> list[tuple[str, int, bool]]:
        """The frames for a batch of ``(tag, accepted)``: ``("ack" | "nack" | "reject", tag,
        multiple)``; ``accepted`` None is a message rejected for good (nack without requeue).

        Nacks and rejects go first (one each): a multiple ack sent before a nack of a lower tag
        would ack that one too. Then one multiple ack for the acks that close the gap above
        ``floor``, and single acks for the rest.
        """
        frames: list[tuple[str, int, bool]] = []
        acks: list[int] = []
        for tag, accepted in sorted(batch, key=lambda settle: settle[0]):
            if tag <= self.floor or tag in self.above:
                continue  # settled already: say nothing twice
            if accepted:
                acks.append(tag)
            else:
                frames.append(("nack" if accepted is False else "reject", tag, False))
            self.above.add(tag)
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)
        covered = [tag for tag in acks if tag <= self.floor]
        if len(covered) > 1:
            frames.append(("ack", covered[-1], True))
        elif covered:
            frames.append(("ack", covered[0], False))
        frames.extend(("ack", tag, False) for tag in acks[len(covered) :])
        return frames


# -- the mailboxes between Trio and the I/O thread -----------------------------------------------


class _ToThread:
    """Trio -> I/O thread: ``post(fn)`` never blocks; ``fn`` runs on the I/O thread, in order.

    One ``add_callback_threadsafe`` per batch. Once the thread is finishing, ``post`` returns
    False and drops ``fn``: whoever waits for an answer is failed when the connection ends.
    """

    def __init__(
        self,
        ioloop: Any,
        guard: Callable[[Callable[[], None]], None],
        after: Callable[[], None] | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        self._ioloop = ioloop
        self._guard = guard
        self._before = before  # run once before each batch (the link's writes, corked)
        self._after = after  # run once after each batch (the link's acks, coalesced; writes)
        self._lock = threading.Lock()
        self._pending: deque[Callable[[], None]] = deque()
        self._scheduled = False
        self._closed = False

    def post(self, fn: Callable[[], None]) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._pending.append(fn)
            if not self._scheduled:
                self._scheduled = True
                # Under the lock, so close() cannot release the IOLoop meanwhile.
                self._ioloop.add_callback_threadsafe(self._run)
        return True

    def _run(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, deque()
            self._scheduled = False
        if self._before is not None:
            self._before()
        for fn in batch:
            self._guard(fn)
        if self._after is not None:
            self._guard(self._after)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pending.clear()


# -- consuming -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ConsumePlan:
    """What one session's channel declares and consumes (names already filled)."""

    queue: str
    prefetch: int
    declare_queue: bool
    exclusive: bool  # a per-session queue: exclusive, auto-delete, not durable
    exchange: str | None  # bind the queue to it with binding_key
    binding_key: str
    declare_exchange: str | None  # the exchange type to declare it with, or None
    # A per-client queue (its name holds {client_id}) is declared with x-expires (ms:
    # client_state_ttl) so that the broker deletes it once unused for that long; None: none.
    expires_ms: int | None = None
    # Declare passively (only check that the queue exists): the fallback for a queue declared
    # before with other arguments, which the broker refuses to declare again (406).
    passive: bool = False


class _Consumer:
    """One session's consumer, Trio side. The I/O thread reaches it only through ``ToTrio``."""

    def __init__(
        self,
        link: _Link,
        credit: int,
        queue: str = "",
        written: Written | None = None,
        undeliverable: Callable[[str], None] | None = None,
    ) -> None:
        self.link = link
        self.credit = credit
        self.queue = queue
        # Told (on the I/O thread) of each message rejected because it could not be converted.
        self.undeliverable = undeliverable
        # Set on at_most_once sessions: acks are remembered there, redeliveries of them dropped.
        self.written = written
        self.dropped = 0
        self._buffer: deque[tuple[int, Event]] = deque()
        self._changed = trio.lowlevel.ParkingLot()
        self.failure: MediationError | None = None
        self.subscribed = False
        # Its channel is gone (closed by us, by the broker, or with the connection).
        self.closed = trio.Event()

    # -- called by the link, on the Trio thread --------------------------------------------------

    def push(self, tag: int, event: Event) -> None:
        if self.failure is not None or self.closed.is_set():
            return  # the broker requeues it with the channel
        # Everything buffered is unacked and the broker hands out at most `credit` unacked
        # messages (prefetch), so this cannot fill up; if it ever did, stop rather than grow.
        if len(self._buffer) >= self.credit:
            log.error("rabbitmq delivered beyond the prefetch count", extra={"credit": self.credit})
            self.fail(BrokerUnavailable("rabbitmq delivered beyond the prefetch count"))
            return
        self._buffer.append((tag, event))
        self._changed.unpark_all()

    def on_subscribed(self) -> None:
        self.subscribed = True
        self._changed.unpark_all()

    def fail(self, error: MediationError) -> None:
        if self.failure is None:
            self.failure = error
        self._changed.unpark_all()

    def on_closed(self) -> None:
        self.closed.set()
        self._changed.unpark_all()

    # -- the session's side ----------------------------------------------------------------------

    async def wait_subscribed(self) -> None:
        while True:
            if self.failure is not None:
                raise self.failure
            if self.subscribed:
                return
            if self.closed.is_set():
                raise BrokerUnavailable("rabbitmq channel closed before the consumer started")
            await self._changed.park()

    async def next_delivery(self) -> Delivery:
        while True:
            if self.failure is not None:
                raise self.failure
            if self._buffer:
                tag, event = self._buffer.popleft()
                if self.written is None:
                    return Delivery(event, partial(self._settle, tag))
                key = Written.key(self.queue, event.metadata.get("message_id", ""), event.payload)
                if event.metadata.get("redelivered") == "true" and key in self.written:
                    # Written once already; its ack was lost with a connection.
                    self.dropped += 1
                    log.info(
                        "rabbitmq redelivered a message already written (at_most_once): dropped",
                        extra={"queue": self.queue, "event_id": event.id},
                    )
                    await self._settle(tag, True)
                    continue
                return Delivery(event, partial(self._settle_written, tag, key))
            if self.closed.is_set():
                raise BrokerUnavailable("rabbitmq channel closed")
            await self._changed.park()

    async def _settle_written(self, tag: int, key: bytes, accepted: bool) -> None:
        if accepted and self.written is not None:
            self.written.add(key)
        await self._settle(tag, accepted)

    async def _settle(self, tag: int, accepted: bool) -> None:
        # Once the channel is gone the broker has requeued what it held: nothing left to say.
        # No checkpoint: this is a hand-off that never waits, and without one a session's
        # consumer moves everything buffered into its channel in one go, so the writer sends it
        # to the client as one batch (with a checkpoint per ack it wrote one event per send).
        if not self.closed.is_set():
            self.link.post(partial(self.link.settle_on_thread, self, tag, accepted))


# -- publishing ----------------------------------------------------------------------------------


class _Publish:
    """One publish on its way: built on Trio, sent by the I/O thread, resolved on Trio."""

    __slots__ = (
        "body",
        "declare_queue",
        "done",
        "error",
        "exchange",
        "finished",
        "mandatory",
        "properties",
        "returned",
        "routing_key",
        "window",
    )

    def __init__(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any,
        confirm: bool,
        declare_queue: str | None,
        window: trio.Semaphore,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.mandatory = confirm
        self.declare_queue = declare_queue
        self.window = window
        self.returned: str | None = None  # I/O thread: why the broker returned it
        self.done = trio.Event() if confirm else None  # Trio side from here on
        self.error: str | None = None
        self.finished = False


class _Publisher:
    """The confirm-mode channel publishes go through (I/O thread only)."""

    def __init__(self, *, first: bool) -> None:
        self.channel: Any = None
        self.first = first  # the connection's first: it declares, and its readiness is "up"
        self.ready = False
        self.tag = 0  # the delivery tag of the last publish on this channel
        self.unconfirmed: dict[int, _Publish] = {}  # by tag, in publish order
        self.declared: set[str] = set()

    def send(self, record: _Publish) -> None:
        channel = self.channel
        if record.declare_queue is not None and record.declare_queue not in self.declared:
            if len(self.declared) >= MAX_DECLARED:
                self.declared.clear()
            # nowait: frames on a channel are handled in order; a failure closes the channel.
            channel.queue_declare(record.declare_queue, durable=True)
            self.declared.add(record.declare_queue)
        channel.basic_publish(
            record.exchange,
            record.routing_key,
            record.body,
            record.properties,
            mandatory=record.mandatory,
        )
        self.tag += 1
        self.unconfirmed[self.tag] = record

    def confirmed(self, tag: int, multiple: bool) -> list[_Publish]:
        if not multiple:
            record = self.unconfirmed.pop(tag, None)
            return [] if record is None else [record]
        done = []
        while self.unconfirmed:
            first = next(iter(self.unconfirmed))
            if first > tag:
                break
            done.append(self.unconfirmed.pop(first))
        return done

    def returned(self, message_id: str | None, reason: str) -> None:
        # A return comes before the confirm of the same message, in publish order: the first
        # unconfirmed mandatory publish with its message id not yet returned is the one.
        for record in self.unconfirmed.values():
            if (
                record.mandatory
                and record.returned is None
                and record.properties.message_id == message_id
            ):
                record.returned = reason
                return


# -- one connection ------------------------------------------------------------------------------


class _Link:
    """One connection attempt: the I/O thread that owns a pika ``SelectConnection``, and the
    Trio-side bookkeeping of what waits on it.

    Methods are marked by the thread they run on. Trio side: ``opened``, ``ended``, ``consumers``,
    ``publishes``; I/O thread side: everything under "I/O thread".
    """

    def __init__(
        self, name: str, config: RabbitMQConfig, to_trio: ToTrio, tls: ssl.SSLContext | None
    ) -> None:
        self.name = name
        self._config = config
        self._tls = tls
        self._to_trio = to_trio
        # Made here so that Trio can post to it at once; it opens a socket pair, which the I/O
        # thread closes when it ends (or thread_exited, if the thread never started).
        self._ioloop = IOLoop()
        self._to_thread = _ToThread(self._ioloop, self._guard, self._end_batch, self._cork)
        # Trio side.
        self.opened = trio.Event()
        self.ended = trio.Event()
        self.settled = trio.Event()  # opened or ended, whichever came first
        self.reason = "connection closed"
        self.consumers: set[_Consumer] = set()
        self.publishes: set[_Publish] = set()
        self._thread_started = False
        # I/O thread side.
        self._connection: Any = None
        self._stopping = False
        self._publisher: _Publisher | None = None
        self._waiting: deque[_Publish] = deque()  # publishes while the publisher (re)opens
        self._channels: dict[_Consumer, Any] = {}
        self._acked: dict[_Consumer, AckRanges] = {}  # per consumer channel
        # This batch's settles; None: rejected without requeue (see _on_message).
        self._to_settle: dict[_Consumer, list[tuple[int, bool | None]]] = {}
        self._writer: Writer | None = None
        self._expiry_refusal_logged = False  # once per connection (see _on_consumer_closed)

    # -- Trio side -------------------------------------------------------------------------------

    def post(self, fn: Callable[[], None]) -> bool:
        return self._to_thread.post(fn)

    def request_stop(self) -> None:
        self.post(self._shutdown)

    def on_opened(self) -> None:
        self.opened.set()
        self.settled.set()

    def on_ended(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()
            self.settled.set()

    def resolve(self, results: Iterable[tuple[_Publish, str | None]]) -> None:
        for record, error in results:
            if record.finished:
                continue
            record.finished = True
            record.error = error
            self.publishes.discard(record)
            record.window.release()
            if record.done is not None:
                record.done.set()
            elif error is not None:
                log.warning(
                    "rabbitmq publish failed (unconfirmed)",
                    extra={"endpoint": self.name, "error": error},
                )

    def fail_all(self) -> None:
        """The connection is gone: fail whatever still waits on it."""
        for consumer in list(self.consumers):
            consumer.fail(BrokerUnavailable(f"rabbitmq endpoint {self.name}: {self.reason}"))
            consumer.on_closed()
        self.resolve([(record, self.reason) for record in list(self.publishes)])

    def thread_exited(self) -> None:
        self.on_ended(self.reason)
        if not self._thread_started:
            self._to_thread.close()
            self._ioloop.close()

    # -- I/O thread ------------------------------------------------------------------------------

    def io_main(self) -> None:
        """The I/O thread: connect, then serve the connection until it ends."""
        self._thread_started = True
        try:
            parameters = pika.URLParameters(self._config.url)
            if self._tls is not None:
                # amqps://: pika's own TLS transport (the Writer's one-send batches apply to
                # the plaintext transport only; TLS frames keep pika's write path).
                name = self._config.tls_server_name or parameters.host
                parameters.ssl_options = pika.SSLOptions(self._tls, name)
            parameters.client_properties = {"connection_name": f"mediation {self.name}"}
            self._connection = LenientConnection(
                parameters,
                on_open_callback=self._guarded(self._on_open),
                on_open_error_callback=self._guarded(self._on_open_error),
                on_close_callback=self._guarded(self._on_closed),
                custom_ioloop=self._ioloop,
            )
            self._writer = Writer(self._connection)
            self._ioloop.start()
        except Exception as error:
            log.exception("rabbitmq I/O thread failed", extra={"endpoint": self.name})
            self._ended(f"I/O thread failed: {error!r}")
        finally:
            self._to_thread.close()
            self._ioloop.close()

    def _guard(self, fn: Callable[[], None]) -> None:
        """Run one of our callbacks; an exception in it ends the connection, never the loop."""
        try:
            fn()
        except Exception as error:
            log.exception("rabbitmq I/O callback failed", extra={"endpoint": self.name})
            self._abort(f"internal error: {error!r}")

    def _guarded(self, fn: Callable[..., None]) -> Callable[..., None]:
        return lambda *args: self._guard(partial(fn, *args))

    def _ended(self, reason: str) -> None:
        self._to_trio.call_soon(partial(self.on_ended, reason))

    def _abort(self, reason: str) -> None:
        self._ended(reason)
        connection = self._connection
        if connection is not None and not (connection.is_closing or connection.is_closed):
            connection.close(200, reason[:200])
        else:
            self._ioloop.stop()

    def _on_open(self, connection: Any) -> None:
        self._open_publisher(first=True)

    def _on_open_error(self, connection: Any, error: BaseException) -> None:
        self._ended(f"cannot connect: {_open_reason(error)}")
        self._ioloop.stop()

    def _on_closed(self, connection: Any, error: BaseException) -> None:
        self._ended(f"connection closed: {_reason(error)}")
        self._ioloop.stop()

    def _cork(self) -> None:
        if self._writer is not None:
            self._writer.cork()

    def _end_batch(self) -> None:
        """After each Trio -> thread batch: its acks, then everything it wrote, at once."""
        try:
            self._say_settled()
        finally:
            if self._writer is not None:
                self._writer.flush()

    def _shutdown(self) -> None:
        self._say_settled()
        self._stopping = True
        connection = self._connection
        if connection is None or connection.is_closed:
            self._ioloop.stop()
            return
        if not connection.is_closing:
            connection.close()  # closes every channel first; _on_closed stops the loop
        self._ioloop.call_later(CLOSE_TIMEOUT, self._guarded(self._cut))

    def _cut(self) -> None:
        """The broker did not answer the close in time: drop the socket."""
        connection = self._connection
        if connection is None or connection.is_closed:
            self._ioloop.stop()
            return
        log.warning("rabbitmq close not answered; connection cut", extra={"endpoint": self.name})
        cut(connection)  # aborts the transport; _on_closed follows
        self._ioloop.call_later(1.0, self._ioloop.stop)

    def _usable(self) -> bool:
        connection = self._connection
        return connection is not None and connection.is_open and not self._stopping

    # publishing

    def _open_publisher(self, *, first: bool) -> None:
        publisher = _Publisher(first=first)
        self._publisher = publisher
        channel = self._connection.channel(
            on_open_callback=self._guarded(lambda _channel: self._on_publisher_open(publisher))
        )
        publisher.channel = channel
        channel.add_on_close_callback(self._guarded(partial(self._on_publisher_closed, publisher)))
        channel.add_on_return_callback(self._guarded(partial(self._on_return, publisher)))

    def _on_publisher_open(self, publisher: _Publisher) -> None:
        channel = publisher.channel
        steps: list[Callable[..., None]] = [
            partial(channel.confirm_delivery, self._guarded(partial(self._on_confirm, publisher)))
        ]
        if publisher.first and self._config.declare:
            steps.extend(self._declarations(channel))
        _pipeline(steps, self._guarded(lambda _frame: self._on_publisher_ready(publisher)))

    def _declarations(self, channel: Any) -> list[Callable[..., None]]:
        """What ``declare`` creates at connect (the names without templates)."""
        config = self._config
        steps: list[Callable[..., None]] = []
        if config.exchange and "{" not in config.exchange:
            steps.append(
                partial(
                    channel.exchange_declare,
                    config.exchange,
                    exchange_type=config.exchange_type,
                    durable=True,
                )
            )
        for queue in {config.queue_in, config.queue_out}:
            if queue and "{" not in queue:
                steps.append(partial(channel.queue_declare, queue, durable=True))
        return steps

    def _on_publisher_ready(self, publisher: _Publisher) -> None:
        if publisher is not self._publisher:
            return
        publisher.ready = True
        waiting, self._waiting = self._waiting, deque()
        for record in waiting:
            self._send(publisher, record)
        if publisher.first:
            self._to_trio.call_soon(self.on_opened)

    def publish_on_thread(self, record: _Publish) -> None:
        publisher = self._publisher
        if publisher is not None and publisher.ready:
            self._send(publisher, record)
        elif self._usable():
            self._waiting.append(record)  # bounded by PUBLISH_WINDOW
        else:
            self._to_trio.call_soon(partial(self.resolve, [(record, "connection closing")]))

    def _send(self, publisher: _Publisher, record: _Publish) -> None:
        try:
            publisher.send(record)
        except pika.exceptions.AMQPError as error:
            self._to_trio.call_soon(partial(self.resolve, [(record, f"publish failed: {error!r}")]))

    def _on_confirm(self, publisher: _Publisher, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        results = [
            (
                record,
                record.returned if acked else "the broker refused it (basic.nack)",
            )
            for record in publisher.confirmed(method.delivery_tag, method.multiple)
        ]
        if results:
            self._to_trio.call_soon(partial(self.resolve, results))

    def _on_return(
        self, publisher: _Publisher, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        publisher.returned(
            properties.message_id, f"unroutable: {method.reply_code} {method.reply_text}"
        )

    def _on_publisher_closed(
        self, publisher: _Publisher, channel: Any, reason: BaseException
    ) -> None:
        failed = [
            (record, f"channel closed: {_reason(reason)}")
            for record in publisher.unconfirmed.values()
        ]
        publisher.unconfirmed.clear()
        if failed:
            self._to_trio.call_soon(partial(self.resolve, failed))
        if publisher is not self._publisher or not self._usable():
            return
        if not publisher.ready:
            # Its setup failed (declarations refused, say): no loop of reopening channels, the
            # whole connection is retried with backoff and /readyz says so meanwhile.
            log.error(
                "rabbitmq publish channel setup failed",
                extra={"endpoint": self.name, "error": _reason(reason)},
            )
            self._abort(f"setup failed: {_reason(reason)}")
            return
        # A publish the broker refused (an exchange that does not exist, say) closes the channel;
        # what was unconfirmed on it failed above, later publishes wait for the new one.
        log.warning(
            "rabbitmq publish channel closed; reopening",
            extra={"endpoint": self.name, "error": _reason(reason)},
        )
        self._open_publisher(first=False)

    # consuming

    def open_consumer(self, consumer: _Consumer, plan: _ConsumePlan) -> None:
        if not self._usable():
            self._to_trio.call_soon(
                partial(consumer.fail, BrokerUnavailable(f"rabbitmq endpoint {self.name} is down"))
            )
            self._to_trio.call_soon(consumer.on_closed)
            return
        channel = self._connection.channel(
            on_open_callback=self._guarded(partial(self._on_consumer_open, consumer, plan))
        )
        channel.add_on_close_callback(
            self._guarded(partial(self._on_consumer_closed, consumer, plan))
        )
        channel.add_on_cancel_callback(
            self._guarded(partial(self._on_consumer_cancelled, consumer))
        )
        self._channels[consumer] = channel
        self._acked[consumer] = AckRanges()

    def _on_consumer_open(self, consumer: _Consumer, plan: _ConsumePlan, channel: Any) -> None:
        steps: list[Callable[..., None]] = [
            partial(channel.basic_qos, prefetch_count=plan.prefetch)
        ]
        if plan.declare_exchange is not None and plan.exchange is not None:
            steps.append(
                partial(
                    channel.exchange_declare,
                    plan.exchange,
                    exchange_type=plan.declare_exchange,
                    durable=True,
                )
            )
        if plan.declare_queue:
            expires = None if plan.expires_ms is None else {"x-expires": plan.expires_ms}
            steps.append(
                partial(
                    channel.queue_declare,
                    plan.queue,
                    passive=plan.passive,
                    durable=not plan.exclusive,
                    exclusive=plan.exclusive,
                    auto_delete=plan.exclusive,
                    arguments=expires,
                )
            )
        if plan.exchange is not None:
            steps.append(
                partial(channel.queue_bind, plan.queue, plan.exchange, routing_key=plan.binding_key)
            )
        steps.append(
            partial(
                channel.basic_consume,
                plan.queue,
                self._guarded(partial(self._on_message, consumer)),
                auto_ack=False,
            )
        )
        subscribed = self._guarded(lambda _frame: self._to_trio.call_soon(consumer.on_subscribed))
        _pipeline(steps, subscribed)

    def _on_message(
        self, consumer: _Consumer, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        try:
            event = event_from_message(method, properties, body)
        except Exception as error:  # one message, never the connection (module docstring)
            self._reject(consumer, method, error)
            return
        self._to_trio.call_soon(partial(consumer.push, method.delivery_tag, event))

    def _reject(self, consumer: _Consumer, method: Any, error: Exception) -> None:
        """A message that cannot become an event: rejected for good at once, logged, counted."""
        reason = error.reason if isinstance(error, Unconvertible) else CONVERSION_ERROR
        log.warning(
            "rabbitmq message rejected: it cannot be converted into an event",
            extra={
                "endpoint": self.name,
                "queue": consumer.queue,
                "reason": reason,
                "error": str(error) or type(error).__name__,
            },
        )
        self.settle_on_thread(consumer, method.delivery_tag, None)
        self._say_settled()  # not at the end of a Trio batch: this came from the broker
        if consumer.undeliverable is not None:
            consumer.undeliverable(reason)

    def _on_consumer_cancelled(self, consumer: _Consumer, frame: Any) -> None:
        """The broker cancelled the consumer (its queue was deleted, say)."""
        self._to_trio.call_soon(
            partial(consumer.fail, BrokerUnavailable("rabbitmq cancelled the consumer"))
        )
        self.close_consumer(consumer)

    def _on_consumer_closed(
        self, consumer: _Consumer, plan: _ConsumePlan, channel: Any, reason: BaseException
    ) -> None:
        self._channels.pop(consumer, None)
        self._acked.pop(consumer, None)
        self._to_settle.pop(consumer, None)
        if _expiry_refused(plan, reason):
            # The queue exists with other arguments (declared before client_state_ttl was
            # set, or with another one): use it as it is, passively; it keeps its own expiry.
            if not self._expiry_refusal_logged:
                self._expiry_refusal_logged = True
                log.warning(
                    "rabbitmq queue exists with another x-expires: used as it is (set an "
                    "expires policy, or delete it, for client_state_ttl to apply)",
                    extra={"endpoint": self.name, "queue": plan.queue, "error": str(reason)},
                )
            self.open_consumer(consumer, replace(plan, expires_ms=None, passive=True))
            return
        if not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            self._to_trio.call_soon(partial(consumer.fail, _consumer_error(reason)))
        self._to_trio.call_soon(consumer.on_closed)

    def close_consumer(self, consumer: _Consumer) -> None:
        # The acks posted before the close go first (the broker would requeue them).
        self._say_settled()
        channel = self._channels.get(consumer)
        if channel is None:
            self._to_trio.call_soon(consumer.on_closed)
        elif not (channel.is_closing or channel.is_closed):
            channel.close()  # cancels the consumer; the broker requeues what is unacked

    def settle_on_thread(self, consumer: _Consumer, tag: int, accepted: bool | None) -> None:
        """Collect an ack, nack or (None) reject; :meth:`_say_settled` sends it at the end of
        this batch (or before, when the batch closes the channel or the connection)."""
        self._to_settle.setdefault(consumer, []).append((tag, accepted))

    def _say_settled(self) -> None:
        """The batch's acks and nacks, per channel, in as few frames as :class:`AckRanges`
        allows: a burst of acks is one ``basic.ack(multiple=True)``, not a frame (and a socket
        write) each."""
        to_settle, self._to_settle = self._to_settle, {}
        for consumer, batch in to_settle.items():
            channel = self._channels.get(consumer)
            if channel is None or not channel.is_open:
                continue  # the broker requeued them with the channel
            for verdict, tag, multiple in self._acked[consumer].plan(batch):
                if verdict == "ack":
                    channel.basic_ack(tag, multiple=multiple)
                else:
                    channel.basic_nack(tag, requeue=verdict == "nack")


def _expiry_refused(plan: _ConsumePlan, reason: BaseException) -> bool:
    """Whether the broker refused declaring ``plan``'s queue with x-expires because it exists
    with other arguments (406 PRECONDITION_FAILED, "inequivalent arg 'x-expires'")."""
    return (
        plan.expires_ms is not None
        and isinstance(reason, pika.exceptions.ChannelClosedByBroker)
        and reason.reply_code == 406
        and "x-expires" in str(reason.reply_text)
    )


def _pipeline(steps: list[Callable[..., None]], done: Callable[[Any], None]) -> None:
    """Send channel methods back to back; ``done`` gets the last one's answer.

    All but the last go without waiting for their answer (nowait where AMQP has it; pika queues
    the others): frames on a channel are handled in order, and a failure closes the channel.
    """
    for step in steps[:-1]:
        step()
    steps[-1](callback=done)


# -- the endpoint --------------------------------------------------------------------------------


class RabbitMQEndpoint:
    ids_are_positions = False

    def __init__(
        self, name: str, config: RabbitMQConfig, *, clients: ClientLedger | None = None
    ) -> None:
        self.name = name
        self.config = config
        # client_state_ttl and who left when (mediation/client_state.py); made on its own
        # (tests): no expiry.
        self.clients = clients if clients is not None else ClientLedger(ttl=0)
        self.state = AsyncValue(EndpointState.CONNECTING)
        self._link: _Link | None = None  # set while up
        self._to_trio: ToTrio | None = None  # made by run(), in Trio
        self._thread = trio.CapacityLimiter(1)  # one I/O thread per endpoint
        self._window = trio.Semaphore(PUBLISH_WINDOW)
        self._written = Written()
        # Why the endpoint is not up (its last connection's end or failed connect), for
        # /readyz; None while up.
        self.down_reason: str | None = None

    # -- connection ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.state.value = EndpointState.CONNECTING
        self._to_trio = ToTrio(self.name)
        task_status.started()
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        try:
            while True:
                if await self._connect_once():
                    backoff.reset()
                await trio.sleep(backoff.next())
        finally:
            self.state.value = EndpointState.DOWN

    async def _connect_once(self) -> bool:
        """One connection, from connecting until it ends (and its thread with it): was it up?"""
        assert self._to_trio is not None, "run() makes it"
        try:
            tls = client_context(self.config)  # read anew at each connect: renewed files
        except OSError as error:  # a file gone or changed since the config was validated
            self._down(f"cannot connect: {describe(error)}")
            return False
        link = _Link(self.name, self.config, self._to_trio, tls)
        was_up = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_thread, link)
            try:
                await link.settled.wait()
                if not link.ended.is_set():
                    was_up = True
                    self._link = link
                    self.down_reason = None
                    self.state.value = EndpointState.UP
                    log.info("rabbitmq connected", extra={"endpoint": self.name})
                    await link.ended.wait()
                    log.warning(
                        "rabbitmq connection lost",
                        extra={"endpoint": self.name, "error": link.reason},
                    )
                    self.down_reason = link.reason
                else:
                    self._down(link.reason)
            finally:
                self._link = None
                if was_up:
                    self.state.value = EndpointState.DOWN
                link.on_ended("endpoint stopped")
                link.fail_all()
                link.request_stop()
        return was_up

    def _down(self, reason: str) -> None:
        """A connect failed (broker unreachable, TLS or login refused): ``down``, said once."""
        self.down_reason = reason
        self.state.value = EndpointState.DOWN
        log.warning("rabbitmq not reachable", extra={"endpoint": self.name, "error": reason})

    async def _run_thread(self, link: _Link) -> None:
        try:
            # Never abandoned: cancelling run() waits here until the thread has closed the
            # connection (request_stop; bounded by CLOSE_TIMEOUT) and returned.
            await trio.to_thread.run_sync(
                link.io_main, thread_name=f"rabbitmq {self.name}", limiter=self._thread
            )
        finally:
            link.thread_exited()

    # -- the endpoint interface ------------------------------------------------------------------

    def _expires_ms(self, template: str) -> int | None:
        """x-expires for a queue named by ``template``: client_state_ttl in ms for a per-client
        one (the name holds {client_id}), else (or ttl 0) none."""
        if "{client_id}" not in template or self.clients.ttl <= 0:
            return None
        return max(1, round(self.clients.ttl * 1000))

    def _plan(self, subscription: Subscription) -> _ConsumePlan:
        config = self.config
        prefetch = min(max(1, subscription.credit), MAX_PREFETCH)
        if config.queue_in is not None:
            return _ConsumePlan(
                queue=subscription.fill(config.queue_in),
                prefetch=prefetch,
                declare_queue=config.declare,
                exclusive=False,
                exchange=None,
                binding_key="",
                declare_exchange=None,
                expires_ms=self._expires_ms(config.queue_in),
            )
        if config.exchange is not None:
            queue = config.session_queue.replace("{endpoint}", self.name).replace(
                "{session_id}", subscription.session_id
            )
            return _ConsumePlan(
                queue=subscription.fill(queue),
                prefetch=prefetch,
                declare_queue=True,
                exclusive=True,
                exchange=subscription.fill(config.exchange),
                binding_key=subscription.fill(config.binding_key),
                declare_exchange=config.exchange_type if config.declare else None,
                expires_ms=self._expires_ms(config.session_queue),
            )
        raise TargetNotFound(f"endpoint {self.name} has no queue_in or exchange to consume from")

    @asynccontextmanager
    async def consume(self, subscription: Subscription) -> AsyncIterator[AsyncIterator[Delivery]]:
        plan = self._plan(subscription)
        link = self._link
        if link is None:
            raise BrokerUnavailable(f"endpoint {self.name} is {self.state.value}")
        drops = subscription.route.ack_plan.drops_acked_redeliveries
        written = self._written if drops else None
        consumer = _Consumer(link, plan.prefetch, plan.queue, written, subscription.undeliverable)
        link.consumers.add(consumer)
        try:
            link.post(partial(link.open_consumer, consumer, plan))
            await consumer.wait_subscribed()
            yield Deliveries(consumer.next_delivery)
        finally:
            if not consumer.closed.is_set():
                link.post(partial(link.close_consumer, consumer))
                with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as closing:
                    await consumer.closed.wait()
                if closing.cancelled_caught:
                    log.warning(
                        "rabbitmq channel did not close in time",
                        extra={"endpoint": self.name, "queue": plan.queue},
                    )
            link.consumers.discard(consumer)

    def _target(self, message: Outbound) -> tuple[str, str, str | None]:
        """(exchange, routing key, queue to declare first) for a publish."""
        config = self.config
        if config.queue_out is not None:
            queue = message.fill(config.queue_out)
            declare = queue if config.declare and "{" in config.queue_out else None
            return "", queue, declare
        if config.exchange is not None:
            return message.fill(config.exchange), message.fill(config.routing_key), None
        raise TargetNotFound(f"endpoint {self.name} has no queue_out or exchange to publish to")

    async def publish(self, message: Outbound, *, confirm: bool) -> None:
        exchange, routing_key, declare = self._target(message)
        if self._link is None:
            raise BrokerUnavailable(f"endpoint {self.name} is {self.state.value}")
        record = _Publish(
            exchange=exchange,
            routing_key=routing_key,
            body=message.event.payload,
            properties=properties_for(message.event, persistent=confirm),
            confirm=confirm,
            declare_queue=declare,
            window=self._window,
        )
        if confirm:
            # No scheduler round before the hand-off when the window has room (under load that
            # round was most of the time from here to the I/O thread); waiting for the confirm
            # below is the checkpoint.
            try:
                self._window.acquire_nowait()
            except trio.WouldBlock:
                await self._window.acquire()
        else:
            await self._window.acquire()  # the checkpoint of an unconfirmed publish
        link = self._link
        if link is None:
            self._window.release()
            raise BrokerUnavailable(f"endpoint {self.name} is {self.state.value}")
        link.publishes.add(record)
        if not link.post(partial(link.publish_on_thread, record)):
            link.resolve([(record, "connection closing")])
            raise BrokerUnavailable(f"endpoint {self.name}: connection closing")
        if record.done is None:
            return
        await record.done.wait()
        if record.error is not None:
            raise BrokerUnavailable(f"rabbitmq did not confirm the event: {record.error}")
