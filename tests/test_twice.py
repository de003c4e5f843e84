"""One client id, two connections (design.md, One client id, twice), on one instance: the newer
session takes over; the older one ends with WebSocket close 4409 "replaced", SSE ``event: error``
"replaced", polling 409; what the older one held unconfirmed is nacked before the newer one
subscribes, so under at_least_once nothing is lost where the broker keeps the client's place
(here the test double with positions and commits, tests/fleet/positions.py; the brokers' own
runs are in tests/test_twice_brokers.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import trio
from trio_websocket import ConnectionClosed

from mediation.endpoints.base import Deliveries, Subscription
from mediation.engine import MediationEngine, open_mediation_engine
from mediation.envelope import SUBPROTOCOL
from mediation.errors import Replaced
from mediation.events import Delivery

from .conftest import CLIENT_WAIT, clients_gone, envelope, make_config, open_ws, url
from .fleet.positions import PositionedLog


class RecordingLog(PositionedLog):
    """The positions double, recording each subscribe and each nack in order."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.record: list[tuple[str, str]] = []

    @asynccontextmanager
    async def consume(self, subscription: Subscription) -> AsyncIterator[AsyncIterator[Delivery]]:
        self.record.append(("subscribe", subscription.session_id))
        async with super().consume(subscription) as deliveries:

            async def next_delivery() -> Delivery:
                delivery = await anext(deliveries)
                settle = delivery._settle

                async def recorded(accepted: bool) -> None:
                    if not accepted:
                        self.record.append(("nack", delivery.event.id))
                    await settle(accepted)

                delivery._settle = recorded
                return delivery

            yield Deliveries(next_delivery)


def config(**polling: Any) -> Any:
    return make_config(
        entrypoints={
            "ws": "websocket",
            "sse": "sse",
            "polling": {"type": "http_get", "poll_timeout": 0.2, **polling},
        },
        routes=[
            {"source": "mem", "target": "ws", "delivery_guarantee": "at_least_once"},
            {"source": "mem", "target": "sse", "delivery_guarantee": "at_least_once"},
            {"source": "mem", "target": "polling", "delivery_guarantee": "at_least_once"},
        ],
    )


@asynccontextmanager
async def engine_on(log: PositionedLog, **polling: Any) -> AsyncIterator[MediationEngine]:
    async with open_mediation_engine(config(**polling)) as engine:
        cast(dict[str, Any], engine.endpoints)["mem"] = log
        yield engine


def ws_url(engine: MediationEngine, client_id: str) -> str:
    return url(engine, "ws", f"/?client_id={client_id}", scheme="ws")


async def test_websocket_newer_takes_over_and_nothing_is_lost() -> None:
    log = RecordingLog("mem")
    async with engine_on(log) as engine:
        async with open_ws(ws_url(engine, "alice"), subprotocols=[SUBPROTOCOL]) as older:
            for seq in range(6):  # (the double starts a client without a commit at the end)
                log.append(b"event-%d" % seq)
            # The older session confirms two events and leaves the next ones unconfirmed.
            for _ in range(2):
                await older.send_message(json.dumps({"ack": (await envelope(older))["id"]}))
            unconfirmed = (await envelope(older))["id"]
            older_id = engine.sessions[0].id
            async with open_ws(ws_url(engine, "alice"), subprotocols=[SUBPROTOCOL]) as newer:
                with trio.fail_after(CLIENT_WAIT):
                    try:
                        while True:
                            await older.get_message()
                    except ConnectionClosed as closed:
                        assert closed.reason is not None
                        assert (closed.reason.code, closed.reason.reason) == (4409, "replaced")
                got = []
                for _ in range(4):
                    got.append(await envelope(newer))
                    await newer.send_message(json.dumps({"ack": got[-1]["id"]}))
                assert [g["payload"] for g in got] == ["event-2", "event-3", "event-4", "event-5"]
                assert [s.client_id for s in engine.sessions] == ["alice"]
                assert engine.sessions[0].id != older_id
        await clients_gone(engine)
    # The older session's unconfirmed event was nacked before the newer one subscribed.
    subscribes = [i for i, (kind, _) in enumerate(log.record) if kind == "subscribe"]
    nack = log.record.index(("nack", unconfirmed))
    assert subscribes[0] < nack < subscribes[1]


async def test_sse_older_stream_ends_with_error_replaced() -> None:
    log = RecordingLog("mem")
    async with engine_on(log) as engine, httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
        headers = {"accept": "text/event-stream", "x-client-id": "bob"}
        async with client.stream("GET", url(engine, "sse"), headers=headers) as older:
            lines = older.aiter_lines()
            seen: list[str] = []
            with trio.fail_after(CLIENT_WAIT):
                while "event: session" not in seen:
                    seen.append(await anext(lines))
            log.append(b"first")
            with trio.fail_after(CLIENT_WAIT):
                while "data: first" not in seen:
                    seen.append(await anext(lines))
                async with client.stream("GET", url(engine, "sse"), headers=headers) as newer:
                    assert newer.status_code == 200
                    rest = [line async for line in lines]
                    error = rest.index("event: error")
                    assert rest[error + 1 : error + 3] == ["id: log:0:0", "data: replaced"]
        await clients_gone(engine)


async def test_a_second_websocket_of_another_client_is_left_alone() -> None:
    log = RecordingLog("mem")
    async with engine_on(log) as engine:
        async with (
            open_ws(ws_url(engine, "carol"), subprotocols=[SUBPROTOCOL]),
            open_ws(ws_url(engine, "dave"), subprotocols=[SUBPROTOCOL]),
        ):
            assert sorted(s.client_id for s in engine.sessions) == ["carol", "dave"]
        await clients_gone(engine)


async def test_same_client_on_two_entrypoints_is_two_sessions() -> None:
    """The rule is per entrypoint and client id: a client's WebSocket and its SSE stream are two
    sessions (each entrypoint's per-client broker objects are the operator's naming)."""
    log = RecordingLog("mem")
    async with engine_on(log) as engine, httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
        headers = {"accept": "text/event-stream", "x-client-id": "erin"}
        async with open_ws(ws_url(engine, "erin"), subprotocols=[SUBPROTOCOL]):
            async with client.stream("GET", url(engine, "sse"), headers=headers) as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                with trio.fail_after(CLIENT_WAIT):
                    while (await anext(lines)) != "event: session":
                        pass
                assert sorted(s.entrypoint for s in engine.sessions) == ["sse", "ws"]
        await clients_gone(engine)


async def test_polling_subscribe_again_is_the_same_session_and_a_replaced_one_is_409() -> None:
    """Polling has no connection to tell two apart: subscribing again is the same session. A
    polling session replaced by a newer one (the broker's takeover, from another instance) is
    409 on the client's next call."""
    log = RecordingLog("mem")
    async with engine_on(log) as engine, httpx.AsyncClient(timeout=CLIENT_WAIT) as client:
        headers = {"x-client-id": "frank"}
        first = await client.post(url(engine, "polling", "/subscribe"), headers=headers)
        again = await client.post(url(engine, "polling", "/subscribe"), headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json()["session_id"] == again.json()["session_id"]
        (session,) = engine._context.sessions.values()
        session.close(Replaced())
        with trio.fail_after(CLIENT_WAIT):
            await session.ended.wait()
        polled = await client.get(url(engine, "polling", "/poll"), headers=headers)
        assert polled.status_code == 409
        assert "replaced" in polled.text
        renewed = await client.post(url(engine, "polling", "/subscribe"), headers=headers)
        assert renewed.status_code == 201
        await client.delete(url(engine, "polling", "/unsubscribe"), headers=headers)
        await clients_gone(engine)


async def test_a_newer_session_at_max_sessions_takes_the_older_ones_place() -> None:
    log = RecordingLog("mem")
    engine_config = make_config(
        entrypoints={"ws": {"type": "websocket", "max_sessions": 1}},
        routes=[{"source": "mem", "target": "ws", "delivery_guarantee": "at_least_once"}],
    )
    async with open_mediation_engine(engine_config) as engine:
        cast(dict[str, Any], engine.endpoints)["mem"] = log
        async with open_ws(ws_url(engine, "gina"), subprotocols=[SUBPROTOCOL]) as older:
            async with open_ws(ws_url(engine, "gina"), subprotocols=[SUBPROTOCOL]):
                with trio.fail_after(CLIENT_WAIT):
                    try:
                        while True:
                            await older.get_message()
                    except ConnectionClosed as closed:
                        assert closed.reason is not None
                        assert closed.reason.code == 4409
        await clients_gone(engine)


def test_mqtt_wire_tells_a_takeover_from_a_loss() -> None:
    """A broker's DISCONNECT 0x8E "Session taken over" (another instance's newer session of the
    client) is what the MQTT 5 consumer turns into Replaced; any other end is a broker fault."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from mediation.endpoints._mqtt_wire import Wire

    def wire_after(code: int, *, from_server: bool) -> Wire:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        wire = Wire(client)
        flags = mqtt.DisconnectFlags(is_disconnect_packet_from_server=from_server)
        wire._on_disconnect(
            client, None, flags, ReasonCode(PacketTypes.DISCONNECT, identifier=code), None
        )
        return wire

    assert wire_after(0x8E, from_server=True).taken_over
    assert not wire_after(0x80, from_server=True).taken_over
    assert not wire_after(0x8E, from_server=False).taken_over
