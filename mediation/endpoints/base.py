"""The interface every broker endpoint implements, and the small pieces they share.

An endpoint is three things:

- ``run(task_status=...)``: the task that owns the broker connection. The engine starts it with
  ``nursery.start`` and cancels it at shutdown. It connects, reconnects with backoff after a
  failure,
  and publishes its state (``connecting`` / ``up`` / ``down``) in ``state`` for ``/readyz``.
  It reports started before the first connection succeeds: the engine does not wait for brokers.
- ``consume(subscription)``: an async context manager that is one client's broker consumer. Entering
  it subscribes (it returns only once anything published afterwards will be received: Kafka
  partitions assigned, RabbitMQ ``basic_consume`` ok); iterating it yields :class:`Delivery`
  objects;
  leaving it, by any path, removes the broker-side subscription. It never holds more unsettled
  deliveries than ``subscription.credit``, so the broker's own flow control is the backpressure.
  A broker failure raises :class:`BrokerUnavailable` out of the iteration.
- ``publish(message, confirm=...)``: hands one event to the broker. With ``confirm`` it returns only
  once the broker confirmed it; without, once the client library accepted it. Failure raises
  :class:`BrokerUnavailable`.

Entering ``consume`` and leaving it are the per-client subscribe and unsubscribe of the lifecycle
(docs/design.md, "Lifecycle events"): the session manager does both exactly once per client
session.

Hostile or unusual broker messages: converting a broker message into an :class:`Event` never
raises out of a consumer. What can be carried safely is (text decoded with replacement
characters, odd values stringified); a message that still cannot be converted is settled so
that the broker does not hand it out again (rejected without requeue where the broker can
reject, else acknowledged and dropped; each endpoint's docstring says which), logged once
(without its payload), and reported to ``subscription.undeliverable(reason)``. It ends neither
the consumer, nor the connection that other sessions share, nor the engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

import trio
from trio_util import AsyncValue

from ..config import RouteConfig
from ..endpoint_state import EndpointState as EndpointState
from ..events import Delivery, Event
from ..params import fill


def _not_counted(reason: str) -> None:
    """The default ``Subscription.undeliverable``: nobody counts."""


def _not_told(reason: str) -> None:
    """The default ``Subscription.position_gone``: nobody is told."""


# ``Subscription.undeliverable`` reasons (a small fixed set: they are metric labels).
UNDECODABLE = "undecodable"  # the broker's bytes could not be read as a message
OVERSIZE = "oversize"  # larger than the endpoint accepts
UNSUPPORTED = "unsupported"  # a well-formed message of a kind no client can be given
CONVERSION_ERROR = "conversion_error"  # the client library or our code failed converting it


@dataclass(frozen=True)
class Subscription:
    """What one session's consumer is for: whose it is and how much it may hold.

    ``undeliverable(reason)`` is told of every broker message the consumer could not convert
    and settled without handing it out (``reason`` is one of :data:`UNDECODABLE`,
    :data:`OVERSIZE`, :data:`UNSUPPORTED`, :data:`CONVERSION_ERROR`). It may be called from a
    broker library's thread, so it must be thread-safe, never block and never raise (a
    Prometheus counter's ``inc`` is all three).
    """

    client_id: str
    session_id: str
    entrypoint: str
    route: RouteConfig
    # The position to resume right after (the last event id the client saw, its signature
    # checked: mediation/cursors.py); endpoints whose ids are positions use it.
    resume_after: str | None = None
    undeliverable: Callable[[str], None] = field(default=_not_counted, compare=False)
    # Resuming from a position the broker no longer holds (expired by retention, a deleted and
    # recreated topic): an endpoint with positions calls ``position_gone(reason)`` while
    # ``consume`` is being entered, before it returns, and then delivers from the oldest
    # position the broker has. The session tells the client (SSE ``event: reset``, envelope
    # ``{"reset": {"reason": ...}}``, the polling subscribe answer's ``"reset"``) before any
    # event, and counts it: the client sees an explicit reset, never a silent jump. Called in
    # the Trio thread; never raises. (Kafka's detection is pending: docs/design.md, "Resume".)
    position_gone: Callable[[str], None] = field(default=_not_told, compare=False)
    # The client's parameters (path, query) and usable token claims ("claims.NAME"), checked at
    # admission (mediation.params): what {name} and {claims.NAME} in a name are filled with.
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def credit(self) -> int:
        """How many unsettled deliveries the broker may hand this consumer at once."""
        return self.route.channel_size

    def fill(self, template: str) -> str:
        """Fill ``{client_id}``, ``{entrypoint}``, the parameters and the token claims in a
        topic, queue, key or group name (:func:`mediation.params.fill`: a value only ever fills
        its own slot, and never carries a wildcard)."""
        return fill(
            template, {**self.params, "client_id": self.client_id, "entrypoint": self.entrypoint}
        )


@dataclass(frozen=True)
class Outbound:
    """One event on its way to a broker, with the identity it was sent under."""

    event: Event
    route: RouteConfig
    client_id: str
    entrypoint: str
    # As Subscription.params: the publishing client's parameters and usable claims.
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Partition/routing key: the event id, or the client id when the route says so."""
        return self.client_id if self.route.key == "client_id" else self.event.id

    def fill(self, template: str) -> str:
        """As :meth:`Subscription.fill`, for a name published to."""
        return fill(
            template, {**self.params, "client_id": self.client_id, "entrypoint": self.entrypoint}
        )


class Deliveries:
    """A consumer's deliveries as an async iterator, read by calling ``next_delivery``.

    A class rather than an async generator: a generator left unfinished (every consumer is, at the
    end of its session) would be finalised by the garbage collector, not by its session.
    """

    __slots__ = ("_next_delivery",)

    def __init__(self, next_delivery: Callable[[], Awaitable[Delivery]]) -> None:
        self._next_delivery = next_delivery

    def __aiter__(self) -> Deliveries:
        return self

    def __anext__(self) -> Awaitable[Delivery]:
        # The endpoint's awaitable itself: a coroutine of our own around it would be one more
        # frame on every event's path.
        return self._next_delivery()


class Endpoint(Protocol):
    name: str
    state: AsyncValue[EndpointState]
    # The event ids this endpoint makes are its resume positions (Kafka's topic:partition:offset):
    # never replaced by the session, even where they break the id rule (only by length).
    ids_are_positions: bool

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    def consume(
        self, subscription: Subscription
    ) -> AbstractAsyncContextManager[AsyncIterator[Delivery]]: ...

    async def publish(self, message: Outbound, *, confirm: bool) -> None: ...


EndpointStates = Mapping[str, EndpointState]
