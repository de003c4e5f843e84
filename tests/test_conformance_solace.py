"""The Solace endpoint through the conformance suite, on the fake of the Solace API.

Twice: with direct messaging (chosen by the guarantees ``none``, ``auto`` and ``at_most_once``;
these consumers use ``auto``), where nothing is redelivered, and with persistent messaging
(``at_least_once``, the suite's default), where each client has a queue of its own, so a nacked
message comes back in the same session and what a consumer left unsettled goes to the client's
next one. The guarantee picks the receiver, so either endpoint has ``queue_in`` for
``at_least_once`` and ``topic_in`` for the others (what the delivery cases need of both).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from mediation.ack_policy import AckPlan
from mediation.config import RouteConfig
from mediation.endpoints.solace import SolaceEndpoint

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
from .solace_fake import FakeBroker, open_broker
from .solace_fake.harness import fake_table, running_endpoint

# A direct consumer's buffer: beyond what the suite's tests publish at once (10), small enough
# for the overflow case to pass it quickly.
DIRECT_BUFFER = 16


class SolaceUnderTest(EndpointUnderTest):
    """Direct receivers (none, auto, at_most_once) keep nothing for a client and have no flow
    control; a persistent one (at_least_once) reads the client's queue, paused at its credit."""

    def resumes(self, plan: AckPlan) -> bool:
        return plan.redelivers_unconfirmed

    def flow_controlled(self, plan: AckPlan) -> bool:
        return plan.redelivers_unconfirmed

    def buffered(self, credit: int) -> int:
        assert isinstance(self.endpoint, SolaceEndpoint)
        return max(credit, self.endpoint.config.direct_buffer)


class DirectUnderTest(SolaceUnderTest):
    def route(self, guarantee: str = "auto", channel_size: int = 4) -> RouteConfig:
        return super().route(guarantee, channel_size)


class TestSolaceDirectConformance(DeliveryConformance, EndpointConformance):
    @pytest.fixture
    async def under_test(self) -> AsyncIterator[EndpointUnderTest]:
        with open_broker() as broker:
            async with running_endpoint(
                broker, queue_in="q/{client_id}", direct_buffer=DIRECT_BUFFER
            ) as endpoint:

                async def subscriptions() -> int:
                    return broker.receiver_count()

                yield DirectUnderTest(
                    endpoint, subscriptions, redelivers_in_session=False, resumes_for_client=False
                )


class TestSolacePersistentConformance(
    DeliveryConformance, EndpointConformance, ClientResumeConformance
):
    @pytest.fixture
    async def under_test(self) -> AsyncIterator[EndpointUnderTest]:
        with open_broker() as broker:
            async with running_endpoint(broker, queue_in="q/{client_id}") as endpoint:

                async def subscriptions() -> int:
                    return broker.receiver_count()

                yield SolaceUnderTest(
                    endpoint, subscriptions, redelivers_in_session=True, resumes_for_client=True
                )


class SolaceParams(ParamsAdapter):
    """Direct topics ``orders/{order_id}``; at_least_once routes on a queue per order and
    client, subscribed to the order's topic."""

    name = "solace"

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker

    def table(self) -> dict[str, Any]:
        config = fake_table(
            self.broker,
            topic_in="orders/{order_id}",
            topic_out="orders/{order_id}",
            queue_in="orders-{order_id}-{client_id}",
        )
        return {"type": "solace", "config": config}

    async def consumers(self, engine: MediationEngine, orders: tuple[str, ...]) -> int:
        """Direct receivers subscribed to the orders' topics and flows bound to the orders'
        queues (at_least_once), counted by the fake broker."""
        topics = {f"orders/{order}" for order in orders}
        prefixes = tuple(f"orders-{order}-" for order in orders)
        with self.broker.lock:
            direct = sum(1 for r in self.broker.direct for topic in r.topics if topic in topics)
            flows = sum(
                len(queue.flows)
                for name, queue in self.broker.queues.items()
                if name.startswith(prefixes)
            )
        return direct + flows


class TestSolaceParams(ParamsConformance, SeveralSubscriptionsConformance):
    @pytest.fixture
    def params_adapter(self) -> Iterator[ParamsAdapter]:
        with open_broker() as broker:
            yield SolaceParams(broker)
