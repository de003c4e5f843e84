"""The mqtt5 endpoint through the conformance suite, against a private Mosquitto (MQTT 5).

Each test gets a fresh topic and a fresh endpoint name (so fresh MQTT client ids: a client's MQTT
session outlives its consumer by design, and must not leak from one test into the next).

``subscriptions()``: Mosquitto cannot say how many subscriptions a topic has. ``$SYS`` only has a
broker-wide count, published every ``sys_interval`` (10 s by default), and it miscounts shared
subscriptions. So the broker is asked the one thing it can answer per topic: a QoS 1 PUBLISH to
the topic is answered with PUBACK reason 0x10 "No matching subscribers" when no subscription on
the broker matches it. That decides zero; the exact number comes from the endpoint's own count
of granted subscriptions (SUBACK received, no UNSUBACK or disconnect since), and a broker that
still routes to the topic while the endpoint counts none shows up as 1 (a leak).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion

from mediation.config import MQTT5Config
from mediation.endpoints import EndpointState
from mediation.endpoints._mqtt_wire import Wire
from mediation.endpoints.mqtt5 import MQTT5Endpoint

from .brokers import Mosquitto
from .conformance import (
    ClientResumeConformance,
    DeliveryConformance,
    EndpointConformance,
    EndpointUnderTest,
    ParamsAdapter,
    ParamsConformance,
    SeveralSubscriptionsConformance,
)
from .conformance.params import MediationEngine

NO_MATCHING_SUBSCRIBERS = 0x10

HasSubscribers = Callable[[str], Awaitable[bool]]


@asynccontextmanager
async def open_probe(mosquitto: Mosquitto) -> AsyncIterator[HasSubscribers]:
    """``await has_subscribers(topic)``: whether the broker routes a PUBLISH on ``topic`` anywhere.

    Each call publishes one small QoS 1 message (``b"probe"``) to the topic.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex}", protocol=mqtt.MQTTv5
    )
    reasons: dict[int, Any] = {}
    client.on_publish = lambda client, userdata, mid, reason, properties: reasons.update(
        {mid: reason}
    )
    wire = Wire(client)
    try:
        with trio.fail_after(10):
            await wire.connect(
                mosquitto.host,
                mosquitto.port,
                keepalive=60,
                clean_start=True,
                properties=None,
                limiter=trio.CapacityLimiter(1),
            )

        async def has_subscribers(topic: str) -> bool:
            info = client.publish(topic, b"probe", qos=1)
            await wire.flush()
            with trio.fail_after(10):
                while info.mid not in reasons:
                    await wire.receive_some()
            return bool(reasons.pop(info.mid).value != NO_MATCHING_SUBSCRIBERS)

        yield has_subscribers
    finally:
        wire.close()


def mqtt_config(mosquitto: Mosquitto, **settings: Any) -> MQTT5Config:
    return MQTT5Config(broker=f"tcp://{mosquitto.host}:{mosquitto.port}", **settings)


@asynccontextmanager
async def running(endpoint: MQTT5Endpoint) -> AsyncIterator[MQTT5Endpoint]:
    """The endpoint's ``run`` in a nursery, connected."""
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(10):
            await endpoint.state.wait_value(EndpointState.UP)
        yield endpoint
        nursery.cancel_scope.cancel()


class TestMQTT5Conformance(DeliveryConformance, EndpointConformance, ClientResumeConformance):
    @pytest.fixture
    async def under_test(self, mosquitto: Mosquitto) -> AsyncIterator[EndpointUnderTest]:
        topic = f"conformance/{uuid.uuid4().hex}"
        endpoint = MQTT5Endpoint(
            f"mqtt-{uuid.uuid4().hex[:8]}", mqtt_config(mosquitto, topic_in=topic, topic_out=topic)
        )
        async with running(endpoint), open_probe(mosquitto) as has_subscribers:

            async def subscriptions() -> int:
                if not await has_subscribers(topic):
                    return 0
                return max(endpoint.subscription_count(topic), 1)

            yield EndpointUnderTest(
                endpoint,
                subscriptions,
                # A nack keeps the message unacknowledged and hands it out again; what a consumer
                # leaves unacknowledged the client's MQTT session resends on its next connection.
                redelivers_in_session=True,
                resumes_for_client=True,
            )


class MQTT5Params(ParamsAdapter):
    name = "mqtt"

    def __init__(self, mosquitto: Mosquitto) -> None:
        self.mosquitto = mosquitto
        self.base = f"orders-{uuid.uuid4().hex[:12]}"

    def table(self) -> dict[str, Any]:
        topic = f"{self.base}/{{order_id}}"
        broker = f"tcp://{self.mosquitto.host}:{self.mosquitto.port}"
        return {
            "type": "mqtt5",
            "config": {"broker": broker, "topic_in": topic, "topic_out": topic},
        }

    async def consumers(self, engine: MediationEngine, orders: tuple[str, ...]) -> int:
        """The endpoint's count of subscriptions the broker granted (SUBACK, no UNSUBACK or
        disconnect since) on each order's topic (see the module docstring: Mosquitto cannot
        count per topic, and the probe would publish into the clients' streams)."""
        endpoint = engine.endpoints[self.name]
        assert isinstance(endpoint, MQTT5Endpoint)
        return sum(endpoint.subscription_count(f"{self.base}/{order}") for order in orders)


class TestMQTT5Params(ParamsConformance, SeveralSubscriptionsConformance):
    @pytest.fixture
    def params_adapter(self, mosquitto: Mosquitto) -> ParamsAdapter:
        return MQTT5Params(mosquitto)
