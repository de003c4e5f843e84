"""Event ids: one rule (1 to 256 printable ASCII characters, no space), and no id, however it
came in, that breaks a writer or goes out raw (issue 12, a hardened web edge).

- The pure rule, the escaping of a broker's id into metadata, and SSE framing that never raises.
- A ``mediation.v1`` client publishing an id that would inject SSE fields (or holds a NUL or a
  vertical tab): refused with a nack, the connection kept; the SSE stream and the long poll on
  the topic go on.
- Ids from a broker (the memory endpoint's producers, RabbitMQ ``message_id``, an MQTT 5
  ``event_id`` property): replaced in the session's consumer loop by an engine id derived from
  the original, which is kept (escaped) in metadata ``original-id``; a bystander keeps receiving.
- Defence in depth: if an invalid id reached the writers anyway, the SSE stream leaves it out of
  its frame and the poll out of ``X-Event-ID``.
- A polling session that fails unexpectedly ends alone (410, logged, counted).

Everything on real sockets on 127.0.0.1, port 0; real RabbitMQ and Mosquitto from the harness.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import pika.exceptions
import pytest
import trio
from hypothesis import example, given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

import mediation.session as session_module
from mediation.endpoints import Outbound
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL
from mediation.events import (
    MAX_EVENT_ID,
    ORIGINAL_ID,
    Event,
    escape_event_id,
    new_event_id,
    replacement_id,
    valid_event_id,
    with_valid_id,
    writable_event_id,
)
from mediation.metadata import MAX_VALUE, header_safe
from mediation.sse import frame_event
from tests.brokers import Mosquitto, RabbitMQ

from .conftest import EngineFactory, envelope, open_ws, sse_events, url
from .rawhttp import StreamReader, http_request
from .test_mqtt5 import mqtt_engine, open_device, topic
from .test_properties import decode_stream
from .test_rabbitmq import put, rabbit_engine

WAIT = 20.0
INJECTION = "evil\nid: x\ndata: injected"
NUL_ID = "nul\x00id"
VT_ID = "vt\x0bid"


# -- the pure rule -------------------------------------------------------------------------------


@given(st.text(max_size=MAX_EVENT_ID + 4))
@example("")
@example(" ")
@example("~" * MAX_EVENT_ID)
@example("~" * (MAX_EVENT_ID + 1))
def test_the_rule_is_printable_ascii_without_space_1_to_256(value: str) -> None:
    expected = 1 <= len(value) <= 256 and all(0x21 <= ord(c) <= 0x7E for c in value)
    assert valid_event_id(value) is expected
    # A writer's check is the rule's characters, of any length (Kafka's positions may be longer).
    assert writable_event_id(value) is (bool(value) and all(0x21 <= ord(c) <= 0x7E for c in value))


def test_ids_the_engine_makes_obey_the_rule() -> None:
    assert valid_event_id(new_event_id())
    assert valid_event_id(replacement_id(INJECTION))
    assert valid_event_id("orders.eu:3:1234567")  # a Kafka position


@given(st.text())
@example("\\x00")  # a backslash is doubled: no id escapes to another id's escaping
@example("\ud800")
def test_escaping_gives_the_rules_characters_within_metadata_bounds(value: str) -> None:
    escaped = escape_event_id(value)
    assert escaped == "" or writable_event_id(escaped)
    assert len(escaped) <= MAX_VALUE
    assert header_safe([(ORIGINAL_ID, escaped)]) == [(ORIGINAL_ID, escaped)]
    if len(value) <= MAX_VALUE // 10:  # nothing was cut: the escaping reads back
        assert escaped.encode().decode("unicode_escape") == value


def test_escaping_is_cut_between_two_escapes() -> None:
    escaped = escape_event_id("a" + "\x00" * MAX_VALUE)
    assert escaped == "a" + "\\x00" * ((MAX_VALUE - 1) // 4)


@given(st.text(), st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))
def test_with_valid_id_keeps_a_valid_event_and_renames_the_rest(
    event_id: str, metadata: dict[str, str]
) -> None:
    event = Event(b"payload", id=event_id, metadata=metadata)
    named = with_valid_id(event)
    if valid_event_id(event_id):
        assert named is event
        return
    assert valid_event_id(named.id) and named.id == replacement_id(event_id)
    assert named.metadata == {**metadata, ORIGINAL_ID: escape_event_id(event_id)}
    assert (named.payload, named.timestamp, named.client_id) == (
        event.payload,
        event.timestamp,
        event.client_id,
    )
    assert with_valid_id(event).id == named.id  # the same in every session, every redelivery


@given(st.text(), st.text(), st.text() | st.none())
@example("x", INJECTION, None)
@example("x", NUL_ID, "error\nname")
@example("x\ud800", "\ud800", "\ud800")
def test_sse_framing_never_raises_and_leaves_out_an_id_it_cannot_carry(
    data: str, event_id: str, event: str | None
) -> None:
    stream = frame_event(data, event_id=event_id, event=event)
    [read] = decode_stream(stream, [])
    carried = re.search(r"[\r\n\0\ud800-\udfff]", event_id) is None
    assert read["id"] == (event_id if carried else "")
    if re.search(r"[\ud800-\udfff]", data + (event or "")) is None:
        assert read["data"] == data.replace("\r\n", "\n").replace("\r", "\n")


# -- a mediation.v1 client's id -----------------------------------------------------------------

EDGE_ENTRYPOINTS: dict[str, str | dict[str, Any]] = {
    "ws": "websocket",
    "sse": "sse",
    "poll": {"type": "http_get", "poll_timeout": WAIT},
}
EDGE_ROUTES: list[dict[str, Any]] = [
    {"source": "ws", "target": "mem"},
    {"source": "mem", "target": "sse"},
    {"source": "mem", "target": "poll"},
]


def ws_url(engine: MediationEngine) -> str:
    return url(engine, "ws", scheme="ws")


async def subscribe(client: httpx.AsyncClient, engine: MediationEngine, client_id: str) -> None:
    response = await client.post(
        url(engine, "poll", "/subscribe"), headers={"X-Client-ID": client_id}
    )
    assert response.status_code == 201, response.text


async def poll(
    client: httpx.AsyncClient, engine: MediationEngine, client_id: str
) -> httpx.Response:
    return await client.get(url(engine, "poll", "/poll"), headers={"X-Client-ID": client_id})


@pytest.mark.parametrize("bad_id", [INJECTION, NUL_ID, VT_ID])
async def test_a_client_id_that_breaks_the_rule_is_nacked_and_breaks_no_stream(
    engine_with: EngineFactory, bad_id: str
) -> None:
    """The publisher's nack needs the WebSocket entrypoint to answer InvalidEventId with
    ``{"nack": id, "error": ...}`` and keep the connection (it closed with 1008 before)."""
    async with (
        engine_with(entrypoints=EDGE_ENTRYPOINTS, routes=EDGE_ROUTES) as engine,
        httpx.AsyncClient() as client,
        sse_events(client, engine) as sse,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as publisher,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as other,
    ):
        await subscribe(client, engine, "poller")
        polled: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def long_poll() -> None:
                polled.append(await poll(client, engine, "poller"))

            nursery.start_soon(long_poll)
            await publisher.send_message(json.dumps({"id": bad_id, "payload": "hi"}))
            # Its answer says it was handled; it is checked last, after the streams.
            try:
                reply: dict[str, Any] = await envelope(publisher)
            except ConnectionClosed as closed:
                reply = {"closed": closed.reason.code}
            await other.send_message(json.dumps({"id": "good-1", "payload": "after"}))
            assert await envelope(other) == {"ack": "good-1"}
            with trio.fail_after(WAIT):
                event = await anext(sse)
            assert (event.id, event.data) == ("good-1", "after")
        [response] = polled
        assert response.status_code == 200
        assert (response.headers["x-event-id"], response.content) == ("good-1", b"after")
        assert reply.get("nack") == bad_id, reply
        assert isinstance(reply.get("error"), str) and reply["error"]
        # The connection went on.
        await publisher.send_message(json.dumps({"id": "good-2", "payload": "again"}))
        assert await envelope(publisher) == {"ack": "good-2"}


# -- a broker's id -------------------------------------------------------------------------------


async def produce(engine: MediationEngine, payload: bytes, event_id: str) -> None:
    """Publish straight into the memory endpoint, as a producer on the broker's side would."""
    route = next(r for r in engine.config.routes if r.name == "ws->mem")
    event = Event(payload, id=event_id, metadata={"content-type": "text/plain"})
    await engine.endpoints["mem"].publish(
        Outbound(event=event, route=route, client_id="producer", entrypoint="test"), confirm=True
    )


@asynccontextmanager
async def raw_poller(engine: MediationEngine, client_id: str) -> AsyncIterator[StreamReader]:
    """A subscribed polling client on a raw TCP connection, to see the bytes of a response."""
    stream = await trio.open_tcp_stream("127.0.0.1", engine.ports["poll"])
    async with stream:
        reader = StreamReader(stream)
        await stream.send_all(http_request("POST", "/subscribe", client_id))
        with trio.fail_after(WAIT):
            status, _, _ = await reader.response()
        assert status == 201
        yield reader


async def raw_poll(reader: StreamReader, client_id: str) -> tuple[bytes, dict[str, str], bytes]:
    """One ``/poll``: the response head as bytes, its headers, its body."""
    await reader.stream.send_all(http_request("GET", "/poll", client_id))
    with trio.fail_after(WAIT):
        head = await reader.read_until(b"\r\n\r\n")
        reader.buffer[:0] = head  # read again, parsed
        status, headers, body = await reader.response()
    assert status == 200, head
    return head, headers, body


def printable_lines(head: bytes) -> bool:
    """Every line of a response head is printable ASCII: no id went out raw in it."""
    return all(0x20 <= byte < 0x7F for line in head.split(b"\r\n") for byte in line)


@pytest.mark.parametrize("bad_id", [NUL_ID, VT_ID, INJECTION, "caf\u00e9 \u20ac"])
async def test_a_broker_id_that_breaks_the_rule_is_replaced_and_never_written_raw(
    engine_with: EngineFactory, bad_id: str
) -> None:
    async with (
        engine_with(entrypoints=EDGE_ENTRYPOINTS, routes=EDGE_ROUTES) as engine,
        httpx.AsyncClient() as client,
        sse_events(client, engine) as sse,
        raw_poller(engine, "raw") as poller,
    ):
        await produce(engine, b"first", bad_id)
        await produce(engine, b"second", "ok-2")
        head, headers, body = await raw_poll(poller, "raw")
        assert printable_lines(head)
        assert headers["x-event-id"] == replacement_id(bad_id) and body == b"first"
        assert headers[f"x-meta-{ORIGINAL_ID}"] == escape_event_id(bad_id)
        with trio.fail_after(WAIT):
            first, second = await anext(sse), await anext(sse)
        # The same engine id in every session the event reaches.
        assert (first.id, first.data) == (replacement_id(bad_id), "first")
        assert (second.id, second.data) == ("ok-2", "second")


async def test_an_invalid_id_that_reaches_the_writers_anyway_is_not_written(
    engine_with: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: with the consumer loop's replacement gone (a bug, say), the SSE stream
    and the long poll still go on, and the id does not go out."""
    monkeypatch.setattr(session_module, "with_valid_id", lambda event: event)
    async with (
        engine_with(entrypoints=EDGE_ENTRYPOINTS, routes=EDGE_ROUTES) as engine,
        httpx.AsyncClient() as client,
        sse_events(client, engine) as sse,
        raw_poller(engine, "raw") as poller,
    ):
        await produce(engine, b"first", INJECTION)
        await produce(engine, b"second", "ok-2")
        head, headers, body = await raw_poll(poller, "raw")
        assert "x-event-id" not in headers and body == b"first"
        assert printable_lines(head) and b"injected" not in head
        with trio.fail_after(WAIT):
            first, second = await anext(sse), await anext(sse)
        assert (first.id, first.data) == ("", "first")  # no id: the client keeps its last one
        assert (second.id, second.data) == ("ok-2", "second")


@pytest.fixture
def exchange(rabbitmq: RabbitMQ) -> Iterator[str]:
    name = rabbitmq.unique_name("x")
    yield name
    with rabbitmq.channel() as channel, suppress(pika.exceptions.AMQPError):
        channel.exchange_delete(name)  # type: ignore[attr-defined]


async def test_a_rabbitmq_message_id_that_breaks_the_rule_is_replaced(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, exchange: str
) -> None:
    routes = [{"source": "rmq", "target": "sse"}, {"source": "rmq", "target": "ws"}]
    bad_id = "caf\u00e9 1"
    async with (
        rabbit_engine(
            engine_with,
            rabbitmq,
            entrypoints={"ws": "websocket", "sse": "sse"},
            routes=routes,
            exchange=exchange,
            binding_key="ids.#",
        ) as engine,
        httpx.AsyncClient() as client,
        sse_events(client, engine) as sse,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as bystander,
    ):
        await put(rabbitmq, "ids.1", b"first", exchange=exchange, message_id=bad_id)
        # A line break: the endpoint already leaves such a message_id out; a new id, valid.
        await put(rabbitmq, "ids.2", b"second", exchange=exchange, message_id="line\nbreak")
        await put(rabbitmq, "ids.3", b"third", exchange=exchange, message_id="m-3")
        with trio.fail_after(WAIT):
            events = [await anext(sse) for _ in range(3)]
        assert [e.data for e in events] == ["first", "second", "third"]
        assert events[0].id == replacement_id(bad_id)
        assert valid_event_id(events[1].id) and "line" not in events[1].id
        assert events[2].id == "m-3"
        delivered = [await envelope(bystander) for _ in range(3)]
        assert [d["payload"] for d in delivered] == ["first", "second", "third"]
        assert delivered[0]["id"] == replacement_id(bad_id)
        assert delivered[0]["metadata"][ORIGINAL_ID] == "caf\\xe9\\x201"
        assert delivered[0]["metadata"]["message_id"] == bad_id  # the endpoint's, as it was
        assert delivered[2]["id"] == "m-3" and ORIGINAL_ID not in delivered[2]["metadata"]
        for document in delivered:
            await bystander.send_message(json.dumps({"ack": document["id"]}))


async def test_an_mqtt5_event_id_that_breaks_the_rule_is_replaced(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    base = topic()
    bad_id = "bad id \u00e9"  # Mosquitto refuses control characters in a property
    async with (
        open_device(mosquitto) as device,
        mqtt_engine(
            engine_with,
            mosquitto,
            entrypoints={"sse": "sse", "bystander": "sse"},
            routes=[
                {"source": "mqtt", "target": "sse"},
                {"source": "mqtt", "target": "bystander"},
            ],
            topic_in=f"{base}/+",
        ) as engine,
        httpx.AsyncClient() as client,
        sse_events(client, engine) as sse,
        sse_events(client, engine, "bystander") as bystander,
    ):
        await device.publish(f"{base}/a", b"first", user=(("event_id", bad_id),))
        await device.publish(f"{base}/a", b"second", user=(("event_id", "ok-2"),))
        for stream in (sse, bystander):
            with trio.fail_after(WAIT):
                first, second = await anext(stream), await anext(stream)
            assert (first.id, first.data) == (replacement_id(bad_id), "first")
            assert (second.id, second.data) == ("ok-2", "second")


# -- a polling session that fails -----------------------------------------------------------------


async def test_a_polling_session_that_fails_unexpectedly_ends_alone(
    engine_with: EngineFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in one session's consumer (injected: the id check raising on one event) ends that
    session only: logged once with its traceback, counted, later requests 410; the other
    session and the entrypoint go on."""
    checked = session_module.with_valid_id

    def buggy(event: Event) -> Event:
        if event.payload == b"crash":
            raise RuntimeError("a bug in the consumer loop")
        return checked(event)

    monkeypatch.setattr(session_module, "with_valid_id", buggy)
    topics = {"topic_in": "{client_id}", "topic_out": "{client_id}"}
    endpoints = {"mem": {"type": "memory", "config": topics}}
    routes = [{"source": "ws", "target": "mem"}, {"source": "mem", "target": "poll"}]
    async with (
        engine_with(
            entrypoints={"ws": "websocket", "poll": {"type": "http_get", "poll_timeout": WAIT}},
            routes=routes,
            endpoints=endpoints,
        ) as engine,
        httpx.AsyncClient() as client,
    ):
        route = next(r for r in engine.config.routes if r.name == "ws->mem")

        async def produce_for(client_id: str, payload: bytes) -> None:
            # An invalid id: only such an event meets the (buggy) replacement.
            event = Event(payload, id="not valid")
            outbound = Outbound(event=event, route=route, client_id=client_id, entrypoint="t")
            await engine.endpoints["mem"].publish(outbound, confirm=True)

        await subscribe(client, engine, "victim")
        await subscribe(client, engine, "bystander")
        with caplog.at_level(logging.ERROR, logger="mediation"):
            await produce_for("victim", b"crash")
            assert (await poll(client, engine, "victim")).status_code == 410
            # Its task is over once only the bystander's session counts as a connection.
            with trio.fail_after(WAIT):
                await engine._context.connections.wait_value(1)
        failures = [r for r in caplog.records if r.getMessage() == "polling session failed"]
        assert len(failures) == 1 and failures[0].exc_info is not None
        sample = engine._context.telemetry.registry.get_sample_value(
            "mediation_connection_errors_total", {"entrypoint": "poll"}
        )
        assert sample == 1
        assert (await poll(client, engine, "victim")).status_code == 410
        await produce_for("bystander", b"fine")
        response = await poll(client, engine, "bystander")
        assert (response.status_code, response.content) == (200, b"fine")
        # The entrypoint still starts sessions.
        await subscribe(client, engine, "newcomer")
