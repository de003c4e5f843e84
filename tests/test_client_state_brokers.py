"""Per-client broker state expires, on the real brokers: N distinct clients connect once and
leave; what the engine made for them is gone within client_state_ttl (shortened here) plus the
broker's own check, and what the engine did not name survives (docs/design.md, "Cleanup")."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import trio
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mediation.endpoints import EndpointState
from tests.brokers import Mosquitto, RabbitMQ

from .conftest import EngineFactory, clients_gone, url
from .test_conformance_kafka import FAST_GROUPS
from .test_kafka import Kafka
from .test_kafka import kafka as kafka  # the fixture
from .test_rabbitmq import names as names  # the fixture
from .test_rabbitmq import put, rabbit_engine

# Distinct clients per broker: sized for `just test`; `just soak` sets more.
CLIENTS = int(os.environ.get("MEDIATION_CLEANUP_CLIENTS", "50"))
TTL = 1.0
GONE_WITHIN = TTL + 10.0
WAIT = 20.0  # the broker's own expiry check, and a loaded machine


async def connect_once(engine: Any, http: httpx.AsyncClient, client_id: str) -> None:
    async with http.stream("GET", url(engine, "sse", f"/?client_id={client_id}")) as sse:
        assert sse.status_code == 200, client_id


async def test_rabbitmq_per_client_queues_expire_and_others_survive(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    prefix = names("cleanup")
    other = names("cleanup")  # a queue of the operator's: no {client_id} naming
    old = f"{prefix}.old"  # declared before client_state_ttl, without x-expires
    with rabbitmq.channel() as channel:
        channel.queue_declare(other, durable=True)  # type: ignore[attr-defined]
        channel.queue_declare(old, durable=True)  # type: ignore[attr-defined]
    clients = [f"c{n}" for n in range(CLIENTS)]
    async with (
        rabbit_engine(
            engine_with,
            rabbitmq,
            entrypoints={"sse": "sse"},
            routes=[{"source": "rmq", "target": "sse"}],
            endpoints={
                "rmq": {
                    "type": "rabbitmq",
                    "client_state_ttl": TTL,
                    "config": {"url": rabbitmq.amqp_url, "queue_in": prefix + ".{client_id}"},
                }
            },
        ) as engine,
        httpx.AsyncClient(timeout=30) as http,
    ):
        for client in clients:
            await connect_once(engine, http, client)
        # A queue declared before with other arguments is used as it is (one warning).
        await put(rabbitmq, old, b"kept")
        async with http.stream("GET", url(engine, "sse", "/?client_id=old")) as sse:
            assert sse.status_code == 200
            with trio.fail_after(GONE_WITHIN):
                async for line in sse.aiter_lines():  # after the session's confirmation
                    if line == "data: kept":
                        break
        await clients_gone(engine)
        # Asked with rabbitmqctl: a (passive) declare would renew each queue's lease.
        made = {f"{prefix}.{client}" for client in clients}
        with trio.fail_after(GONE_WITHIN + 30):  # + rabbitmqctl's own seconds
            while made & set(queues := await trio.to_thread.run_sync(rabbitmq.list_queues)):  # noqa: ASYNC110
                await trio.sleep(0.5)
        assert {other, old} <= set(queues)


# -- MQTT 5 --------------------------------------------------------------------------------------


def session_present(mosquitto: Mosquitto, client_id: str, expiry: int = 0) -> bool:
    """Connect as ``client_id`` without a clean start: whether the broker still had a session
    for it (CONNACK session present). It leaves with Session Expiry ``expiry`` (0: the session
    goes with this connection, so ask once per client)."""
    connected = threading.Event()
    present: list[bool] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        present.append(bool(flags.session_present))
        connected.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry
    client.connect(mosquitto.host, mosquitto.port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        assert connected.wait(WAIT), f"no CONNACK for {client_id}"
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0]


async def test_mqtt5_sessions_expire_after_the_ttl_and_others_survive(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    foreign = f"foreign-{uuid.uuid4().hex}"  # not of the engine's naming, kept for 600 s
    await trio.to_thread.run_sync(session_present, mosquitto, foreign, 600)
    clients = [f"m{uuid.uuid4().hex[:8]}-{n}" for n in range(CLIENTS)]
    endpoints = {
        "mqtt": {
            "type": "mqtt5",
            "client_state_ttl": TTL,
            "config": {
                "broker": f"tcp://{mosquitto.host}:{mosquitto.port}",
                "topic_in": "cleanup/{client_id}",
                "retry_interval": 0.1,
            },
        }
    }
    routes = [{"source": "mqtt", "target": "sse"}]
    async with (
        engine_with(entrypoints={"sse": "sse"}, routes=routes, endpoints=endpoints) as engine,
        httpx.AsyncClient(timeout=30) as http,
    ):
        with trio.fail_after(WAIT):
            await engine.endpoints["mqtt"].state.wait_value(EndpointState.UP)
        assert engine.endpoints["mqtt"].session_expiry == 1  # type: ignore[attr-defined]
        for client in clients[:1]:
            await connect_once(engine, http, client)
        # Within the ttl the session is there (asked once: asking ends it).
        assert await trio.to_thread.run_sync(
            session_present, mosquitto, f"mediation-mqtt-{clients[0]}"
        )
        for client in clients[1:]:
            await connect_once(engine, http, client)
        await clients_gone(engine)
    # The broker tells nobody when a session expires, and asking ends it: ask once, after.
    await trio.sleep(TTL + 2.0)
    for client in clients[1:]:
        assert not await trio.to_thread.run_sync(
            session_present, mosquitto, f"mediation-mqtt-{client}"
        ), client
    assert await trio.to_thread.run_sync(session_present, mosquitto, foreign)


# -- Kafka ---------------------------------------------------------------------------------------

KAFKA_TTL = 2.0


def kafka_groups(kafka: Kafka, prefix: str) -> set[str]:
    listed = kafka.admin.list_consumer_groups().result(10)
    return {g.group_id for g in listed.valid if g.group_id.startswith(prefix)}


def make_group(kafka: Kafka, group: str, topic: str) -> None:
    """A group with a committed offset, made by someone else than the engine (blocking)."""
    kafka.admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 0)])]
    )[group].result(10)


async def test_kafka_groups_of_departed_clients_are_swept_and_others_survive(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    endpoint = f"k{uuid.uuid4().hex[:8]}"
    topic = await trio.to_thread.run_sync(kafka.topic, "cleanup")
    # Not of the engine's naming: another endpoint's, and someone else's.
    foreign = {f"mediation-{endpoint}x-c0", f"other-{endpoint}-c0"}
    for group in foreign:
        await trio.to_thread.run_sync(make_group, kafka, group, topic)
    clients = [f"c{n}" for n in range(CLIENTS)]
    mine = f"mediation-{endpoint}-"
    table = {
        "type": "kafka",
        "client_state_ttl": KAFKA_TTL,
        "config": {
            "brokers": kafka.tansu.bootstrap_servers,
            "fetch": kafka.fetch,
            "topic_in": topic,
            "auto_offset_reset": "earliest",
            **FAST_GROUPS,
        },
    }
    async with engine_with(
        entrypoints={"sse": "sse"},
        routes=[{"source": endpoint, "target": "sse", "delivery_guarantee": "at_least_once"}],
        endpoints={endpoint: table},
    ) as engine:
        with trio.fail_after(WAIT):
            await engine.endpoints[endpoint].state.wait_value(EndpointState.UP)
        await trio.to_thread.run_sync(kafka.put, topic, b"one")
        async with httpx.AsyncClient(timeout=60) as http, trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(10)  # group joins take a while: some at once

            async def read_one(client: str) -> None:
                async with (
                    limiter,
                    http.stream("GET", url(engine, "sse", f"/?client_id={client}")) as sse,
                ):
                    assert sse.status_code == 200
                    async for line in sse.aiter_lines():
                        if line == "data: one":
                            break

            for client in clients:
                nursery.start_soon(read_one, client)
        await clients_gone(engine)
        left = trio.current_time()
        made = await trio.to_thread.run_sync(kafka_groups, kafka, mine)
        print(f"{len(made)} groups made, {kafka.fetch}")
        with trio.fail_after(KAFKA_TTL * 2 + WAIT):
            while await trio.to_thread.run_sync(kafka_groups, kafka, mine):  # noqa: ASYNC110
                await trio.sleep(0.2)
        print(f"swept within {trio.current_time() - left:.1f} s")
        assert foreign <= await trio.to_thread.run_sync(kafka_groups, kafka, "")
