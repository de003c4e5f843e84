"""Bridges: endpoint -> endpoint routes run by the engine itself (memory -> memory here)."""

from __future__ import annotations

import trio
import trio.testing

from mediation.endpoints import Outbound
from mediation.engine import MediationEngine
from mediation.events import Event

from .conftest import EngineFactory, clients_gone, make_config, open_ws, url

ENDPOINTS = {
    "sensors": {"type": "memory", "config": {"topic_in": "readings", "topic_out": "readings"}},
    "archive": {"type": "memory", "config": {"topic_in": "archived", "topic_out": "archived"}},
}
ROUTES = [
    {
        "source": "sensors",
        "target": "archive",
        "delivery_guarantee": "at_least_once",
        "direction": "upstream",
    },
    {"source": "archive", "target": "ws"},
]


async def produce(engine: MediationEngine, payload: bytes) -> Event:
    event = Event(payload)
    route = engine.config.routes[0]
    await engine.endpoints["sensors"].publish(
        Outbound(event=event, route=route, client_id="sensor", entrypoint="test"), confirm=True
    )
    return event


async def test_a_bridge_moves_every_event_and_acks_after_the_target_took_it(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(
        entrypoints={"ws": "websocket"}, routes=ROUTES, endpoints=ENDPOINTS
    ) as engine:
        async with open_ws(url(engine, "ws", scheme="ws")) as ws:
            await trio.testing.wait_all_tasks_blocked()  # the bridge has subscribed
            for n in range(20):
                await produce(engine, b"reading %d" % n)
            assert [await ws.get_message() for _ in range(20)] == [
                f"reading {n}" for n in range(20)
            ]
        await clients_gone(engine)
        stats = engine.endpoints["sensors"].stats
        assert (stats["acked"], stats["nacked"]) == (20, 0)
        assert engine.sessions == []  # bridges are not client sessions


async def test_a_bridge_survives_its_target_failing_and_nacks_what_it_could_not_deliver(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock
) -> None:
    async with engine_with(
        entrypoints={"ws": "websocket"}, routes=ROUTES, endpoints=ENDPOINTS
    ) as engine:
        sensors, archive = engine.endpoints["sensors"], engine.endpoints["archive"]
        await trio.testing.wait_all_tasks_blocked()
        archive.fail()
        await produce(engine, b"while down")
        await trio.testing.wait_all_tasks_blocked()
        assert sensors.stats["nacked"] >= 1 and sensors.stats["acked"] == 0
        archive.recover()
        await trio.sleep(5)  # the bridge retries after its delay and resubscribes
        async with open_ws(url(engine, "ws", scheme="ws")) as ws:
            await produce(engine, b"after recovery")
            assert await ws.get_message() == "after recovery"


async def test_reload_stops_a_removed_bridge(engine_with: EngineFactory) -> None:
    async with engine_with(
        entrypoints={"ws": "websocket"}, routes=ROUTES, endpoints=ENDPOINTS
    ) as engine:
        await trio.testing.wait_all_tasks_blocked()
        assert engine.endpoints["sensors"].subscriber_count("readings") == 1
        await engine.reload(
            make_config(entrypoints={"ws": "websocket"}, routes=ROUTES[1:], endpoints=ENDPOINTS)
        )
        await trio.testing.wait_all_tasks_blocked()
        assert engine.endpoints["sensors"].subscriber_count("readings") == 0
