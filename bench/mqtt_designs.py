"""Raw MQTT leg: the designs the mqtt5 endpoint chose between (figures: docs/performance.md).

::

    .venv/bin/python -m bench.mqtt_designs                  # a private mosquitto
    .venv/bin/python -m bench.mqtt_designs --broker tcp://127.0.0.1:1883 -n 200

(Formerly ``mediation/endpoints/_mqtt_measure.py``: a measurement, not part of the engine.)

For each design, in a fresh interpreter: hold ``-n`` sessions, each subscribed to its own topic
(``bench/<run>/<i>``, the ``{client_id}`` case), at QoS 1 with manual acks; report the time to
subscribe them all, the memory (RSS) and threads and file descriptors they added; then, with
every session reading, publish ``-m`` 100-byte messages per session (QoS 1, round robin over the
topics, window 20, from another process) and time the sessions from the first delivery to the
last (each acks every message; manual acks throughout).

- ``endpoint``: this package's :class:`MQTT5Endpoint`, one MQTT connection per session, driven from
  Trio's I/O (what ships).
- ``threads``: one paho client per session with ``loop_start()`` (a network thread each).
- ``shared``: one paho client (Trio-driven) for all sessions, one subscription each, tagged with a
  subscription identifier; the engine routes each PUBLISH to its session by that identifier.
  (The routing prototype buffers without bound: the point of the design question.)

The numbers are noisy on a shared machine: run it more than once.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from mediation.ack_policy import Guarantee
from mediation.config import MQTT5Config, RouteConfig
from mediation.endpoints._mqtt_wire import Wire
from mediation.endpoints.base import EndpointState, Subscription
from mediation.endpoints.mqtt5 import MQTT5Endpoint, broker_address, new_properties

DESIGNS = ("endpoint", "threads", "shared")
TIME_LIMIT = 120.0  # seconds per design: a design that loses messages fails instead of hanging


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Probe:
    """Process resources before and after holding the sessions."""

    def __init__(self) -> None:
        gc.collect()
        self.rss, self.threads, self.fds = rss_kib(), threading.active_count(), fds()

    def added(self, sessions: int) -> dict[str, Any]:
        gc.collect()
        rss = rss_kib() - self.rss
        return {
            "rss_mib": round(rss / 1024, 1),
            "rss_kib_per_session": round(rss / sessions, 1),
            "threads": threading.active_count() - self.threads,
            "fds": fds() - self.fds,
        }


class Clock:
    """From the first delivery to the last."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0

    def tick(self) -> None:
        self.last = time.perf_counter()
        if self.first is None:
            self.first = self.last

    def elapsed(self) -> float:
        return round(self.last - (self.first or self.last), 2)


@asynccontextmanager
async def wired(client: mqtt.Client, broker: str) -> AsyncIterator[Wire]:
    """``client`` connected to ``broker`` (clean start) over a Trio-driven :class:`Wire`."""
    host, port = broker_address(broker)
    wire = Wire(client)
    try:
        await wire.connect(
            host,
            port,
            keepalive=60,
            clean_start=True,
            properties=None,
            limiter=trio.CapacityLimiter(1),
        )
        yield wire
    finally:
        wire.close()


async def publish_elsewhere(broker: str, topics: list[str], per_topic: int) -> None:
    """:func:`publish_all` in another process (the other core), so it does not compete."""
    command = [sys.executable, "-m", __spec__.name, "--publish", "--broker", broker]
    await trio.run_process([*command, "-m", str(per_topic), *topics])


async def publish_all(broker: str, topics: list[str], per_topic: int) -> None:
    """``per_topic`` QoS 1 messages to each topic, confirmed, from a connection of its own."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(20)
    acked: set[int] = set()
    client.on_publish = lambda c, u, mid, reason, properties: acked.add(mid)
    async with wired(client, broker) as wire:
        sent = 0
        for n in range(per_topic):
            for topic in topics:
                client.publish(topic, b"x" * 100 + b"%d" % n, qos=1)
                sent += 1
                await wire.flush()
                while sent - len(acked) >= 20:  # a window, as the endpoint keeps
                    await wire.receive_some(budget=20)
        while len(acked) < sent:
            await wire.receive_some(budget=20)


async def measure_endpoint(broker: str, topics: list[str], per_topic: int) -> dict[str, Any]:
    config = MQTT5Config(broker=broker, topic_in="bench/{client_id}", qos=1, session_expiry=0)
    endpoint = MQTT5Endpoint("bench", config)
    route = RouteConfig(
        source="bench", target="clients", delivery_guarantee=Guarantee.AT_LEAST_ONCE
    )
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        await endpoint.state.wait_value(EndpointState.UP)
        probe = Probe()
        t0 = time.perf_counter()
        async with AsyncExitStack() as stack:
            iterators = []
            for topic in topics:
                subscription = Subscription(
                    client_id=topic.removeprefix("bench/"),
                    session_id=str(uuid.uuid4()),
                    entrypoint="clients",
                    route=route,
                )
                iterators.append(await stack.enter_async_context(endpoint.consume(subscription)))
            result["subscribe_s"] = round(time.perf_counter() - t0, 2)
            result.update(probe.added(len(topics)))
            clock = Clock()
            async with trio.open_nursery() as readers:
                for deliveries in iterators:

                    async def read(deliveries: Any = deliveries) -> None:
                        for _ in range(per_topic):
                            delivery = await anext(deliveries)
                            clock.tick()
                            await delivery.ack()

                    readers.start_soon(read)
                await publish_elsewhere(broker, topics, per_topic)
            result["drain_s"] = clock.elapsed()
        nursery.cancel_scope.cancel()
    return result


def measure_threads(broker: str, topics: list[str], per_topic: int) -> dict[str, Any]:
    host, port = broker_address(broker)
    probe = Probe()
    t0 = time.perf_counter()
    clients = []
    subscribed = threading.Semaphore(0)
    received = threading.Semaphore(0)
    clock = Clock()
    for topic in topics:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-threads-{topic}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        properties = new_properties(PacketTypes.CONNECT)
        properties.ReceiveMaximum = 1

        def on_message(c: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
            clock.tick()
            c.ack(message.mid, message.qos)
            received.release()

        client.on_message = on_message
        client.on_subscribe = lambda c, u, mid, reasons, p: subscribed.release()
        client.connect(host, port, 60, properties=properties)
        client.loop_start()
        client.subscribe(topic, options=SubscribeOptions(qos=1))
        clients.append(client)
    for _ in topics:
        subscribed.acquire()
    result: dict[str, Any] = {"subscribe_s": round(time.perf_counter() - t0, 2)}
    result.update(probe.added(len(topics)))
    trio.run(publish_elsewhere, broker, topics, per_topic)
    for _ in range(len(topics) * per_topic):
        if not received.acquire(timeout=TIME_LIMIT):
            raise TimeoutError("messages were lost")
    result["drain_s"] = clock.elapsed()
    for client in clients:
        client.disconnect()
        client.loop_stop()
    return result


async def measure_shared(broker: str, topics: list[str], per_topic: int) -> dict[str, Any]:
    probe = Probe()
    t0 = time.perf_counter()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    queues: dict[int, deque[mqtt.MQTTMessage]] = {i: deque() for i in range(1, len(topics) + 1)}
    wakeups: dict[int, trio.Event] = {i: trio.Event() for i in queues}
    granted: set[int] = set()

    def route(c: mqtt.Client, u: Any, message: mqtt.MQTTMessage) -> None:
        for identifier in getattr(message.properties, "SubscriptionIdentifier", []):
            queues[identifier].append(message)
            wakeups[identifier].set()

    client.on_message = route
    client.on_subscribe = lambda c, u, mid, reasons, p: granted.add(mid)
    async with wired(client, broker) as wire:
        mids = set()
        for identifier, topic in enumerate(topics, start=1):
            properties = new_properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = identifier
            mids.add(
                client.subscribe(topic, options=SubscribeOptions(qos=1), properties=properties)[1]
            )
            await wire.flush()
        while not mids <= granted:
            await wire.receive_some(budget=len(topics))
        result: dict[str, Any] = {"subscribe_s": round(time.perf_counter() - t0, 2)}
        result.update(probe.added(len(topics)))
        clock = Clock()
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                while True:
                    await wire.receive_some(budget=100)

            nursery.start_soon(reader)
            async with trio.open_nursery() as sessions:
                for identifier in queues:

                    async def session(identifier: int = identifier) -> None:
                        for _ in range(per_topic):
                            while not queues[identifier]:
                                wakeups[identifier] = trio.Event()
                                await wakeups[identifier].wait()
                            message = queues[identifier].popleft()
                            clock.tick()
                            client.ack(message.mid, message.qos)
                            await wire.flush()

                    sessions.start_soon(session)
                await publish_elsewhere(broker, topics, per_topic)
            nursery.cancel_scope.cancel()
        result["drain_s"] = clock.elapsed()
        return result


async def bounded(measure: Any, *args: Any) -> dict[str, Any]:
    with trio.fail_after(TIME_LIMIT):
        result: dict[str, Any] = await measure(*args)
        return result


def run_one(design: str, broker: str, sessions: int, per_topic: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    topics = [f"bench/{run}-{i}" for i in range(sessions)]
    if design == "endpoint":
        result = trio.run(bounded, measure_endpoint, broker, topics, per_topic)
    elif design == "threads":
        result = measure_threads(broker, topics, per_topic)
    else:
        result = trio.run(bounded, measure_shared, broker, topics, per_topic)
    deliveries = sessions * per_topic
    result["deliveries_per_s"] = (
        round(deliveries / result["drain_s"]) if result["drain_s"] else None
    )
    return {"design": design, "sessions": sessions, **result}


@contextmanager
def broker_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    sys.path.insert(0, os.getcwd())
    from tests.brokers import start_mosquitto  # a checkout's harness: a private mosquitto

    with start_mosquitto() as broker:
        yield f"tcp://{broker.host}:{broker.port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="tcp://host:port (default: start a private mosquitto)")
    parser.add_argument("-n", "--sessions", type=int, default=200)
    parser.add_argument("-m", "--messages", type=int, default=50, help="per session")
    parser.add_argument("--design", choices=DESIGNS, help="run one design in this process")
    parser.add_argument("--publish", action="store_true", help="publish to TOPICS (internal)")
    parser.add_argument("topics", nargs="*")
    args = parser.parse_args()
    if args.publish:
        trio.run(publish_all, args.broker, args.topics, args.messages)
        return
    if args.design:
        print(json.dumps(run_one(args.design, args.broker, args.sessions, args.messages)))
        return
    with broker_url(args.broker) as broker:
        for design in DESIGNS:
            command = [sys.executable, "-m", __spec__.name, "--design", design, "--broker", broker]
            command += ["-n", str(args.sessions), "-m", str(args.messages)]
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=TIME_LIMIT * 2
                )
                print(done.stdout.strip() or f"{design}: failed\n{done.stderr[-2000:]}")
            except subprocess.TimeoutExpired:
                print(f"{design}: timed out")


if __name__ == "__main__":
    main()
