"""The seed plan's example configuration (examples/seed.toml) running with every route working.

The file is loaded as shipped; only the broker addresses (and, for Kafka and RabbitMQ, names unique
to this run) are pointed at the brokers the harness started, and Solace at its API fake. One extra
endpoint, a tap on the fake Solace broker's ``processed/events`` feeding the SSE entrypoint, lets
the test see what the ``mqtt5-iot -> solace-events`` bridge delivered.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import paho.mqtt.publish
import tomli
import trio
from httpx_sse import aconnect_sse
from paho.mqtt.client import MQTTv5

from mediation.config import build_config
from mediation.endpoints import EndpointState
from mediation.engine import open_mediation_engine
from mediation.envelope import SUBPROTOCOL
from tests.brokers import Mosquitto, RabbitMQ, Tansu

from .conftest import open_ws, url
from .solace_fake._broker import open_broker
from .solace_fake.harness import API
from .test_conformance_kafka import FAST_GROUPS
from .test_kafka import Kafka

SEED = Path(__file__).parent.parent / "examples" / "seed.toml"
WAIT = 30.0


async def test_every_route_of_the_seed_config_works(
    tansu: Tansu, rabbitmq: RabbitMQ, mosquitto: Mosquitto
) -> None:
    kafka = Kafka(tansu)
    run = uuid.uuid4().hex[:8]
    topic_in = await trio.to_thread.run_sync(kafka.topic, f"seed-in-{run}")
    topic_out = await trio.to_thread.run_sync(kafka.topic, f"seed-out-{run}")
    document = tomli.loads(SEED.read_text())
    document["engine"].update(host="127.0.0.1", health_port=0, packet_log=False, reload_interval=0)
    for entrypoint in document["entrypoints"]:
        entrypoint["port"] = 0
    with open_broker() as solace:
        addresses = {
            "kafka-main": {
                "brokers": tansu.bootstrap_servers,
                "topic_in": topic_in,
                "topic_out": topic_out,
                **FAST_GROUPS,
            },
            "rabbitmq-orders": {"url": rabbitmq.amqp_url, "queue_out": f"orders-out-{run}"},
            "mqtt5-iot": {"broker": f"tcp://{mosquitto.host}:{mosquitto.port}"},
            "solace-events": {"host": solace.host, "api": API, "retry_interval": 0.05},
            "jms-legacy": {"url": rabbitmq.amqp1_url},
        }
        for endpoint in document["endpoints"]:
            endpoint["config"].update(addresses[endpoint["name"]])
        tap = {
            "host": solace.host,
            "api": API,
            "topic_in": "processed/events",
            "retry_interval": 0.05,
        }
        document["endpoints"].append({"name": "solace-tap", "type": "solace", "config": tap})
        document["routes"].append({"source": "solace-tap", "target": "sse-feed"})
        config = build_config(document, filename=str(SEED))

        async with open_mediation_engine(config) as engine, httpx.AsyncClient() as http:
            with trio.fail_after(WAIT):
                for endpoint in engine.endpoints.values():
                    await endpoint.state.wait_value(EndpointState.UP)
            ready = await http.get(url(engine, "health", "/readyz"))
            assert ready.status_code == 200, ready.text

            # webhook-receiver -> rabbitmq-orders (auto)
            accepted = await http.post(url(engine, "webhook-receiver"), content=b"order 1")
            assert accepted.status_code == 202
            await trio.to_thread.run_sync(
                lambda: rabbitmq.wait_for_queue(f"orders-out-{run}", messages=1, timeout=WAIT)
            )

            # ws-inbound <-> kafka-main (at_least_once both ways)
            async with open_ws(
                url(engine, "ws-inbound", scheme="ws"), subprotocols=[SUBPROTOCOL]
            ) as ws:
                await ws.send_message(json.dumps({"id": "up-1", "payload": "to kafka"}))
                with trio.fail_after(WAIT):
                    assert json.loads(await ws.get_message()) == {"ack": "up-1"}
                [record] = await trio.to_thread.run_sync(kafka.take, topic_out, 1)
                assert record.value() == b"to kafka"
                await trio.to_thread.run_sync(lambda: kafka.put(topic_in, b"from kafka"))
                with trio.fail_after(WAIT):
                    delivered = json.loads(await ws.get_message())
                assert delivered["payload"] == "from kafka"
                await ws.send_message(json.dumps({"ack": delivered["id"]}))

            # mqtt5-iot -> solace-events, the bridge (seen through the tap on processed/events)
            async with aconnect_sse(http, "GET", url(engine, "sse-feed")) as source:
                events = source.aiter_sse()
                assert (await anext(events)).event == "session"
                with trio.fail_after(WAIT):
                    async with trio.open_nursery() as nursery:

                        async def keep_publishing() -> None:
                            # The bridge subscribes in the background; publish until it has.
                            while True:
                                await trio.to_thread.run_sync(
                                    lambda: paho.mqtt.publish.single(
                                        "sensors/7",
                                        b"21.5",
                                        qos=1,
                                        hostname=mosquitto.host,
                                        port=mosquitto.port,
                                        protocol=MQTTv5,
                                    )
                                )
                                await trio.sleep(0.2)

                        nursery.start_soon(keep_publishing)
                        assert (await anext(events)).data == "21.5"
                        nursery.cancel_scope.cancel()
                await events.aclose()
