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
from confluent_kafka.admin import AdminClient
from httpx_sse import ServerSentEvent
from trio_websocket import ConnectionClosed, WebSocketConnection

from mediation.endpoints import EndpointState
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL
from tests.brokers import Tansu

from .conftest import EngineFactory, clients_gone, envelope, open_ws, sse_events, url
from .test_conformance_kafka import FAST_GROUPS, group_members, new_topic

WAIT = 20.0
QUIET = {"log.connection.close": False}  # the outage test closes every connection


# -- the broker side ---------------------------------------------------------------------------


class Kafka:
    """Blocking helpers for the far side of the broker; call them with ``trio.to_thread``."""

    def __init__(self, tansu: Tansu) -> None:
        self.tansu = tansu
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


@pytest.fixture
def kafka(tansu: Tansu) -> Iterator[Kafka]:
    tansu.ensure_running()
    yield Kafka(tansu)
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
            "config": {"brokers": kafka.tansu.bootstrap_servers, **FAST_GROUPS, **config},
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
            assert await trio.to_thread.run_sync(kafka.members, name, "w1") == 1
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


# -- delivery guarantees -----------------------------------------------------------------------


async def test_at_least_once_and_at_most_once_across_a_reconnect(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    """Sequence-numbered events, a client that disconnects mid-stream and comes back with the
    same client id: at_least_once resumes right after its last confirmed event (nothing lost),
    at_most_once never delivers an event twice. The two run side by side."""
    alo_topic, amo_topic = await trio.to_thread.run_sync(
        lambda: (kafka.topic("alo"), kafka.topic("amo"))
    )
    alo, amo = unique("alo"), unique("amo")
    routes = [
        {"source": alo, "target": "confirming", "delivery_guarantee": "at_least_once"},
        {"source": amo, "target": "plain", "delivery_guarantee": "at_most_once"},
    ]
    for route in routes:
        route["channel_size"] = 4
    async with kafka_engine(
        engine_with,
        kafka,
        entrypoints={"confirming": "websocket", "plain": "websocket"},
        routes=routes,
        endpoints={
            alo: {"topic_in": alo_topic, "auto_offset_reset": "earliest"},
            amo: {"topic_in": amo_topic, "auto_offset_reset": "earliest"},
        },
    ) as engine:
        await put(kafka, alo_topic, *numbered(20))
        await put(kafka, amo_topic, *numbered(20), b"end")

        async def at_least_once() -> None:
            target = ws_url(engine, "confirming", "alo-client")
            async with open_ws(target, subprotocols=[SUBPROTOCOL]) as first:
                for n in range(5):
                    event = await envelope(first)
                    assert event["payload"] == f"{n:03d}"
                    await first.send_message(json.dumps({"ack": event["id"]}))
                # The endpoint hands out at most 4 unsettled events: the fourth of these arrives
                # only once the ack of 004 was taken, so every ack above reached the consumer.
                unconfirmed = [(await envelope(first))["payload"] for _ in range(4)]
                assert unconfirmed == ["005", "006", "007", "008"]
            async with open_ws(target, subprotocols=[SUBPROTOCOL]) as second:
                again = []
                for _ in range(15):
                    event = await envelope(second)
                    again.append(event["payload"])
                    await second.send_message(json.dumps({"ack": event["id"]}))
            assert again == [f"{n:03d}" for n in range(5, 20)]

        async def at_most_once() -> None:
            target = ws_url(engine, "plain", "amo-client")
            async with open_ws(target) as first:
                seen = [await message(first) for _ in range(5)]
            async with open_ws(target) as second:
                while (received := await message(second)) != "end":
                    seen.append(received)
            assert len(seen) == len(set(seen))
            assert seen[:5] == ["000", "001", "002", "003", "004"]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(at_least_once)
            nursery.start_soon(at_most_once)
        await clients_gone(engine)
        members = await trio.to_thread.run_sync(
            lambda: kafka.members(alo, "alo-client") + kafka.members(amo, "amo-client")
        )
        assert members == 0


# -- upstream, and a broker outage -------------------------------------------------------------


async def test_upstream_is_confirmed_by_the_broker_and_refused_while_it_is_down(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    """HTTP POST and WebSocket -> Kafka with at_least_once: answered after the delivery report,
    key and headers as configured. With the broker stopped: 503, ``{"nack"}``, the downstream
    sessions ended within 15 s (WebSocket 1011, SSE ``event: error``, polling 503), ``/readyz``
    503, and never a false 202; after it is back, 202."""
    topic = await trio.to_thread.run_sync(kafka.topic, "up")
    name = unique("k")
    routes = [
        {"source": "post", "target": name, "delivery_guarantee": "at_least_once"},
        {"source": "up", "target": name, "delivery_guarantee": "at_least_once", "key": "client_id"},
        {"source": name, "target": "down"},
        {"source": name, "target": "sse"},
        {"source": name, "target": "poll"},
    ]
    entrypoints = {
        "post": "http_post",
        "up": "websocket",
        "down": "websocket",
        "sse": "sse",
        "poll": "http_get",
    }
    async with (
        kafka_engine(
            engine_with,
            kafka,
            entrypoints=entrypoints,
            routes=routes,
            endpoints={name: {"topic_in": topic, "topic_out": topic}},
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as client,
    ):
        endpoint = engine.endpoints[name]
        readyz = url(engine, "health", "/readyz")
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

        poller = {"X-Client-ID": "poller"}
        subscribed = await client.post(url(engine, "poll", "/subscribe"), headers=poller)
        assert subscribed.status_code == 201
        async with (
            open_ws(ws_url(engine, "down"), subprotocols=[SUBPROTOCOL]) as down,
            open_ws(ws_url(engine, "up"), subprotocols=[SUBPROTOCOL]) as up,
            sse_events(client, engine) as sse,
        ):
            await trio.to_thread.run_sync(kafka.tansu.stop)
            try:
                # Right away: whatever the endpoint has noticed yet, no 202.
                refused = await client.post(url(engine, "post"), content=b"while down")
                assert refused.status_code == 503
                await up.send_message(json.dumps({"id": "u-2", "payload": "while down"}))
                assert (await envelope(up))["nack"] == "u-2"
                with trio.fail_after(WAIT):
                    await endpoint.state.wait_value(EndpointState.DOWN)
                not_ready = await client.get(readyz)
                assert not_ready.status_code == 503
                assert not_ready.json()["endpoints"][name] == "down"
                with elapsed() as took, pytest.raises(ConnectionClosed) as closed:
                    await message(down)
                assert closed.value.reason.code == 1011
                assert took[0] < 15
                assert (await next_sse(sse)).event == "error"
                polled = await client.get(url(engine, "poll", "/poll"), headers=poller)
                assert polled.status_code == 503
            finally:
                await trio.to_thread.run_sync(kafka.tansu.start)
        with trio.fail_after(WAIT):
            await endpoint.state.wait_value(EndpointState.UP)
        assert (await client.get(readyz)).status_code == 200
        accepted = await client.post(url(engine, "post"), content=b"after recovery")
        assert accepted.status_code == 202
        # tansu lost its data with the restart (and re-created the topic on first use): what is
        # there now is only what was confirmed.
        [stored] = await trio.to_thread.run_sync(kafka.take, topic, 1)
        assert stored.value() == b"after recovery"


# -- bridges -----------------------------------------------------------------------------------


async def test_a_bridge_moves_every_event_from_topic_to_topic(
    engine_with: EngineFactory, kafka: Kafka
) -> None:
    """Kafka -> Kafka, at_least_once: each event is acked on the source once the target's
    delivery report came, so the target has every one, in order, with its headers."""
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
