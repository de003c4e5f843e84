"""Hostile broker messages: one odd message never ends the engine, the endpoint or another session.

For each broker, messages with odd headers or properties (bytes that are not UTF-8, nested and
binary field types, non-string message ids, characters MQTT forbids) go to one client's session,
while a bystander session of the same engine waits on another queue or topic. Each test checks:
the odd message was delivered with a safe conversion, or counted in
``mediation_undeliverable_messages_total`` and settled so that the broker does not hand it out
again; the hostile client's session goes on (it receives the next message); the bystander
receives a fresh event on the session it had all along; ``/healthz`` answers.

The brokers are the harness's (RabbitMQ, tansu, Mosquitto, RabbitMQ's AMQP 1.0 plugin); Solace
goes through the fake of its API, whose messages can hold anything, as a library could return.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pika
import pika.spec
import trio
from confluent_kafka import Producer
from httpx_sse import ServerSentEvent
from paho.mqtt.packettypes import PacketTypes
from proton import Data, Message, symbol
from proton.utils import BlockingConnection

from mediation.endpoints.mqtt5 import new_properties
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL

from .brokers import Mosquitto, RabbitMQ
from .conftest import EngineFactory, envelope, open_ws, sse_events, url
from .solace_fake import FakeBroker, open_broker
from .solace_fake._broker import Stored
from .solace_fake.harness import fake_table
from .test_conformance_jms import fanout
from .test_kafka import Kafka, kafka, kafka_engine  # noqa: F401 (the kafka fixture)
from .test_mqtt5 import mqtt_engine, open_device
from .test_rabbitmq import rabbit_engine

WAIT = 20.0


# -- what every test checks ----------------------------------------------------------------------


async def undeliverable(
    http: httpx.AsyncClient, engine: MediationEngine, endpoint: str, reason: str
) -> float:
    """``mediation_undeliverable_messages_total`` for ``endpoint`` and ``reason`` (0 if unset)."""
    metrics = (await http.get(url(engine, "health", "/metrics"))).text
    for line in metrics.splitlines():
        if (
            line.startswith("mediation_undeliverable_messages_total{")
            and f'endpoint="{endpoint}"' in line
            and f'reason="{reason}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def assert_alive(http: httpx.AsyncClient, engine: MediationEngine) -> None:
    assert (await http.get(url(engine, "health", "/healthz"))).status_code == 200


async def next_sse(events: AsyncIterator[ServerSentEvent]) -> ServerSentEvent:
    with trio.fail_after(WAIT):
        return await anext(events)


def ws_url(engine: MediationEngine, client_id: str, entrypoint: str = "ws") -> str:
    return url(engine, entrypoint, f"/?client_id={client_id}", scheme="ws")


# -- RabbitMQ ------------------------------------------------------------------------------------


def _shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


def _longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def _content_header(*, headers: bytes | None = None, message_id: bytes | None = None) -> bytes:
    """Basic properties encoded by hand: pika would refuse to write what a broker passes on."""
    flags, fields = 0, b""
    if headers is not None:
        flags |= pika.spec.BasicProperties.FLAG_HEADERS
        fields += _longstr(headers)
    if message_id is not None:
        flags |= pika.spec.BasicProperties.FLAG_MESSAGE_ID
        fields += _shortstr(message_id)
    return struct.pack(">H", flags) + fields


class _RawProperties(pika.BasicProperties):  # type: ignore[misc]
    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self._encoded = encoded

    def encode(self) -> list[bytes]:
        return [self._encoded]


def _publish_raw(rabbitmq: RabbitMQ, queue: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Publish ``(content header, body)`` pairs with confirms: the broker has them on return."""
    with rabbitmq.channel() as channel:
        channel.confirm_delivery()  # type: ignore[attr-defined]
        for header, body in messages:
            channel.basic_publish("", queue, body, _RawProperties(header))  # type: ignore[attr-defined]


@contextmanager
def _deleted_afterwards(rabbitmq: RabbitMQ, *queues: str) -> Iterator[None]:
    try:
        yield
    finally:
        with rabbitmq.channel() as channel:
            for queue in queues:
                channel.queue_delete(queue)  # type: ignore[attr-defined]


async def test_rabbitmq_odd_headers_are_carried_and_an_undecodable_one_is_rejected(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    """Bytes for a message id and a header name, nested and binary header values: delivered as
    text. A timestamp header beyond the year 9999 (pika cannot decode the content header; it
    used to end the connection every session shares, again after each reconnect): rejected
    without requeue, counted, and the connection and both sessions go on."""
    base = rabbitmq.unique_name("hostile")
    odd_headers = (
        _shortstr(b"\xffname") + b"S" + _longstr(b"\xfe\xffvalue")
        + _shortstr(b"nested") + b"F" + _longstr(_shortstr(b"x") + b"x" + _longstr(b"\x00\xff"))
        + _shortstr(b"array") + b"A" + _longstr(b"I" + struct.pack(">i", -1) + b"V")
        + _shortstr(b"decimal") + b"D" + bytes([2]) + struct.pack(">i", 12345)
        + _shortstr(b"control") + b"S" + _longstr(b"a\nb")
    )  # fmt: skip
    odd = _content_header(headers=odd_headers, message_id=b"\xff\xfe-id")
    undecodable = _content_header(
        headers=_shortstr(b"when") + b"T" + struct.pack(">Q", 2**63), message_id=b"poison"
    )
    routes = [{"source": "rmq", "target": "ws"}, {"source": "rmq", "target": "sse"}]
    with _deleted_afterwards(rabbitmq, f"{base}-ws", f"{base}-sse"):
        async with (
            rabbit_engine(
                engine_with,
                rabbitmq,
                entrypoints={"ws": "websocket", "sse": "sse"},
                routes=routes,
                queue_in=f"{base}-{{entrypoint}}",
                declare=True,
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as http,
        ):
            async with (
                open_ws(ws_url(engine, "w1"), subprotocols=[SUBPROTOCOL]) as ws,
                sse_events(http, engine, "sse") as bystander,
            ):
                messages = [(odd, b"odd"), (undecodable, b"poison"), (_content_header(), b"after")]
                await trio.to_thread.run_sync(_publish_raw, rabbitmq, f"{base}-ws", messages)
                first = await envelope(ws)
                assert first["payload"] == "odd"
                metadata = first["metadata"]
                assert metadata["message_id"] == "\ufffd\ufffd-id"
                assert metadata["\ufffdname"] == "\ufffd\ufffdvalue"
                assert metadata["nested"] == str({"x": b"\x00\xff"})
                assert metadata["array"] == "[-1, None]"
                assert metadata["decimal"] == "123.45"
                assert "control" not in metadata  # not header-safe: left out
                assert (await envelope(ws))["payload"] == "after"
                assert await undeliverable(http, engine, "rmq", "undecodable") == 1
                await trio.to_thread.run_sync(
                    _publish_raw, rabbitmq, f"{base}-sse", [(_content_header(), b"fresh")]
                )
                assert (await next_sse(bystander)).data == "fresh"
                await assert_alive(http, engine)
            # Nothing went back to the queue: the rejected message is not redelivered.
            found = await trio.to_thread.run_sync(
                lambda: rabbitmq.wait_for_queue(f"{base}-ws", timeout=WAIT, consumers=0)
            )
            assert found.messages == 0
            assert await undeliverable(http, engine, "rmq", "undecodable") == 1


# -- Kafka ---------------------------------------------------------------------------------------


def _produce(broker: Kafka, topic: str, records: list[dict[str, Any]]) -> None:
    producer = Producer(
        broker.tansu.client_config(**{"linger.ms": 0, "log.connection.close": False})
    )
    for record in records:
        producer.produce(topic, **record)
        assert producer.flush(10) == 0  # one record per batch (see tests/test_kafka.py)


async def test_kafka_headers_that_are_not_utf8_are_carried(
    engine_with: EngineFactory,
    kafka: Kafka,  # noqa: F811 (the fixture)
) -> None:
    """Header values that are not UTF-8 (and a key that is not): delivered with replacement
    characters, control characters left out, nothing counted; the session reads on and a
    bystander on another topic gets a fresh record."""
    hostile_topic = await trio.to_thread.run_sync(kafka.topic, "hostile")
    other_topic = await trio.to_thread.run_sync(kafka.topic, "bystander")
    name = f"kh-{uuid.uuid4().hex[:8]}"
    routes = [{"source": name, "target": "ws"}, {"source": f"{name}-b", "target": "sse"}]
    async with (
        kafka_engine(
            engine_with,
            kafka,
            entrypoints={"ws": "websocket", "sse": "sse"},
            routes=routes,
            endpoints={name: {"topic_in": hostile_topic}, f"{name}-b": {"topic_in": other_topic}},
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as http,
    ):
        async with (
            open_ws(ws_url(engine, "w1"), subprotocols=[SUBPROTOCOL]) as ws,
            sse_events(http, engine, "sse") as bystander,
        ):
            hostile = {
                "value": b"odd",
                "key": b"\xffk",
                "headers": [
                    ("binary", b"\xff\xfeok"),
                    ("control", b"a\x00b"),
                    ("empty", None),
                    ("\u00e9t\u00e9", "summer"),
                ],
            }
            await trio.to_thread.run_sync(
                _produce, kafka, hostile_topic, [hostile, {"value": b"after"}]
            )
            first = await envelope(ws)
            assert (first["id"], first["payload"]) == (f"{hostile_topic}:0:0", "odd")
            metadata = first["metadata"]
            assert metadata["binary"] == "\ufffd\ufffdok"
            assert metadata["empty"] == ""
            assert metadata["\u00e9t\u00e9"] == "summer"
            assert metadata["key"] == "\ufffdk"
            assert "control" not in metadata
            second = await envelope(ws)
            assert (second["id"], second["payload"]) == (f"{hostile_topic}:0:1", "after")
            await trio.to_thread.run_sync(_produce, kafka, other_topic, [{"value": b"fresh"}])
            assert (await next_sse(bystander)).data == "fresh"
            await assert_alive(http, engine)
            for reason in ("undecodable", "conversion_error"):
                assert await undeliverable(http, engine, name, reason) == 0


# -- MQTT 5 --------------------------------------------------------------------------------------


async def test_mqtt5_properties_mqtt_forbids_are_carried(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    """User properties and a content type holding U+FEFF (MQTT forbids it, Mosquitto forwards it,
    paho refused the packet and dropped the connection, then the broker resent the message to the
    next one), and correlation data that is not UTF-8: delivered as they are; the session goes
    on, and a bystander on another topic gets a fresh message."""
    base = f"hostile/{uuid.uuid4().hex[:8]}"
    routes = [{"source": "mqtt", "target": "ws"}, {"source": "mqtt", "target": "sse"}]
    async with (
        mqtt_engine(
            engine_with,
            mosquitto,
            entrypoints={"ws": "websocket", "sse": "sse"},
            routes=routes,
            topic_in=f"{base}/{{entrypoint}}",
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as http,
        open_device(mosquitto) as device,
    ):
        async with (
            open_ws(ws_url(engine, "w1"), subprotocols=[SUBPROTOCOL]) as ws,
            sse_events(http, engine, "sse") as bystander,
        ):
            properties = new_properties(PacketTypes.PUBLISH)
            properties.UserProperty = [("odd", "\ufeffbom"), ("\ufeffname", "value")]
            properties.ContentType = "text/\ufeffplain"
            properties.CorrelationData = b"\xff\x00\xfe"
            info = device.client.publish(f"{base}/ws", b"odd", 1, False, properties)
            await device._answered(info.mid)
            await device.publish(f"{base}/ws", b"after")
            first = await envelope(ws)
            assert first["payload"] == "odd"
            assert first["metadata"]["odd"] == "\ufeffbom"
            assert first["metadata"]["\ufeffname"] == "value"
            assert first["metadata"]["content-type"] == "text/\ufeffplain"
            assert (await envelope(ws))["payload"] == "after"
            await device.publish(f"{base}/sse", b"fresh")
            assert (await next_sse(bystander)).data == "fresh"
            await assert_alive(http, engine)
            assert await undeliverable(http, engine, "mqtt", "conversion_error") == 0


# -- JMS (AMQP 1.0) ------------------------------------------------------------------------------


class _RawMessage(Message):
    """A message whose encoding is given: proton would refuse to build what a broker passes on."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self._encoded = encoded

    def encode(self) -> bytes:
        return self._encoded


def _amqp_send(rabbitmq: RabbitMQ, address: str, messages: list[Message]) -> None:
    connection = BlockingConnection(rabbitmq.amqp1_url, allowed_mechs="PLAIN", timeout=WAIT)
    try:
        sender = connection.create_sender(address)
        for message in messages:
            sender.send(message)
    finally:
        connection.close()


def _list_keyed_properties() -> bytes:
    """Application properties whose one key is a list (proton's decoder raises on it), then a
    data section."""
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(0x74)  # application-properties
    data.put_map()
    data.enter()
    data.put_list()
    data.enter()
    data.put_int(1)
    data.exit()
    data.put_int(2)
    data.exit()
    data.exit()
    data.put_described()
    data.enter()
    data.put_ulong(0x75)  # data
    data.put_binary(b"poison")
    data.exit()
    encoded: bytes = data.encode()
    return encoded


async def test_jms_odd_properties_are_carried_and_an_unconvertible_message_rejected(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    """A binary message id and properties of odd AMQP types: delivered as text. Messages no
    client can be given (properties keyed by a list, on which proton's decoder raises, which
    used to end the connection task and the engine with it; a map body): rejected, counted,
    not redelivered; the connection every session shares goes on."""
    with fanout(rabbitmq, ("w1", "s1")) as base:
        config = {
            "url": rabbitmq.amqp1_url,
            "queue_in": f"/amq/queue/{base}-{{client_id}}",
            "retry_interval": 0.2,
        }
        routes = [{"source": "jms", "target": "ws"}, {"source": "jms", "target": "sse"}]
        async with (
            engine_with(
                entrypoints={"ws": "websocket", "sse": "sse"},
                endpoints={"jms": {"type": "jms", "config": config}},
                routes=routes,
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as http,
        ):
            with trio.fail_after(WAIT):
                await engine.endpoints["jms"].state.wait_value("up")
            async with (
                open_ws(ws_url(engine, "w1"), subprotocols=[SUBPROTOCOL]) as ws,
                sse_events(http, engine, "sse", **{"X-Client-ID": "s1"}) as bystander,
            ):
                odd = Message(
                    body=b"odd",
                    id=b"\xff\xfe",
                    properties={
                        "binary": b"\xff\x00",
                        "symbol": symbol("s"),
                        "uuid": uuid.UUID(int=1),
                    },
                )
                odd.inferred = True
                map_body = Message(body={"a": 1})
                after = Message(body=b"after")
                after.inferred = True
                messages = [odd, _RawMessage(_list_keyed_properties()), map_body, after]
                await trio.to_thread.run_sync(
                    _amqp_send, rabbitmq, f"/amq/queue/{base}-w1", messages
                )
                first = await envelope(ws)
                assert first["payload"] == "odd"
                assert first["metadata"]["message-id"] == "fffe"
                assert first["metadata"]["binary"] == "ff00"
                assert first["metadata"]["symbol"] == "s"
                assert first["metadata"]["uuid"] == str(uuid.UUID(int=1))
                assert (await envelope(ws))["payload"] == "after"
                assert await undeliverable(http, engine, "jms", "conversion_error") == 1
                assert await undeliverable(http, engine, "jms", "unsupported") == 1
                fresh = Message(body=b"fresh")
                fresh.inferred = True
                await trio.to_thread.run_sync(
                    _amqp_send, rabbitmq, f"/amq/queue/{base}-s1", [fresh]
                )
                assert (await next_sse(bystander)).data == "fresh"
                await assert_alive(http, engine)
            found = await trio.to_thread.run_sync(
                lambda: rabbitmq.wait_for_queue(f"{base}-w1", timeout=WAIT, consumers=0)
            )
            assert found.messages == 0  # the rejected ones are gone, not requeued


# -- Solace (the fake of its API) ----------------------------------------------------------------


class _Unprintable:
    """A property value the API hands over and that cannot become text (a library error)."""

    def __str__(self) -> str:
        raise RuntimeError("no text for this property")


def _publish(broker: FakeBroker, topic: str, payload: bytes, **fields: Any) -> None:
    stored = Stored(
        payload=payload,
        text=None,
        destination=topic,
        application_message_id=fields.pop("application_message_id", None),
        correlation_id=fields.pop("correlation_id", None),
        properties=fields,
    )
    broker.publish(stored, persistent=True)


async def test_solace_odd_properties_are_carried_and_an_unconvertible_message_rejected(
    engine_with: EngineFactory,
) -> None:
    """Ids and properties that are bytes or numbers: delivered (as text). A property the API
    cannot turn into text: the persistent message is settled REJECTED (not redelivered),
    counted; the session reads on and a bystander on another endpoint gets a fresh event."""
    with open_broker() as broker:
        hostile = fake_table(broker, topic_in="t/hostile", queue_in="hostile-{client_id}")
        other = fake_table(broker, topic_in="t/other")
        routes = [
            {"source": "sol", "target": "sse", "delivery_guarantee": "at_least_once"},
            {"source": "sol-b", "target": "ws"},
        ]
        async with (
            engine_with(
                entrypoints={"ws": "websocket", "sse": "sse"},
                endpoints={
                    "sol": {"type": "solace", "config": hostile},
                    "sol-b": {"type": "solace", "config": other},
                },
                routes=routes,
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as http,
        ):
            with trio.fail_after(WAIT):
                for name in ("sol", "sol-b"):
                    await engine.endpoints[name].state.wait_value("up")
            async with (
                sse_events(http, engine, "sse", **{"X-Client-ID": "s1"}) as events,
                open_ws(ws_url(engine, "w1"), subprotocols=[SUBPROTOCOL]) as bystander,
            ):
                _publish(
                    broker,
                    "t/hostile",
                    b"odd",
                    application_message_id=b"\xff\xfe-id",
                    correlation_id=42,
                    binary=b"\xff\x00",
                    number=7,
                )
                _publish(broker, "t/hostile", b"poison", bad=_Unprintable())
                _publish(broker, "t/hostile", b"after")
                first = await next_sse(events)
                assert first.data == "odd"
                assert first.id  # the session may replace an unusual id; it is never empty
                second = await next_sse(events)
                assert second.data == "after"
                assert await undeliverable(http, engine, "sol", "conversion_error") == 1
                broker.publish(Stored(b"fresh", None, "t/other", None, None, {}), persistent=False)
                assert (await envelope(bystander))["payload"] == "fresh"
                await assert_alive(http, engine)
            with broker.lock:
                queue = broker.queues["hostile-s1"]
                assert not queue.pending and not queue.outstanding  # none left to redeliver
