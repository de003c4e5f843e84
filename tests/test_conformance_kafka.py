"""The Kafka endpoint through the conformance suite, against tansu (a Kafka-protocol broker).

Each test gets a topic and an endpoint name of its own, so its consumer groups
(``mediation-{endpoint}-{client_id}``) are new too. Group joins on tansu take
``session.timeout.ms / 2``; the tests use 3000 ms (a ~1.5 s join) to keep the suite short.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import trio
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient, NewTopic

from mediation.config import KafkaConfig
from mediation.endpoints import EndpointState
from mediation.endpoints.kafka import KafkaEndpoint
from tests.brokers import Tansu

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

# A group join on tansu takes session.timeout.ms / 2.
FAST_GROUPS = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}
_EMPTY = {ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN}


def new_topic(admin: AdminClient, prefix: str, partitions: int = 1) -> str:
    """Create a fresh topic (blocking: call in a thread)."""
    topic = f"{prefix}-{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[
        topic
    ].result(10)
    return topic


def group_members(admin: AdminClient, group_prefix: str) -> int:
    """How many consumers the groups named ``group_prefix...`` have (blocking).

    tansu answers DescribeGroups without the member list (and ListGroups with no groups), so a
    group in a state that has members counts as one per group; the suite's release test needs
    exactly that (one consumer, in a group of its own).
    """
    listed = admin.list_consumer_groups().result(10)
    groups = [g.group_id for g in listed.valid if g.group_id.startswith(group_prefix)]
    if not groups:
        return 0
    count = 0
    for future in admin.describe_consumer_groups(groups).values():
        description = future.result(10)
        if description.state not in _EMPTY:
            count += len(description.members) or 1
    return count


async def running_endpoint(
    nursery: trio.Nursery, tansu: Tansu, topic: str, **config: object
) -> KafkaEndpoint:
    endpoint = KafkaEndpoint(
        f"kafka-{uuid.uuid4().hex[:8]}",
        KafkaConfig(
            brokers=tansu.bootstrap_servers,
            topic_in=topic,
            topic_out=topic,
            **{**FAST_GROUPS, **config},  # type: ignore[arg-type]
        ),
    )
    await nursery.start(endpoint.run)
    with trio.fail_after(20):
        await endpoint.state.wait_value(EndpointState.UP)
    return endpoint


class TestKafkaConformance(DeliveryConformance, EndpointConformance, ClientResumeConformance):
    @pytest.fixture
    async def under_test(self, tansu: Tansu) -> AsyncIterator[EndpointUnderTest]:
        admin = AdminClient(tansu.client_config())
        topic = await trio.to_thread.run_sync(new_topic, admin, "conformance")
        async with trio.open_nursery() as nursery:
            endpoint = await running_endpoint(nursery, tansu, topic, fetch="per_session")

            async def subscriptions() -> int:
                return await trio.to_thread.run_sync(
                    group_members, admin, f"mediation-{endpoint.name}-"
                )

            yield EndpointUnderTest(
                endpoint, subscriptions, redelivers_in_session=True, resumes_for_client=True
            )
            nursery.cancel_scope.cancel()


class KafkaParams(ParamsAdapter):
    """Topics ``<base>-{order_id}``, made before the clients come (topics with a placeholder
    are never created by the endpoint). Per session, the subscriptions are counted as the
    members of the orders' groups; shared, as the sessions of the orders' fetches (the groups
    have no members)."""

    name = "kafka"

    def __init__(self, tansu: Tansu, fetch: str) -> None:
        self.tansu = tansu
        self.fetch = fetch
        self.base = f"orders-{uuid.uuid4().hex[:12]}"

    def table(self) -> dict[str, Any]:
        topic = f"{self.base}-{{order_id}}"
        config = {
            "brokers": self.tansu.bootstrap_servers,
            "topic_in": topic,
            "topic_out": topic,
            # A group per order: a session's subscriptions must not share one (README,
            # "Choosing streams").
            "group_id": f"{self.base}-{{client_id}}-{{order_id}}",
            "fetch": self.fetch,
        }
        return {"type": "kafka", "config": {**config, **FAST_GROUPS}}

    async def consumers(self, engine: MediationEngine, orders: tuple[str, ...]) -> int:
        """Members of the orders' consumer groups (one per non-empty group: tansu does not
        list members; each order here has one client), or the shared fetches' sessions."""
        if self.fetch == "shared":
            fetches = cast(KafkaEndpoint, engine.endpoints[self.name])._fetches
            topics = {f"{self.base}-{o}" for o in orders}
            return sum(len(f.sessions) for t, f in fetches.items() if t in topics)
        admin = AdminClient(self.tansu.client_config())

        def count() -> int:
            listed = admin.list_consumer_groups().result(10)
            groups = [
                g.group_id
                for g in listed.valid
                if g.group_id.startswith(f"{self.base}-")
                and g.group_id.rsplit("-", 1)[-1] in orders
            ]
            if not groups:
                return 0
            total = 0
            for future in admin.describe_consumer_groups(groups).values():
                description = future.result(10)
                if description.state not in _EMPTY:
                    total += len(description.members) or 1
            return total

        return await trio.to_thread.run_sync(count)

    async def prepare(self, orders: tuple[str, ...]) -> None:
        admin = AdminClient(self.tansu.client_config())

        def create() -> None:
            topics = [
                NewTopic(f"{self.base}-{o}", num_partitions=1, replication_factor=1) for o in orders
            ]
            for future in admin.create_topics(topics).values():
                future.result(10)

        await trio.to_thread.run_sync(create)


class TestKafkaParams(ParamsConformance, SeveralSubscriptionsConformance):
    @pytest.fixture(params=["per_session", "shared"])
    def params_adapter(self, tansu: Tansu, request: pytest.FixtureRequest) -> ParamsAdapter:
        return KafkaParams(tansu, request.param)


class TestKafkaSharedFetchConformance(
    DeliveryConformance, EndpointConformance, ClientResumeConformance
):
    """The same promises with ``fetch = "shared"``: one fetch of the topic for every session,
    positions per client written to the same groups through the admin API."""

    @pytest.fixture
    async def under_test(self, tansu: Tansu) -> AsyncIterator[EndpointUnderTest]:
        admin = AdminClient(tansu.client_config())
        topic = await trio.to_thread.run_sync(new_topic, admin, "conformance-shared")
        async with trio.open_nursery() as nursery:
            endpoint = await running_endpoint(nursery, tansu, topic, fetch="shared")

            async def subscriptions() -> int:
                # No group members: the sessions reading, as the endpoint counts them.
                return sum(len(fetch.sessions) for fetch in endpoint._fetches.values())

            yield EndpointUnderTest(
                endpoint, subscriptions, redelivers_in_session=True, resumes_for_client=True
            )
            nursery.cancel_scope.cancel()


async def test_positions_carry_over_between_the_two_designs(tansu: Tansu) -> None:
    """A client acks 2 of 6 with a consumer per session, then 2 more with the shared fetch, then
    the per-session design again: each session starts right after the last ack of the one
    before, whichever design stored it (same group, mediation-{endpoint}-{client_id})."""
    from mediation.config import RouteConfig
    from mediation.endpoints.base import Outbound, Subscription
    from mediation.events import Event

    admin = AdminClient(tansu.client_config())
    topic = await trio.to_thread.run_sync(new_topic, admin, "carry-over")
    name = f"kafka-{uuid.uuid4().hex[:8]}"
    route = RouteConfig(source=name, target="clients", direction="downstream")
    subscription = Subscription(client_id="c1", session_id="s", entrypoint="e", route=route)
    seen: list[str] = []
    for fetch in ("per_session", "shared", "per_session"):
        async with trio.open_nursery() as nursery:
            config = KafkaConfig(
                brokers=tansu.bootstrap_servers,
                topic_in=topic,
                topic_out=topic,
                auto_offset_reset="earliest",
                fetch=fetch,  # type: ignore[arg-type]
                **FAST_GROUPS,  # type: ignore[arg-type]
            )
            endpoint = KafkaEndpoint(name, config)
            await nursery.start(endpoint.run)
            with trio.fail_after(20):
                await endpoint.state.wait_value(EndpointState.UP)
                if not seen:
                    up = RouteConfig(source="clients", target=name, direction="upstream")
                    for n in range(6):
                        await endpoint.publish(
                            Outbound(Event(payload=b"%d" % n), up, "producer", "e"), confirm=True
                        )
                async with endpoint.consume(subscription) as deliveries:
                    for _ in range(2):
                        delivery = await anext(aiter(deliveries))
                        seen.append(delivery.event.payload.decode())
                        await delivery.ack()
            nursery.cancel_scope.cancel()
    assert seen == ["0", "1", "2", "3", "4", "5"]
