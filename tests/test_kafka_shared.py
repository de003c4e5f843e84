"""Kafka across engines and at scale: a client resumes on another engine after a SIGKILL, many
sessions resume behind the tail through a small catch-up pool, reader threads end with their
sessions, idle positions are written again (``fetch = "shared"``; the fleet test runs with both
designs).

The engine that is killed is a ``mediation run`` process of its own (``tests/test_cli.py``); the
one that takes over runs in the test. The figures (duplicates, catch-up threads) are printed at
the end of the run (``tests/figures.py``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition

from mediation.endpoints._kafka_shared import read_partitions
from mediation.endpoints.kafka import KafkaEndpoint
from mediation.envelope import SUBPROTOCOL
from tests.brokers import Tansu

from .conftest import EngineFactory, clients_gone, envelope, open_ws
from .test_cli import running, write
from .test_conformance_kafka import FAST_GROUPS, new_topic
from .test_kafka import QUIET, WAIT, Kafka, kafka_engine, message, unique, ws_url


@pytest.fixture(params=["per_session", "shared"])
def kafka(tansu: Tansu, request: pytest.FixtureRequest) -> Kafka:
    """Both designs (``KafkaConfig.fetch``)."""
    tansu.ensure_running()
    return Kafka(tansu, request.param)


@pytest.fixture
def shared(tansu: Tansu) -> Kafka:
    """``fetch = "shared"`` only: what the per-session design does not have."""
    tansu.ensure_running()
    return Kafka(tansu, "shared")


def fill(kafka: Kafka, topic: str, count: int) -> None:
    """``count`` records ``0``, ``1``, ... (batched: every test here reads from the beginning)."""
    producer = Producer(kafka.tansu.client_config(**{"linger.ms": 5}, **QUIET))
    for n in range(count):
        producer.produce(topic, b"%d" % n)
    assert producer.flush(30) == 0


def stored_position(kafka: Kafka, group: str, topic: str) -> int:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])
    answer = kafka.admin.list_consumer_group_offsets([request])[group].result(10)
    offset: int = answer.topic_partitions[0].offset
    return offset


async def stored_at_least(kafka: Kafka, group: str, topic: str, offset: int) -> None:
    """Until the broker holds ``offset`` or more for the group: polled, the write is another
    process's and the broker tells nobody."""
    stored = partial(stored_position, kafka, group, topic)
    with trio.fail_after(WAIT):
        while await trio.to_thread.run_sync(stored) < offset:  # noqa: ASYNC110 (see above)
            await trio.sleep(0.05)


def catch_up_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("kafka catch-up"))


def offset_of(event_id: str) -> int:
    return int(event_id.rsplit(":", 1)[1])


# -- a client moves to another engine ------------------------------------------------------------

RECORDS = 1000
ACKED = 400
# Acks A is seen to have stored before the rest: B then starts from a position A wrote, and
# what A had not written yet shows as duplicates.
STORED_FIRST = 200
CREDIT = 16

ENGINE_A = """
[engine]
host = "127.0.0.1"
health_port = 0
reload_interval = 0
shutdown_timeout = 5

[[entrypoints]]
name = "ws"
type = "websocket"
port = 0

[[endpoints]]
name = "{name}"
type = "kafka"

[endpoints.config]
brokers = "{brokers}"
topic_in = "{topic}"
auto_offset_reset = "earliest"
fetch = "{fetch}"
session_timeout_ms = {session_timeout_ms}
heartbeat_interval_ms = {heartbeat_interval_ms}

[[routes]]
source = "{name}"
target = "ws"
delivery_guarantee = "at_least_once"
channel_size = {credit}
"""


async def test_a_client_resumes_on_another_engine_after_a_sigkill(
    tmp_path: Path,
    engine_with: EngineFactory,
    kafka: Kafka,
    report_figures: Callable[..., None],
) -> None:
    """A client acks 400 of 1,000 records on engine A (a process of its own), which is then
    SIGKILLed; the same client id on engine B starts exactly at the position A stored and gets
    everything from there to the end, in order: no gap. What it sees twice is exactly what it
    had unacked on A (its credit) plus the acks A had not stored yet.

    The client waits, after its first 200 acks, until the broker holds A's position for them
    (A writes 0.2 s after a first settle, ``COMMIT_INTERVAL``), then acks the next 200 and A is
    killed: so B resumes from a position A wrote. How many acks A had not stored by then is
    reported, not asserted: whatever was settled after the last write the broker answered (the
    write in flight and what came meanwhile), so a broker slow to answer (a loaded machine)
    makes it as large as it likes."""
    topic = await trio.to_thread.run_sync(kafka.topic, "fleet")
    await trio.to_thread.run_sync(fill, kafka, topic, RECORDS)
    name, client_id = unique("k"), unique("fleet")
    group = f"mediation-{name}-{client_id}"
    config = write(
        tmp_path,
        ENGINE_A.format(
            name=name,
            brokers=kafka.tansu.bootstrap_servers,
            topic=topic,
            fetch=kafka.fetch,
            credit=CREDIT,
            **FAST_GROUPS,
        ),
    )
    on_a: list[int] = []
    async with running(config) as (process, output, ports), trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            # Often logged before "listening", which running() waited for: first() looks at
            # the records read already (wait_for() missed it there, and waited its deadline).
            await output.first(lambda r: r.get("msg") == "kafka connected")

        async def drain() -> None:  # A's log lines, so that its stdout never fills
            with contextlib.suppress(AssertionError):  # the end of the output
                while True:
                    await output.next_record()

        nursery.start_soon(drain)
        address = f"ws://127.0.0.1:{ports['ws']}/?client_id={client_id}"
        async with open_ws(address, subprotocols=[SUBPROTOCOL]) as ws:
            while len(on_a) < ACKED + CREDIT:
                delivered = await envelope(ws)
                on_a.append(offset_of(delivered["id"]))
                if len(on_a) <= ACKED:
                    await ws.send_message(f'{{"ack": "{delivered["id"]}"}}')
                if len(on_a) == STORED_FIRST:
                    await stored_at_least(kafka, group, topic, STORED_FIRST)
            # All 416 came: A had all 400 acks (it hands out no more than 16 unacked).
            process.kill()
            with trio.fail_after(WAIT):
                await process.wait()
    assert on_a == list(range(ACKED + CREDIT))
    stored = await trio.to_thread.run_sync(stored_position, kafka, group, topic)
    assert STORED_FIRST <= stored <= ACKED  # never past a record the client did not ack

    on_b: list[int] = []
    routes = [
        {
            "source": name,
            "target": "ws",
            "delivery_guarantee": "at_least_once",
            "channel_size": CREDIT,
        }
    ]
    table = {"topic_in": topic, "auto_offset_reset": "earliest"}
    async with kafka_engine(
        engine_with, kafka, entrypoints={"ws": "websocket"}, routes=routes, endpoints={name: table}
    ) as engine:
        started = time.monotonic()
        async with open_ws(ws_url(engine, "ws", client_id), subprotocols=[SUBPROTOCOL]) as ws:
            while not on_b or on_b[-1] < RECORDS - 1:
                delivered = await envelope(ws)
                on_b.append(offset_of(delivered["id"]))
                await ws.send_message(f'{{"ack": "{delivered["id"]}"}}')
        resumed_in = time.monotonic() - started
    assert on_b == list(range(stored, RECORDS))  # from the stored position, no gap, in order
    duplicates = len(set(on_a) & set(on_b))
    assert duplicates == ACKED + CREDIT - stored
    report_figures(
        fetch=kafka.fetch,
        acked_on_a=ACKED,
        unacked_on_a=CREDIT,
        stored_by_a=stored,
        uncommitted_acks=ACKED - stored,
        duplicates=duplicates,
        lost=0,
        b_drained_s=resumed_in,
    )


# -- many sessions behind the tail ---------------------------------------------------------------

SESSIONS = 100
BACKLOG = 200
POOL = 8


async def test_100_sessions_resume_behind_the_tail_through_a_pool_of_8(
    engine_with: EngineFactory, shared: Kafka, report_figures: Callable[..., None]
) -> None:
    """100 clients start at the beginning of a topic with 200 records (behind the shared
    fetch): each gets all of them in order, while never more than 8 catch-up readers run; when
    they have left, no reader thread is left."""
    topic = await trio.to_thread.run_sync(shared.topic, "behind")
    await trio.to_thread.run_sync(fill, shared, topic, BACKLOG)
    name = unique("k")
    table = {"topic_in": topic, "auto_offset_reset": "earliest", "catch_up_readers": POOL}
    routes = [{"source": name, "target": "ws", "channel_size": 16}]
    most = 0
    complete = 0

    async def client(engine: Any, n: int) -> None:
        nonlocal complete
        async with open_ws(ws_url(engine, "ws", f"behind-{n}")) as ws:
            got = [await message(ws) for _ in range(BACKLOG)]
        assert got == [str(i) for i in range(BACKLOG)]
        complete += 1

    async with kafka_engine(
        engine_with, shared, entrypoints={"ws": "websocket"}, routes=routes, endpoints={name: table}
    ) as engine:
        started = time.monotonic()
        async with trio.open_nursery() as nursery:

            async def watch() -> None:  # a measurement: how many reader threads at once
                nonlocal most
                while True:
                    most = max(most, catch_up_threads())
                    await trio.sleep(0.01)

            nursery.start_soon(watch)
            async with trio.open_nursery() as clients:
                for n in range(SESSIONS):
                    clients.start_soon(client, engine, n)
            nursery.cancel_scope.cancel()
        took = time.monotonic() - started
        await clients_gone(engine)
        assert catch_up_threads() == 0
    assert complete == SESSIONS
    assert 1 <= most <= POOL
    report_figures(sessions=SESSIONS, records_each=BACKLOG, pool=POOL, most_readers=most, s=took)


async def test_no_catch_up_reader_outlives_its_session(
    engine_with: EngineFactory, shared: Kafka
) -> None:
    """Sessions that leave while their readers are reading (one event taken of 2,000) leave no
    reader thread behind."""
    topic = await trio.to_thread.run_sync(shared.topic, "leave")
    await trio.to_thread.run_sync(fill, shared, topic, 2000)
    name = unique("k")
    table = {"topic_in": topic, "auto_offset_reset": "earliest"}
    routes = [{"source": name, "target": "ws", "channel_size": 1}]
    async with kafka_engine(
        engine_with, shared, entrypoints={"ws": "websocket"}, routes=routes, endpoints={name: table}
    ) as engine:
        for n in range(5):
            async with open_ws(ws_url(engine, "ws", f"leaver-{n}")) as ws:
                assert await message(ws) == "0"
                assert catch_up_threads() >= 1  # its reader is still reading behind the tail
            await clients_gone(engine)
            assert catch_up_threads() == 0


# -- positions of idle clients -------------------------------------------------------------------


async def test_an_idle_sessions_position_is_written_again(
    engine_with: EngineFactory, shared: Kafka
) -> None:
    """``position_refresh_interval``: the position of a session that acks nothing is written
    again (here: after someone moved it; in production: before the broker expires it)."""
    topic = await trio.to_thread.run_sync(shared.topic, "idle")
    await trio.to_thread.run_sync(fill, shared, topic, 5)
    name, client_id = unique("k"), unique("idle")
    group = f"mediation-{name}-{client_id}"
    table = {"topic_in": topic, "auto_offset_reset": "earliest", "position_refresh_interval": 1}
    routes = [{"source": name, "target": "ws"}]
    async with kafka_engine(
        engine_with, shared, entrypoints={"ws": "websocket"}, routes=routes, endpoints={name: table}
    ) as engine:
        async with open_ws(ws_url(engine, "ws", client_id)) as ws:
            assert [await message(ws) for _ in range(5)] == ["0", "1", "2", "3", "4"]

            def moved_back() -> None:
                request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 0)])
                shared.admin.alter_consumer_group_offsets([request])[group].result(10)

            with trio.fail_after(WAIT):
                # auto: acked as it entered the session channel; stored within COMMIT_INTERVAL.
                while await trio.to_thread.run_sync(stored_position, shared, group, topic) != 5:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                await trio.to_thread.run_sync(moved_back)
                while await trio.to_thread.run_sync(stored_position, shared, group, topic) != 5:  # noqa: ASYNC110
                    await trio.sleep(0.05)


# -- partitions added while the engine runs ------------------------------------------------------


def stored_positions(kafka: Kafka, group: str, topic: str, partitions: int) -> dict[int, int]:
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(partitions)]
    )
    answer = kafka.admin.list_consumer_group_offsets([request])[group].result(10)
    return {tp.partition: tp.offset for tp in answer.topic_partitions}


def put_to(kafka: Kafka, topic: str, partition: int, *payloads: bytes) -> None:
    producer = Producer(kafka.tansu.client_config(**{"linger.ms": 0}, **QUIET))
    for payload in payloads:
        producer.produce(topic, payload, partition=partition)
        assert producer.flush(10) == 0


async def test_partitions_added_while_the_engine_runs_are_read_with_positions_per_client(
    engine_with: EngineFactory, shared: Kafka
) -> None:
    """Issue 17: a topic gains partitions 1 and 2 while two clients read it. The shared fetch
    finds them (``topic.metadata.refresh.interval.ms``) and reads them from their beginnings;
    "fresh" has no stored position there and gets all of both, "known" read partition 2 up to
    offset 2 on an instance that found it earlier and gets partition 1 and the rest of 2; what
    both settled is stored in their groups for the new partitions too.

    tansu has no CreatePartitions (``UNSUPPORTED_FEATURE``), so the topic is made with three
    partitions and the endpoint's ``partitions`` (what the broker's metadata says) shows only
    the first until the test "adds" the others; records go to those only after that. What is
    real: the fetch looks again, assigns the new partitions, fetches them, and the positions."""
    topic = await trio.to_thread.run_sync(lambda: new_topic(shared.admin, "grows", partitions=3))
    name = unique("k")
    shown = [1]  # how many partitions the broker "has"

    def partitions(client: Any, topic_: str, timeout: float) -> list[int]:
        return [p for p in read_partitions(client, topic_, timeout) if p < shown[0]]

    def known_read_partition_2() -> None:
        group = f"mediation-{name}-known"
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 2, 2)])
        shared.admin.alter_consumer_group_offsets([request])[group].result(10)

    await trio.to_thread.run_sync(known_read_partition_2)
    table = {"topic_in": topic, "librdkafka": {"topic.metadata.refresh.interval.ms": 200}}
    routes = [{"source": name, "target": "ws"}]
    got: dict[str, list[str]] = {"fresh": [], "known": []}
    async with kafka_engine(
        engine_with, shared, entrypoints={"ws": "websocket"}, routes=routes, endpoints={name: table}
    ) as engine:
        cast(KafkaEndpoint, engine.endpoints[name]).partitions = partitions
        async with (
            open_ws(ws_url(engine, "ws", "fresh"), subprotocols=[SUBPROTOCOL]) as fresh,
            open_ws(ws_url(engine, "ws", "known"), subprotocols=[SUBPROTOCOL]) as known,
        ):
            await trio.to_thread.run_sync(put_to, shared, topic, 0, b"before")
            for client, ws in (("fresh", fresh), ("known", known)):
                got[client].append((await envelope(ws))["id"])
            # Partitions 1 and 2 are added, written to, and only then seen by the engine.
            shown[0] = 3
            await trio.to_thread.run_sync(put_to, shared, topic, 1, b"1a", b"1b")
            await trio.to_thread.run_sync(put_to, shared, topic, 2, b"2a", b"2b", b"2c")
            await trio.to_thread.run_sync(put_to, shared, topic, 0, b"after")
            for client, ws, count in (("fresh", fresh, 6), ("known", known, 4)):
                got[client] += [(await envelope(ws))["id"] for _ in range(count)]
        await clients_gone(engine)

    def of(client: str, partition: int) -> list[int]:
        prefix = f"{topic}:{partition}:"
        return [int(i.removeprefix(prefix)) for i in got[client] if i.startswith(prefix)]

    assert {p: of("fresh", p) for p in range(3)} == {0: [0, 1], 1: [0, 1], 2: [0, 1, 2]}
    assert {p: of("known", p) for p in range(3)} == {0: [0, 1], 1: [0, 1], 2: [2]}
    # auto: each was acked as it entered the session; the session's end wrote the rest.
    for client in ("fresh", "known"):
        group = f"mediation-{name}-{client}"
        stored = await trio.to_thread.run_sync(stored_positions, shared, group, topic, 3)
        assert stored == {0: 2, 1: 2, 2: 3}, client
