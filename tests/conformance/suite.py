"""The conformance suite (see the package docstring)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from mediation.ack_policy import AckPlan, Guarantee
from mediation.config import RouteConfig
from mediation.endpoints import Endpoint, Outbound, Subscription
from mediation.events import Delivery, Event

# Every wait in the suite is bounded: a broker that does not answer fails the test, never hangs it.
WAIT = 20.0


@dataclass
class EndpointUnderTest:
    """An endpoint, running, on a topic/queue of its own for this test."""

    endpoint: Endpoint
    # How many consumers the broker has for this test's topic or queue right now.
    subscriptions: Any  # async () -> int
    # A nacked event comes back to the same consumer (RabbitMQ, AMQP 1.0, memory).
    redelivers_in_session: bool
    # A client's next consumer gets what its last one left unacked (Kafka group, shared queues).
    resumes_for_client: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def resumes(self, plan: AckPlan) -> bool:
        """Whether a client's next consumer on a route with ``plan`` gets what its last one left
        unsettled (``resumes_for_client``, unless the guarantee picks how the endpoint consumes)."""
        return self.resumes_for_client

    def flow_controlled(self, plan: AckPlan) -> bool:
        """Whether the broker stops at the consumer's credit on a route with ``plan``."""
        return True

    def buffered(self, credit: int) -> int:
        """Without flow control: how many messages a consumer buffers for a client."""
        return credit

    def route(self, guarantee: str = "at_least_once", channel_size: int = 4) -> RouteConfig:
        return RouteConfig(
            source=self.endpoint.name,
            target="clients",
            direction="downstream",
            delivery_guarantee=Guarantee(guarantee),
            channel_size=channel_size,
        )

    @asynccontextmanager
    async def consumer(
        self, client_id: str = "c1", **route: Any
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        subscription = Subscription(
            client_id=client_id,
            session_id=str(uuid.uuid4()),
            entrypoint="clients",
            route=self.route(**route),
        )
        with trio.fail_after(WAIT):
            async with self.endpoint.consume(subscription) as deliveries:
                yield deliveries

    async def publish(self, payload: bytes, **metadata: str) -> Event:
        event = Event(payload, metadata=metadata)
        route = RouteConfig(source="clients", target=self.endpoint.name, direction="upstream")
        with trio.fail_after(WAIT):
            await self.endpoint.publish(
                Outbound(event=event, route=route, client_id="producer", entrypoint="clients"),
                confirm=True,
            )
        return event


async def receive(deliveries: AsyncIterator[Delivery]) -> Delivery:
    with trio.fail_after(WAIT):
        return await anext(deliveries)


class EndpointConformance:
    async def test_subscribed_when_entered(self, under_test: EndpointUnderTest) -> None:
        async with under_test.consumer() as deliveries:
            event = await under_test.publish(b"right after subscribing")
            assert (await receive(deliveries)).event.payload == event.payload

    async def test_delivers_in_order(self, under_test: EndpointUnderTest) -> None:
        async with under_test.consumer() as deliveries:
            for n in range(10):
                await under_test.publish(b"%d" % n)
            for n in range(10):
                delivery = await receive(deliveries)
                assert delivery.event.payload == b"%d" % n
                await delivery.ack()

    async def test_metadata_travels(self, under_test: EndpointUnderTest) -> None:
        async with under_test.consumer() as deliveries:
            await under_test.publish(
                b"with metadata", **{"x-trace-id": "t-1", "content-type": "text/plain"}
            )
            delivered = (await receive(deliveries)).event
            assert delivered.metadata["x-trace-id"] == "t-1"
            assert delivered.metadata["content-type"] == "text/plain"
            assert delivered.id  # every event has an id clients can confirm

    async def test_acked_events_are_not_delivered_again(
        self, under_test: EndpointUnderTest
    ) -> None:
        async with under_test.consumer() as deliveries:
            for n in range(3):
                await under_test.publish(b"%d" % n)
            for _ in range(3):
                await (await receive(deliveries)).ack()
            await under_test.publish(b"marker")
            assert (await receive(deliveries)).event.payload == b"marker"

    async def test_nacked_event_is_delivered_again(self, under_test: EndpointUnderTest) -> None:
        async with under_test.consumer() as deliveries:
            event = await under_test.publish(b"refused once")
            first = await receive(deliveries)
            assert first.event.payload == event.payload
            await first.nack()
            if under_test.redelivers_in_session:
                again = await receive(deliveries)
                assert (again.event.payload, again.event.id) == (
                    first.event.payload,
                    first.event.id,
                )
                await again.ack()
        if under_test.resumes_for_client and not under_test.redelivers_in_session:
            async with under_test.consumer() as deliveries:
                again = await receive(deliveries)
                assert again.event.payload == event.payload
                await again.ack()

    async def test_one_clients_consumer_does_not_hold_up_another(
        self, under_test: EndpointUnderTest
    ) -> None:
        async with (
            under_test.consumer("stalled", channel_size=1),
            under_test.consumer("reading") as reading,
        ):
            for n in range(5):
                await under_test.publish(b"%d" % n)
            for n in range(5):
                delivery = await receive(reading)
                assert delivery.event.payload == b"%d" % n
                await delivery.ack()

    @pytest.mark.parametrize("exit_path", ["normal", "error", "cancelled"])
    async def test_broker_side_consumer_released_on_every_exit_path(
        self, under_test: EndpointUnderTest, exit_path: str
    ) -> None:
        class Boom(Exception):
            pass

        assert await under_test.subscriptions() == 0
        with trio.CancelScope() as scope:
            try:
                async with under_test.consumer():
                    # Subscribed on enter; a broker's own view may lag a moment (tansu reports
                    # the group's state a little after the assignment), so ask until it agrees.
                    await _eventually(under_test.subscriptions, 1)
                    if exit_path == "error":
                        raise Boom
                    if exit_path == "cancelled":
                        scope.cancel()
                        await trio.sleep_forever()
            except Boom:
                pass
        # The broker learns of it asynchronously and has no way to tell us: ask until it knows.
        await _eventually(under_test.subscriptions, 0)


class ClientResumeConformance:
    """For endpoints where a client's next consumer resumes its last one (``resumes_for_client``):
    Kafka groups per client, shared RabbitMQ/AMQP queues. Mixed into their suites only."""

    async def test_unsettled_events_go_back_when_the_consumer_leaves(
        self, under_test: EndpointUnderTest
    ) -> None:
        async with under_test.consumer() as deliveries:
            await under_test.publish(b"left unsettled")
            await receive(deliveries)
        async with under_test.consumer() as deliveries:
            again = await receive(deliveries)
            assert again.event.payload == b"left unsettled"
            await again.ack()


async def _eventually(count: Callable[[], Awaitable[int]], expected: int) -> None:
    """Ask the broker until ``count()`` is ``expected`` (it has no way to tell us), within WAIT."""
    with trio.fail_after(WAIT):
        while await count() != expected:  # noqa: ASYNC110
            await trio.sleep(0.05)
