"""A fleet: three engine processes behind the shipped HAProxy configuration
(examples/deploy/haproxy.cfg), clients on every downstream entrypoint type (WebSocket envelope,
SSE, polling) on ``at_least_once``, each receiving its own copy of sequence-numbered events
from Kafka (a consumer group per client) and RabbitMQ (a durable queue per client). One engine
gets SIGKILL mid-stream; every client reconnects through HAProxy with the same client id and
continues on another engine: nothing lost, duplicates only of what the client had not
confirmed plus what it confirmed within the broker's last commit, counted; resume time (the
kill to the client's next event) p50/p99 in the figures.

MQTT 5 and AMQP 1.0 are not in this test yet (their place is kept the same way, in the broker:
see the README's "Deploying"). ``just fleet`` runs it at 300 clients (FLEET_CLIENTS, and
FLEET_EVENTS per broker).
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from confluent_kafka import Producer
from httpx_sse import aconnect_sse
from trio_util import AsyncValue
from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

from mediation.envelope import SUBPROTOCOL

from .brokers import RabbitMQ, Tansu
from .fleet.engines import running_engines
from .fleet.haproxy import running_haproxy

CLIENTS = int(os.environ.get("FLEET_CLIENTS", "12"))  # a third each: WebSocket, SSE, polling
EVENTS = int(os.environ.get("FLEET_EVENTS", "120"))  # per broker, every client gets each
RATE = 60.0  # events per second per broker
CHANNEL_SIZE = 8
SESSION_TIMEOUT_MS = 6000  # Kafka: how long the group waits for a dead engine's consumer
RETRY = 0.2  # a client's pause between reconnection attempts
SECRET = "fleet test cursor secret, 32 bytes or more"
BROKERS = ("k", "r")  # payload prefixes: Kafka, RabbitMQ


def fleet_config(
    tansu: Tansu, rabbitmq: RabbitMQ, topic: str, queue_prefix: str, fetch: str
) -> str:
    """The deploy config's entrypoints (names and types), on both brokers, ports 0."""
    downstream = "\n".join(
        f"""
[[routes]]
source = "{endpoint}"
target = "{entrypoint}"
delivery_guarantee = "at_least_once"
channel_size = {CHANNEL_SIZE}
"""
        for endpoint in ("kafka", "rabbitmq")
        for entrypoint in ("ws", "sse", "polling")
    )
    return f"""
[engine]
host = "127.0.0.1"
health_port = 0
log_level = "info"
packet_log = false
reload_interval = 0
shutdown_timeout = 5
cursor_secret = "{SECRET}"

[[entrypoints]]
name = "ws"
type = "websocket"
port = 0

[[entrypoints]]
name = "sse"
type = "sse"
port = 0

[[entrypoints]]
name = "post"
type = "http_post"
port = 0

[[entrypoints]]
name = "polling"
type = "http_get"
port = 0
poll_timeout = 1

[[endpoints]]
name = "kafka"
type = "kafka"
[endpoints.config]
brokers = "{tansu.bootstrap_servers}"
topic_in = "{topic}"
topic_out = "{topic}"
auto_offset_reset = "earliest"
session_timeout_ms = {SESSION_TIMEOUT_MS}
heartbeat_interval_ms = 500
fetch = "{fetch}"

[[endpoints]]
name = "rabbitmq"
type = "rabbitmq"
[endpoints.config]
url = "{rabbitmq.amqp_url}"
queue_in = "{queue_prefix}.{{client_id}}"

[[routes]]
source = "post"
target = "kafka"
{downstream}
"""


@dataclass
class Client:
    """One web client: what it received per broker, in order, and when."""

    id: str
    kind: str
    received: dict[str, list[int]] = field(default_factory=lambda: {b: [] for b in BROKERS})
    sessions: int = 0
    dropped_at: list[float] = field(default_factory=list)  # monotonic times its session ended
    events_at: list[float] = field(default_factory=list)  # monotonic time of every receipt
    complete: trio.Event = field(default_factory=trio.Event)
    connected: trio.Event = field(default_factory=trio.Event)  # its first session confirmed
    count: AsyncValue[int] = field(default_factory=lambda: AsyncValue(0))  # receipts

    def confirmed(self) -> None:
        self.sessions += 1
        self.connected.set()

    def record(self, payload: str) -> None:
        broker, seq = payload.split(":")
        self.received[broker].append(int(seq))
        self.events_at.append(time.monotonic())
        self.count.value += 1
        if all(len(set(r)) >= EVENTS for r in self.received.values()):
            self.complete.set()

    def lost(self) -> int:
        return sum(EVENTS - len(set(r) & set(range(EVENTS))) for r in self.received.values())

    def duplicates(self) -> dict[str, int]:
        return {b: sum(n - 1 for n in Counter(r).values()) for b, r in self.received.items()}

    def resume_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first event after a session ended past it, or None
        if no session of this client ended then (it was not on the killed engine)."""
        ends = [t for t in self.dropped_at if t >= moment]
        if not ends:
            return None
        later = [t for t in self.events_at if t > ends[0]]
        return later[0] - moment if later else None


async def websocket_client(client: Client, port: int) -> None:
    while True:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                async with trio.open_nursery() as nursery:
                    ws = await wrap_client_stream(
                        nursery,
                        stream,
                        f"127.0.0.1:{port}",
                        "/",
                        subprotocols=[SUBPROTOCOL],
                        extra_headers=[(b"x-client-id", client.id.encode())],
                    )
                    client.confirmed()
                    try:
                        while True:
                            document = json.loads(await ws.get_message())
                            client.record(document["payload"])
                            await ws.send_message(json.dumps({"ack": document["id"]}))
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                await stream.aclose()
        except* (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
            client.dropped_at.append(time.monotonic())
        await trio.sleep(RETRY)


async def sse_client(client: Client, port: int) -> None:
    last_event_id: str | None = None  # what an EventSource sends back when it reconnects
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as http:
        while True:
            headers = {"x-client-id": client.id}
            if last_event_id is not None:
                headers["last-event-id"] = last_event_id
            try:
                async with aconnect_sse(
                    http, "GET", f"http://127.0.0.1:{port}/", headers=headers
                ) as source:
                    if source.response.status_code == 200:
                        client.confirmed()
                        events = source.aiter_sse()
                        try:
                            async for event in events:
                                if event.event == "message":
                                    client.record(event.data)
                                    last_event_id = event.id or last_event_id
                        finally:
                            await source.response.aclose()
                            async for _ in events:
                                pass
            except (httpx.HTTPError, httpx.StreamError):
                pass
            client.dropped_at.append(time.monotonic())
            await trio.sleep(RETRY)


async def polling_client(client: Client, port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    headers = {"x-client-id": client.id}
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            try:
                answer = await http.post(f"{base}/subscribe", headers=headers)
                if answer.status_code == 201:
                    client.confirmed()
                    while True:
                        poll = await http.get(f"{base}/poll", headers=headers)
                        if poll.status_code == 204:
                            continue
                        if poll.status_code != 200:
                            break  # 404/410 on another engine, 502/503 from HAProxy
                        client.record(poll.text)
                        await http.post(
                            f"{base}/ack",
                            headers={**headers, "x-event-id": poll.headers["x-event-id"]},
                        )
            except httpx.HTTPError:
                pass
            client.dropped_at.append(time.monotonic())
            await trio.sleep(RETRY)


RUNNERS: dict[str, Callable[[Client, int], object]] = {
    "ws": websocket_client,
    "sse": sse_client,
    "polling": polling_client,
}


def publish_kafka(tansu: Tansu, topic: str, seqs: range) -> None:
    producer = Producer(tansu.client_config(**{"linger.ms": 5, "enable.idempotence": True}))
    for seq in seqs:
        producer.produce(topic, f"k:{seq}".encode())
        producer.poll(0)
    assert producer.flush(30) == 0


def publish_rabbitmq(rabbitmq: RabbitMQ, queues: list[str], seqs: range) -> None:
    import pika

    connection = rabbitmq.connection()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for seq in seqs:
            for queue in queues:
                channel.basic_publish(
                    "",
                    queue,
                    f"r:{seq}".encode(),
                    pika.BasicProperties(delivery_mode=2, message_id=f"{queue}-{seq}"),
                    mandatory=True,
                )
    finally:
        connection.close()


def declare_queues(rabbitmq: RabbitMQ, queues: list[str]) -> None:
    with rabbitmq.channel() as channel:
        for queue in queues:
            channel.queue_declare(queue, durable=True)  # as the engine declares queue_in


def delete_queues(rabbitmq: RabbitMQ, queues: list[str]) -> None:
    with rabbitmq.channel() as channel:
        for queue in queues:
            channel.queue_delete(queue)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# Kafka's two designs: a consumer per session in the client's group (a new session waits for
# the group to expire the dead engine's member: session_timeout_ms), or positions kept through
# the admin API without group membership (fetch = "shared": no wait).
@pytest.mark.parametrize("fetch", ["shared", "per_session"])
async def test_a_client_continues_on_another_engine_after_sigkill(
    tansu: Tansu,
    rabbitmq: RabbitMQ,
    tmp_path: Path,
    report_figures: Callable[..., None],
    fetch: str,
    request: pytest.FixtureRequest,
) -> None:
    if fetch == "per_session":  # README "Known issues": a RabbitMQ stream came up short once in CI
        request.applymarker(pytest.mark.xfail(strict=False, reason="known issue (README)"))
    run = uuid.uuid4().hex[:8]
    topic, queue_prefix = f"fleet.{run}", f"fleet.{run}"
    kinds = ["ws", "sse", "polling"]
    clients = [Client(f"c{run}-{i}", kinds[i % 3]) for i in range(CLIENTS)]
    queues = [f"{queue_prefix}.{c.id}" for c in clients]
    await trio.to_thread.run_sync(declare_queues, rabbitmq, queues)
    config = tmp_path / "fleet.toml"
    config.write_text(fleet_config(tansu, rabbitmq, topic, queue_prefix, fetch))
    try:
        async with running_engines(config, 3) as engines:
            async with running_haproxy([e.ports for e in engines], tmp_path) as proxy:
                await until_ready([e.ports["health"] for e in engines])
                async with trio.open_nursery() as nursery:
                    for client in clients:
                        nursery.start_soon(RUNNERS[client.kind], client, proxy.ports[client.kind])
                    with trio.fail_after(60):
                        for client in clients:
                            await client.connected.wait()
                    started = time.monotonic()
                    third = EVENTS // 3
                    # A third of the events, then SIGKILL one engine while the rest is sent.
                    await publish(tansu, rabbitmq, topic, queues, range(third))
                    with trio.fail_after(60):
                        for client in clients:
                            await client.count.wait_value(lambda n: n >= third)
                    killed_at = time.monotonic()
                    engines[0].kill()
                    await publish(tansu, rabbitmq, topic, queues, range(third, EVENTS))
                    try:
                        with trio.fail_after(120):
                            for client in clients:
                                await client.complete.wait()
                    except trio.TooSlowError:
                        raise AssertionError(summary(clients)) from None
                    nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(delete_queues, rabbitmq, queues)

    affected = [c for c in clients if c.resume_after(killed_at) is not None]
    resumes = [c.resume_after(killed_at) or 0.0 for c in affected]
    duplicates = {c.id: c.duplicates() for c in clients}
    lost = sum(c.lost() for c in clients)
    assert lost == 0, summary(clients)
    assert affected, "no client was on the killed engine"
    for client in clients:
        if client not in affected:
            assert sum(duplicates[client.id].values()) == 0, (client.id, duplicates[client.id])
    # What a client had not confirmed (at most channel_size) plus what it confirmed since the
    # broker's last commit: RabbitMQ acks are sent one by one (the in-flight ones are lost with
    # the connection), Kafka commits asynchronously per ack (at most a commit round behind).
    bound = 2 * CHANNEL_SIZE
    worst = max(max(d.values()) for d in duplicates.values())
    report_figures(
        clients=len(clients),
        events_per_client=2 * EVENTS,
        lost=lost,
        duplicated=sum(sum(d.values()) for d in duplicates.values()),
        duplicated_max_per_stream=worst,
        affected_clients=len(affected),
        resume_p50_s=statistics.median(resumes),
        resume_p99_s=percentile(resumes, 0.99),
        elapsed_s=time.monotonic() - started,
    )
    assert worst <= bound, duplicates


async def publish(
    tansu: Tansu, rabbitmq: RabbitMQ, topic: str, queues: list[str], seqs: range
) -> None:
    """Each seq to Kafka and to every client's queue, at RATE per broker, confirmed."""
    step = max(1, int(RATE / 10))
    for start in range(seqs.start, seqs.stop, step):
        chunk = range(start, min(start + step, seqs.stop))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, publish_kafka, tansu, topic, chunk)
            nursery.start_soon(trio.to_thread.run_sync, publish_rabbitmq, rabbitmq, queues, chunk)
            nursery.start_soon(trio.sleep, len(chunk) / RATE)


async def until_ready(health_ports: list[int]) -> None:
    """Every engine's /readyz is 200: both brokers up."""
    async with httpx.AsyncClient(timeout=5) as http:
        with trio.fail_after(60):
            for port in health_ports:
                while True:  # polling a server that has no way to notify us
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                    await trio.sleep(0.1)


def summary(clients: list[Client]) -> str:
    return "\n".join(
        f"{c.id} {c.kind}: sessions {c.sessions}, drops {len(c.dropped_at)}, "
        f"missing k {EVENTS - len(set(c.received['k']))} r {EVENTS - len(set(c.received['r']))}, "
        f"duplicates {c.duplicates()}"
        for c in clients
    )
