"""The mqtt5 endpoint through the engine, with real web clients and the harness's Mosquitto.

On the other side of the broker a "device" (a plain paho client, driven by the same Trio wire as
the endpoint) publishes and subscribes as an MQTT application would. Whether the broker still
routes a topic anywhere is asked of the broker itself (a QoS 1 probe answered "No matching
subscribers", see tests/test_conformance_mqtt5.py); the engine tells nobody when a session's
subscription is gone, but ``clients_gone`` returns only after every session ended, and a
consumer ends only after its UNSUBACK, so no polling is needed for it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from trio_websocket import ConnectionClosed, WebSocketConnection

from mediation.config import RouteConfig
from mediation.endpoints import EndpointState, Subscription
from mediation.endpoints._mqtt_wire import Wire
from mediation.endpoints.mqtt5 import MQTT5Endpoint, new_properties
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL

from .brokers import Mosquitto
from .conformance import BrokerAdapter, OutageConformance, ReconnectConformance, Scenario
from .conftest import EngineFactory, clients_gone, envelope, open_ws, sse_events, url
from .test_conformance_mqtt5 import HasSubscribers, mqtt_config, open_probe, running

WAIT = 20.0


# -- the broker side ---------------------------------------------------------------------------


class Device:
    """An MQTT 5 client on the far side of the broker (acks what it receives at once)."""

    def __init__(self, client: mqtt.Client, wire: Wire) -> None:
        self.client, self.wire = client, wire
        self.received: deque[mqtt.MQTTMessage] = deque()
        self.acknowledged: dict[int, Any] = {}
        client.on_message = lambda c, u, message: self.received.append(message)
        client.on_publish = lambda c, u, mid, reason, p: self.acknowledged.update({mid: reason})
        client.on_subscribe = lambda c, u, mid, reasons, p: self.acknowledged.update({mid: reasons})

    async def publish(
        self,
        topic: str,
        *payloads: bytes,
        qos: int = 1,
        retain: bool = False,
        user: tuple[tuple[str, str], ...] = (),
        content_type: str | None = None,
    ) -> None:
        """Publish each payload and wait for the broker's PUBACK/PUBCOMP: then it is routed."""
        for payload in payloads:
            properties = new_properties(PacketTypes.PUBLISH)
            if user:
                properties.UserProperty = list(user)
            if content_type:
                properties.ContentType = content_type
            info = self.client.publish(topic, payload, qos, retain, properties)
            await self._answered(info.mid)

    async def subscribe(self, topic: str) -> None:
        await self._answered(self.client.subscribe(topic, qos=2)[1])

    async def receive(self) -> mqtt.MQTTMessage:
        with trio.fail_after(WAIT):
            while not self.received:
                await self.wire.receive_some(budget=100)
        return self.received.popleft()

    async def _answered(self, mid: int | None) -> None:
        assert mid is not None
        await self.wire.flush()
        with trio.fail_after(WAIT):
            while mid not in self.acknowledged:
                await self.wire.receive_some(budget=100)
        self.acknowledged.pop(mid)


@asynccontextmanager
async def open_device(mosquitto: Mosquitto) -> AsyncIterator[Device]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"device-{uuid.uuid4().hex}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    wire = Wire(client)
    try:
        with trio.fail_after(WAIT):
            await wire.connect(
                mosquitto.host,
                mosquitto.port,
                keepalive=60,
                clean_start=True,
                properties=None,
                limiter=trio.CapacityLimiter(1),
            )
        yield Device(client, wire)
    finally:
        wire.close()


# -- the engine side ---------------------------------------------------------------------------


@asynccontextmanager
async def mqtt_engine(
    engine_with: EngineFactory,
    mosquitto: Mosquitto,
    *,
    entrypoints: dict[str, Any],
    routes: list[dict[str, Any]],
    **config: Any,
) -> AsyncIterator[MediationEngine]:
    """An engine with the endpoint ``mqtt`` on the harness's Mosquitto, once it is connected."""
    table = {"broker": f"tcp://{mosquitto.host}:{mosquitto.port}", "retry_interval": 0.1}
    endpoints = {"mqtt": {"type": "mqtt5", "config": {**table, **config}}}
    async with engine_with(entrypoints=entrypoints, routes=routes, endpoints=endpoints) as engine:
        with trio.fail_after(WAIT):
            await engine.endpoints["mqtt"].state.wait_value(EndpointState.UP)
        yield engine


def ws_url(engine: MediationEngine, name: str = "ws", client_id: str | None = None) -> str:
    return url(engine, name, f"/?client_id={client_id}" if client_id else "/", scheme="ws")


async def ack(ws: WebSocketConnection, event: dict[str, Any]) -> None:
    await ws.send_message(json.dumps({"ack": event["id"]}))


def numbered(n: int, start: int = 0) -> list[bytes]:
    return [b"%03d" % i for i in range(start, start + n)]


def topic() -> str:
    return f"t/{uuid.uuid4().hex}"


@pytest.fixture
async def has_subscribers(mosquitto: Mosquitto) -> AsyncIterator[HasSubscribers]:
    async with open_probe(mosquitto) as probe:
        yield probe


# -- downstream ---------------------------------------------------------------------------------


async def test_downstream_to_websocket_and_sse_with_mqtt_metadata(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    base = topic()
    routes = [{"source": "mqtt", "target": "ws"}, {"source": "mqtt", "target": "sse"}]
    async with (
        open_device(mosquitto) as device,
        mqtt_engine(
            engine_with,
            mosquitto,
            entrypoints={"ws": "websocket", "sse": "sse"},
            routes=routes,
            topic_in=f"{base}/+",
        ) as engine,
    ):
        await device.publish(f"{base}/state", b"retained before anyone came", retain=True)
        async with (
            httpx.AsyncClient() as client,
            sse_events(client, engine) as sse,
            open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
        ):
            retained = await envelope(ws)
            assert retained["payload"] == "retained before anyone came"
            assert retained["metadata"]["retain"] == "true"
            await device.publish(
                f"{base}/eu",
                b"line one\nline two",
                user=(("x-trace-id", "t-1"), ("x-attempt", "2"), ("topic", "spoofed")),
                content_type="text/plain",
            )
            delivered = await envelope(ws)
            assert delivered["payload"] == "line one\nline two"
            assert delivered["metadata"] == {
                "x-trace-id": "t-1",
                "x-attempt": "2",
                "content-type": "text/plain",
                "topic": f"{base}/eu",  # from the packet, whatever a user property says
                "qos": "1",
                "retain": "false",
            }
            assert len(delivered["id"]) == 36  # no event_id from this publisher: a new one
            with trio.fail_after(WAIT):
                events = [await anext(sse), await anext(sse)]
            assert [e.data for e in events] == ["retained before anyone came", "line one\nline two"]
            assert events[1].id != delivered["id"]  # one MQTT delivery per session, each named
        await device.publish(f"{base}/state", b"", retain=True)  # clear the retained message


async def test_qos_2_both_ways(engine_with: EngineFactory, mosquitto: Mosquitto) -> None:
    down, up = topic(), topic()
    routes = [
        {"source": "mqtt", "target": "ws"},
        {"source": "post", "target": "mqtt", "delivery_guarantee": "at_least_once"},
    ]
    async with (
        open_device(mosquitto) as device,
        mqtt_engine(
            engine_with,
            mosquitto,
            entrypoints={"ws": "websocket", "post": "http_post"},
            routes=routes,
            topic_in=down,
            topic_out=up,
            qos=2,
        ) as engine,
        httpx.AsyncClient() as client,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
    ):
        await device.subscribe(up)
        await device.publish(down, *numbered(3), qos=2)
        for n in range(3):
            event = await envelope(ws)
            assert (event["payload"], event["metadata"]["qos"]) == (f"{n:03d}", "2")
        response = await client.post(url(engine, "post"), content=b"exactly once")
        assert response.status_code == 202  # after the PUBCOMP
        message = await device.receive()
        assert (message.payload, message.qos) == (b"exactly once", 2)


# -- upstream -----------------------------------------------------------------------------------


async def test_upstream_at_least_once_is_answered_after_the_puback(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    out = topic()
    routes = [
        {"source": "post", "target": "mqtt", "delivery_guarantee": "at_least_once"},
        {"source": "up", "target": "mqtt", "delivery_guarantee": "at_least_once"},
    ]
    async with (
        open_device(mosquitto) as device,
        mqtt_engine(
            engine_with,
            mosquitto,
            entrypoints={"post": "http_post", "up": "websocket"},
            routes=routes,
            topic_out=out,
        ) as engine,
        httpx.AsyncClient() as client,
    ):
        await device.subscribe(out)
        response = await client.post(
            url(engine, "post"),
            content=b'{"order": 1}',
            headers={
                "content-type": "application/json",
                "X-Trace-ID": "t-7",
                "X-Client-ID": "shop",
            },
        )
        assert response.status_code == 202
        message = await device.receive()
        assert (message.payload, message.topic, message.qos) == (b'{"order": 1}', out, 1)
        assert message.properties.ContentType == "application/json"
        assert dict(message.properties.UserProperty) == {
            "event_id": response.json()["id"],
            "client_id": "shop",
            "x-trace-id": "t-7",
        }
        async with open_ws(ws_url(engine, "up"), subprotocols=[SUBPROTOCOL]) as ws:
            await ws.send_message(json.dumps({"id": "up-1", "payload": "from ws"}))
            assert await envelope(ws) == {"ack": "up-1"}
        assert (await device.receive()).payload == b"from ws"


# -- broker outage and client reconnects (the shared scenario) ---------------------------------


class MQTT5Adapter(BrokerAdapter):
    """Outage: ``topic_in`` = ``topic_out``, so what the endpoint publishes comes back to its
    sessions' subscriptions. Reconnect: per-client MQTT sessions (``session_expiry``) that the
    broker resends what a consumer left unacknowledged from."""

    name = "mqtt"
    # The harness's Mosquitto runs with "persistence false": its sessions go with the restart.
    keeps_unconfirmed_across_restart = False
    # The endpoint retries every 0.1 s and says "connecting" during each attempt.
    down_states = ("down", "connecting")
    # A consumer leaves with UNSUBSCRIBE: the client's MQTT session stays, but with no
    # subscription, so the broker queues nothing for it until its next consumer subscribes.
    keeps_for_absent_clients = False
    # Mosquitto resends a session's unacknowledged messages and then its queued ones when the
    # client connects again, but MQTT promises no order between those and new deliveries.
    redelivers_in_order = False

    def __init__(self, mosquitto: Mosquitto) -> None:
        self.mosquitto = mosquitto
        self.looped, self.down = topic(), topic()

    def table(self, scenario: Scenario) -> dict[str, Any]:
        broker = f"tcp://{self.mosquitto.host}:{self.mosquitto.port}"
        topics = (
            {"topic_in": self.looped, "topic_out": self.looped}
            if scenario == "outage"
            else {"topic_in": self.down}
        )
        return {"type": "mqtt5", "config": {"broker": broker, "retry_interval": 0.1, **topics}}

    async def publish(self, scenario: Scenario, *payloads: bytes) -> None:
        async with open_device(self.mosquitto) as device:
            await device.publish(self.looped if scenario == "outage" else self.down, *payloads)

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.mosquitto.stop)

    async def start(self) -> None:
        await trio.to_thread.run_sync(self.mosquitto.ensure_running)

    async def client_left(self, client_id: str, unconfirmed: int) -> None:
        # Unsubscribed (its UNSUBACK came before the session ended); its MQTT session remains.
        assert not await self.has_subscribers(self.down)

    async def has_subscribers(self, topic: str) -> bool:
        # A probe of its own each time: one opened before the outage would have lost its
        # connection with it.
        async with open_probe(self.mosquitto) as has_subscribers:
            return await has_subscribers(topic)

    async def settled(self, engine: MediationEngine, client_id: str, confirmed: int | None) -> None:
        assert not await self.has_subscribers(self.looped if client_id == "w1" else self.down)


class TestMQTT5Outage(OutageConformance, ReconnectConformance):
    @pytest.fixture
    def adapter(self, mosquitto: Mosquitto) -> BrokerAdapter:
        return MQTT5Adapter(mosquitto)


async def test_a_silent_broker_is_found_out_within_two_keepalives(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    async with (
        mqtt_engine(
            engine_with,
            mosquitto,
            entrypoints={"ws": "websocket"},
            routes=[{"source": "mqtt", "target": "ws"}],
            topic_in=topic(),
            keepalive=5,
        ) as engine,
        open_ws(ws_url(engine)) as ws,
    ):
        endpoint = engine.endpoints["mqtt"]
        with mosquitto.frozen():
            with trio.fail_after(2 * 5 + 2):
                await endpoint.state.wait_value(EndpointState.DOWN)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
        assert closed.value.reason.code == 1011
        with trio.fail_after(WAIT):
            await endpoint.state.wait_value(EndpointState.UP)


async def test_a_nacked_event_comes_again_with_its_id(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    down = topic()
    route = {"source": "mqtt", "target": "ws", "delivery_guarantee": "at_least_once"}
    async with (
        open_device(mosquitto) as device,
        mqtt_engine(
            engine_with, mosquitto, entrypoints={"ws": "websocket"}, routes=[route], topic_in=down
        ) as engine,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
    ):
        await device.publish(down, b"refused once", b"next")
        first = await envelope(ws)
        await ws.send_message(json.dumps({"nack": first["id"]}))
        again = await envelope(ws)
        assert (again["id"], again["payload"]) == (first["id"], "refused once")
        await ack(ws, again)
        assert (await envelope(ws))["payload"] == "next"


# -- per-client subscriptions and guarantees ----------------------------------------------------


async def test_one_client_leaving_leaves_the_others_receiving(
    engine_with: EngineFactory, mosquitto: Mosquitto, has_subscribers: HasSubscribers
) -> None:
    down = topic()
    route = {
        "source": "mqtt",
        "target": "ws",
        "delivery_guarantee": "at_least_once",
        "channel_size": 4,
    }
    async with (
        open_device(mosquitto) as device,
        mqtt_engine(
            engine_with, mosquitto, entrypoints={"ws": "websocket"}, routes=[route], topic_in=down
        ) as engine,
        open_ws(ws_url(engine, client_id="bob"), subprotocols=[SUBPROTOCOL]) as bob,
    ):
        async with open_ws(ws_url(engine, client_id="ann"), subprotocols=[SUBPROTOCOL]) as ann:
            await device.publish(down, b"000")
            assert (await envelope(ann))["payload"] == "000"
            in_flight = await envelope(bob)  # bob has not confirmed it yet
        # Ann's session has ended (her handler is done, so her UNSUBACK came): her subscription
        # is gone, bob's, and his unconfirmed delivery, stay.
        with trio.fail_after(WAIT):
            await engine._context.connections.wait_value(1)
        assert await has_subscribers(down)  # (which publishes a probe: bob receives it)
        await device.publish(down, *numbered(3, start=1))
        received = []
        for _ in range(4):
            event = await envelope(bob)
            received.append(event["payload"])
            await ack(bob, event)
        assert received == ["probe", "001", "002", "003"]
        await ack(bob, in_flight)


async def test_a_slow_client_neither_slows_nor_starves_the_others(
    engine_with: EngineFactory, mosquitto: Mosquitto
) -> None:
    down, total = topic(), 200
    routes = [
        {
            "source": "mqtt",
            "target": "ws",
            "delivery_guarantee": "at_least_once",
            "channel_size": 1,
        }
    ]
    async with (
        open_device(mosquitto) as device,
        mqtt_engine(
            engine_with, mosquitto, entrypoints={"ws": "websocket"}, routes=routes, topic_in=down
        ) as engine,
        open_ws(ws_url(engine, client_id="slow"), subprotocols=[SUBPROTOCOL]) as slow,
    ):
        async with (
            open_ws(ws_url(engine, client_id="f1"), subprotocols=[SUBPROTOCOL]) as f1,
            open_ws(ws_url(engine, client_id="f2"), subprotocols=[SUBPROTOCOL]) as f2,
        ):
            received: dict[str, list[str]] = {}

            async def read_all(name: str, ws: WebSocketConnection) -> None:
                received[name] = []
                for _ in range(total):
                    event = await envelope(ws)
                    received[name].append(event["payload"])
                    await ack(ws, event)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all, "f1", f1)
                nursery.start_soon(read_all, "f2", f2)
                await device.publish(down, *numbered(total))
        expected = [f"{n:03d}" for n in range(total)]
        assert received == {"f1": expected, "f2": expected}
        # The slow client holds its one unconfirmed event; the rest wait for it in the broker.
        first = await envelope(slow)
        assert first["payload"] == "000"
        await ack(slow, first)
        for n in range(1, total):
            event = await envelope(slow)
            assert event["payload"] == f"{n:03d}"
            await ack(slow, event)


async def test_per_client_topics(engine_with: EngineFactory, mosquitto: Mosquitto) -> None:
    base = topic()
    routes = [
        {"source": "mqtt", "target": "ws"},
        {"source": "ws", "target": "mqtt", "delivery_guarantee": "at_least_once"},
    ]
    async with (
        open_device(mosquitto) as device,
        mqtt_engine(
            engine_with,
            mosquitto,
            entrypoints={"ws": "websocket"},
            routes=routes,
            topic_in=f"{base}/{{client_id}}/down",
            topic_out=f"{base}/{{client_id}}/up",
        ) as engine,
        open_ws(ws_url(engine, client_id="d1"), subprotocols=[SUBPROTOCOL]) as d1_before,
        open_ws(ws_url(engine, client_id="d2"), subprotocols=[SUBPROTOCOL]) as d2,
        # A second session of d1 (another tab) takes over (design.md, One client id, twice).
        open_ws(ws_url(engine, client_id="d1"), subprotocols=[SUBPROTOCOL]) as d1,
    ):
        with pytest.raises(ConnectionClosed) as replaced:
            await envelope(d1_before)
        assert replaced.value.reason.code == 4409
        await device.subscribe(f"{base}/+/up")
        await device.publish(f"{base}/d2/down", b"for d2")
        await device.publish(f"{base}/d1/down", b"for d1")
        assert (await envelope(d1))["payload"] == "for d1"
        assert (await envelope(d2))["payload"] == "for d2"
        await d1.send_message(json.dumps({"id": "x", "payload": "from d1"}))
        assert await envelope(d1) == {"ack": "x"}
        message = await device.receive()
        assert (message.topic, message.payload) == (f"{base}/d1/up", b"from d1")


# -- broker-side resources and threads ----------------------------------------------------------


def foreign_threads() -> set[threading.Thread]:
    """Threads besides the main one and Trio's own worker cache (the endpoint's TCP connects)."""
    return {
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.name.startswith("Trio thread")
    }


async def test_subscriptions_released_on_every_exit_path_and_no_thread_left(
    engine_with: EngineFactory, mosquitto: Mosquitto, has_subscribers: HasSubscribers
) -> None:
    down = topic()
    before = foreign_threads()
    routes = [
        {"source": "mqtt", "target": "ws"},
        {"source": "mqtt", "target": "sse"},
        {"source": "mqtt", "target": "poll"},
    ]
    entrypoints = {
        "ws": "websocket",
        "sse": "sse",
        "poll": {"type": "http_get", "session_idle_timeout": 0.3},
    }
    async with (
        mqtt_engine(
            engine_with, mosquitto, entrypoints=entrypoints, routes=routes, topic_in=down
        ) as engine,
        httpx.AsyncClient() as client,
    ):
        assert not await has_subscribers(down)
        # The client closes.
        async with open_ws(ws_url(engine)), sse_events(client, engine):
            assert await has_subscribers(down)
            assert not foreign_threads() - before  # a session is a socket, not a thread
        await clients_gone(engine)
        assert not await has_subscribers(down)
        # The engine ends the session (a polling client that stopped polling).
        headers = {"X-Client-ID": "poller"}
        subscribed = await client.post(url(engine, "poll", "/subscribe"), headers=headers)
        assert subscribed.status_code == 201
        assert await has_subscribers(down)
        await clients_gone(engine)  # expired
        assert not await has_subscribers(down)
        assert (await client.get(url(engine, "poll", "/poll"), headers=headers)).status_code == 410
        # The engine shuts down with a client connected.
        async with open_ws(ws_url(engine)) as ws:
            assert await has_subscribers(down)
            endpoint = engine.endpoints["mqtt"]
            assert isinstance(endpoint, MQTT5Endpoint)
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    assert not await has_subscribers(down)
    assert endpoint.subscription_count(down) == 0
    assert not foreign_threads() - before


async def test_cancelled_while_subscribing_leaves_no_subscription(
    mosquitto: Mosquitto, has_subscribers: HasSubscribers
) -> None:
    """Cancel entering ``consume`` after 0, 0.2, 0.4... ms: wherever the cancellation lands
    (connecting, waiting for the CONNACK or the SUBACK, subscribed), nothing is left. (The sleep
    only spreads the cancellations over the entering; nothing waits on it.)"""
    down = topic()
    endpoint = MQTT5Endpoint("cancelled", mqtt_config(mosquitto, topic_in=down))
    route = RouteConfig(source="cancelled", target="clients", direction="downstream")
    async with running(endpoint):
        for step in range(40):
            subscription = Subscription(
                client_id=f"c{step}",
                session_id=str(uuid.uuid4()),
                entrypoint="clients",
                route=route,
            )
            async with trio.open_nursery() as nursery:

                async def enter(subscription: Subscription = subscription) -> None:
                    async with endpoint.consume(subscription):
                        await trio.sleep_forever()

                nursery.start_soon(enter)
                await trio.sleep(step * 0.0002)
                nursery.cancel_scope.cancel()
            assert endpoint.subscription_count(down) == 0
            assert not endpoint._consumers and not endpoint._client_ids
        assert not await has_subscribers(down)


async def test_client_confirmations_are_written_at_once_by_the_last_one_out(
    mosquitto: Mosquitto,
) -> None:
    """at_least_once: a confirmation that leaves nothing else handed out writes its PUBACK (and
    any batched before it) from the confirming task, before ``ack`` returns; one with others
    still out is left for the consumer task to write with the rest of the burst."""
    down = topic()
    endpoint = MQTT5Endpoint("acks", mqtt_config(mosquitto, topic_in=down))
    route = RouteConfig(
        source="acks",
        target="clients",
        direction="downstream",
        channel_size=2,
        delivery_guarantee="at_least_once",
    )
    subscription = Subscription(
        client_id="c", session_id=str(uuid.uuid4()), entrypoint="clients", route=route
    )
    async with (
        running(endpoint),
        open_device(mosquitto) as device,
        endpoint.consume(subscription) as deliveries,
    ):
        (consumer,) = endpoint._consumers
        await device.publish(down, *numbered(3))
        got: list[Any] = []
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:

                async def read(n: int) -> None:  # the consumer task (it reads the socket)
                    for _ in range(n):
                        got.append(await deliveries.__anext__())

                nursery.start_soon(read, 2)
            assert [d.event.payload for d in got] == numbered(2)
            await got[0].ack()  # another still out: batched for the consumer task
            assert consumer._acks and consumer.unsettled == 1
            await got[1].ack()  # the last one out: both written now, in one packet
            assert not consumer._acks and consumer.unsettled == 0
            assert not consumer.wire.client.want_write()
            # The broker had both acks: Receive Maximum 2 lets the third through.
            third = await deliveries.__anext__()
        assert third.event.payload == numbered(1, 2)[0]
        await third.ack()
