"""The session's writer: while the client has events to confirm, a small batch waits one round of
the scheduler, so an event entering the channel in that round goes out in the same write."""

from __future__ import annotations

from contextlib import suppress

import pytest
import trio
import trio.testing

from mediation import session as session_module
from mediation.errors import UnknownEvent
from mediation.events import Delivery, Event
from mediation.session import SessionDelivery

from .conftest import EngineFactory
from .test_session import client_session, publish, routes, settled


async def batches(engine_with: EngineFactory) -> list[list[bytes]]:
    """e1 is written and awaits confirmation; then "a" enters the channel, waking the writer,
    and "b" enters it from a task woken in the same round. Returns the batches written."""
    written: list[list[bytes]] = []
    async with (
        engine_with(
            entrypoints={"ws": "websocket"}, routes=routes("at_least_once", channel_size=4)
        ) as engine,
        client_session(engine) as session,
    ):

        async def write(batch: list[SessionDelivery]) -> None:
            written.append([item.event.payload for item in batch])
            await trio.lowlevel.checkpoint()

        async def settle(accepted: bool) -> None:
            await trio.lowlevel.checkpoint()

        plan = session_module._RoutePlan(engine.config.routes[1])
        (subscription,) = session.subscriptions.values()

        def item(payload: bytes) -> SessionDelivery:
            return SessionDelivery(Delivery(Event(payload), settle), plan, subscription)

        await publish(engine, b"1")
        second = trio.Event()

        async def enter_b() -> None:
            await second.wait()
            session._send.send_nowait(item(b"b"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run_writer, write)
            nursery.start_soon(enter_b)
            await trio.testing.wait_all_tasks_blocked()
            assert written == [[b"1"]]
            session._send.send_nowait(item(b"a"))  # wakes the writer
            second.set()  # and enter_b, in the same round
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    return written


async def test_a_small_batch_waits_one_round_while_the_client_has_events_to_confirm(
    engine_with: EngineFactory,
) -> None:
    # Whichever of the two runs first in that round, a and b go out together. Repeated: the
    # scheduler's order within a round is random.
    for _ in range(8):
        assert await batches(engine_with) == [[b"1"], [b"a", b"b"]]


async def test_without_the_wait_some_orders_write_them_separately(
    engine_with: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: with the wait off, some runs write a and b separately."""
    monkeypatch.setattr(session_module, "COALESCE_BELOW", 1)
    seen = [await batches(engine_with) for _ in range(24)]
    assert [[b"1"], [b"a"], [b"b"]] in seen


async def test_a_confirmation_before_the_writer_is_back_settles_the_event(
    engine_with: EngineFactory,
) -> None:
    """A client may confirm an event as soon as its bytes leave, before the writer task runs
    again to call ``written`` (a loaded engine: the fleet test at 300 clients). That
    confirmation was dropped ("no event awaits confirmation"), the event then waited for one
    forever, holding a window place and the broker's credit: after channel_size of them the
    client's stream from that broker stopped. Here the client confirms inside the write."""
    async with (
        engine_with(
            entrypoints={"ws": "websocket"}, routes=routes("at_least_once", channel_size=1)
        ) as engine,
        client_session(engine) as session,
    ):
        received: list[bytes] = []

        async def write(batch: list[SessionDelivery]) -> None:
            for item in batch:
                received.append(item.event.payload)
                with suppress(UnknownEvent):  # as the WebSocket entrypoint takes it
                    await session.confirm(item.event.id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run_writer, write)
            for n in range(3):
                await publish(engine, b"%d" % n)
            assert await settled(engine) == (3, 0)
            assert received == [b"0", b"1", b"2"]
            nursery.cancel_scope.cancel()


async def test_a_poll_confirmed_before_written_settles_the_event(
    engine_with: EngineFactory,
) -> None:
    """The same for polling: ``/ack`` on another connection may be handled between the
    ``/poll`` response and ``written``."""
    async with (
        engine_with(
            entrypoints={"ws": "websocket"}, routes=routes("at_least_once", channel_size=1)
        ) as engine,
        client_session(engine) as session,
    ):
        for n in range(2):
            await publish(engine, b"%d" % n)
        for n in range(2):
            with trio.fail_after(5):
                item = await session.receive()
            assert item.event.payload == b"%d" % n
            await session.before_write(item)
            await session.confirm(item.event.id)
            await session.written([item])
        assert await settled(engine) == (2, 0)


async def test_a_write_of_several_events_counts_each_of_them(engine_with: EngineFactory) -> None:
    """The writer counts a write's events together (one addition per counter): the downstream
    ``mediation_messages_total`` and ``mediation_bytes_total`` still count every event and
    every payload byte."""
    writes: list[int] = []
    async with (
        engine_with(
            entrypoints={"ws": "websocket"}, routes=routes("auto", channel_size=8)
        ) as engine,
        client_session(engine) as session,
    ):
        for n in range(1, 6):
            await publish(engine, b"x" * n)
        await trio.testing.wait_all_tasks_blocked()  # all five in the channel, none written

        async def write(batch: list[SessionDelivery]) -> None:
            writes.append(len(batch))
            await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run_writer, write)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        labels = {"route": session_module._RoutePlan(engine.config.routes[1]).name}
        registry = engine._context.telemetry.registry

        def downstream(metric: str) -> float | None:
            return registry.get_sample_value(metric, {**labels, "direction": "downstream"})

        assert writes == [5]
        assert downstream("mediation_messages_total") == 5
        assert downstream("mediation_bytes_total") == 1 + 2 + 3 + 4 + 5
