"""Sessions on the memory endpoint: ack timing per guarantee, redelivery, backpressure, lifecycle.

These drive :func:`open_session` directly (the writer's side is the test), with everything in
process, so ``wait_all_tasks_blocked`` tells exactly when the engine has done all it can.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from mediation.endpoints import Outbound
from mediation.endpoints.memory import MemoryEndpoint
from mediation.engine import MediationEngine
from mediation.errors import BadRequest, BrokerUnavailable, ClientTooSlow, UnknownEvent
from mediation.events import Event
from mediation.session import Session, open_session

from .conftest import EngineFactory


@asynccontextmanager
async def client_session(
    engine: MediationEngine, *, client_confirms: bool = True, client_id: str = "c1"
) -> AsyncIterator[Session]:
    async with open_session(
        engine._context,
        entrypoint="ws",
        client_id=client_id,
        max_sessions=None,
        client_confirms=client_confirms,
    ) as session:
        yield session


def memory(engine: MediationEngine) -> MemoryEndpoint:
    endpoint = engine.endpoints["mem"]
    assert isinstance(endpoint, MemoryEndpoint)
    return endpoint


async def publish(engine: MediationEngine, payload: bytes) -> Event:
    event = Event(payload)
    route = engine.config.routes[0]
    await memory(engine).publish(
        Outbound(event=event, route=route, client_id="p", entrypoint="t"), confirm=True
    )
    return event


def routes(guarantee: str, **downstream: Any) -> list[dict[str, Any]]:
    return [
        {
            "source": "ws",
            "target": "mem",
            **({"lifecycle_events": True} if downstream.pop("presence", False) else {}),
        },
        {"source": "mem", "target": "ws", "delivery_guarantee": guarantee, **downstream},
    ]


async def settled(engine: MediationEngine) -> tuple[int, int]:
    await trio.testing.wait_all_tasks_blocked()
    stats = memory(engine).stats
    return stats["acked"], stats["nacked"]


@pytest.mark.parametrize(
    ("guarantee", "acked_while_queued"),
    [("none", 2), ("auto", 1), ("at_most_once", 0), ("at_least_once", 0)],
)
async def test_ack_before_the_client_sees_anything(
    engine_with: EngineFactory, guarantee: str, acked_while_queued: int
) -> None:
    # channel_size 1: event 1 sits in the channel, event 2 is in the consumer's hand.
    async with engine_with(entrypoints={"ws": "websocket"}, routes=routes(guarantee)) as engine:
        async with client_session(engine):
            await publish(engine, b"1")
            await publish(engine, b"2")
            assert await settled(engine) == (acked_while_queued, 0)


async def test_at_most_once_acks_just_before_the_write(engine_with: EngineFactory) -> None:
    async with (
        engine_with(entrypoints={"ws": "websocket"}, routes=routes("at_most_once")) as engine,
        client_session(engine) as session,
    ):
        await publish(engine, b"1")
        item = await session.receive()
        assert await settled(engine) == (0, 0)
        await session.before_write(item)
        assert await settled(engine) == (1, 0)


async def test_at_least_once_acks_after_the_client_confirmed(engine_with: EngineFactory) -> None:
    async with (
        engine_with(entrypoints={"ws": "websocket"}, routes=routes("at_least_once")) as engine,
        client_session(engine) as session,
    ):
        event = await publish(engine, b"1")
        item = await session.next_delivery()
        await session.written([item])
        assert await settled(engine) == (0, 0)
        await session.confirm(event.id)
        assert await settled(engine) == (1, 0)
        with pytest.raises(UnknownEvent):
            await session.confirm(event.id)


async def test_at_least_once_without_client_confirmation_acks_on_completed_write(
    engine_with: EngineFactory,
) -> None:
    async with (
        engine_with(entrypoints={"ws": "websocket"}, routes=routes("at_least_once")) as engine,
        client_session(engine, client_confirms=False) as session,
    ):
        await publish(engine, b"1")
        item = await session.next_delivery()
        assert await settled(engine) == (0, 0)
        await session.written([item])
        assert await settled(engine) == (1, 0)


async def test_nack_redelivers_to_the_same_session(engine_with: EngineFactory) -> None:
    async with engine_with(
        entrypoints={"ws": "websocket"}, routes=routes("at_least_once")
    ) as engine:
        async with client_session(engine) as session:
            event = await publish(engine, b"again")
            first = await session.next_delivery()
            await session.written([first])
            await session.confirm(event.id, accepted=False)
            second = await session.next_delivery()
            assert (second.event.id, second.event.payload) == (event.id, b"again")
            await session.written([second])
            await session.confirm(event.id)
        assert await settled(engine) == (1, 1)


@pytest.mark.parametrize(
    ("guarantee", "nacked", "handed_out"),
    [("auto", 1, 3), ("at_most_once", 1, 2), ("at_least_once", 1, 1)],
)
async def test_what_the_client_did_not_get_is_nacked_when_it_leaves(
    engine_with: EngineFactory, guarantee: str, nacked: int, handed_out: int
) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=routes(guarantee)) as engine:
        async with client_session(engine) as session:
            for n in range(3):
                await publish(engine, b"%d" % n)
            # One written (never confirmed), then the endpoint hands out one more unsettled event
            # at most (credit = channel_size = 1): under auto the second is acked in the channel
            # and the third waits to enter it (so not acked); under at_most_once the second waits
            # in the channel; under at_least_once the written one holds the credit.
            item = await session.next_delivery()
            await session.written([item])
            await trio.testing.wait_all_tasks_blocked()
        acked, nacked_now = await settled(engine)
        assert nacked_now == nacked
        assert acked + nacked_now == handed_out


@pytest.mark.parametrize(("channel_size", "capacity"), [(1, 1), (4, 16)])
async def test_a_client_that_does_not_read_stops_the_publisher(
    engine_with: EngineFactory, channel_size: int, capacity: int
) -> None:
    endpoints = {"mem": {"type": "memory", "config": {"capacity": capacity}}}
    async with (
        engine_with(
            entrypoints={"ws": "websocket"},
            routes=routes("auto", channel_size=channel_size),
            endpoints=endpoints,
        ) as engine,
        client_session(engine) as session,
        trio.open_nursery() as nursery,
    ):
        published = 0

        async def publisher() -> None:
            nonlocal published
            for n in range(1000):
                await publish(engine, b"%d" % n)
                published += 1

        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        # channel + the consumer's hand + the subscriber buffer, then the publisher waits.
        assert published == channel_size + 1 + capacity
        assert session.info().channel_depth == channel_size
        for n in range(1000):  # reading lets everything through, in order
            assert (await session.next_delivery()).event.payload == b"%d" % n
        nursery.cancel_scope.cancel()


async def test_subscription_exists_exactly_while_the_client_is_connected(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=routes("auto")) as engine:
        topic_subscribers = lambda: memory(engine).subscriber_count("events")  # noqa: E731
        assert topic_subscribers() == 0
        async with client_session(engine, client_id="a") as a:
            assert topic_subscribers() == 1
            async with client_session(engine, client_id="b"):
                assert topic_subscribers() == 2
            assert topic_subscribers() == 1  # b's leaving did not touch a's subscription
            event = await publish(engine, b"still there")
            assert (await a.next_delivery()).event.id == event.id
        assert topic_subscribers() == 0


def task_count() -> int:
    tasks, count = [trio.lowlevel.current_root_task()], 0
    while tasks:
        task = tasks.pop()
        count += 1
        tasks.extend(t for nursery in task.child_nurseries for t in nursery.child_tasks)
    return count


async def test_a_session_whose_subscriptions_never_change_runs_only_its_consumers(
    engine_with: EngineFactory,
) -> None:
    """No task, channel or scope per subscription on a plain session: each cost some KiB per
    session (docs/performance.md, S7). Only a changeable session takes subscribe requests."""
    async with engine_with(entrypoints={"ws": "websocket"}, routes=routes("auto")) as engine:
        await trio.testing.wait_all_tasks_blocked()
        before = task_count()
        async with client_session(engine) as session:
            await trio.testing.wait_all_tasks_blocked()
            assert task_count() - before == 1  # its consumer
            with pytest.raises(BadRequest):
                await session.subscribe({})
            with pytest.raises(BadRequest):
                await session.unsubscribe({})
            event = await publish(engine, b"still served")
            assert (await session.next_delivery()).event.id == event.id


async def test_presence_events_are_published_upstream(engine_with: EngineFactory) -> None:
    async with (
        engine_with(
            entrypoints={"ws": "websocket"}, routes=routes("auto", presence=True)
        ) as engine,
        client_session(engine, client_id="watcher") as watcher,
    ):
        first = await watcher.next_delivery()  # the watcher's own connect
        assert b'"type":"connect"' in first.event.payload
        async with client_session(engine, client_id="visitor") as visitor:
            connect = (await watcher.next_delivery()).event
            assert connect.payload == (
                b'{"type":"connect","client_id":"visitor","session_id":"%s","entrypoint":"ws"}'
                % visitor.id.encode()
            )
        disconnect = (await watcher.next_delivery()).event
        assert b'"type":"disconnect","client_id":"visitor"' in disconnect.payload


async def test_endpoint_failure_ends_the_session_with_broker_unavailable(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=routes("auto")) as engine:
        with pytest.raises(BrokerUnavailable):
            async with client_session(engine):
                memory(engine).fail()
                await trio.sleep_forever()
        assert engine.sessions == []
        with pytest.raises(BrokerUnavailable):  # new sessions are refused while it is down
            async with client_session(engine):
                pass
        memory(engine).recover()
        async with client_session(engine):
            assert len(engine.sessions) == 1


async def test_a_client_that_never_confirms_is_too_slow_even_if_its_channel_has_room(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock
) -> None:
    # Brokers with credit = channel_size never make the consumer wait on the channel, so the
    # slow-client policy must also see a full at-least-once window.
    slow = routes("at_least_once", channel_size=1, slow_client="disconnect", slow_client_timeout=5)
    async with engine_with(entrypoints={"ws": "websocket"}, routes=slow) as engine:
        with pytest.raises(ClientTooSlow):
            async with client_session(engine) as session:
                await publish(engine, b"never confirmed")
                await session.written([await session.next_delivery()])
                await session.next_delivery()  # the window is full: 5 s later, too slow
        assert await settled(engine) == (0, 1)


async def test_a_consumer_waiting_on_a_full_channel_hears_of_a_broker_failure(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=routes("auto")) as engine:
        with pytest.raises(BrokerUnavailable):
            async with client_session(engine):
                for n in range(3):  # channel full, one more waiting to enter it
                    await publish(engine, b"%d" % n)
                await trio.testing.wait_all_tasks_blocked()
                memory(engine).fail()
                await trio.sleep_forever()
