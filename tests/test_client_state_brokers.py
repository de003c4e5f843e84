"""Per-client broker state expires, on the real brokers: N distinct clients connect once and
leave; what the engine made for them is gone within client_state_ttl (shortened here) plus the
broker's own check or the engine's sweep, the engine's own count of them is back to zero, and
what the engine did not name survives (docs/design.md, "Cleanup"). ``max_clients`` refuses the
next new client with 503, before anything is made for it at the broker, on each broker.

N is the issue's 1,000 per broker (``MEDIATION_CLEANUP_CLIENTS``; ``just cleanup-soak`` runs
10,000). The clients connect a bounded number at a time (``connect_all``): one at a time, the
Kafka consumers' group joins (about 1.5 s each on tansu, a wait at the broker) would make 1,000
clients take half an hour.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import trio
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mediation.client_state import ClientLedger
from mediation.endpoints import EndpointState
from tests.brokers import Mosquitto, RabbitMQ, Tansu

from .conftest import EngineFactory, clients_gone, url
from .test_conformance_kafka import FAST_GROUPS
from .test_kafka import Kafka
from .test_kafka import kafka as kafka  # the fixture
from .test_rabbitmq import names as names  # the fixture
from .test_rabbitmq import put, rabbit_engine

# Distinct clients per broker: the size for `just test`; `just cleanup-soak` sets more.
CLIENTS = int(os.environ.get("MEDIATION_CLEANUP_CLIENTS", "1000"))
# Clients connecting at once. Kafka's many more: each waits ~1.5 s for its group join at tansu,
# which costs little there; with 100 consumers at once (librdkafka's threads each) 1,000 clients
# took 25 s here, against 45 s with 50 at once and some 220 s with 10.
AT_ONCE = 20
KAFKA_AT_ONCE = 100
TTL = 1.0
GONE_WITHIN = TTL + 10.0
WAIT = 20.0  # the broker's own expiry check, and a loaded machine


def sse_url(engine: Any, client_id: str) -> str:
    return url(engine, "sse", f"/?client_id={client_id}")


async def connect_all(
    engine: Any, clients: list[str], *, at_once: int = AT_ONCE, until: str | None = None
) -> None:
    """Each client connects once (an SSE stream: 200, so subscribed) and leaves, ``at_once`` at
    a time; with ``until``, each reads until that line first."""
    waiting = iter(clients)  # shared by the workers: each client once
    limits = httpx.Limits(max_connections=at_once, max_keepalive_connections=at_once)

    async def worker(http: httpx.AsyncClient) -> None:
        for client_id in waiting:
            async with http.stream("GET", sse_url(engine, client_id)) as sse:
                assert sse.status_code == 200, client_id
                if until is not None:
                    async for line in sse.aiter_lines():
                        if line == until:
                            break

    async with (
        httpx.AsyncClient(timeout=60, limits=limits) as http,
        trio.open_nursery() as nursery,
    ):
        for _ in range(at_once):
            nursery.start_soon(worker, http)


def counted(engine: Any, endpoint: str) -> int:
    """The clients the endpoint's ledger counts now (live, or gone for less than the ttl)."""
    ledger: ClientLedger = engine.endpoints[endpoint].clients
    return ledger.count(now=trio.current_time())


# -- RabbitMQ ------------------------------------------------------------------------------------


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
        # While its client is connected, the client's queue is there.
        async with http.stream("GET", sse_url(engine, clients[0])) as sse:
            assert sse.status_code == 200
            counts = await trio.to_thread.run_sync(rabbitmq.queue_counts, f"{prefix}.c0")
            assert counts is not None and counts.consumers == 1
        started = trio.current_time()
        await connect_all(engine, clients[1:])
        connected = trio.current_time() - started
        # A queue declared before with other arguments is used as it is (one warning).
        await put(rabbitmq, old, b"kept")
        async with http.stream("GET", sse_url(engine, "old")) as sse:
            assert sse.status_code == 200
            with trio.fail_after(GONE_WITHIN):
                async for line in sse.aiter_lines():  # after the session's confirmation
                    if line == "data: kept":
                        break
        await clients_gone(engine)
        left = trio.current_time()
        # Asked with rabbitmqctl: a (passive) declare would renew each queue's lease.
        made = {f"{prefix}.{client}" for client in clients}
        with trio.fail_after(GONE_WITHIN + 30):  # + rabbitmqctl's own seconds
            while made & set(queues := await trio.to_thread.run_sync(rabbitmq.list_queues)):  # noqa: ASYNC110
                await trio.sleep(0.5)
        print(
            f"{CLIENTS} clients in {connected:.1f} s, their queues gone within"
            f" {trio.current_time() - left:.1f} s of the last leaving"
        )
        assert {other, old} <= set(queues)
        await trio.sleep(max(0.0, left + TTL - trio.current_time()))
        assert counted(engine, "rmq") == 0


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


async def sessions_present(mosquitto: Mosquitto, client_ids: list[str]) -> list[str]:
    """Those of ``client_ids`` the broker has a session for (asked ``AT_ONCE`` at a time; asking
    ends each)."""
    limiter = trio.CapacityLimiter(AT_ONCE)
    present: list[str] = []

    async def ask(client_id: str) -> None:
        if await trio.to_thread.run_sync(session_present, mosquitto, client_id, limiter=limiter):
            present.append(client_id)

    async with trio.open_nursery() as nursery:
        for client_id in client_ids:
            nursery.start_soon(ask, client_id)
    return present


def mqtt_endpoint(mosquitto: Mosquitto, **table: Any) -> dict[str, Any]:
    return {
        "type": "mqtt5",
        "client_state_ttl": TTL,
        **table,
        "config": {
            "broker": f"tcp://{mosquitto.host}:{mosquitto.port}",
            "topic_in": "cleanup/{client_id}",
            "retry_interval": 0.1,
        },
    }


async def test_mqtt5_sessions_expire_after_the_ttl_and_others_survive(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    foreign = f"foreign-{uuid.uuid4().hex}"  # not of the engine's naming, kept for 600 s
    await trio.to_thread.run_sync(session_present, mosquitto, foreign, 600)
    clients = [f"m{uuid.uuid4().hex[:8]}-{n}" for n in range(CLIENTS)]
    routes = [{"source": "mqtt", "target": "sse"}]
    endpoints = {"mqtt": mqtt_endpoint(mosquitto)}
    async with engine_with(
        entrypoints={"sse": "sse"}, routes=routes, endpoints=endpoints
    ) as engine:
        with trio.fail_after(WAIT):
            await engine.endpoints["mqtt"].state.wait_value(EndpointState.UP)
        assert engine.endpoints["mqtt"].session_expiry == 1  # type: ignore[attr-defined]
        await connect_all(engine, clients[:1])
        # Within the ttl the session is there (asked once: asking ends it).
        assert await trio.to_thread.run_sync(
            session_present, mosquitto, f"mediation-mqtt-{clients[0]}"
        )
        started = trio.current_time()
        await connect_all(engine, clients[1:])
        print(f"{CLIENTS} clients in {trio.current_time() - started:.1f} s")
        await clients_gone(engine)
        # The broker tells nobody when a session expires, and asking ends it: ask once, after.
        await trio.sleep(TTL + 2.0)
        assert counted(engine, "mqtt") == 0
    left = await sessions_present(mosquitto, [f"mediation-mqtt-{c}" for c in clients[1:]])
    assert not left, left[:10]
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


def kafka_table(kafka: Kafka, topic: str, **table: Any) -> dict[str, Any]:
    return {
        "type": "kafka",
        "client_state_ttl": KAFKA_TTL,
        **table,
        "config": {
            "brokers": kafka.tansu.bootstrap_servers,
            "fetch": kafka.fetch,
            "topic_in": topic,
            "auto_offset_reset": "earliest",
            **FAST_GROUPS,
        },
    }


def swept(caplog: pytest.LogCaptureFixture) -> int:
    """The groups the endpoints' sweeps logged as deleted."""
    return sum(
        getattr(record, "deleted", 0)
        for record in caplog.records
        if record.getMessage() == "per-client objects of departed clients deleted"
        and getattr(record, "objects", None) == "kafka consumer groups"
    )


async def test_kafka_groups_of_departed_clients_are_swept_and_others_survive(
    engine_with: EngineFactory, kafka: Kafka, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mediation.endpoints._sweep")
    endpoint = f"k{uuid.uuid4().hex[:8]}"
    topic = await trio.to_thread.run_sync(kafka.topic, "cleanup")
    # Not of the engine's naming: another endpoint's, and someone else's.
    foreign = {f"mediation-{endpoint}x-c0", f"other-{endpoint}-c0"}
    for group in foreign:
        await trio.to_thread.run_sync(make_group, kafka, group, topic)
    clients = [f"c{n}" for n in range(CLIENTS)]
    mine = f"mediation-{endpoint}-"
    async with engine_with(
        entrypoints={"sse": "sse"},
        routes=[{"source": endpoint, "target": "sse", "delivery_guarantee": "at_least_once"}],
        endpoints={endpoint: kafka_table(kafka, topic)},
    ) as engine:
        with trio.fail_after(WAIT):
            await engine.endpoints[endpoint].state.wait_value(EndpointState.UP)
        await trio.to_thread.run_sync(kafka.put, topic, b"one")
        started = trio.current_time()
        # Each reads the event and confirms it: its group has a position (a group join, or a
        # position write for "shared").
        await connect_all(engine, clients, at_once=KAFKA_AT_ONCE, until="data: one")
        connected = trio.current_time() - started
        await clients_gone(engine)
        left = trio.current_time()
        with trio.fail_after(KAFKA_TTL * 2 + WAIT):
            while await trio.to_thread.run_sync(kafka_groups, kafka, mine):  # noqa: ASYNC110
                await trio.sleep(0.2)
        print(
            f"{CLIENTS} clients ({kafka.fetch}) in {connected:.1f} s, their groups swept"
            f" within {trio.current_time() - left:.1f} s of the last leaving"
        )
        # Every one was made, and deleted by the engine's sweep (no other deletes them).
        assert swept(caplog) == CLIENTS
        assert foreign <= await trio.to_thread.run_sync(kafka_groups, kafka, "")
        assert counted(engine, endpoint) == 0


# -- max_clients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["rabbitmq", "mqtt5", "kafka", "kafka-shared"])
async def test_max_clients_refuses_the_next_new_client_503_before_the_broker(
    engine_with: EngineFactory, broker: str, request: pytest.FixtureRequest
) -> None:
    """At max_clients a new client id is refused 503 (nothing made for it at the broker), a
    counted one comes back, and once the others are gone for the ttl the new one is admitted."""
    first, second, refused = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("a", "b", "new"))
    if broker == "rabbitmq":
        rabbitmq: RabbitMQ = request.getfixturevalue("rabbitmq")
        prefix = request.getfixturevalue("names")("limit")
        table = {
            "type": "rabbitmq",
            "client_state_ttl": TTL,
            "max_clients": 2,
            "config": {"url": rabbitmq.amqp_url, "queue_in": prefix + ".{client_id}"},
        }

        def made_for(client_id: str) -> bool:
            return rabbitmq.queue_exists(f"{prefix}.{client_id}")

    elif broker == "mqtt5":
        mosquitto: Mosquitto = request.getfixturevalue("mosquitto")
        table = mqtt_endpoint(mosquitto, max_clients=2)

        def made_for(client_id: str) -> bool:
            return session_present(mosquitto, f"mediation-limited-{client_id}")

    else:
        tansu: Tansu = request.getfixturevalue("tansu")
        kafka = Kafka(tansu, "shared" if broker == "kafka-shared" else "per_session")
        topic = await trio.to_thread.run_sync(kafka.topic, "limit")
        table = kafka_table(kafka, topic, max_clients=2)

        def made_for(client_id: str) -> bool:
            return bool(kafka_groups(kafka, f"mediation-limited-{client_id}"))

    async def status(client_id: str) -> int:
        """The answer to ``client_id``'s SSE request (a 200 stream is left at once)."""
        async with http.stream("GET", sse_url(engine, client_id)) as answer:
            if answer.status_code == 503:
                assert "max_clients" in (await answer.aread()).decode()
            return answer.status_code

    async with (
        engine_with(
            entrypoints={"sse": "sse"},
            routes=[{"source": "limited", "target": "sse", "delivery_guarantee": "at_least_once"}],
            endpoints={"limited": table},
        ) as engine,
        httpx.AsyncClient(timeout=30) as http,
    ):
        with trio.fail_after(WAIT):
            await engine.endpoints["limited"].state.wait_value(EndpointState.UP)
        async with (
            http.stream("GET", sse_url(engine, first)) as a,
            http.stream("GET", sse_url(engine, second)) as b,
        ):
            assert (a.status_code, b.status_code) == (200, 200)
            assert await status(refused) == 503
        await clients_gone(engine)
        # Made for the two (asked within the ttl), nothing for the one refused.
        assert await trio.to_thread.run_sync(made_for, first)
        assert not await trio.to_thread.run_sync(made_for, refused)
        await trio.sleep(table["client_state_ttl"])  # the ledger forgets them after the ttl
        assert await status(refused) == 200
        await clients_gone(engine)
