"""The fake's client side: the subset of ``solace.messaging`` the endpoint uses.

Same names, signatures and threading as the real API: a service's events reach its listeners on
the service's listener thread; each receiver calls its message handler on a dispatch thread of its
own, fed from an unbounded inbox (the real receivers' "elastic" buffer) that ``pause`` stops
reading; each publisher sends from a thread of its own, which also calls the receipt and
readiness listeners. ``connect``, ``start`` and ``terminate`` block until done. Every thread the
fake starts is named ``solace-fake-...`` and is joined when its owner terminates or disconnects.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any

from ._broker import FakeBroker, Stored, lookup

log = logging.getLogger(__name__)

_threads = itertools.count(1)

# -- errors, enums, resources ------------------------------------------------------------------


class PubSubPlusClientError(Exception):
    pass


class IllegalStateError(PubSubPlusClientError):
    pass


class PublisherOverflowError(PubSubPlusClientError):
    pass


class ServiceUnreachableError(PubSubPlusClientError):
    pass


class MessageRejectedByBrokerError(PubSubPlusClientError):
    pass


class IncompleteMessageDeliveryError(PubSubPlusClientError):
    pass


class InvalidDataTypeError(TypeError):
    pass


class Outcome(enum.Enum):
    ACCEPTED = 0
    FAILED = 2
    REJECTED = 3


class MissingResourcesCreationStrategy(enum.Enum):
    DO_NOT_CREATE = 0
    CREATE_ON_START = 1


class Topic:
    def __init__(self, name: str) -> None:
        self._name = name

    @staticmethod
    def of(topic_string: str) -> Topic:
        return Topic(topic_string)

    def get_name(self) -> str:
        return self._name


class TopicSubscription(Topic):
    @staticmethod
    def of(expression: str) -> TopicSubscription:
        return TopicSubscription(expression)


class Queue:
    def __init__(self, name: str, exclusive: bool) -> None:
        self._name = name
        self._exclusive = exclusive

    @staticmethod
    def durable_exclusive_queue(queue_name: str) -> Queue:
        return Queue(queue_name, True)

    @staticmethod
    def durable_non_exclusive_queue(queue_name: str) -> Queue:
        return Queue(queue_name, False)

    def get_name(self) -> str:
        return self._name

    def is_durable(self) -> bool:
        return True

    def is_exclusively_accessible(self) -> bool:
        return self._exclusive


# -- listener interfaces -----------------------------------------------------------------------


class ReconnectionListener(ABC):
    @abstractmethod
    def on_reconnected(self, service_event: ServiceEvent) -> None: ...


class ReconnectionAttemptListener(ABC):
    @abstractmethod
    def on_reconnecting(self, event: ServiceEvent) -> None: ...


class ServiceInterruptionListener(ABC):
    @abstractmethod
    def on_service_interrupted(self, event: ServiceEvent) -> None: ...


class MessageHandler(ABC):
    @abstractmethod
    def on_message(self, message: InboundMessage) -> None: ...


class MessagePublishReceiptListener(ABC):
    @abstractmethod
    def on_publish_receipt(self, publish_receipt: PublishReceipt) -> None: ...


class PublisherReadinessListener(ABC):
    @abstractmethod
    def ready(self) -> None: ...


class TerminationNotificationListener(ABC):
    @abstractmethod
    def on_termination(self, event: TerminationEvent) -> None: ...


class ServiceEvent:
    def __init__(self, host: str, message: str, cause: PubSubPlusClientError | None) -> None:
        self._host = host
        self._message = message
        self._cause = cause
        self._time = time.time()

    def get_time_stamp(self) -> float:
        return self._time

    def get_message(self) -> str:
        return self._message

    def get_cause(self) -> PubSubPlusClientError | None:
        return self._cause

    def get_broker_uri(self) -> str:
        return self._host


class TerminationEvent:
    def __init__(self, message: str) -> None:
        self.message = message
        self.cause = PubSubPlusClientError(message)
        self.timestamp = time.time()


class PublishReceipt:
    def __init__(
        self, message: OutboundMessage, exception: PubSubPlusClientError | None, user_context: Any
    ) -> None:
        self.message = message
        self.exception = exception
        self.user_context = user_context
        self.time_stamp = int(time.time() * 1000)
        self.is_persisted = exception is None


def _check(value: Any, expected: type) -> None:
    if not isinstance(value, expected):
        raise InvalidDataTypeError(f"expected {expected.__name__}, got {type(value).__name__}")


# -- messages ----------------------------------------------------------------------------------


class OutboundMessage:
    def __init__(
        self,
        payload: bytearray | str,
        application_message_id: str | None,
        correlation_id: str | None,
        properties: dict[str, Any],
    ) -> None:
        self.payload = payload
        self.application_message_id = application_message_id
        self.correlation_id = correlation_id
        self.properties = properties


class OutboundMessageBuilder:
    def __init__(self) -> None:
        self._application_message_id: str | None = None
        self._correlation_id: str | None = None
        self._properties: dict[str, Any] = {}

    def with_application_message_id(self, application_message_id: str) -> OutboundMessageBuilder:
        _check(application_message_id, str)
        self._application_message_id = application_message_id
        return self

    def with_correlation_id(self, correlation_id: str) -> OutboundMessageBuilder:
        _check(correlation_id, str)
        self._correlation_id = correlation_id
        return self

    def with_property(self, property_key: str, property_value: Any) -> OutboundMessageBuilder:
        self._properties[property_key] = property_value
        return self

    def build(
        self, payload: bytearray | str, additional_message_properties: dict[str, Any] | None = None
    ) -> OutboundMessage:
        if not isinstance(payload, bytearray | str):
            raise InvalidDataTypeError(f"unsupported payload {type(payload).__name__}")
        properties = {**self._properties, **(additional_message_properties or {})}
        payload = bytearray(payload) if isinstance(payload, bytearray) else payload
        return OutboundMessage(
            payload, self._application_message_id, self._correlation_id, properties
        )


class _Discard:
    def has_broker_discard_indication(self) -> bool:
        return False

    def has_internal_discard_indication(self) -> bool:
        return False


class _ReplicationGroupMessageId:
    def __init__(self, sequence: int) -> None:
        self._text = f"rmid1:fake-{sequence:016x}"

    def __str__(self) -> str:
        return self._text


class InboundMessage:
    def __init__(self, stored: Stored, *, persistent: bool, message_id: int = 0) -> None:
        self._stored = stored
        self._persistent = persistent
        self._redelivered = stored.redelivered
        self.message_id = message_id

    def get_payload_as_bytes(self) -> bytearray | None:
        payload = self._stored.payload
        return None if payload is None else bytearray(payload)

    def get_payload_as_string(self) -> str | None:
        return self._stored.text

    def get_destination_name(self) -> str:
        return self._stored.destination

    def get_application_message_id(self) -> str | None:
        return self._stored.application_message_id

    def get_correlation_id(self) -> str | None:
        return self._stored.correlation_id

    def get_properties(self) -> dict[str, Any]:
        return dict(self._stored.properties)

    def is_redelivered(self) -> bool:
        return self._redelivered

    def get_replication_group_message_id(self) -> _ReplicationGroupMessageId | None:
        return _ReplicationGroupMessageId(self._stored.sequence) if self._persistent else None

    def get_message_discard_notification(self) -> _Discard:
        return _Discard()


# -- threads -----------------------------------------------------------------------------------


class _Worker:
    """A thread owned by the fake, running ``target`` until :meth:`stop`."""

    def __init__(self, kind: str, target: Callable[[threading.Event], None]) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=target, args=(self.stopping,), name=f"solace-fake-{kind}-{next(_threads)}"
        )
        self.thread.daemon = True
        self.thread.start()

    def stop(self, wake: Callable[[], None] = lambda: None) -> None:
        self.stopping.set()
        wake()
        if threading.current_thread() is not self.thread:
            self.thread.join()


class _Dispatcher:
    """A service's listener thread: runs the callbacks it is given, in order."""

    def __init__(self) -> None:
        self._calls: deque[Callable[[], None]] = deque()
        self._condition = threading.Condition()
        self._worker = _Worker("listener", self._run)

    def submit(self, call: Callable[[], None]) -> None:
        with self._condition:
            self._calls.append(call)
            self._condition.notify()

    def stop(self) -> None:
        def wake() -> None:
            with self._condition:
                self._condition.notify()

        self._worker.stop(wake)

    def _run(self, stopping: threading.Event) -> None:
        while True:
            with self._condition:
                while not self._calls and not stopping.is_set():
                    self._condition.wait()
                if not self._calls:
                    return  # stopping, and everything submitted has run
                call = self._calls.popleft()
            try:
                call()
            except Exception:
                log.warning("listener callback failed", exc_info=True)


# -- the service -------------------------------------------------------------------------------

_HOST = "solace.messaging.transport.host"


class _ServiceBuilder:
    def __init__(self) -> None:
        self._properties: dict[str, Any] = {}

    def from_properties(self, configuration: dict[str, Any]) -> _ServiceBuilder:
        _check(configuration, dict)
        self._properties.update(configuration)
        return self

    def build(self, application_id: str | None = None) -> _Service:
        if _HOST not in self._properties:
            raise PubSubPlusClientError("no host")
        return _Service(self._properties)


class MessagingService:
    @staticmethod
    def builder() -> _ServiceBuilder:
        return _ServiceBuilder()


class _Service:
    def __init__(self, properties: dict[str, Any]) -> None:
        self.host: str = properties[_HOST]
        self._state = "not connected"
        self._broker: FakeBroker | None = None
        self._dispatcher: _Dispatcher | None = None
        self._reconnection: list[ReconnectionListener] = []
        self._attempts: list[ReconnectionAttemptListener] = []
        self._interruptions: list[ServiceInterruptionListener] = []
        self._receivers: set[_Receiver] = set()
        self._publishers: set[_Publisher] = set()
        self._lock = threading.Lock()

    # lifecycle

    def connect(self) -> _Service:
        with self._lock:
            if self._state != "not connected":
                raise IllegalStateError(f"cannot connect a service that is {self._state}")
            broker = lookup(self.host)
            if broker is None:
                raise ServiceUnreachableError(f"{self.host}: no such host")
            broker.attach(self)
            self._broker = broker
            self._dispatcher = _Dispatcher()
            self._state = "connected"
        return self

    def disconnect(self) -> None:
        with self._lock:
            if self._state == "not connected":
                raise IllegalStateError("the service was never connected")
            dispatcher, self._dispatcher = self._dispatcher, None
            self._state = "disconnected"
            receivers, publishers = list(self._receivers), list(self._publishers)
        for receiver in receivers:
            receiver._end(notify=False)
        for publisher in publishers:
            publisher._down("service disconnected")
        if self._broker is not None:
            self._broker.detach(self)
        if dispatcher is not None:
            dispatcher.stop()

    @property
    def is_connected(self) -> bool:
        return self._state in ("connected", "reconnecting")

    # listeners

    def add_reconnection_listener(self, listener: ReconnectionListener) -> _Service:
        _check(listener, ReconnectionListener)
        self._reconnection.append(listener)
        return self

    def add_reconnection_attempt_listener(self, listener: ReconnectionAttemptListener) -> _Service:
        _check(listener, ReconnectionAttemptListener)
        self._attempts.append(listener)
        return self

    def add_service_interruption_listener(self, listener: ServiceInterruptionListener) -> None:
        _check(listener, ServiceInterruptionListener)
        self._interruptions.append(listener)

    # factories

    def message_builder(self) -> OutboundMessageBuilder:
        return OutboundMessageBuilder()

    def create_direct_message_receiver_builder(self) -> _DirectReceiverBuilder:
        return _DirectReceiverBuilder(self)

    def create_persistent_message_receiver_builder(self) -> _PersistentReceiverBuilder:
        return _PersistentReceiverBuilder(self)

    def create_direct_message_publisher_builder(self) -> _PublisherBuilder:
        return _PublisherBuilder(self, persistent=False)

    def create_persistent_message_publisher_builder(self) -> _PublisherBuilder:
        return _PublisherBuilder(self, persistent=True)

    # what the broker does to the session

    def broker(self) -> FakeBroker:
        if self._broker is None or not self.is_connected:
            raise IllegalStateError(f"the service is {self._state}")
        return self._broker

    def _emit(self, call: Callable[[], None]) -> None:
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.submit(call)

    def _transport_down(self, reason: str) -> None:
        with self._lock:
            if self._state not in ("connected", "reconnecting"):
                return
            self._state = "down"
            receivers, publishers = list(self._receivers), list(self._publishers)
        for receiver in receivers:
            receiver._end(notify=True, reason=reason)
        for publisher in publishers:
            publisher._down(reason)
        if self._broker is not None:
            self._broker.detach(self)
        event = ServiceEvent(self.host, reason, PubSubPlusClientError(reason))
        for listener in list(self._interruptions):
            self._emit(functools.partial(listener.on_service_interrupted, event))

    def _reconnecting(self, reason: str) -> None:
        with self._lock:
            self._state = "reconnecting"
        event = ServiceEvent(self.host, reason, PubSubPlusClientError(reason))
        for listener in list(self._attempts):
            self._emit(functools.partial(listener.on_reconnecting, event))

    def _reconnected(self) -> None:
        with self._lock:
            self._state = "connected"
        event = ServiceEvent(self.host, "reconnected", None)
        for listener in list(self._reconnection):
            self._emit(functools.partial(listener.on_reconnected, event))


# -- receivers ---------------------------------------------------------------------------------


class _DirectReceiverBuilder:
    def __init__(self, service: _Service) -> None:
        self._service = service
        self._topics: list[str] = []

    def with_subscriptions(self, subscriptions: list[TopicSubscription]) -> _DirectReceiverBuilder:
        for subscription in subscriptions:
            _check(subscription, TopicSubscription)
            self._topics.append(subscription.get_name())
        return self

    def on_back_pressure_elastic(self) -> _DirectReceiverBuilder:
        return self

    def build(self) -> _Receiver:
        return _Receiver(self._service, self._topics)


class _PersistentReceiverBuilder:
    def __init__(self, service: _Service) -> None:
        self._service = service
        self._topics: list[str] = []
        self._client_ack = False
        self._outcomes: set[Outcome] = {Outcome.ACCEPTED}
        self._create = False

    def with_subscriptions(
        self, subscriptions: list[TopicSubscription]
    ) -> _PersistentReceiverBuilder:
        for subscription in subscriptions:
            _check(subscription, TopicSubscription)
            self._topics.append(subscription.get_name())
        return self

    def with_message_client_acknowledgement(self) -> _PersistentReceiverBuilder:
        self._client_ack = True
        return self

    def with_required_message_outcome_support(
        self, *outcomes: Outcome
    ) -> _PersistentReceiverBuilder:
        self._outcomes.update(outcomes)
        return self

    def with_missing_resources_creation_strategy(
        self, strategy: MissingResourcesCreationStrategy
    ) -> _PersistentReceiverBuilder:
        self._create = strategy is MissingResourcesCreationStrategy.CREATE_ON_START
        return self

    def build(self, endpoint_to_consume_from: Queue) -> _PersistentReceiver:
        _check(endpoint_to_consume_from, Queue)
        if not self._client_ack:
            raise PubSubPlusClientError("the fake supports client acknowledgement only")
        return _PersistentReceiver(
            self._service, self._topics, endpoint_to_consume_from, self._outcomes, self._create
        )


class _Receiver:
    """A direct receiver; the base of the persistent one."""

    kind = "direct-receiver"

    def __init__(self, service: _Service, topics: list[str]) -> None:
        self.topics = topics
        self._service = service
        self._state = "not started"
        self._condition = threading.Condition()
        self._inbox: deque[InboundMessage] = deque()
        self._paused = False
        self._handler: MessageHandler | None = None
        self._worker: _Worker | None = None
        self._termination: TerminationNotificationListener | None = None

    def set_termination_notification_listener(
        self, listener: TerminationNotificationListener
    ) -> None:
        _check(listener, TerminationNotificationListener)
        self._termination = listener

    def start(self) -> _Receiver:
        if self._state == "started":
            return self
        if self._state != "not started":
            raise IllegalStateError(f"cannot start a receiver that is {self._state}")
        broker = self._service.broker()
        self._state = "started"  # before registering: the broker may deliver at once
        try:
            self._register(broker)
        except BaseException:
            self._state = "not started"
            raise
        self._service._receivers.add(self)
        return self

    def _register(self, broker: FakeBroker) -> None:
        broker.subscribe(self)

    def receive_async(self, message_handler: MessageHandler) -> None:
        _check(message_handler, MessageHandler)
        if self._state != "started":
            raise IllegalStateError(f"the receiver is {self._state}")
        self._handler = message_handler
        if self._worker is None:
            self._worker = _Worker(self.kind, self._dispatch)

    def is_running(self) -> bool:
        return self._state == "started"

    def is_terminated(self) -> bool:
        return self._state == "terminated"

    def terminate(self, grace_period: int = 10000) -> None:
        if self._state != "started":
            return
        undelivered = self._end(notify=False)
        if undelivered:
            raise IncompleteMessageDeliveryError(f"{undelivered} messages were not dispatched")

    def _end(self, *, notify: bool, reason: str = "") -> int:
        """Stop dispatching, leave the broker, join the dispatch thread; how many messages were
        left undispatched."""
        with self._condition:
            if self._state != "started":
                return 0
            self._state = "terminated"
            undelivered = len(self._inbox)
            self._inbox.clear()
        broker = self._service._broker
        if broker is not None:
            broker.release(self)
        self._service._receivers.discard(self)
        if self._worker is not None:

            def wake() -> None:
                with self._condition:
                    self._condition.notify_all()

            self._worker.stop(wake)
        listener = self._termination
        if notify and listener is not None:
            event = TerminationEvent(f"receiver terminated: {reason}")
            self._service._emit(lambda: listener.on_termination(event))
        return undelivered

    def _deliver(self, message: InboundMessage) -> None:
        """From the broker (any thread, never blocks)."""
        with self._condition:
            if self._state == "started":
                self._inbox.append(message)
                self._condition.notify_all()

    def _dispatch(self, stopping: threading.Event) -> None:
        while True:
            with self._condition:
                while not stopping.is_set() and (not self._inbox or self._paused):
                    self._condition.wait()
                if stopping.is_set():
                    return
                message = self._inbox.popleft()
                handler = self._handler
            try:
                assert handler is not None
                handler.on_message(message)
            except Exception:  # as the real API: logged, and the next message goes on
                log.warning("message handler failed", exc_info=True)


class _PersistentReceiver(_Receiver):
    kind = "persistent-receiver"

    def __init__(
        self,
        service: _Service,
        topics: list[str],
        queue: Queue,
        outcomes: set[Outcome],
        create: bool,
    ) -> None:
        super().__init__(service, topics)
        self.queue = queue
        self._outcomes = outcomes
        self._create = create

    def _register(self, broker: FakeBroker) -> None:
        broker.bind(
            self,
            self.queue.get_name(),
            exclusive=self.queue.is_exclusively_accessible(),
            create=self._create,
            subscriptions=self.topics,
        )

    def _outstanding(self, outstanding: dict[int, tuple[Stored, _PersistentReceiver]]) -> int:
        return sum(1 for _, flow in outstanding.values() if flow is self)

    def pause(self) -> None:
        self._require_started()
        with self._condition:
            self._paused = True

    def resume(self) -> None:
        self._require_started()
        with self._condition:
            self._paused = False
            self._condition.notify_all()

    def ack(self, message: InboundMessage) -> None:
        self.settle(message, Outcome.ACCEPTED)

    def settle(self, message: InboundMessage, outcome: Outcome = Outcome.ACCEPTED) -> None:
        _check(message, InboundMessage)
        _check(outcome, Outcome)
        if outcome not in self._outcomes:
            raise PubSubPlusClientError(f"outcome {outcome.name} was not configured as required")
        if self._state != "started":
            raise IllegalStateError(f"unable to acknowledge: the receiver is {self._state}")
        self._service.broker().settle(self, message.message_id, outcome.value)

    def _require_started(self) -> None:
        if not self._service.is_connected:
            raise IllegalStateError("the service is not connected")
        if self._state != "started":
            raise IllegalStateError(f"the receiver is {self._state}")


# -- publishers --------------------------------------------------------------------------------


class _PublisherBuilder:
    def __init__(self, service: _Service, *, persistent: bool) -> None:
        self._service = service
        self._persistent = persistent
        self._capacity: int | None = None  # None: elastic

    def on_back_pressure_reject(self, buffer_capacity: int) -> _PublisherBuilder:
        self._capacity = buffer_capacity
        return self

    def on_back_pressure_elastic(self) -> _PublisherBuilder:
        self._capacity = None
        return self

    def build(self) -> _Publisher:
        return _Publisher(self._service, self._persistent, self._capacity)


class _Publisher:
    def __init__(self, service: _Service, persistent: bool, capacity: int | None) -> None:
        self._service = service
        self._persistent = persistent
        self._capacity = capacity
        self._state = "not started"
        self._condition = threading.Condition()
        self._buffer: deque[tuple[OutboundMessage, Topic, Any]] = deque()
        self._full = False
        self._readiness: PublisherReadinessListener | None = None
        self._receipts: MessagePublishReceiptListener | None = None
        self._worker: _Worker | None = None

    def set_publisher_readiness_listener(self, listener: PublisherReadinessListener) -> None:
        _check(listener, PublisherReadinessListener)
        self._readiness = listener

    def set_message_publish_receipt_listener(self, listener: MessagePublishReceiptListener) -> None:
        _check(listener, MessagePublishReceiptListener)
        self._receipts = listener

    def start(self) -> _Publisher:
        if self._state == "started":
            return self
        self._service.broker()  # the service must be connected
        self._state = "started"
        self._service._publishers.add(self)
        self._worker = _Worker("publisher", self._send)
        return self

    def is_ready(self) -> bool:
        return self._state == "started" and not self._full

    def publish(
        self,
        message: OutboundMessage,
        destination: Topic,
        user_context: Any = None,
        additional_message_properties: dict[str, Any] | None = None,
    ) -> None:
        _check(message, OutboundMessage)
        _check(destination, Topic)
        if self._state != "started" or not self._service.is_connected:
            raise IllegalStateError(f"unable to publish: the publisher is {self._state}")
        with self._condition:
            if self._capacity is not None and len(self._buffer) >= self._capacity:
                self._full = True
                raise PublisherOverflowError(f"buffer full: {len(self._buffer)}")
            self._buffer.append((message, destination, user_context))
            self._condition.notify_all()

    def terminate(self, grace_period: int = 10000) -> None:
        if self._state != "started":
            return
        deadline = time.monotonic() + grace_period / 1000
        with self._condition:
            while self._buffer and time.monotonic() < deadline:
                self._condition.wait(0.01)
        self._down("publisher terminated")

    def _down(self, reason: str) -> None:
        with self._condition:
            if self._state != "started":
                return
            self._state = "terminated"
            unsent = list(self._buffer)
            self._buffer.clear()
            self._condition.notify_all()
        self._service._publishers.discard(self)
        if self._worker is not None:

            def wake() -> None:
                with self._condition:
                    self._condition.notify_all()

            self._worker.stop(wake)
        if self._persistent and self._receipts is not None:
            for message, _, context in unsent:  # reported on the caller's thread: a foreign one
                self._receipts.on_publish_receipt(
                    PublishReceipt(message, PubSubPlusClientError(reason), context)
                )

    def _send(self, stopping: threading.Event) -> None:
        while True:
            with self._condition:
                while not self._buffer and not stopping.is_set():
                    self._condition.wait()
                if stopping.is_set():
                    return
                message, destination, context = self._buffer[0]
            broker = self._service._broker
            assert broker is not None
            if self._persistent:
                broker.wait_for_receipts(stopping)
                if stopping.is_set():
                    return  # _down reports what is still buffered, this message included
            with self._condition:
                if not self._buffer or self._buffer[0][0] is not message:
                    continue
                self._buffer.popleft()
                ready = self._full and (
                    self._capacity is None or len(self._buffer) < self._capacity
                )
                if ready:
                    self._full = False
                self._condition.notify_all()
            error: PubSubPlusClientError | None = None
            if self._persistent and broker.refuse_publishes is not None:
                error = MessageRejectedByBrokerError(broker.refuse_publishes)
            else:
                broker.publish(_stored(message, destination), persistent=self._persistent)
            if self._persistent and self._receipts is not None:
                self._receipts.on_publish_receipt(PublishReceipt(message, error, context))
            if ready and self._readiness is not None:
                self._readiness.ready()


def _stored(message: OutboundMessage, destination: Topic) -> Stored:
    payload = message.payload
    return Stored(
        payload=bytes(payload) if isinstance(payload, bytearray) else None,
        text=payload if isinstance(payload, str) else None,
        destination=destination.get_name(),
        application_message_id=message.application_message_id,
        correlation_id=message.correlation_id,
        properties=dict(message.properties),
    )
