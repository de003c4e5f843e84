"""The memory endpoint, the reference, through the conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from mediation.config import MemoryConfig
from mediation.endpoints.memory import MemoryEndpoint

from .conformance import (
    DeliveryConformance,
    EndpointConformance,
    EndpointUnderTest,
    ParamsAdapter,
    ParamsConformance,
    SeveralSubscriptionsConformance,
)
from .conformance.params import MediationEngine


class TestMemoryConformance(DeliveryConformance, EndpointConformance):
    @pytest.fixture
    async def under_test(self) -> AsyncIterator[EndpointUnderTest]:
        endpoint = MemoryEndpoint("mem", MemoryConfig(topic_in="t", topic_out="t", capacity=16))
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)

            async def subscriptions() -> int:
                return endpoint.subscriber_count("t")

            yield EndpointUnderTest(
                endpoint, subscriptions, redelivers_in_session=True, resumes_for_client=False
            )
            nursery.cancel_scope.cancel()


class MemoryParams(ParamsAdapter):
    name = "mem"

    def table(self) -> dict[str, Any]:
        names = {"topic_in": "orders/{order_id}", "topic_out": "orders/{order_id}"}
        return {"type": "memory", "config": names}

    async def consumers(self, engine: MediationEngine, orders: tuple[str, ...]) -> int:
        endpoint = engine.endpoints[self.name]
        assert isinstance(endpoint, MemoryEndpoint)
        return sum(endpoint.subscriber_count(f"orders/{order}") for order in orders)


class TestMemoryParams(ParamsConformance, SeveralSubscriptionsConformance):
    @pytest.fixture
    def params_adapter(self) -> ParamsAdapter:
        return MemoryParams()
