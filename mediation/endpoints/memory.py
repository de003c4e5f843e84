"""The embedded in-process broker: the reference endpoint, and what ``just run`` uses.

Topics live in the endpoint. Every consumer subscribed to ``topic_in`` receives what is published
to it after it subscribed (broadcast). Each subscriber has a bounded buffer of ``capacity`` events;
a publisher waits for a full subscriber, so a stalled client with ``slow_client = "block"``
slows the
publishers of its topic (the memory endpoint is a demo and a reference, not a store).

Like a broker's prefetch, a consumer is handed at most ``subscription.credit`` unsettled events.

Acks and nacks mean what they mean on a broker: an acked event is done; a nacked one is put back at
the head of the same subscriber's buffer and delivered again. A subscription that has ended has
nowhere to redeliver to, so events nacked after that are counted in ``stats.lost`` and logged.

For tests and demos, :meth:`MemoryEndpoint.fail` behaves as a broker outage (consumers raise
:class:`BrokerUnavailable`, publishes are refused, ``/readyz`` reports ``down``) until
:meth:`MemoryEndpoint.recover`.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
from trio_util import AsyncValue

from ..config import MemoryConfig
from ..errors import BrokerUnavailable
from ..events import Delivery, Event, Settle
from .base import Deliveries, EndpointState, Outbound, Subscription

log = logging.getLogger(__name__)


class _Subscriber:
    """A bounded FIFO whose head can take back a nacked event past the bound.

    The bound applies to new events only; redeliveries are already counted in the consumer's
    credit, so putting them back can neither block nor grow memory beyond credit + capacity.
    At most ``credit`` events are handed out and unsettled at a time (``out``), like a broker's
    prefetch: ``get`` waits for a settle beyond that.
    """

    def __init__(self, capacity: int, credit: int) -> None:
        self.capacity = capacity
        self.credit = max(1, credit)
        self.out = 0  # handed out, not settled
        self.events: deque[Event] = deque()
        self.redeliveries: deque[Event] = deque()
        self.not_empty = trio.lowlevel.ParkingLot()
        self.not_full = trio.lowlevel.ParkingLot()
        self.failure: BrokerUnavailable | None = None
        self.open = True

    async def put(self, event: Event) -> None:
        while self.open and len(self.events) >= self.capacity:
            await self.not_full.park()
        if self.open:
            self.events.append(event)
            if self.not_empty:  # unpark() costs even when no one waits
                self.not_empty.unpark()

    def put_back(self, event: Event) -> None:
        self.redeliveries.append(event)
        self.not_empty.unpark()

    def settled(self) -> None:
        self.out -= 1
        if self.not_empty:
            self.not_empty.unpark()

    async def get(self) -> Event:
        while True:
            if self.failure is not None:
                raise self.failure
            if self.out < self.credit:
                if self.redeliveries:
                    self.out += 1
                    return self.redeliveries.popleft()
                if self.events:
                    event = self.events.popleft()
                    if self.not_full:
                        self.not_full.unpark()
                    self.out += 1
                    return event
            await self.not_empty.park()

    def close(self, failure: BrokerUnavailable | None = None) -> None:
        self.open = False
        self.failure = failure
        self.not_empty.unpark_all()
        self.not_full.unpark_all()


class MemoryEndpoint:
    ids_are_positions = False

    def __init__(self, name: str, config: MemoryConfig) -> None:
        self.name = name
        self.config = config
        self.state = AsyncValue(EndpointState.CONNECTING)
        self.stats: Counter[str] = Counter()  # published, delivered, acked, nacked, lost
        self._topics: dict[str, set[_Subscriber]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.state.value = EndpointState.UP
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._fail_subscribers("memory endpoint stopped")
            self.state.value = EndpointState.DOWN

    def fail(self, reason: str = "simulated broker outage") -> None:
        """Behave as a broker that went away: end every consumer, refuse publishes."""
        self.state.value = EndpointState.DOWN
        self._fail_subscribers(reason)

    def recover(self) -> None:
        self.state.value = EndpointState.UP

    @asynccontextmanager
    async def consume(self, subscription: Subscription) -> AsyncIterator[AsyncIterator[Delivery]]:
        self._check_up()
        topic = subscription.fill(self.config.topic_in)
        subscriber = _Subscriber(self.config.capacity, subscription.credit)
        subscribers = self._topics.setdefault(topic, set())
        subscribers.add(subscriber)
        try:
            yield Deliveries(partial(self._next_delivery, subscriber))
        finally:
            subscriber.close()
            subscribers.discard(subscriber)
            if not subscribers and self._topics.get(topic) is subscribers:
                del self._topics[topic]

    async def publish(self, message: Outbound, *, confirm: bool) -> None:
        # Every subscriber's buffer accepting the event is this broker's confirmation, so
        # ``confirm`` changes nothing here.
        self._check_up()
        topic = message.fill(self.config.topic_out)
        for subscriber in tuple(self._topics.get(topic, ())):
            await subscriber.put(message.event)
        self.stats["published"] += 1

    def subscriber_count(self, topic: str) -> int:
        return len(self._topics.get(topic, ()))

    async def _next_delivery(self, subscriber: _Subscriber) -> Delivery:
        event = await subscriber.get()
        self.stats["delivered"] += 1
        return Delivery(event, self._settler(subscriber, event))

    def _settler(self, subscriber: _Subscriber, event: Event) -> Settle:
        async def settle(accepted: bool) -> None:
            subscriber.settled()
            if accepted:
                self.stats["acked"] += 1
                return
            self.stats["nacked"] += 1
            if subscriber.open:
                subscriber.put_back(event)
            else:
                self.stats["lost"] += 1
                log.warning(
                    "nacked event has no subscriber to go back to", extra={"event_id": event.id}
                )

        return settle

    def _check_up(self) -> None:
        if self.state.value is not EndpointState.UP:
            raise BrokerUnavailable(f"endpoint {self.name} is {self.state.value}")

    def _fail_subscribers(self, reason: str) -> None:
        for subscribers in self._topics.values():
            for subscriber in subscribers:
                subscriber.close(BrokerUnavailable(f"endpoint {self.name}: {reason}"))
