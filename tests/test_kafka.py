"""The Kafka endpoint through the engine, with real web clients and the harness's tansu.

Events are put into Kafka and read back with plain confluent-kafka clients from worker threads, as
applications on the other side of the broker would. Each test has topics (one partition) and an
endpoint name of its own, so its consumer groups are new. A group join on tansu takes
``session.timeout.ms / 2`` (1.5 s here), so independent scenarios run concurrently in one test.

tansu quirk: after a multi-record batch its high watermark is the batch's base offset + 1, so a
new group with ``auto_offset_reset = "latest"`` would start inside that batch. The producers
here send one record per batch, as the engine itself does per event.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest
import trio
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from httpx_sse import ServerSentEvent
from trio_websocket import WebSocketConnection

from mediation.endpoints import EndpointState
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL
from tests.brokers import Tansu

from .conformance import BrokerAdapter, OutageConformance, ReconnectConformance, Scenario
from .conftest import EngineFactory, clients_gone, envelope, open_ws, sse_events, url
from .test_conformance_kafka import FAST_GROUPS, group_members, new_topic

WAIT = 20.0
QUIET = {"log.connection.close": False}  # the outage test closes every connection


# -- the broker side ---------------------------------------------------------------------------


class Kafka:
    """Blocking helpers for the far side of the broker; call them with ``trio.to_thread``."""

    def __init__(self, tansu: Tansu, fetch: str = "per_session") -> None:
        self.tansu = tansu
        self.fetch = fetch  # the endpoints' KafkaConfig.fetch
        self.admin = AdminClient(tansu.client_config())

    def topic(self, prefix: str) -> str:
        return new_topic(self.admin, prefix)

    def put(self, topic: str, *payloads: bytes, key: bytes | None = None, **headers: str) -> None:
        """Produce each payload as a record batch of its own; return once all are stored."""
        producer = Producer(self.tansu.client_config(**{"linger.ms": 0}, **QUIET))
        for payload in payloads:
            producer.produce(topic, payload, key=key, headers=list(headers.items()))
            assert producer.flush(10) == 0

    def take(self, topic: str, count: int) -> list[Message]:
        """The first ``count`` records of the topic (in order, for one partition)."""
        consumer = Consumer(self.tansu.consumer_config(f"reader-{uuid.uuid4().hex}", **QUIET))
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            taken: list[Message] = []
            deadline = time.monotonic() + WAIT
            while len(taken) < count and time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is not None and message.error() is None:
                    taken.append(message)
            return taken
        finally:
            consumer.close()

    def members(self, endpoint: str, client_id: str) -> int:
        return group_members(self.admin, f"mediation-{endpoint}-{client_id}")


@pytest.fixture(params=["per_session", "shared"])
def kafka(tansu: Tansu, request: pytest.FixtureRequest) -> Iterator[Kafka]:
    """Every test runs with both designs (``KafkaConfig.fetch``)."""
    tansu.ensure_running()
    yield Kafka(tansu, request.param)
    tansu.ensure_running()  # a test that stopped it brings it back even when it failed


# -- the engine side ---------------------------------------------------------------------------


@asynccontextmanager
async def kafka_engine(
    engine_with: EngineFactory,
    kafka: Kafka,
    *,
    entrypoints: dict[str, Any],
    routes: list[dict[str, Any]],
    endpoints: dict[str, dict[str, Any]],
) -> AsyncIterator[MediationEngine]:
    """An engine with Kafka endpoints (name -> config table), once every one is up."""
    tables = {
        name: {
            "type": "kafka",
            "config": {
                "brokers": kafka.tansu.bootstrap_servers,
                "fetch": kafka.fetch,
                **FAST_GROUPS,
                **config,
            },
        }
        for name, config in endpoints.items()
    }
    async with engine_with(entrypoints=entrypoints, routes=routes, endpoints=tables) as engine:
        with trio.fail_after(WAIT):
            for name in endpoints:
                await engine.endpoints[name].state.wait_value(EndpointState.UP)
        yield engine


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ws_url(engine: MediationEngine, name: str, client_id: str | None = None) -> str:
    return url(engine, name, f"/?client_id={client_id}" if client_id else "/", scheme="ws")


async def message(ws: WebSocketConnection) -> str | bytes:
    with trio.fail_after(WAIT):
        return await ws.get_message()


async def next_sse(events: AsyncIterator[ServerSentEvent]) -> ServerSentEvent:
    with trio.fail_after(WAIT):
        return await anext(events)


def numbered(n: int, start: int = 0) -> list[bytes]:
    return [b"%03d" % i for i in range(start, start + n)]


async def put(kafka: Kafka, topic: str, *payloads: bytes, **headers: str) -> None:
    await trio.to_thread.run_sync(lambda: kafka.put(topic, *payloads, **headers))


@contextmanager
def elapsed() -> Iterator[list[float]]:
    started = time.monotonic()
    result: list[float] = []
    yield result
    result.append(time.monotonic() - started)


# -- downstream --------------------------------------------------------------------------------


async def test_downstream_to_websocket_and_sse_then_the_group_is_left(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    """Kafka -> WebSocket (envelope, with metadata) and SSE (ids that resume); a client that
    leaves leaves its consumer group at once."""
    topic = await trio.to_thread.run_sync(kafka.topic, "down")
    name = unique("k")
    routes = [{"source": name, "target": "ws"}, {"source": name, "target": "sse"}]
    async with (
        kafka_engine(
            engine_with,
            kafka,
            entrypoints={"ws": "websocket", "sse": "sse"},
            routes=routes,
            endpoints={name: {"topic_in": topic}},
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as client,
    ):
        async with (
            open_ws(ws_url(engine, "ws", "w1"), subprotocols=[SUBPROTOCOL]) as ws,
            sse_events(client, engine, "sse") as sse,
        ):
            # Both sessions are subscribed (101 / the session event): nothing published from
            # here on may be missed.
            # (fetch = "shared": no group member; the position is written to the group instead.)
            members = 1 if kafka.fetch == "per_session" else 0
            assert await trio.to_thread.run_sync(kafka.members, name, "w1") == members
            await trio.to_thread.run_sync(
                lambda: kafka.put(topic, b"line one\nline two", key=b"k-1", **{"x-trace": "t-1"})
            )
            delivered = await envelope(ws)
            assert delivered["id"] == f"{topic}:0:0"
            assert delivered["payload"] == "line one\nline two"
            metadata = delivered["metadata"]
            assert {k: metadata[k] for k in ("topic", "partition", "offset", "key", "x-trace")} == {
                "topic": topic,
                "partition": "0",
                "offset": "0",
                "key": "k-1",
                "x-trace": "t-1",
            }
            assert abs(int(metadata["timestamp"]) / 1000 - time.time()) < 60
            event = await next_sse(sse)
            assert (event.id, event.data) == (f"{topic}:0:0", "line one\nline two")
            await put(kafka, topic, *numbered(4))
            assert [(await next_sse(sse)).id for _ in range(4)] == [
                f"{topic}:0:{n}" for n in range(1, 5)
            ]
        with elapsed() as took:
            await clients_gone(engine)
            with trio.fail_after(2):
                # The broker tells nobody when a group empties: ask it.
                while await trio.to_thread.run_sync(kafka.members, name, "w1"):  # noqa: ASYNC110
                    await trio.sleep(0.05)
        assert took[0] < 1.5  # the consumer closed (left the group) before the session ended


async def test_sse_last_event_id_resumes_right_after_it(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    """An SSE client has a new identity (so a new group, starting at the end) on every connection:
    only its Last-Event-ID brings back what it missed."""
    topic = await trio.to_thread.run_sync(kafka.topic, "sse")
    name = unique("k")
    async with (
        kafka_engine(
            engine_with,
            kafka,
            entrypoints={"sse": "sse"},
            routes=[{"source": name, "target": "sse"}],
            endpoints={name: {"topic_in": topic}},
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as client,
    ):
        async with sse_events(client, engine, "sse") as sse:
            await put(kafka, topic, *numbered(5))
            seen = [await next_sse(sse) for _ in range(5)]
        assert [e.data for e in seen] == ["000", "001", "002", "003", "004"]
        await put(kafka, topic, *numbered(3, start=5))  # while nobody is connected
        async with sse_events(client, engine, "sse", **{"Last-Event-ID": seen[2].id}) as sse:
            resumed = [(await next_sse(sse)).data for _ in range(5)]
        assert resumed == ["003", "004", "005", "006", "007"]


# -- upstream ----------------------------------------------------------------------------------


async def test_upstream_is_confirmed_by_the_broker_with_key_and_headers(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    """HTTP POST and WebSocket -> Kafka with at_least_once: answered after the delivery report,
    key and headers as configured."""
    topic = await trio.to_thread.run_sync(kafka.topic, "up")
    name = unique("k")
    routes = [
        {"source": "post", "target": name, "delivery_guarantee": "at_least_once"},
        {"source": "up", "target": name, "delivery_guarantee": "at_least_once", "key": "client_id"},
    ]
    entry, tables = {"post": "http_post", "up": "websocket"}, {name: {"topic_out": topic}}
    async with (
        kafka_engine(
            engine_with, kafka, entrypoints=entry, routes=routes, endpoints=tables
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as client,
    ):
        response = await client.post(
            url(engine, "post"),
            content=b'{"order": 1}',
            headers={"content-type": "application/json", "X-Trace-ID": "t-7"},
        )
        assert response.status_code == 202
        async with open_ws(ws_url(engine, "up", "uploader"), subprotocols=[SUBPROTOCOL]) as ws:
            await ws.send_message(json.dumps({"id": "up-1", "payload": "from ws"}))
            assert await envelope(ws) == {"ack": "up-1"}
        # Confirmed means stored: a reader finds both at once.
        first, second = await trio.to_thread.run_sync(kafka.take, topic, 2)
        assert (first.value(), first.key()) == (b'{"order": 1}', response.json()["id"].encode())
        assert dict(first.headers() or []) == {
            "content-type": b"application/json",
            "x-trace-id": b"t-7",
        }
        assert (second.value(), second.key()) == (b"from ws", b"uploader")


# -- broker outage and client reconnects (the shared scenario) ---------------------------------


class KafkaAdapter(BrokerAdapter):
    """Outage: ``topic_in`` = ``topic_out``. Reconnect: a group per client, whose committed
    offset is where the client's next session resumes."""

    # tansu keeps its data in memory: a restart loses every record, offset and topic.
    keeps_unconfirmed_across_restart = False
    # A Kafka delivery is named by where it is (topic:partition:offset), not by the id the
    # engine gave it upstream.
    event_id_travels = False

    def __init__(self, kafka: Kafka) -> None:
        self.kafka = kafka
        self.name = unique("k")
        self.topics: dict[Scenario, str] = {
            "outage": kafka.topic("outage"),
            "reconnect": kafka.topic("reconnect"),
        }

    def table(self, scenario: Scenario) -> dict[str, Any]:
        topic = self.topics[scenario]
        config: dict[str, Any] = (
            {"topic_in": topic, "topic_out": topic}
            if scenario == "outage"
            else {"topic_in": topic, "auto_offset_reset": "earliest"}
        )
        brokers = self.kafka.tansu.bootstrap_servers
        return {
            "type": "kafka",
            "config": {"brokers": brokers, "fetch": self.kafka.fetch, **FAST_GROUPS, **config},
        }

    async def publish(self, scenario: Scenario, *payloads: bytes) -> None:
        await put(self.kafka, self.topics[scenario], *payloads)

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.kafka.tansu.stop)

    async def start(self) -> None:
        await trio.to_thread.run_sync(self.kafka.tansu.start)

    async def recovered(self) -> None:
        # tansu came back empty: the topic is created again, as an operator would, with one
        # partition (a consumer of a missing topic would wait for it; tansu's own creation on
        # the first produce would give it 4 partitions, and this suite's order is per topic).
        topic = self.topics["outage"]

        def create() -> None:
            self.kafka.admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)

        await trio.to_thread.run_sync(create)

    async def left_group(self, client_id: str) -> None:
        with trio.fail_after(WAIT):
            # The broker tells nobody when a group empties: ask it.
            while await trio.to_thread.run_sync(self.kafka.members, self.name, client_id):  # noqa: ASYNC110
                await trio.sleep(0.05)

    async def client_left(self, client_id: str, unconfirmed: int) -> None:
        await self.left_group(client_id)

    async def settled(self, engine: MediationEngine, client_id: str, confirmed: int | None) -> None:
        await self.left_group(client_id)


class TestKafkaOutage(OutageConformance, ReconnectConformance):
    @pytest.fixture
    async def adapter(self, kafka: Kafka) -> BrokerAdapter:
        return await trio.to_thread.run_sync(KafkaAdapter, kafka)


# -- bridges -----------------------------------------------------------------------------------


async def test_a_bridge_moves_every_event_from_topic_to_topic(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    """Kafka -> Kafka, at_least_once: each event is acked on the source once the target's
    delivery report came, so the target has every one, in order, with its headers.

    (The bridge starts with its endpoint: with ``fetch = "shared"`` it is the first session of
    its fetch, which once began twice and then moved one event, ``test_kafka_shared_fetch``.)"""
    source, target = await trio.to_thread.run_sync(
        lambda: (kafka.topic("bridge-in"), kafka.topic("bridge-out"))
    )
    src, dst = unique("src"), unique("dst")
    route = {"source": src, "target": dst, "delivery_guarantee": "at_least_once"}
    async with kafka_engine(
        engine_with,
        kafka,
        entrypoints={},
        routes=[route],
        endpoints={
            src: {"topic_in": source, "auto_offset_reset": "earliest"},
            dst: {"topic_out": target},
        },
    ):
        await put(kafka, source, *numbered(10), **{"x-batch": "b-1"})
        moved = await trio.to_thread.run_sync(kafka.take, target, 10)
    assert [m.value() for m in moved] == numbered(10)
    assert [m.key() for m in moved] == [f"{source}:0:{n}".encode() for n in range(10)]
    assert all(dict(m.headers() or [])["x-batch"] == b"b-1" for m in moved)


# -- topics that do not exist yet ----------------------------------------------------------------


async def test_a_session_on_a_missing_topic_starts_and_receives_once_it_appears(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    """Issue 18: an SSE client of a topic nobody created yet gets its stream (not an error), and
    receives from the moment the topic appears, including the produce that created it (tansu
    creates a topic on first use, with 4 partitions: "latest" must not skip that event)."""
    topic = unique("not-yet")
    name = unique("k")
    routes = [{"source": "hook", "target": name}, {"source": name, "target": "sse"}]
    async with (
        kafka_engine(
            engine_with,
            kafka,
            entrypoints={"hook": "http_post", "sse": "sse"},
            routes=routes,
            endpoints={name: {"topic_in": topic, "topic_out": topic}},
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as client,
        sse_events(client, engine, "sse") as sse,  # the session event came: it started
    ):
        posted = await client.post(url(engine, "hook"), content=b"first")
        assert posted.status_code == 202, posted.text
        event = await next_sse(sse)
        assert (event.event or "message", event.data) == ("message", "first")
        assert event.id is not None and event.id.startswith(f"{topic}:")


async def test_create_topics_creates_the_missing_topics_when_the_endpoint_starts(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    topic_in, topic_out = unique("made-in"), unique("made-out")
    name = unique("k")
    config = {
        "topic_in": topic_in,
        "topic_out": topic_out,
        "create_topics": True,
        "partitions": 2,
    }
    async with kafka_engine(
        engine_with,
        kafka,
        entrypoints={"sse": "sse"},
        routes=[{"source": name, "target": "sse"}],
        endpoints={name: config},
    ):
        # The endpoint is up only once its topics were asked for.
        listed = await trio.to_thread.run_sync(lambda: kafka.admin.list_topics(timeout=10).topics)
    assert len(listed[topic_in].partitions) == 2
    assert len(listed[topic_out].partitions) == 2
