"""The RabbitMQ endpoint through the conformance suite, against the harness's RabbitMQ node.

Both ways of consuming: a shared ``queue_in`` (competing consumers: a client's next consumer gets
what its last one left unacked) and ``exchange`` broadcast (a per-session exclusive queue). Each
test gets a queue or exchange of its own and a fresh endpoint (its own connection and I/O thread).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio

from mediation.config import RabbitMQConfig
from mediation.endpoints import EndpointState
from mediation.endpoints.rabbitmq import RabbitMQEndpoint
from tests.brokers import RabbitMQ

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
from .conformance.suite import receive


@asynccontextmanager
async def running_endpoint(config: RabbitMQConfig) -> AsyncIterator[RabbitMQEndpoint]:
    endpoint = RabbitMQEndpoint(f"rabbitmq-{uuid.uuid4().hex[:8]}", config)
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(20):
            await endpoint.state.wait_value(EndpointState.UP)
        yield endpoint
        nursery.cancel_scope.cancel()


async def consumers_of(rabbitmq: RabbitMQ, queue: str) -> int:
    """The broker's consumer count of ``queue`` (0 once it is gone)."""
    counts = await trio.to_thread.run_sync(rabbitmq.queue_counts, queue)
    return 0 if counts is None else counts.consumers


def _queue_exists(rabbitmq: RabbitMQ, queue: str) -> bool:
    """Whether ``queue`` exists, exclusive queues of other connections included (a passive
    declare of one is refused with 405 RESOURCE_LOCKED rather than answered)."""
    import pika.exceptions

    connection = rabbitmq.connection()
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code in (404, 405):
            return error.reply_code == 405
        raise
    finally:
        with suppress(Exception):
            connection.close()


async def session_queues(rabbitmq: RabbitMQ, queue: str) -> int:
    """1 while the per-session queue exists, else 0. It is exclusive (other connections cannot
    ask for its consumer count) and auto-delete: it exists exactly while its consumer does."""
    return int(await trio.to_thread.run_sync(_queue_exists, rabbitmq, queue))


def _delete_exchange(rabbitmq: RabbitMQ, exchange: str) -> None:
    with rabbitmq.channel() as channel:
        channel.exchange_delete(exchange)  # type: ignore[attr-defined]


class TestRabbitMQSharedQueueConformance(
    DeliveryConformance, EndpointConformance, ClientResumeConformance
):
    @pytest.fixture
    async def under_test(self, rabbitmq: RabbitMQ) -> AsyncIterator[EndpointUnderTest]:
        queue = rabbitmq.unique_name("conformance")
        config = RabbitMQConfig(url=rabbitmq.amqp_url, queue_in=queue, queue_out=queue)
        try:
            async with running_endpoint(config) as endpoint:
                yield EndpointUnderTest(
                    endpoint,
                    lambda: consumers_of(rabbitmq, queue),
                    redelivers_in_session=True,
                    resumes_for_client=True,
                )
        finally:
            await trio.to_thread.run_sync(rabbitmq.delete_queue, queue)

    async def test_one_clients_consumer_does_not_hold_up_another(
        self, under_test: EndpointUnderTest
    ) -> None:
        """Competing consumers share one stream, so the suite's version (every client gets every
        event) does not apply: a stalled consumer holds its credit's worth and no more, the
        other one gets the rest in order, and what the stalled one held comes back when it
        leaves."""
        async with under_test.consumer("reading") as reading:
            async with under_test.consumer("stalled", channel_size=1):
                for n in range(5):
                    await under_test.publish(b"%d" % n)
                received = []
                for _ in range(4):
                    delivery = await receive(reading)
                    received.append(delivery.event.payload)
                    await delivery.ack()
                held = ({b"%d" % n for n in range(5)} - set(received)).pop()
                assert received == sorted(received)
            delivery = await receive(reading)
            assert delivery.event.payload == held
            assert delivery.event.metadata["redelivered"] == "true"
            await delivery.ack()


class TestRabbitMQBroadcastConformance(DeliveryConformance, EndpointConformance):
    @pytest.fixture
    async def under_test(self, rabbitmq: RabbitMQ) -> AsyncIterator[EndpointUnderTest]:
        exchange = rabbitmq.unique_name("conformance-x")
        # Queue names without {session_id}, so that the test can name the one it counts (the
        # suite's release test uses one consumer, of client "c1").
        config = RabbitMQConfig(
            url=rabbitmq.amqp_url,
            exchange=exchange,
            binding_key="#",
            routing_key="events",
            session_queue=f"{exchange}.{{client_id}}",
        )
        try:
            async with running_endpoint(config) as endpoint:
                yield EndpointUnderTest(
                    endpoint,
                    lambda: session_queues(rabbitmq, f"{exchange}.c1"),
                    redelivers_in_session=True,
                    resumes_for_client=False,
                )
        finally:
            with suppress(Exception):
                await trio.to_thread.run_sync(_delete_exchange, rabbitmq, exchange)


class RabbitMQExchangeParams(ParamsAdapter):
    """Exchange mode: each session's queue bound with ``orders.{order_id}``, publishes routed
    with ``orders.{order_id}``."""

    name = "rabbit"

    def __init__(self, rabbitmq: RabbitMQ) -> None:
        self.rabbitmq = rabbitmq
        self.exchange = rabbitmq.unique_name("orders-x")

    def table(self) -> dict[str, Any]:
        config = {
            "url": self.rabbitmq.amqp_url,
            "exchange": self.exchange,
            "binding_key": "orders.{order_id}",
            "routing_key": "orders.{order_id}",
            "session_queue": f"{self.exchange}.{{order_id}}.{{session_id}}",
        }
        return {"type": "rabbitmq", "config": config}

    async def consumers(self, engine: MediationEngine, orders: tuple[str, ...]) -> int:
        """Per-session queues of the orders on the broker (exclusive, auto-delete: each exists
        exactly while its consumer does), listed by rabbitmqctl."""
        queues = await trio.to_thread.run_sync(self.rabbitmq.list_queues)
        prefixes = tuple(f"{self.exchange}.{order}." for order in orders)
        return sum(1 for queue in queues if queue.startswith(prefixes))


class TestRabbitMQExchangeParams(ParamsConformance, SeveralSubscriptionsConformance):
    @pytest.fixture
    async def params_adapter(self, rabbitmq: RabbitMQ) -> AsyncIterator[ParamsAdapter]:
        adapter = RabbitMQExchangeParams(rabbitmq)
        try:
            yield adapter
        finally:
            with suppress(Exception):
                await trio.to_thread.run_sync(_delete_exchange, rabbitmq, adapter.exchange)
