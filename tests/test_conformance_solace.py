"""The Solace endpoint through the conformance suite, on the fake of the Solace API.

Twice: with direct messaging (chosen by the guarantees ``none``, ``auto`` and ``at_most_once``;
these consumers use ``auto``), where nothing is redelivered, and with persistent messaging
(``at_least_once``, the suite's default), where each client has a queue of its own, so a nacked
message comes back in the same session and what a consumer left unsettled goes to the client's
next one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mediation.config import RouteConfig

from .conformance import ClientResumeConformance, EndpointConformance, EndpointUnderTest
from .solace_fake import open_broker
from .solace_fake.harness import running_endpoint


class DirectUnderTest(EndpointUnderTest):
    def route(self, guarantee: str = "auto", channel_size: int = 4) -> RouteConfig:
        return super().route(guarantee, channel_size)


class TestSolaceDirectConformance(EndpointConformance):
    @pytest.fixture
    async def under_test(self) -> AsyncIterator[EndpointUnderTest]:
        with open_broker() as broker:
            async with running_endpoint(broker) as endpoint:

                async def subscriptions() -> int:
                    return broker.receiver_count()

                yield DirectUnderTest(
                    endpoint, subscriptions, redelivers_in_session=False, resumes_for_client=False
                )


class TestSolacePersistentConformance(EndpointConformance, ClientResumeConformance):
    @pytest.fixture
    async def under_test(self) -> AsyncIterator[EndpointUnderTest]:
        with open_broker() as broker:
            async with running_endpoint(broker, queue_in="q/{client_id}") as endpoint:

                async def subscriptions() -> int:
                    return broker.receiver_count()

                yield EndpointUnderTest(
                    endpoint, subscriptions, redelivers_in_session=True, resumes_for_client=True
                )
