"""One client id, two connections, against the real brokers (design.md, One client id, twice):
on one instance the newer WebSocket session takes over (the older is closed 4409) and, under
at_least_once, what the older one had not confirmed reaches the newer one: Kafka (the client's
consumer group), RabbitMQ (the client's queue: nacked, requeued), MQTT 5 (the client's MQTT
session: what it sent and was not PUBACKed is sent again). Across two engine instances on one
Mosquitto, the broker takes the MQTT session over: the older instance's session ends (4409 where
the broker says it was taken over; Mosquitto 2.0 just closes it: 1011) and nothing is lost."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from mediation.config import Config
from mediation.endpoints.base import EndpointState, Outbound
from mediation.engine import MediationEngine, open_mediation_engine
from mediation.envelope import SUBPROTOCOL
from mediation.events import Event

from .conftest import clients_gone, envelope, make_config, open_ws, url

WAIT = 30.0  # a Kafka group join on tansu takes seconds


def endpoint_table(broker: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    name = uuid.uuid4().hex[:10]
    if broker == "kafka":
        tansu = request.getfixturevalue("tansu")
        return {
            "type": "kafka",
            "config": {
                "brokers": tansu.bootstrap_servers,
                "topic_in": f"twice-{name}",
                "topic_out": f"twice-{name}",
                "create_topics": True,
                "auto_offset_reset": "earliest",
                "session_timeout_ms": 3000,
                "heartbeat_interval_ms": 500,
            },
        }
    if broker == "rabbitmq":
        rabbitmq = request.getfixturevalue("rabbitmq")
        queue = f"twice-{name}"
        return {
            "type": "rabbitmq",
            "config": {"url": rabbitmq.amqp_url, "queue_in": queue, "queue_out": queue},
        }
    mosquitto = request.getfixturevalue("mosquitto")
    return {
        "type": "mqtt5",
        "config": {
            "broker": f"tcp://{mosquitto.host}:{mosquitto.port}",
            "topic_in": f"twice/{name}",
            "topic_out": f"twice/{name}",
            "retry_interval": 0.1,
        },
    }


def config(table: dict[str, Any]) -> Config:
    return make_config(
        entrypoints={"ws": "websocket"},
        endpoints={"broker": table},
        routes=[
            {
                "source": "broker",
                "target": "ws",
                "delivery_guarantee": "at_least_once",
                "channel_size": 4,
            },
            # For the test's producer (publish below).
            {"source": "ws", "target": "broker", "delivery_guarantee": "at_least_once"},
        ],
    )


async def up(*engines: MediationEngine) -> None:
    with trio.fail_after(WAIT):
        for engine in engines:
            await engine.endpoints["broker"].state.wait_value(EndpointState.UP)


async def publish(engine: MediationEngine, payload: bytes) -> None:
    route = next(r for r in engine.config.routes if r.target == "broker")
    with trio.fail_after(WAIT):
        await engine.endpoints["broker"].publish(
            Outbound(event=Event(payload), route=route, client_id="producer", entrypoint="test"),
            confirm=True,
        )


def client(engine: MediationEngine, client_id: str) -> Any:
    return open_ws(
        url(engine, "ws", f"/?client_id={client_id}", scheme="ws"), subprotocols=[SUBPROTOCOL]
    )


async def closed_with(ws: WebSocketConnection) -> tuple[int, str | None]:
    with trio.fail_after(WAIT):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as closed:
            assert closed.reason is not None
            return closed.reason.code, closed.reason.reason


async def collect(ws: WebSocketConnection, wanted: set[str]) -> set[str]:
    """Read and confirm until every payload in ``wanted`` came (duplicates allowed)."""
    got: set[str] = set()
    with trio.fail_after(WAIT):
        while not wanted <= got:
            message = await envelope(ws)
            got.add(message["payload"])
            await ws.send_message(json.dumps({"ack": message["id"]}))
    return got


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq", "mqtt5"])
async def test_one_instance_newer_takes_over_nothing_lost(
    broker: str, request: pytest.FixtureRequest
) -> None:
    payloads = [f"event-{n}" for n in range(6)]
    async with open_mediation_engine(config(endpoint_table(broker, request))) as engine:
        await up(engine)
        async with client(engine, "alice") as older:
            for payload in payloads:
                await publish(engine, payload.encode())
            confirmed = set()
            for _ in range(2):
                message = await envelope(older)
                confirmed.add(message["payload"])
                await older.send_message(json.dumps({"ack": message["id"]}))
            await envelope(older)  # one more, never confirmed
            async with client(engine, "alice") as newer:
                assert await closed_with(older) == (4409, "replaced")
                got = await collect(newer, set(payloads) - confirmed)
            assert confirmed | got == set(payloads)  # lost: none
        await clients_gone(engine)


async def test_mqtt_across_two_instances_the_broker_takes_over(
    request: pytest.FixtureRequest,
) -> None:
    table = endpoint_table("mqtt5", request)
    payloads = [f"event-{n}" for n in range(6)]
    async with (
        open_mediation_engine(config(table)) as a,
        open_mediation_engine(config(table)) as b,
    ):
        await up(a, b)
        async with client(a, "bob") as older:
            for payload in payloads:
                await publish(a, payload.encode())
            message = await envelope(older)  # never confirmed
            async with client(b, "bob") as newer:
                # A broker that says why (DISCONNECT 0x8E "Session taken over") ends the older
                # session 4409; Mosquitto 2.0 closes the older connection without a word, which
                # the older instance cannot tell from a broker fault: 1011.
                code, _ = await closed_with(older)
                assert code in (4409, 1011)
                got = await collect(newer, set(payloads))
            assert message["payload"] in got
        await clients_gone(a)
        await clients_gone(b)
