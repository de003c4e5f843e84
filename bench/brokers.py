"""The brokers of a run, started as the tests start them (tests/brokers), once, on demand.

Also the harness's own broker chores: prefilling a topic or queue before a measured drain (so
the publisher does not compete with the drain for the cores), and naming things per round.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from .procs import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.brokers import Mosquitto, RabbitMQ, Tansu

BROKERS = ("kafka", "rabbitmq", "mqtt")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class Brokers:
    """tansu, RabbitMQ (with web_mqtt) and Mosquitto (with a websockets listener), each started
    the first time a scenario asks for it and stopped when the run ends."""

    def __init__(self, stack: contextlib.ExitStack, *, kafka_fetch: str | None = None) -> None:
        self.stack = stack
        # KafkaConfig.fetch of every Kafka endpoint the scenarios build (None: the default),
        # unless a scenario sets its own (S7K, S8).
        self.kafka_fetch = kafka_fetch
        self._tansu: Tansu | None = None
        self._rabbitmq: RabbitMQ | None = None
        self._mosquitto: Mosquitto | None = None

    @property
    def tansu(self) -> Tansu:
        if self._tansu is None:
            self._tansu = self.stack.enter_context(Tansu())
            self._tansu.start()
        return self._tansu

    def fresh_tansu(self) -> None:
        """tansu's memory storage never frees data (consume slows as it fills): a new one."""
        if self._tansu is not None:
            self._tansu.stop()
            self._tansu.start()

    @property
    def rabbitmq(self) -> RabbitMQ:
        if self._rabbitmq is None:
            self._rabbitmq = self.stack.enter_context(RabbitMQ(web_mqtt=True))
            self._rabbitmq.start()
        return self._rabbitmq

    @property
    def mosquitto(self) -> Mosquitto:
        if self._mosquitto is None:
            extra = "max_queued_messages 100000\nmax_inflight_messages 0\n"
            self._mosquitto = self.stack.enter_context(
                Mosquitto(extra_config=extra, websockets=True)
            )
            self._mosquitto.start()
        return self._mosquitto

    def url(self, broker: str) -> str:
        """The address in the hand-rolled bridge's --broker-url form."""
        if broker == "kafka":
            return self.tansu.bootstrap_servers
        if broker == "rabbitmq":
            return self.rabbitmq.amqp_url
        return self.mosquitto.url

    def versions(self) -> dict[str, Any]:
        return {
            "mosquitto": "2.0 (Debian)" if self._mosquitto else None,
            "rabbitmq": "3.10 (Debian)" if self._rabbitmq else None,
            "tansu": self._tansu.binary if self._tansu else None,
        }


# -- endpoint tables for the engine, one per broker ------------------------------------------


def endpoint(
    brokers: Brokers, broker: str, name_in: str, name_out: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The engine's endpoint table consuming ``name_in`` (a topic / queue / MQTT topic that may
    hold ``{client_id}``) and producing to ``name_out``."""
    if broker == "kafka":
        config: dict[str, Any] = {
            "brokers": brokers.tansu.bootstrap_servers,
            "topic_in": name_in,
            "auto_offset_reset": "earliest",
        }
        if brokers.kafka_fetch is not None:
            config["fetch"] = brokers.kafka_fetch
        if name_out:
            config["topic_out"] = name_out
        return {"type": "kafka", "config": {**config, **extra}}
    if broker == "rabbitmq":
        config = {"url": brokers.rabbitmq.amqp_url, "queue_in": name_in}
        if name_out:
            config["queue_out"] = name_out
        return {"type": "rabbitmq", "config": {**config, **extra}}
    if broker == "mqtt":
        config = {
            "broker": brokers.mosquitto.url,
            "topic_in": name_in,
            "qos": 1,
            "session_expiry": 0,
        }
        if name_out:
            config["topic_out"] = name_out
        return {"type": "mqtt5", "config": {**config, **extra}}
    if broker == "amqp1":
        config = {"url": brokers.rabbitmq.amqp1_url, "queue_in": name_in}
        return {"type": "jms", "config": {**config, **extra}}
    raise ValueError(broker)


# -- prefill ------------------------------------------------------------------------------------


def declare_queue(brokers: Brokers, queue: str) -> None:
    with brokers.rabbitmq.channel() as channel:
        channel.queue_declare(queue, durable=True)  # type: ignore[attr-defined]


def prefill(
    brokers: Brokers, broker: str, name: str, count: int, size: int, marker: bytes = b"x"
) -> None:
    """``count`` messages of ``size`` bytes (``x....``) on a new topic / queue ``name``."""
    data = marker + b"." * (size - 1)
    if broker == "kafka":
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": brokers.tansu.bootstrap_servers, "linger.ms": 20})
        for _ in range(count):
            while True:
                try:
                    producer.produce(name, data)
                    break
                except BufferError:
                    producer.poll(0.05)
        if producer.flush(60):
            raise RuntimeError(f"kafka prefill of {name}: not everything was delivered")
        return
    if broker in ("rabbitmq", "amqp1"):
        import pika

        declare_queue(brokers, name)
        with brokers.rabbitmq.channel() as channel:
            for _ in range(count):
                channel.basic_publish("", name, data)  # type: ignore[attr-defined]
        brokers.rabbitmq.wait_for_queue(name, messages=count, timeout=60)
        del pika
        return
    raise ValueError(f"{broker}: no backlog to prefill (MQTT is measured live)")


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


def machine_load() -> float:
    return os.getloadavg()[0]


def wait_quiet(seconds: float = 0.0) -> None:
    """Let leftover broker work settle between phases (a fixed pause: nothing to wait on)."""
    if seconds:
        time.sleep(seconds)
