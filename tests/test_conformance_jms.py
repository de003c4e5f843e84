"""The jms endpoint (AMQP 1.0) through the conformance suite, against RabbitMQ's AMQP 1.0 plugin.

Each test gets a fanout exchange of its own and one durable queue per client bound to it: the
endpoint consumes ``/amq/queue/<base>-{client_id}`` and publishes to ``/exchange/<base>``, so
every client has its own subscription (seed 000) and a client's next consumer finds what its last
one left unsettled (``ClientResumeConformance``). The queues and the exchange are made and removed
with pika (AMQP 0-9-1): AMQP 1.0 has no way to declare a durable queue on RabbitMQ 3.10 or to
delete one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

from mediation.config import JMSConfig
from mediation.endpoints.base import EndpointState
from mediation.endpoints.jms import JMSEndpoint

from .brokers import RabbitMQ
from .conformance import (
    ClientResumeConformance,
    DeliveryConformance,
    EndpointConformance,
    EndpointUnderTest,
    ParamsAdapter,
    ParamsConformance,
    SeveralSubscriptionsConformance,
)
from .conformance.params import MediationEngine

# The client ids the suite uses.
CLIENTS = ("c1", "stalled", "reading")


@contextmanager
def fanout(rabbitmq: RabbitMQ, clients: tuple[str, ...]) -> Iterator[str]:
    """A fanout exchange and one durable queue per client bound to it; all deleted on exit."""
    base = rabbitmq.unique_name("jms")
    with rabbitmq.channel() as channel:
        channel.exchange_declare(base, "fanout", durable=True)  # type: ignore[attr-defined]
        for client in clients:
            channel.queue_declare(f"{base}-{client}", durable=True)  # type: ignore[attr-defined]
            channel.queue_bind(f"{base}-{client}", base)  # type: ignore[attr-defined]
    try:
        yield base
    finally:
        with rabbitmq.channel() as channel:
            for client in clients:
                channel.queue_delete(f"{base}-{client}")  # type: ignore[attr-defined]
            channel.exchange_delete(base)  # type: ignore[attr-defined]


class TestJMSConformance(DeliveryConformance, EndpointConformance, ClientResumeConformance):
    @pytest.fixture
    async def under_test(self, rabbitmq: RabbitMQ) -> AsyncIterator[EndpointUnderTest]:
        with fanout(rabbitmq, CLIENTS) as base:
            config = JMSConfig(
                url=rabbitmq.amqp1_url,
                queue_in=f"/amq/queue/{base}-{{client_id}}",
                queue_out=f"/exchange/{base}",
            )
            endpoint = JMSEndpoint("jms", config)
            async with trio.open_nursery() as nursery:
                await nursery.start(endpoint.run)
                with trio.fail_after(20):
                    await endpoint.state.wait_value(EndpointState.UP)

                async def subscriptions() -> int:
                    counts = await trio.to_thread.run_sync(rabbitmq.queue_counts, f"{base}-c1")
                    assert counts is not None
                    return counts.consumers

                yield EndpointUnderTest(
                    endpoint, subscriptions, redelivers_in_session=True, resumes_for_client=True
                )
                nursery.cancel_scope.cancel()
            assert endpoint.stats["over_credit"] == 0


class JMSParams(ParamsAdapter):
    """A durable queue ``<base>-N`` per order, made with pika: the endpoint consumes and
    publishes ``/amq/queue/<base>-{order_id}``."""

    name = "jms"

    def __init__(self, rabbitmq: RabbitMQ) -> None:
        self.rabbitmq = rabbitmq
        self.base = rabbitmq.unique_name("orders")
        self.queues: list[str] = []

    def table(self) -> dict[str, Any]:
        address = f"/amq/queue/{self.base}-{{order_id}}"
        config = {"url": self.rabbitmq.amqp1_url, "queue_in": address, "queue_out": address}
        return {"type": "jms", "config": config}

    async def prepare(self, orders: tuple[str, ...]) -> None:
        def declare() -> None:
            with self.rabbitmq.channel() as channel:
                for order in orders:
                    self.queues.append(f"{self.base}-{order}")
                    channel.queue_declare(self.queues[-1], durable=True)  # type: ignore[attr-defined]

        await trio.to_thread.run_sync(declare)

    async def consumers(self, engine: MediationEngine, orders: tuple[str, ...]) -> int:
        """The broker's consumer count of each order's queue."""
        total = 0
        for order in orders:
            counts = await trio.to_thread.run_sync(
                self.rabbitmq.queue_counts, f"{self.base}-{order}"
            )
            total += 0 if counts is None else counts.consumers
        return total

    def delete(self) -> None:
        with self.rabbitmq.channel() as channel:
            for queue in self.queues:
                channel.queue_delete(queue)  # type: ignore[attr-defined]


class TestJMSParams(ParamsConformance, SeveralSubscriptionsConformance):
    @pytest.fixture
    async def params_adapter(self, rabbitmq: RabbitMQ) -> AsyncIterator[ParamsAdapter]:
        adapter = JMSParams(rabbitmq)
        try:
            yield adapter
        finally:
            await trio.to_thread.run_sync(adapter.delete)
