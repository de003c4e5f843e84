"""Solace PubSub+ endpoint, on the solace-pubsubplus API (``solace.messaging``).

Per delivery guarantee:

- ``none``, ``auto``, ``at_most_once``: one direct receiver per session, subscribed to
  ``topic_in``. Upstream events go out through the connection's direct publisher.
- ``at_least_once``: one persistent receiver per session with client acknowledgement, bound to
  ``queue_in`` (a durable, non-exclusive queue; ``{client_id}`` makes it the client's own, so what
  is published while the client is away waits for it). With ``create_queues`` the queue is created
  when missing and given a ``topic_in`` subscription; without ``topic_in`` the queue is consumed as
  provisioned. A nack settles the message as ``FAILED`` and the broker redelivers it; with an API
  that has no ``settle`` the message is left unacknowledged and redelivered when the flow closes
  (the session's end, a reconnect). Upstream events that must be confirmed (``at_least_once``) go
  out through the persistent publisher, and ``publish`` returns once the broker's receipt arrived.

Threads. The API calls back on threads of its own: each receiver's dispatch thread (messages),
the service's listener thread (reconnecting, reconnected, interrupted) and the publishers' threads
(receipts, readiness). Every callback hands what it got to Trio through the endpoint's
:class:`._handoff.ToTrio` (batched ``TrioToken.run_sync_soon``) and returns at once; nothing on
an API thread ever waits for Trio or for a client. Blocking calls (connect, receiver start and
terminate, publisher terminate, disconnect) run in worker threads behind one ``CapacityLimiter``
per endpoint. The API starts a dispatch thread per receiver, so a
session costs one thread while it lasts; terminating its receiver joins it.

Flow control, so that the hand-off can always accept:

- Persistent receivers: the dispatch thread counts messages handed to Trio and not yet settled.
  When they reach the subscription's credit (``channel_size``) it pauses the receiver itself,
  before returning, so the API dispatches nothing more (and stops the broker's flow once its own
  small buffer fills); the settle that brings the count below credit resumes it. A session never
  holds more than credit unsettled messages; the queue keeps the rest.
- Direct receivers have no broker flow control: the broker sends what the topic carries. Because
  the handler never blocks, the one connection all sessions share is always read at full speed,
  so a slow client can neither slow the others nor make the broker discard messages for them.
  Each consumer buffers up to ``max(channel_size, direct_buffer)`` messages. A client that falls
  further behind its topic than that is handled per guarantee, and never silently:
  ``auto`` ends the consumer with :class:`DirectConsumerOverflow` (a ``ClientTooSlow``: WebSocket
  close 1013, SSE error, HTTP 503), because auto promises no loss the client is not told about;
  ``none`` and ``at_most_once`` drop the newest messages, count them in ``stats["dropped"]``, log
  it, and mark the next message delivered with ``solace-dropped: N``. Use ``at_least_once`` for
  a client that must not lose anything: its queue holds the backlog on the broker.

Connection: one ``MessagingService`` per endpoint, owned by :meth:`SolaceEndpoint.run`. The API
reconnects by itself (properties ``solace.messaging.transport.reconnection-attempts`` and
``...-wait-interval``); while it does, the endpoint is ``connecting``, and every consumer ends with
:class:`BrokerUnavailable` (direct messages sent meanwhile are gone; persistent ones are
redelivered to the client's next consumer). When the API gives up (service interrupted) the
endpoint is ``down``, and ``run`` builds a new service after ``retry_interval`` (doubling up to
30 s, each wait jittered between half and all of it). Pending publish receipts fail on either event.

Hostile messages: property names and values of any type become text (bytes as UTF-8 with
replacement characters, others with ``str()``), and so do the ids, destination and text payload.
A message that still cannot be converted (the API or this module raising while reading it) is
not handed out, whatever the route's guarantee: a persistent one is settled ``REJECTED`` (the
broker discards it or moves it to the dead message queue, not redelivering it; acknowledged, with
an API that has no ``settle``), a direct one is dropped; either is logged and counted
(``stats["undeliverable"]``, ``subscription.undeliverable``), and the session goes on.

Metadata of a delivered event: the message's user properties, and ``solace-destination``,
``solace-application-message-id``, ``solace-correlation-id``, ``solace-redelivered``
(``true``/``false``), ``solace-broker-discard`` (the broker discarded messages before this one),
``solace-dropped``. Its id is the application message id (the id of the event that was published
through this engine), else the replication group message id, else a new one. A published event
carries its id as application message id, ``solace-correlation-id`` as correlation id, and its other
metadata (not starting with ``solace-``) as user properties.

Testing seam: ``SolaceEndpoint(name, config, api=...)`` takes a :class:`SolaceAPI`; by default it
is loaded from the module named by ``config.api`` (``solace.messaging``). The tests name
``tests.solace_fake``, an in-process fake of the same API with the same threading behaviour.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from trio_util import AsyncValue

from ..client_state import ClientLedger, Sweep, name_pattern
from ..config import SolaceConfig
from ..errors import BrokerUnavailable, ClientTooSlow, MediationError
from ..events import Delivery, Event, new_event_id
from ._backoff import Backoff
from ._handoff import ToTrio
from ._solace_semp import SempQueues
from ._sweep import run_sweep
from .base import CONVERSION_ERROR, Deliveries, EndpointState, Outbound, Subscription

log = logging.getLogger(__name__)

T = TypeVar("T")

# Worker threads one endpoint may occupy at once with blocking API calls.
BLOCKING_CALLS = 8
# Bound on cleanup that talks to the broker: terminating a receiver, disconnecting.
CLEANUP_TIMEOUT = 10.0
# How long terminating a publisher may wait for what it still buffers (ms, the API's unit).
PUBLISHER_GRACE_MS = 2000
MAX_RETRY_INTERVAL = 30.0
# Metadata keys this endpoint sets; they are not copied into the user properties of a publish.
PREFIX = "solace-"

_HOST = "solace.messaging.transport.host"
_VPN = "solace.messaging.service.vpn-name"
_USERNAME = "solace.messaging.authentication.basic.username"
_PASSWORD = "solace.messaging.authentication.basic.password"


class DirectConsumerOverflow(ClientTooSlow, BrokerUnavailable):
    """An ``auto`` client fell further behind its direct topic than the consumer can buffer.

    The client sees "client too slow"; a bridge treats it like a broker failure and resumes.
    """


# -- the API seam ------------------------------------------------------------------------------

# Where each name lives in the real package; a drop-in may export them at its top level instead.
_LOCATIONS = {
    "MessagingService": "messaging_service",
    "ReconnectionListener": "messaging_service",
    "ReconnectionAttemptListener": "messaging_service",
    "ServiceInterruptionListener": "messaging_service",
    "MessageHandler": "receiver.message_receiver",
    "MessagePublishReceiptListener": "publisher.persistent_message_publisher",
    "PublisherReadinessListener": "publisher.publisher_health_check",
    "TerminationNotificationListener": "utils.life_cycle_control",
    "Topic": "resources.topic",
    "TopicSubscription": "resources.topic_subscription",
    "Queue": "resources.queue",
    "MissingResourcesCreationStrategy": "config.missing_resources_creation_configuration",
    "Outcome": "config.message_acknowledgement_configuration",
    "PubSubPlusClientError": "errors.pubsubplus_client_error",
    "PublisherOverflowError": "errors.pubsubplus_client_error",
}
_OPTIONAL = {"Outcome"}  # absent from API versions without settle(): nack leaves unacked


@dataclass(frozen=True)
class SolaceAPI:
    """The parts of the Solace API this endpoint uses: the one place a drop-in replaces it."""

    MessagingService: Any
    ReconnectionListener: Any
    ReconnectionAttemptListener: Any
    ServiceInterruptionListener: Any
    MessageHandler: Any
    MessagePublishReceiptListener: Any
    PublisherReadinessListener: Any
    TerminationNotificationListener: Any
    Topic: Any
    TopicSubscription: Any
    Queue: Any
    MissingResourcesCreationStrategy: Any
    Outcome: Any
    PubSubPlusClientError: Any
    PublisherOverflowError: Any

    @classmethod
    def load(cls, package: str = "solace.messaging") -> SolaceAPI:
        """Import the API from ``package``, laid out like ``solace.messaging`` or flat."""
        try:
            root = importlib.import_module(package)
        except ImportError as error:
            raise BrokerUnavailable(
                f"the Solace API ({package}) is not installed: pip install 'mediation[solace]'"
            ) from error
        names: dict[str, Any] = {}
        for name, location in _LOCATIONS.items():
            value = getattr(root, name, None)
            if value is None:
                try:
                    value = getattr(importlib.import_module(f"{package}.{location}"), name, None)
                except ImportError:
                    value = None
            if value is None and name not in _OPTIONAL:
                raise BrokerUnavailable(f"{package} has no {name}: not a Solace API")
            names[name] = value
        return cls(**names)


def _implement(base: Any, method: str, function: Callable[..., None]) -> Any:
    """An instance of the API's listener class ``base`` whose ``method`` calls ``function``.

    (The API checks listeners with ``isinstance``; the class is only known once loaded.)
    """

    def call(self: Any, *args: Any) -> None:
        function(*args)

    return type(f"Mediation{base.__name__}", (base,), {method: call})()


def _describe(event: Any) -> str:
    """The text of a service event (``get_message``) or termination event (``message``)."""
    for getter in ("get_message", "get_cause"):
        if callable(getattr(event, getter, None)):
            text = getattr(event, getter)()
            if text:
                return str(text)
    return str(getattr(event, "message", "") or event)


def _text(value: Any) -> str:
    """Any property value as text (bytes as UTF-8 with replacement characters)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()  # lone surrogates, say
    return str(value)


# -- consumers ---------------------------------------------------------------------------------


class _Consumer:
    """One session's receiver, and the hand-off from its dispatch thread to Trio.

    State shared with the dispatch thread is guarded by ``_lock``; ``_buffer`` and ``_failure``
    belong to the Trio thread (the dispatch thread reaches them only through ``ToTrio``).
    """

    def __init__(self, endpoint: SolaceEndpoint, subscription: Subscription) -> None:
        plan = subscription.route.ack_plan
        self.undeliverable = subscription.undeliverable
        self.persistent = plan.redelivers_unconfirmed
        # Direct only: a client too far behind loses the newest messages, or ends its session.
        self.drops_when_behind = plan.drops_when_behind
        credit = subscription.credit
        self.capacity = credit if self.persistent else max(credit, endpoint.config.direct_buffer)
        self.description = ""
        self.receiver: Any = None
        self._endpoint = endpoint
        self._api = endpoint.api
        self._lock = threading.Lock()
        self._held = 0  # persistent: handed over, not settled; direct: handed over, not taken
        self._paused = False
        self._closed = False
        self._dropped = 0  # direct messages dropped since the last one handed over
        self._buffer: deque[tuple[Any, int]] = deque()
        self._failure: MediationError | None = None
        self._waiting = trio.lowlevel.ParkingLot()

    # -- on the API's dispatch thread ----------------------------------------------------------

    def on_message(self, message: Any) -> None:
        with self._lock:
            if self._closed:
                return  # persistent: unsettled, so the broker redelivers it after terminate
            if self.persistent:
                self._held += 1
                if self._held >= self.capacity and not self._paused:
                    self._paused = True
                    self._quietly(self.receiver.pause)
            elif self._held >= self.capacity:
                self._overflow()
                return
            else:
                self._held += 1
            dropped, self._dropped = self._dropped, 0
        self._endpoint._soon(self._arrived, message, dropped)

    def _overflow(self) -> None:
        """A direct message the buffer cannot take (called holding ``_lock``)."""
        if not self.drops_when_behind:
            self._closed = True
            error = DirectConsumerOverflow(
                f"client too slow: fell {self.capacity} messages behind {self.description} "
                f"(direct messaging; at_least_once would queue them on the broker)"
            )
            self._endpoint._soon(self.fail, error)
            self._endpoint._soon(self._endpoint._count, "overflowed")
            return
        if not self._dropped:
            log.warning(
                "direct consumer full: dropping messages",
                extra={"endpoint": self._endpoint.name, "source": self.description},
            )
        self._dropped += 1
        self._endpoint._soon(self._endpoint._count, "dropped")

    def on_termination(self, event: Any) -> None:
        """The API ended the receiver by itself (flow or session down, queue deleted)."""
        error = BrokerUnavailable(
            f"endpoint {self._endpoint.name}: {self.description} ended: {_describe(event)}"
        )
        self._endpoint._soon(self.fail, error)

    def _quietly(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except self._api.PubSubPlusClientError as error:
            # The receiver is going away (terminated, service down); its end is reported anyway.
            log.debug("receiver flow control not applied", extra={"error": str(error)})

    # -- on the Trio thread --------------------------------------------------------------------

    def _arrived(self, message: Any, dropped: int) -> None:
        if not self._closed:
            self._buffer.append((message, dropped))
            self._waiting.unpark()

    def fail(self, error: MediationError) -> None:
        if self._failure is None:
            self._failure = error
            self._waiting.unpark_all()

    def close(self) -> None:
        with self._lock:
            self._closed = True

    async def next(self) -> Delivery:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._buffer:
                message, dropped = self._buffer.popleft()
                if not self.persistent:
                    with self._lock:
                        self._held -= 1
                try:
                    event = self._event(message, dropped)
                except Exception as error:  # one message, never the session (module doc)
                    self._reject(message, error)
                    continue
                self._endpoint._count("delivered")
                return Delivery(event, self._settler(message))
            await self._waiting.park()

    def _event(self, message: Any, dropped: int) -> Event:
        payload = message.get_payload_as_bytes()
        if payload is None:
            text = message.get_payload_as_string()
            payload = b"" if text is None else _text(text).encode("utf-8", "replace")
        metadata = {_text(k): _text(v) for k, v in (message.get_properties() or {}).items()}
        destination = message.get_destination_name()
        if destination:
            metadata["solace-destination"] = _text(destination)
        application_id = message.get_application_message_id()
        if application_id:
            application_id = metadata["solace-application-message-id"] = _text(application_id)
        correlation_id = message.get_correlation_id()
        if correlation_id:
            metadata["solace-correlation-id"] = _text(correlation_id)
        metadata["solace-redelivered"] = "true" if message.is_redelivered() else "false"
        discard = message.get_message_discard_notification()
        if discard is not None and discard.has_broker_discard_indication():
            metadata["solace-broker-discard"] = "true"
        if dropped:
            metadata["solace-dropped"] = str(dropped)
        replication_id = message.get_replication_group_message_id() if self.persistent else None
        event_id = application_id or (str(replication_id) if replication_id else new_event_id())
        return Event(bytes(payload), id=event_id, metadata=metadata)

    def _reject(self, message: Any, error: Exception) -> None:
        """A message that cannot become an event: settled for good, logged, counted."""
        endpoint = self._endpoint
        endpoint._count("undeliverable")
        log.warning(
            "solace message dropped: it cannot be converted into an event",
            extra={
                "endpoint": endpoint.name,
                "source": self.description,
                "reason": CONVERSION_ERROR,
                "error": str(error) or type(error).__name__,
            },
        )
        self.undeliverable(CONVERSION_ERROR)
        if self.persistent:
            self._settle(message, True, rejected=True)

    def _settler(self, message: Any) -> Callable[[bool], Any]:
        async def settle(accepted: bool) -> None:
            self._settle(message, accepted)

        return settle

    def _settle(self, message: Any, accepted: bool, *, rejected: bool = False) -> None:
        endpoint = self._endpoint
        if not rejected:
            endpoint._count("acked" if accepted else "nacked")
        if not self.persistent:
            if not accepted:
                endpoint._count("lost")
                log.warning(
                    "nacked direct message cannot be redelivered",
                    extra={"endpoint": endpoint.name, "source": self.description},
                )
            return
        try:
            if rejected and self._api.Outcome is not None:
                self.receiver.settle(message, self._api.Outcome.REJECTED)
            elif accepted:
                self.receiver.ack(message)
            elif self._api.Outcome is not None:
                self.receiver.settle(message, self._api.Outcome.FAILED)
            # else: left unacknowledged; the broker redelivers it when this flow closes.
        except self._api.PubSubPlusClientError as error:
            log.info(
                "settle not sent: the flow is closed, and the broker redelivers what it did not "
                "see acknowledged",
                extra={"endpoint": endpoint.name, "error": str(error)},
            )
        with self._lock:
            self._held -= 1
            if self._paused and self._held < self.capacity and not self._closed:
                self._paused = False
                self._quietly(self.receiver.resume)


# -- the connection ----------------------------------------------------------------------------


class _Publisher:
    def __init__(self) -> None:
        self.publisher: Any = None
        # Set by the API's next "ready" notice (or when the connection is lost), then replaced.
        self.ready = trio.Event()

    def wake(self) -> None:
        self.ready.set()
        self.ready = trio.Event()


@dataclass
class _Receipt:
    done: trio.Event
    error: str | None = None


class _Connection:
    """One ``MessagingService`` and its two publishers."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.direct = _Publisher()
        self.persistent = _Publisher()
        self.lost = trio.Event()
        self.reason = "endpoint stopped"


class SolaceEndpoint:
    ids_are_positions = False

    def __init__(
        self,
        name: str,
        config: SolaceConfig,
        api: SolaceAPI | None = None,
        *,
        clients: ClientLedger | None = None,
    ) -> None:
        self.name = name
        self.config = config
        # client_state_ttl and who left when (mediation/client_state.py); made on its own
        # (tests): no expiry.
        self.clients = clients if clients is not None else ClientLedger(ttl=0)
        self.api = api if api is not None else SolaceAPI.load(config.api)
        self.state = AsyncValue(EndpointState.CONNECTING)
        # published, confirmed, delivered, acked, nacked, dropped, overflowed, lost
        self.stats: Counter[str] = Counter()
        self._limiter = trio.CapacityLimiter(BLOCKING_CALLS)
        self._to_trio: ToTrio | None = None  # made by run(), in Trio
        self._connection: _Connection | None = None
        self._consumers: set[_Consumer] = set()
        self._receipts: dict[int, _Receipt] = {}
        self._keys = itertools.count()

    # -- the connection task -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._to_trio = ToTrio(self.name)
        task_status.started()
        backoff = Backoff(
            self.config.retry_interval, max(MAX_RETRY_INTERVAL, self.config.retry_interval)
        )
        try:
            async with trio.open_nursery() as nursery:
                self._start_sweep(nursery)
                while True:
                    self.state.value = EndpointState.CONNECTING
                    try:
                        connection = await self._connect()
                    except BrokerUnavailable as error:
                        log.warning(
                            "solace connect failed",
                            extra={"endpoint": self.name, "error": str(error)},
                        )
                    else:
                        backoff.reset()
                        try:
                            await self._serve(connection)
                        finally:
                            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                                await self._blocking(self._close, connection, abandon=True)
                    self.state.value = EndpointState.DOWN
                    await trio.sleep(backoff.next())
        finally:
            self.state.value = EndpointState.DOWN

    def _start_sweep(self, nursery: trio.Nursery) -> None:
        """With a ttl, ``semp_url``, ``create_queues`` and a per-client ``queue_in``: delete the
        queues of departed clients (``_solace_semp``)."""
        config = self.config
        pattern = name_pattern(config.queue_in, self.name)
        if pattern is None or config.semp_url is None or not config.create_queues:
            return
        if self.clients.ttl <= 0:
            return
        queues = SempQueues(
            config.semp_url,
            config.vpn,
            config.semp_username,
            config.semp_password,
            template=config.queue_in,
        )
        nursery.start_soon(
            run_sweep, self.name, Sweep(pattern, self.clients), queues, self._limiter
        )

    async def _connect(self) -> _Connection:
        api = self.api
        properties = {
            **self.config.properties,
            _HOST: self.config.host,
            _VPN: self.config.vpn,
            _USERNAME: self.config.username,
            _PASSWORD: self.config.password,
        }
        try:
            service = api.MessagingService.builder().from_properties(properties).build()
        except (api.PubSubPlusClientError, ValueError, TypeError) as error:
            raise BrokerUnavailable(f"endpoint {self.name}: {error}") from None
        connection = _Connection(service)

        def listener(base: Any, method: str, kind: str) -> Any:
            return _implement(
                base,
                method,
                lambda event: self._soon(self._service_event, connection, kind, _describe(event)),
            )

        service.add_reconnection_attempt_listener(
            listener(api.ReconnectionAttemptListener, "on_reconnecting", "reconnecting")
        )
        service.add_reconnection_listener(
            listener(api.ReconnectionListener, "on_reconnected", "reconnected")
        )
        service.add_service_interruption_listener(
            listener(api.ServiceInterruptionListener, "on_service_interrupted", "interrupted")
        )
        try:
            await self._blocking(self._open, connection)
        except BaseException:
            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await self._blocking(self._close, connection, abandon=True)
            raise
        return connection

    def _open(self, connection: _Connection) -> None:
        """Connect and start the publishers (in a worker thread)."""
        api = self.api
        service = connection.service
        try:
            service.connect()
            direct = (
                service.create_direct_message_publisher_builder()
                .on_back_pressure_reject(self.config.publish_buffer)
                .build()
            )
            connection.direct.publisher = direct
            direct.set_publisher_readiness_listener(self._readiness(connection.direct))
            direct.start()
            persistent = (
                service.create_persistent_message_publisher_builder()
                .on_back_pressure_reject(self.config.publish_buffer)
                .build()
            )
            connection.persistent.publisher = persistent
            persistent.set_publisher_readiness_listener(self._readiness(connection.persistent))
            persistent.set_message_publish_receipt_listener(
                _implement(api.MessagePublishReceiptListener, "on_publish_receipt", self._receipt)
            )
            persistent.start()
        except (api.PubSubPlusClientError, ValueError, TypeError) as error:
            raise BrokerUnavailable(
                f"endpoint {self.name}: cannot connect to {self.config.host}: {error}"
            ) from None

    def _close(self, connection: _Connection) -> None:
        """Terminate the publishers and disconnect (in a worker thread); never raises."""
        for publisher in (connection.direct.publisher, connection.persistent.publisher):
            if publisher is not None:
                self._log_failure("publisher terminate", publisher.terminate, PUBLISHER_GRACE_MS)
        # Even after an interruption: disconnecting is what stops the service's threads. (A
        # service that never connected refuses, which is logged and harmless.)
        self._log_failure("disconnect", connection.service.disconnect)

    def _log_failure(self, what: str, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except self.api.PubSubPlusClientError as error:
            log.info(f"solace {what}: {error}", extra={"endpoint": self.name})

    async def _serve(self, connection: _Connection) -> None:
        self._connection = connection
        self.state.value = EndpointState.UP
        log.info("solace connected", extra={"endpoint": self.name, "host": self.config.host})
        try:
            await connection.lost.wait()
            log.warning(
                "solace service interrupted",
                extra={"endpoint": self.name, "error": connection.reason},
            )
        finally:
            self._connection = None
            self._fail_all(connection, connection.reason)

    def _service_event(self, connection: _Connection, kind: str, text: str) -> None:
        if kind == "interrupted":
            connection.reason = f"service interrupted: {text}"
            connection.lost.set()
        elif connection is self._connection and kind == "reconnecting":
            log.warning("solace reconnecting", extra={"endpoint": self.name, "error": text})
            self.state.value = EndpointState.CONNECTING
            self._fail_all(connection, f"connection lost, reconnecting: {text}")
        elif connection is self._connection and kind == "reconnected":
            log.info("solace reconnected", extra={"endpoint": self.name})
            self.state.value = EndpointState.UP

    def _fail_all(self, connection: _Connection, reason: str) -> None:
        error = BrokerUnavailable(f"endpoint {self.name}: {reason}")
        for consumer in self._consumers:
            consumer.fail(error)
        for receipt in self._receipts.values():
            receipt.error = reason
            receipt.done.set()
        connection.direct.wake()
        connection.persistent.wake()

    # -- hand-offs from the API's threads ------------------------------------------------------

    def _soon(self, function: Callable[..., None], *args: Any) -> None:
        """From an API thread: run ``function(*args)`` in Trio soon, never waiting or raising."""
        assert self._to_trio is not None, "the endpoint is not running"
        self._to_trio.call_soon(function, *args)

    def _readiness(self, publisher: _Publisher) -> Any:
        return _implement(
            self.api.PublisherReadinessListener, "ready", lambda: self._soon(publisher.wake)
        )

    def _receipt(self, receipt: Any) -> None:
        error = receipt.exception
        self._soon(self._receipt_arrived, receipt.user_context, None if error is None else error)

    def _receipt_arrived(self, key: int, error: Any) -> None:
        receipt = self._receipts.get(key)
        if receipt is not None:
            receipt.error = None if error is None else f"broker refused: {error}"
            receipt.done.set()

    def _count(self, what: str) -> None:
        self.stats[what] += 1

    async def _blocking(self, function: Callable[..., T], *args: Any, abandon: bool = False) -> T:
        return await trio.to_thread.run_sync(
            function, *args, limiter=self._limiter, abandon_on_cancel=abandon
        )

    # -- the endpoint interface ----------------------------------------------------------------

    def _up(self) -> _Connection:
        connection = self._connection
        if connection is None or self.state.value is not EndpointState.UP:
            raise BrokerUnavailable(f"endpoint {self.name} is {self.state.value}")
        return connection

    @asynccontextmanager
    async def consume(self, subscription: Subscription) -> AsyncIterator[AsyncIterator[Delivery]]:
        connection = self._up()
        consumer = _Consumer(self, subscription)
        consumer.receiver = self._build_receiver(connection, consumer, subscription)
        self._consumers.add(consumer)
        try:
            await self._blocking(self._start_receiver, consumer)
            yield Deliveries(consumer.next)
        finally:
            consumer.close()
            self._consumers.discard(consumer)
            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                await self._blocking(self._terminate_receiver, consumer, abandon=True)

    def _build_receiver(
        self, connection: _Connection, consumer: _Consumer, subscription: Subscription
    ) -> Any:
        api = self.api
        topic = subscription.fill(self.config.topic_in) if self.config.topic_in else None
        subscriptions = [] if topic is None else [api.TopicSubscription.of(topic)]
        try:
            if consumer.persistent:
                queue = subscription.fill(self.config.queue_in)
                consumer.description = f"queue {queue}"
                builder = connection.service.create_persistent_message_receiver_builder()
                builder = builder.with_message_client_acknowledgement()
                if api.Outcome is not None:
                    builder = builder.with_required_message_outcome_support(
                        api.Outcome.FAILED, api.Outcome.REJECTED
                    )
                if self.config.create_queues:
                    builder = builder.with_missing_resources_creation_strategy(
                        api.MissingResourcesCreationStrategy.CREATE_ON_START
                    )
                if subscriptions:
                    builder = builder.with_subscriptions(subscriptions)
                return builder.build(api.Queue.durable_non_exclusive_queue(queue))
            if topic is None:
                raise BrokerUnavailable(f"endpoint {self.name} has no topic_in to consume")
            consumer.description = f"topic {topic}"
            # Elastic (the API's default) for its own buffer: our handler empties it at once,
            # and our consumer's buffer is the bound (see the module docstring).
            return (
                connection.service.create_direct_message_receiver_builder()
                .with_subscriptions(subscriptions)
                .on_back_pressure_elastic()
                .build()
            )
        except (api.PubSubPlusClientError, ValueError, TypeError) as error:
            raise BrokerUnavailable(f"endpoint {self.name}: {error}") from None

    def _start_receiver(self, consumer: _Consumer) -> None:
        """Subscribe or bind (in a worker thread): returns once the broker confirmed."""
        api = self.api
        receiver = consumer.receiver
        try:
            receiver.set_termination_notification_listener(
                _implement(
                    api.TerminationNotificationListener, "on_termination", consumer.on_termination
                )
            )
            receiver.start()
            receiver.receive_async(
                _implement(api.MessageHandler, "on_message", consumer.on_message)
            )
        except api.PubSubPlusClientError as error:
            raise BrokerUnavailable(
                f"endpoint {self.name}: cannot consume {consumer.description}: {error}"
            ) from None

    def _terminate_receiver(self, consumer: _Consumer) -> None:
        """Unsubscribe or unbind (in a worker thread); never raises.

        No grace period: messages the API still buffers for this consumer are not dispatched.
        Direct ones are gone with the session; persistent ones were never acknowledged, so the
        broker redelivers them (the API reports them as an incomplete delivery, logged here).
        """
        self._log_failure("receiver terminate", consumer.receiver.terminate, 0)

    async def publish(self, message: Outbound, *, confirm: bool) -> None:
        await trio.lowlevel.checkpoint()
        connection = self._up()
        if self.config.topic_out is None:
            raise BrokerUnavailable(f"endpoint {self.name} has no topic_out to publish to")
        topic = message.fill(self.config.topic_out)
        outbound = self._outbound(connection, message.event)
        destination = self.api.Topic.of(topic)
        if not confirm:
            direct = connection.direct
            await self._send(
                connection, direct, lambda: direct.publisher.publish(outbound, destination)
            )
            self._count("published")
            return
        key = next(self._keys)
        receipt = _Receipt(trio.Event())
        self._receipts[key] = receipt
        persistent = connection.persistent
        try:
            await self._send(
                connection,
                persistent,
                lambda: persistent.publisher.publish(outbound, destination, user_context=key),
            )
            await receipt.done.wait()
        finally:
            del self._receipts[key]
        if receipt.error is not None:
            raise BrokerUnavailable(f"endpoint {self.name}: {topic}: {receipt.error}")
        self._count("published")
        self._count("confirmed")

    def _outbound(self, connection: _Connection, event: Event) -> Any:
        api = self.api
        try:
            builder = connection.service.message_builder().with_application_message_id(event.id)
            correlation_id = event.metadata.get("solace-correlation-id")
            if correlation_id:
                builder = builder.with_correlation_id(correlation_id)
            properties = {k: v for k, v in event.metadata.items() if not k.startswith(PREFIX)}
            return builder.build(
                bytearray(event.payload), additional_message_properties=properties or None
            )
        except (api.PubSubPlusClientError, ValueError, TypeError) as error:
            raise BrokerUnavailable(
                f"endpoint {self.name}: cannot build the message: {error}"
            ) from None

    async def _send(
        self, connection: _Connection, publisher: _Publisher, send: Callable[[], None]
    ) -> None:
        """Hand a message to a publisher; while its buffer is full, wait for its ready notice."""
        while True:
            ready = publisher.ready
            try:
                send()
                return
            except self.api.PublisherOverflowError:
                pass
            except self.api.PubSubPlusClientError as error:
                raise BrokerUnavailable(f"endpoint {self.name}: publish refused: {error}") from None
            await ready.wait()
            self._up()
            if self._connection is not connection:
                raise BrokerUnavailable(f"endpoint {self.name}: connection lost while publishing")
