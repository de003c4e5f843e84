"""A fleet: three engine processes behind the shipped HAProxy configuration
(examples/deploy/haproxy.cfg), clients on every downstream entrypoint type (WebSocket envelope,
SSE, polling) on ``at_least_once``, each receiving its own copy of sequence-numbered events
from four brokers at once: Kafka (a consumer group per client), RabbitMQ (a durable queue per
client), MQTT 5 (a persistent MQTT session per client on Mosquitto) and AMQP 1.0 (a durable
queue per client, on RabbitMQ's AMQP 1.0 plugin). One engine gets SIGKILL mid-stream; every
client reconnects through HAProxy with the same client id and continues on another engine:
nothing lost, duplicates counted and bounded (below); resume time (the kill to the client's
next event) p50/p99 in the figures.

Resuming is the broker's: Kafka continues after the client's group commit (both designs,
``fetch = "shared"`` and ``"per_session"``, one run each); for the other three it means
reconnecting with the same client id on any instance: the client's queue (RabbitMQ, AMQP 1.0)
or MQTT session (Mosquitto keeps the dead connection's subscription and what it had sent
unacknowledged, and queues what comes meanwhile) hands out what the client had not confirmed.

Duplicates: per client and broker, at most what the client had not confirmed when its session
ended (``CHANNEL_SIZE``, the ``at_least_once`` window: the broker's credit) plus what it had
confirmed but the broker had not recorded yet, for every session of it that ended after the
kill; none for the clients of the surviving engines. What the broker had not recorded, per
broker (:meth:`Client.duplicate_bound`):

- Kafka: what the client confirmed within :data:`COMMIT_WINDOW` before the kill (until it saw
  its session end): commits are asynchronous (``shared``: positions written 0.2 s after the
  first settle, one write in flight; ``per_session``: a commit per burst of acks, one in
  flight), so the window is a commit round trip on a loaded machine.
- RabbitMQ and AMQP 1.0: each burst of acks (``basic.ack``; ``accepted`` dispositions) is
  written at once: only those in flight, within :data:`COMMIT_WINDOW`.
- MQTT 5: PUBACKs wait for the consumer's next read from the broker (mediation/endpoints/
  mqtt5.py: a burst, written before it next waits), so up to what it had read and handed out
  since its last read, at most its credit (``CHANNEL_SIZE`` more), plus those in flight.

Sizes: ``just test`` (CI) runs 60 clients (a third each: WebSocket, SSE, polling) and 60
events per broker (240 per client, both Kafka designs); ``just fleet`` runs 300 clients
(FLEET_CLIENTS, and FLEET_EVENTS per broker).
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import trio
from confluent_kafka import Producer
from httpx_sse import aconnect_sse
from paho.mqtt.enums import CallbackAPIVersion
from trio_util import AsyncValue
from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

from mediation.envelope import SUBPROTOCOL

from .brokers import Mosquitto, RabbitMQ, Tansu
from .fleet.engines import running_engines
from .fleet.haproxy import running_haproxy

CLIENTS = int(os.environ.get("FLEET_CLIENTS", "60"))  # a third each: WebSocket, SSE, polling
EVENTS = int(os.environ.get("FLEET_EVENTS", "60"))  # per broker, every client gets each
RATE = 15.0  # events per second per broker (at most: the polling clients are slower)
CHANNEL_SIZE = 8
SESSION_TIMEOUT_MS = 6000  # Kafka: how long the group waits for a dead engine's consumer
RETRY = 0.2  # a client's pause between reconnection attempts
SECRET = "fleet test cursor secret, 32 bytes or more"
# Payload prefixes, one per broker: Kafka, RabbitMQ, MQTT 5, AMQP 1.0 (RabbitMQ's plugin).
BROKERS = ("k", "r", "m", "a")
# Seconds before the kill within which what a client confirmed may not have reached the broker
# (the module docstring): Kafka's commit interval and the write in flight; the others' acks in
# flight. Generous for a 2-core machine that runs the brokers, HAProxy and three engines.
COMMIT_WINDOW = {"k": 1.5, "r": 0.5, "m": 0.5, "a": 0.5}
# Confirmed events whose acks may wait regardless of time: MQTT 5 writes them before its next
# read from the broker, which comes once the consumer handed out what it read (its credit).
HELD_ACKS = {"k": 0, "r": 0, "m": CHANNEL_SIZE, "a": 0}
# One record per batch: tansu (0.x) answers ListOffsets "latest" with the last batch's first
# offset plus one, not the partition's next offset, so a cursor inside a batch of several
# records looked "above high" to a resume (README, "Known issues"): a reset and the whole
# partition again.
KAFKA_PRODUCER = {"linger.ms": 5, "batch.num.messages": 1, "enable.idempotence": True}


@dataclass(frozen=True)
class Names:
    """One run's broker objects: the Kafka topic, the MQTT topic, queue name prefixes."""

    run: str

    @property
    def topic(self) -> str:
        return f"fleet.{self.run}"

    @property
    def mqtt_topic(self) -> str:
        return f"fleet/{self.run}"

    def exchange(self, broker: str) -> str:
        """The fanout exchange to every client's RabbitMQ ("r") or AMQP 1.0 ("a") queue."""
        return f"fleet.{self.run}.{broker}"

    def queue(self, broker: str, client_id: str) -> str:
        """The client's RabbitMQ ("r") or AMQP 1.0 ("a") queue."""
        return f"fleet.{self.run}.{broker}.{client_id}"


def fleet_config(
    tansu: Tansu, rabbitmq: RabbitMQ, mosquitto: Mosquitto, names: Names, fetch: str
) -> str:
    """The deploy config's entrypoints (names and types), on the four brokers, ports 0."""
    downstream = "\n".join(
        f"""
[[routes]]
source = "{endpoint}"
target = "{entrypoint}"
delivery_guarantee = "at_least_once"
channel_size = {CHANNEL_SIZE}
"""
        for endpoint in ("kafka", "rabbitmq", "mqtt", "amqp")
        for entrypoint in ("ws", "sse", "polling")
    )
    rabbitmq_queue, amqp_queue = (names.queue(b, "{client_id}") for b in ("r", "a"))
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
topic_in = "{names.topic}"
topic_out = "{names.topic}"
auto_offset_reset = "earliest"
session_timeout_ms = {SESSION_TIMEOUT_MS}
heartbeat_interval_ms = 500
fetch = "{fetch}"
create_topics = true

[[endpoints]]
name = "rabbitmq"
type = "rabbitmq"
[endpoints.config]
url = "{rabbitmq.amqp_url}"
queue_in = "{rabbitmq_queue}"

[[endpoints]]
name = "mqtt"
type = "mqtt5"
[endpoints.config]
broker = "tcp://{mosquitto.host}:{mosquitto.port}"
topic_in = "{names.mqtt_topic}"
session_expiry = 120

[[endpoints]]
name = "amqp"
type = "jms"
[endpoints.config]
url = "{rabbitmq.amqp1_url}"
queue_in = "/amq/queue/{amqp_queue}"

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
    received_at: dict[str, list[float]] = field(default_factory=lambda: {b: [] for b in BROKERS})
    sessions: int = 0
    dropped_at: list[float] = field(default_factory=list)  # monotonic times its session ended
    why: list[str] = field(default_factory=list)  # how each of them ended
    resets: list[str] = field(default_factory=list)  # "a resume position was gone" (reasons)
    events_at: list[float] = field(default_factory=list)  # monotonic time of every receipt
    complete: trio.Event = field(default_factory=trio.Event)
    connected: trio.Event = field(default_factory=trio.Event)  # its first session confirmed
    # The fewest distinct events it has of any one broker.
    progress: AsyncValue[int] = field(default_factory=lambda: AsyncValue(0))

    def confirmed(self) -> None:
        self.sessions += 1
        self.connected.set()

    def ended(self, why: str) -> None:
        self.dropped_at.append(time.monotonic())
        self.why.append(why)

    def record(self, payload: str) -> None:
        broker, seq = payload.split(":")
        now = time.monotonic()
        self.received[broker].append(int(seq))
        self.received_at[broker].append(now)
        self.events_at.append(now)
        self.progress.value = min(len(set(r)) for r in self.received.values())
        if self.progress.value >= EVENTS:
            self.complete.set()

    def lost(self) -> int:
        return sum(EVENTS - len(set(r) & set(range(EVENTS))) for r in self.received.values())

    def duplicates(self) -> dict[str, int]:
        return {b: sum(n - 1 for n in Counter(r).values()) for b, r in self.received.items()}

    def duplicate_bound(self, broker: str, killed_at: float) -> int:
        """What this client may get twice from ``broker`` (the module docstring): for each of
        its sessions that ended after the kill, what it had not confirmed (``CHANNEL_SIZE``),
        the acks the broker may hold back (``HELD_ACKS``), and what it received from
        ``COMMIT_WINDOW`` before that session's end (the kill, for the first) until it saw the
        end."""
        bound, start = 0, killed_at
        for end in (t for t in self.dropped_at if t >= killed_at):
            since = start - COMMIT_WINDOW[broker]
            recent = sum(since <= t <= end for t in self.received_at[broker])
            bound += CHANNEL_SIZE + HELD_ACKS[broker] + recent
            start = end
        return bound

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
        except* (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError) as group:
            client.ended(repr(group.exceptions[0])[:80])
        await trio.sleep(RETRY)


async def sse_client(client: Client, port: int) -> None:
    last_event_id: str | None = None  # what an EventSource sends back when it reconnects
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as http:
        while True:
            headers = {"x-client-id": client.id}
            if last_event_id is not None:
                headers["last-event-id"] = last_event_id
            why = "the stream ended"
            try:
                async with aconnect_sse(
                    http, "GET", f"http://127.0.0.1:{port}/", headers=headers
                ) as source:
                    why = f"status {source.response.status_code}"
                    if source.response.status_code == 200:
                        client.confirmed()
                        events = source.aiter_sse()
                        try:
                            async for event in events:
                                if event.event == "message":
                                    client.record(event.data)
                                    last_event_id = event.id or last_event_id
                                elif event.event == "reset":
                                    client.resets.append(event.data)
                                elif event.event == "error":
                                    why = f"event: error {event.data}"
                        finally:
                            await source.response.aclose()
                            async for _ in events:
                                pass
            except (httpx.HTTPError, httpx.StreamError) as error:
                why = repr(error)[:80]
            client.ended(why)
            await trio.sleep(RETRY)


async def polling_client(client: Client, port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    headers = {"x-client-id": client.id}
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            why = "?"
            try:
                answer = await http.post(f"{base}/subscribe", headers=headers)
                why = f"subscribe {answer.status_code}"
                if answer.status_code == 201:
                    client.confirmed()
                    while True:
                        poll = await http.get(f"{base}/poll", headers=headers)
                        if poll.status_code == 204:
                            continue
                        if poll.status_code != 200:
                            why = f"poll {poll.status_code}"
                            break  # 404/410 on another engine, 502/503 from HAProxy
                        client.record(poll.text)
                        await http.post(
                            f"{base}/ack",
                            headers={**headers, "x-event-id": poll.headers["x-event-id"]},
                        )
            except httpx.HTTPError as error:
                why = repr(error)[:80]
            client.ended(why)
            await trio.sleep(RETRY)


RUNNERS: dict[str, Callable[[Client, int], Awaitable[None]]] = {
    "ws": websocket_client,
    "sse": sse_client,
    "polling": polling_client,
}


def declare_queues(rabbitmq: RabbitMQ, names: Names, clients: list[str]) -> None:
    """Per broker ("r", "a"): a fanout exchange, and each client's durable queue bound to it.
    RabbitMQ's as the endpoint declares ``queue_in`` (x-expires: ``client_state_ttl``, one day
    by default); AMQP 1.0's plain (the endpoint declares nothing, nor can AMQP 1.0 here)."""
    expires = {"r": {"x-expires": 86_400_000}, "a": None}
    with rabbitmq.channel() as channel:
        for broker in ("r", "a"):
            exchange = names.exchange(broker)
            channel.exchange_declare(exchange, "fanout", durable=True)  # type: ignore[attr-defined]
            for client in clients:
                queue = names.queue(broker, client)
                channel.queue_declare(  # type: ignore[attr-defined]
                    queue, durable=True, arguments=expires[broker]
                )
                channel.queue_bind(queue, exchange)  # type: ignore[attr-defined]


def delete_queues(rabbitmq: RabbitMQ, names: Names, clients: list[str]) -> None:
    with rabbitmq.channel() as channel:
        for broker in ("r", "a"):
            for client in clients:
                channel.queue_delete(names.queue(broker, client))  # type: ignore[attr-defined]
            channel.exchange_delete(names.exchange(broker))  # type: ignore[attr-defined]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Publisher:
    """Each seq to every broker, every client getting its copy: Kafka's topic (a group per
    client), a fanout exchange to every client's queue (RabbitMQ, AMQP 1.0), the MQTT topic (a
    subscription in every client's MQTT session). One connection per broker, used from one
    worker thread at a time; every publish confirmed by its broker."""

    def __init__(self, tansu: Tansu, rabbitmq: RabbitMQ, mosquitto: Mosquitto, names: Names):
        self.names = names
        self.tansu, self.rabbitmq, self.mosquitto = tansu, rabbitmq, mosquitto
        self.published = AsyncValue(0)  # events confirmed by every broker

    async def publish(self, seqs: range) -> None:
        """At RATE per broker (or slower, if a broker is), each chunk confirmed by all four."""
        run = trio.to_thread.run_sync
        kafka = await run(lambda: Producer(self.tansu.client_config(**KAFKA_PRODUCER)))
        channels = [await run(self._channel) for _ in ("r", "a")]
        mqtt_client = await run(self._mqtt_client)
        try:
            step = max(1, int(RATE / 10))
            for start in range(seqs.start, seqs.stop, step):
                chunk = range(start, min(start + step, seqs.stop))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run, self._kafka, kafka, chunk)
                    for broker, channel in zip(("r", "a"), channels, strict=True):
                        nursery.start_soon(run, self._fanout, channel, broker, chunk)
                    nursery.start_soon(run, self._mqtt, mqtt_client, chunk)
                    nursery.start_soon(trio.sleep, len(chunk) / RATE)
                self.published.value = chunk.stop
        finally:
            with trio.CancelScope(shield=True):
                for channel in channels:
                    await run(channel.connection.close)
                await run(self._mqtt_close, mqtt_client)

    def _kafka(self, producer: Producer, seqs: range) -> None:
        for seq in seqs:
            producer.produce(self.names.topic, f"k:{seq}".encode())
            producer.poll(0)
        assert producer.flush(30) == 0

    def _channel(self) -> Any:
        channel = self.rabbitmq.connection().channel()
        channel.confirm_delivery()
        return channel

    def _fanout(self, channel: Any, broker: str, seqs: range) -> None:
        import pika  # type: ignore[import-untyped]

        for seq in seqs:
            channel.basic_publish(
                self.names.exchange(broker),
                "",
                f"{broker}:{seq}".encode(),
                pika.BasicProperties(delivery_mode=2, message_id=f"{broker}-{seq}"),
                mandatory=True,
            )

    def _mqtt_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleet-publisher-{self.names.run}",
            protocol=mqtt.MQTTv5,
        )
        client.connect(self.mosquitto.host, self.mosquitto.port)
        client.loop_start()
        return client

    def _mqtt(self, client: mqtt.Client, seqs: range) -> None:
        """QoS 1, each PUBACK awaited: the broker has it for every client's MQTT session."""
        infos = [client.publish(self.names.mqtt_topic, f"m:{seq}".encode(), qos=1) for seq in seqs]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published(), info

    @staticmethod
    def _mqtt_close(client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()


# Kafka's two designs: a consumer per session in the client's group (a new session waits for
# the group to expire the dead engine's member: session_timeout_ms), or positions kept through
# the admin API without group membership (fetch = "shared": no wait).
@pytest.mark.parametrize("fetch", ["shared", "per_session"])
async def test_a_client_continues_on_another_engine_after_sigkill(
    tansu: Tansu,
    rabbitmq: RabbitMQ,
    mosquitto: Mosquitto,
    tmp_path: Path,
    report_figures: Callable[..., None],
    fetch: str,
) -> None:
    names = Names(uuid.uuid4().hex[:8])
    kinds = ["ws", "sse", "polling"]
    clients = [Client(f"c{names.run}-{i}", kinds[i % 3]) for i in range(CLIENTS)]
    ids = [c.id for c in clients]
    await trio.to_thread.run_sync(declare_queues, rabbitmq, names, ids)
    publisher = Publisher(tansu, rabbitmq, mosquitto, names)
    config = tmp_path / "fleet.toml"
    config.write_text(fleet_config(tansu, rabbitmq, mosquitto, names, fetch))
    try:
        async with running_engines(config, 3) as engines:
            # Ready before HAProxy starts: it takes its servers as up from the start, so none
            # is out of the pool (for a few checks) while the clients connect.
            await until_ready([e.ports["health"] for e in engines])
            async with running_haproxy([e.ports for e in engines], tmp_path) as proxy:
                async with trio.open_nursery() as nursery:
                    for client in clients:
                        nursery.start_soon(RUNNERS[client.kind], client, proxy.ports[client.kind])
                    with trio.fail_after(60):
                        for client in clients:
                            await client.connected.wait()
                    started = time.monotonic()
                    # SIGKILL one engine mid-stream: a third of the events is out (the rest
                    # is on its way) and every client has more than its window of every
                    # broker's (so it confirmed some: its place at each has moved). Not a
                    # third each: the polling clients lag behind, two requests per event.
                    nursery.start_soon(publisher.publish, range(EVENTS))
                    moved = min(CHANNEL_SIZE + 1, EVENTS // 3)
                    with trio.fail_after(60):
                        await publisher.published.wait_value(lambda n: n >= EVENTS // 3)
                        for client in clients:
                            await client.progress.wait_value(lambda n: n >= moved)
                    killed_at = time.monotonic()
                    engines[0].kill()
                    try:
                        with trio.fail_after(120):
                            for client in clients:
                                await client.complete.wait()
                    except trio.TooSlowError:
                        raise AssertionError(summary(clients)) from None
                    nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(delete_queues, rabbitmq, names, ids)

    affected = [c for c in clients if c.resume_after(killed_at) is not None]
    resumes = [c.resume_after(killed_at) or 0.0 for c in affected]
    duplicates = {c.id: c.duplicates() for c in clients}
    lost = sum(c.lost() for c in clients)
    assert lost == 0, summary(clients)
    assert affected, "no client was on the killed engine"
    # (duplicates, bound, client id, broker) of every stream.
    streams = [
        (n, c.duplicate_bound(b, killed_at), c.id, b)
        for c in clients
        for b, n in duplicates[c.id].items()
    ]
    over = [stream for stream in streams if stream[0] > stream[1]]
    worst = max(streams)
    report_figures(
        clients=len(clients),
        events_per_client=len(BROKERS) * EVENTS,
        lost=lost,
        duplicated=sum(sum(d.values()) for d in duplicates.values()),
        **{
            f"duplicated_{b}": sum(d[b] for d in duplicates.values())
            for b in BROKERS  # k Kafka, r RabbitMQ, m MQTT 5, a AMQP 1.0
        },
        duplicated_max_per_stream=f"{worst[0]} (bound {worst[1]}, {worst[3]})",
        affected_clients=len(affected),
        resets=sum(len(c.resets) for c in clients),  # "your position is gone": none expected
        resume_p50_s=statistics.median(resumes),
        resume_p99_s=percentile(resumes, 0.99),
        elapsed_s=time.monotonic() - started,
    )
    # The clients of the surviving engines have a bound of 0.
    assert not over, over
    # A resume that found its position gone would have replayed the partition.
    assert not any(c.resets for c in clients), [(c.id, c.resets) for c in clients if c.resets]


async def until_ready(health_ports: list[int]) -> None:
    """Every engine's /readyz is 200: every broker up."""
    async with httpx.AsyncClient(timeout=5) as http:
        with trio.fail_after(60):
            for port in health_ports:
                while True:  # polling a server that has no way to notify us
                    if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                    await trio.sleep(0.1)


def summary(clients: list[Client]) -> str:
    """The clients that are short of events: what they miss and got twice, per broker, and how
    their sessions ended."""
    short = [c for c in clients if c.lost()]
    return f"{len(short)} of {len(clients)} clients short of events:\n" + "\n".join(
        f"{c.id} {c.kind}: sessions {c.sessions}, ended {c.why}, resets {c.resets}, "
        + ", ".join(
            f"{b} missing {ranges(set(range(EVENTS)) - set(c.received[b]))} "
            f"twice {ranges({s for s, n in Counter(c.received[b]).items() if n > 1})}"
            for b in BROKERS
        )
        for c in short
    )


def ranges(seqs: set[int]) -> str:
    """``{1, 2, 3, 7}`` as ``"1-3,7"``."""
    spans: list[list[int]] = []
    for seq in sorted(seqs):
        if spans and spans[-1][1] == seq - 1:
            spans[-1][1] = seq
        else:
            spans.append([seq, seq])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spans) or "-"
