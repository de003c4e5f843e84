"""The fake's broker: topic routing, durable queues with redelivery, and the test controls.

One :class:`FakeBroker` stands for one PubSub+ event broker (one message VPN). Clients find it by
the host they connect to, through :func:`open_broker`, which registers it for the duration of a
test, the way a hostname resolves to a machine.

Routing follows the broker: a message published to a topic goes to every direct subscriber whose
subscription matches (persistent messages are demoted to direct for them) and is spooled to every
queue with a matching topic subscription (direct messages are promoted). A queue hands its
messages to the flows bound to it (round-robin; an exclusive queue to its first flow only), keeps
each one until it is settled, and puts back (marked redelivered) what was settled ``FAILED`` or
was outstanding on a flow that closed.

Everything here runs under one lock and never blocks: deliveries go to the receivers' own inboxes,
which their dispatch threads empty.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._api import _PersistentReceiver, _Receiver, _Service

# How many messages a queue hands one flow before it acknowledges some (the broker's
# max-delivered-unacked-msgs-per-flow; the real default is 10000).
FLOW_WINDOW = 1000


def topic_matches(subscription: str, topic: str) -> bool:
    """Solace topic matching: ``*`` is one level (or, ending a level, a prefix within it), ``>``
    at the end is one or more levels."""
    pattern = subscription.split("/")
    levels = topic.split("/")
    for i, part in enumerate(pattern):
        if part == ">" and i == len(pattern) - 1:
            return len(levels) > i
        if i >= len(levels):
            return False
        if part == "*":
            continue
        if part.endswith("*") and not levels[i].startswith(part[:-1]):
            return False
        if not part.endswith("*") and part != levels[i]:
            return False
    return len(levels) == len(pattern)


@dataclass
class Stored:
    """A message as the broker holds it."""

    payload: bytes | None
    text: str | None
    destination: str
    application_message_id: str | None
    correlation_id: str | None
    properties: dict[str, Any]
    sequence: int = 0
    redelivered: bool = False

    def __lt__(self, other: Stored) -> bool:  # queues keep publication order
        return self.sequence < other.sequence


@dataclass
class _Queue:
    name: str
    exclusive: bool
    subscriptions: set[str] = field(default_factory=set)
    pending: list[Stored] = field(default_factory=list)  # not yet delivered, in order
    outstanding: dict[int, tuple[Stored, _PersistentReceiver]] = field(default_factory=dict)
    flows: list[_PersistentReceiver] = field(default_factory=list)
    next_flow: int = 0


class FakeBroker:
    def __init__(self, host: str) -> None:
        self.host = host
        self.lock = threading.RLock()
        self.available = True
        self.services: set[_Service] = set()
        self.direct: set[_Receiver] = set()
        self.queues: dict[str, _Queue] = {}
        # receivers_started, receivers_terminated, connects, published_direct, published_persistent
        self.stats: Counter[str] = Counter()
        # Set: persistent publishes are spooled and confirmed; cleared: they wait.
        self._receipts_flowing = threading.Event()
        self._receipts_flowing.set()
        # A reason to refuse persistent publishes with, or None.
        self.refuse_publishes: str | None = None
        self._sequence = itertools.count(1)

    # -- test controls -------------------------------------------------------------------------

    def interrupt(self, reason: str = "simulated outage") -> None:
        """The broker goes away: every session is down for good (the API's reconnection attempts
        fail), receivers end, and new connections are refused until :meth:`recover`."""
        with self.lock:
            self.available = False
            services = list(self.services)
        for service in services:
            service._transport_down(reason)

    def recover(self) -> None:
        with self.lock:
            self.available = True

    def reconnect(self, reason: str = "simulated network blip") -> None:
        """A blip the API recovers from: every session reports reconnecting, then reconnected."""
        with self.lock:
            services = list(self.services)
        for service in services:
            service._reconnecting(reason)
            service._reconnected()

    def hold_receipts(self) -> None:
        """Persistent publishes wait (unspooled, unconfirmed) until :meth:`release_receipts`."""
        self._receipts_flowing.clear()

    def release_receipts(self) -> None:
        self._receipts_flowing.set()

    def wait_for_receipts(self, stopping: threading.Event) -> None:
        while not self._receipts_flowing.wait(0.01) and not stopping.is_set():
            pass

    # -- what tests look at --------------------------------------------------------------------

    def receiver_count(self) -> int:
        """Receivers bound or subscribed right now (direct and persistent)."""
        with self.lock:
            return len(self.direct) + sum(len(q.flows) for q in self.queues.values())

    def queue_depth(self, name: str) -> int:
        """Messages a queue holds (waiting, and delivered but not yet acknowledged)."""
        with self.lock:
            queue = self.queues.get(name)
            return 0 if queue is None else len(queue.pending) + len(queue.outstanding)

    # -- what the client side calls ------------------------------------------------------------

    def attach(self, service: _Service) -> None:
        with self.lock:
            if not self.available:
                from ._api import ServiceUnreachableError

                raise ServiceUnreachableError(f"{self.host}: connection refused")
            self.services.add(service)
            self.stats["connects"] += 1

    def detach(self, service: _Service) -> None:
        with self.lock:
            self.services.discard(service)

    def subscribe(self, receiver: _Receiver) -> None:
        with self.lock:
            self.direct.add(receiver)
            self.stats["receivers_started"] += 1

    def bind(
        self,
        receiver: _PersistentReceiver,
        name: str,
        *,
        exclusive: bool,
        create: bool,
        subscriptions: list[str],
    ) -> None:
        from ._api import PubSubPlusClientError

        with self.lock:
            queue = self.queues.get(name)
            if queue is None:
                if not create:
                    raise PubSubPlusClientError(f"Unknown Queue: {name}")
                queue = self.queues[name] = _Queue(name, exclusive)
            queue.subscriptions.update(subscriptions)  # duplicates are ignored, as configured
            queue.flows.append(receiver)
            self.stats["receivers_started"] += 1
            self._pump(queue)

    def release(self, receiver: _Receiver) -> None:
        """A receiver ended (terminated, or its session went down): forget its subscriptions,
        and put back what its flow had outstanding."""
        with self.lock:
            if receiver in self.direct:
                self.direct.discard(receiver)
                self.stats["receivers_terminated"] += 1
                return
            for queue in self.queues.values():
                if receiver in queue.flows:
                    queue.flows.remove(receiver)
                    self.stats["receivers_terminated"] += 1
                    for key, (stored, flow) in list(queue.outstanding.items()):
                        if flow is receiver:
                            del queue.outstanding[key]
                            self._requeue(queue, stored)
                    self._pump(queue)

    def publish(self, stored: Stored, *, persistent: bool) -> None:
        from ._api import InboundMessage

        with self.lock:
            stored.sequence = next(self._sequence)
            self.stats["published_persistent" if persistent else "published_direct"] += 1
            for receiver in list(self.direct):
                if any(topic_matches(s, stored.destination) for s in receiver.topics):
                    receiver._deliver(InboundMessage(stored, persistent=False))
            for queue in self.queues.values():
                if any(topic_matches(s, stored.destination) for s in queue.subscriptions):
                    bisect.insort(queue.pending, _copy(stored))
                    self._pump(queue)

    def settle(self, receiver: _PersistentReceiver, message_id: int, outcome: int) -> None:
        """ACCEPTED (0) and REJECTED (3) remove the message; FAILED (2) redelivers it."""
        with self.lock:
            for queue in self.queues.values():
                entry = queue.outstanding.get(message_id)
                if entry is not None and entry[1] is receiver:
                    del queue.outstanding[message_id]
                    if outcome == 2:
                        self._requeue(queue, entry[0])
                    self._pump(queue)
                    return

    # -- internals -----------------------------------------------------------------------------

    def _requeue(self, queue: _Queue, stored: Stored) -> None:
        stored.redelivered = True
        bisect.insort(queue.pending, stored)

    def _pump(self, queue: _Queue) -> None:
        from ._api import InboundMessage

        while queue.pending and queue.flows:
            flows = queue.flows[:1] if queue.exclusive else queue.flows
            open_flows = [f for f in flows if f._outstanding(queue.outstanding) < FLOW_WINDOW]
            if not open_flows:
                return
            flow = open_flows[queue.next_flow % len(open_flows)]
            queue.next_flow += 1
            stored = queue.pending.pop(0)
            message_id = next(self._sequence)
            queue.outstanding[message_id] = (stored, flow)
            flow._deliver(InboundMessage(stored, persistent=True, message_id=message_id))


def _copy(stored: Stored) -> Stored:
    return Stored(
        payload=stored.payload,
        text=stored.text,
        destination=stored.destination,
        application_message_id=stored.application_message_id,
        correlation_id=stored.correlation_id,
        properties=dict(stored.properties),
        sequence=stored.sequence,
    )


_network: dict[str, FakeBroker] = {}
_network_lock = threading.Lock()
_hosts = itertools.count(1)


@contextmanager
def open_broker() -> Iterator[FakeBroker]:
    """A broker reachable at ``broker.host`` for the duration of the block."""
    broker = FakeBroker(f"tcp://solace-fake-{next(_hosts)}:55555")
    with _network_lock:
        _network[broker.host] = broker
    try:
        yield broker
    finally:
        with _network_lock:
            del _network[broker.host]


def lookup(host: str) -> FakeBroker | None:
    with _network_lock:
        return _network.get(host)
