"""The Kafka admin child process (``mediation/endpoints/_kafka_admin_process.py``).

Against tansu: the real child writes and reads a group's positions, is killed (SIGKILL, as the
librdkafka assertion would end it), its requests fail, and the next child answers. Without a
broker: children that misbehave (lines that are not answers, answers of the wrong shape, one
that exits at once) are ended or replaced, their requests failed, never the engine's task; the
sweep's answers of the wrong shape fail that sweep or are left out. (The sweep through the real
child: ``tests/test_client_state_brokers.py``.)
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from trio_websocket import ConnectionRejected

from mediation.client_state import ClientLedger, Sweep, name_pattern
from mediation.endpoints import EndpointState
from mediation.endpoints._backoff import Backoff
from mediation.endpoints._kafka_admin_process import AdminProcess
from mediation.endpoints._kafka_shared import GroupOffsets
from mediation.endpoints._kafka_sweep import KafkaGroups
from mediation.endpoints.kafka import KafkaEndpoint
from mediation.errors import BrokerUnavailable
from tests.brokers import Tansu

from .conftest import EngineFactory, open_ws, url
from .rawhttp import RawClient, ws_upgrade
from .test_conformance_kafka import FAST_GROUPS

WAIT = 15.0
LOG = logging.getLogger("tests.librdkafka")


@asynccontextmanager
async def running(process: AdminProcess) -> AsyncIterator[AdminProcess]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(process.run)
        yield process
        nursery.cancel_scope.cancel()


async def answer_of(process: AdminProcess, request: dict[str, Any]) -> dict[str, Any] | str:
    box: list[dict[str, Any] | str] = []
    done = trio.Event()

    def answered(answer: dict[str, Any] | str) -> None:
        box.append(answer)
        done.set()

    process.request(request, answered)
    with trio.fail_after(WAIT):
        await done.wait()
    return box[0]


def fake_child(body: str) -> list[str]:
    """A child that reads the configuration line, then runs ``body`` (``sys``, ``json``)."""
    script = "import json, sys\nsys.stdin.readline()\n" + textwrap.dedent(body)
    return [sys.executable, "-c", script]


async def test_the_child_writes_and_reads_positions_and_a_killed_one_is_replaced(
    tansu: Tansu,
) -> None:
    topic, group = f"admin-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(tansu.client_config())
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    process = AdminProcess({"bootstrap.servers": tansu.bootstrap_servers}, LOG)
    offsets = GroupOffsets(process)
    async with running(process):
        with trio.fail_after(WAIT):
            await offsets.write(group, topic, {0: 7})
            assert await offsets.read(group, topic, [0]) == {0: 7}
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        # Until the parent saw it end, requests go to the dead child and fail as a broker
        # failure; then the next child answers them.
        with trio.fail_after(WAIT):
            while True:
                try:
                    stored = await offsets.read(group, topic, [0])
                    break
                except BrokerUnavailable as error:
                    assert "kafka admin process" in str(error)
                    await trio.sleep(0.05)
        assert stored == {0: 7}
        assert process.pid not in (None, first)


async def test_restart_fails_what_was_sent_and_the_next_child_answers(tansu: Tansu) -> None:
    process = AdminProcess({"bootstrap.servers": tansu.bootstrap_servers}, LOG)
    real = process.command
    process.command = fake_child("sys.stdin.readline()\nsys.stdin.read()")  # answers nothing
    async with running(process):
        answers: list[dict[str, Any] | str] = []
        process.request({"op": "list"}, answers.append)
        with trio.fail_after(WAIT):
            while process.pid is None or process.sent == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
        process.command = real
        process.restart()
        answer = await answer_of(
            process, {"op": "list", "group": "g", "topic": "t", "partitions": [0]}
        )
        assert answers == ["kafka admin process restarted after an outage"]
        assert isinstance(answer, dict) and "partitions" in answer, answer


@pytest.mark.parametrize(
    ("line", "times"),
    [
        (b"not json\n", 1),
        (b"[1, 2]\n", 1),
        (b'{"id": 999, "partitions": []}\n', 1),  # no such request
        (b'{"id": "0"}\n', 1),
        (b'{"log": "no level"}\n', 1),
        (b"x", 2_000_000),  # no newline, longer than any answer
    ],
)
async def test_a_child_writing_what_is_not_an_answer_is_ended_and_replaced(
    line: bytes, times: int
) -> None:
    """The child's output is read as any outside input: a line that is not an answer ends that
    child (its requests fail), the task goes on, and the next child answers."""
    process = AdminProcess({}, LOG)
    process.command = fake_child(
        f"sys.stdin.readline()\nsys.stdout.buffer.write(bytes.fromhex('{line.hex()}') * {times})"
        "\nsys.stdout.flush()\nsys.stdin.read()"
    )
    async with running(process):
        first = await answer_of(process, {"op": "list"})
        assert isinstance(first, str) and "kafka admin process" in first, first
        process.command = fake_child(
            'n = json.loads(sys.stdin.readline())["id"]\n'
            'print(json.dumps({"id": n, "partitions": [[0, 5, None, None]]}), flush=True)\n'
            "sys.stdin.read()"
        )
        with trio.fail_after(WAIT):
            while True:  # the first child may still be taking requests until it is ended
                answer = await answer_of(process, {"op": "list"})
                if isinstance(answer, dict):
                    break
        assert answer["partitions"] == [[0, 5, None, None]]


@pytest.mark.parametrize(
    "rows",
    [
        [["x", 1, None, None]],
        [[0, 1, 3]],
        [[0, 1, "3", "reason"]],
        "not rows",
        [None],
    ],
)
async def test_answers_of_the_wrong_shape_are_broker_failures(rows: Any) -> None:
    """Rows that are not ``[partition, offset, code, reason]`` fail the read or the write."""
    process = AdminProcess({}, LOG)
    process.command = fake_child(
        "for line in sys.stdin:\n"
        '    n = json.loads(line)["id"]\n'
        f"    print(json.dumps({{'id': n, 'partitions': {rows!r}}}), flush=True)\n"
    )
    offsets = GroupOffsets(process)
    async with running(process):
        with trio.fail_after(WAIT):
            with pytest.raises(BrokerUnavailable, match="not understood"):
                await offsets.read("g", "t", [0])
            with pytest.raises(BrokerUnavailable, match="not understood"):
                await offsets.write("g", "t", {0: 1})


async def test_a_child_that_exits_at_once_fails_requests_and_is_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    process = AdminProcess({}, LOG)
    process.command = fake_child("sys.exit(3)")
    async with running(process):
        answer = await answer_of(process, {"op": "list"})
        assert answer == "kafka admin process exited"
        with trio.fail_after(WAIT):
            while process.children < 3:  # noqa: ASYNC110
                await trio.sleep(0.01)
    assert any(r.message == "kafka admin process ended" for r in caplog.records)


async def test_librdkafka_log_lines_of_the_child_are_logged_by_the_parent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    process = AdminProcess({}, LOG)
    process.command = fake_child(
        'print(json.dumps({"log": [30, "FAIL broker down"]}), flush=True)\n'
        'n = json.loads(sys.stdin.readline())["id"]\n'
        'print(json.dumps({"id": n, "error": "refused"}), flush=True)\n'
        "sys.stdin.read()"
    )
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        async with running(process):
            assert await answer_of(process, {"op": "list"}) == {"id": 0, "error": "refused"}
    logged = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name == LOG.name]
    assert logged == [(LOG.name, logging.WARNING, "FAIL broker down")]


# -- the sweep's requests ------------------------------------------------------------------------


def sweep_of(endpoint: str = "k") -> Sweep:
    pattern = name_pattern("mediation-{endpoint}-{client_id}", endpoint)
    assert pattern is not None
    return Sweep(pattern, ClientLedger(ttl=60.0))


def asking(answers: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any] | str]:
    return lambda request: answers[request["op"]]


def test_the_sweeps_answers_are_filtered_to_what_was_asked() -> None:
    """Groups that do not match, are not strings, or were not asked about are left out."""
    groups = KafkaGroups(
        asking(
            {
                "groups": {"groups": ["mediation-k-a", "mediation-k-b", "other", 7, None]},
                "describe": {"empty": {"mediation-k-a": True, "mediation-k-b": "yes", "x": True}},
                "delete": {"deleted": ["mediation-k-a", "not-asked"]},
            }
        )
    )
    assert groups.list_matching(sweep_of()) == {"mediation-k-a": True}
    assert groups.delete(["mediation-k-a"]) == ["mediation-k-a"]


@pytest.mark.parametrize(
    "answer", ["kafka admin process exited", {"error": "timed out"}, {"other": 1}]
)
def test_a_sweep_request_without_an_answer_is_a_failed_sweep(answer: Any) -> None:
    groups = KafkaGroups(lambda _request: answer)
    with pytest.raises(BrokerUnavailable):
        groups.list_matching(sweep_of())
    with pytest.raises(BrokerUnavailable):
        groups.delete(["mediation-k-a"])


async def test_random_output_of_a_child_never_ends_the_task() -> None:
    """Fuzz: 30 children writing random bytes (newlines among them) after the first request;
    whatever they write, their requests are answered or failed, and a well-behaved child
    started after them answers (the endpoint's other sessions go on meanwhile)."""
    rng = random.Random(17)
    process = AdminProcess({}, LOG)
    process.backoff = Backoff(0.01, 0.01)  # most of these children are ended for what they write
    async with running(process):
        for _ in range(30):
            blob = bytes(rng.choice(b'\n{}[]":,0123 idlogpartins\x00\xff') for _ in range(200))
            process.command = fake_child(
                f"sys.stdin.readline()\nsys.stdout.buffer.write(bytes.fromhex('{blob.hex()}'))"
                "\nsys.stdout.flush()\nsys.stdin.read()"
            )
            process.restart()
            answer = await answer_of(process, {"op": "list"})
            assert isinstance(answer, str | dict)
        process.command = fake_child(
            "for line in sys.stdin:\n"
            '    n = json.loads(line)["id"]\n'
            '    print(json.dumps({"id": n, "partitions": []}), flush=True)\n'
        )
        process.restart()
        with trio.fail_after(WAIT):
            while not isinstance(answer := await answer_of(process, {"op": "list"}), dict):
                pass
        assert answer["partitions"] == []


# -- in an engine ---------------------------------------------------------------------------------


async def test_a_child_writing_garbage_leaves_the_engine_up_and_a_reading_session_receiving(
    engine_with: EngineFactory, tansu: Tansu
) -> None:
    """A Kafka endpoint (``fetch = "shared"``) whose admin child starts writing garbage: the
    session already reading keeps receiving (its position writes fail, which only redelivers),
    a new session is refused as on a broker failure, ``/healthz`` answers, and once a good child
    is back a new session receives."""
    topic = f"admin-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(tansu.client_config())
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    producer = Producer(tansu.client_config(**{"linger.ms": 0}))

    def put(payload: bytes) -> None:
        producer.produce(topic, payload)
        assert producer.flush(10) == 0

    config = {"brokers": tansu.bootstrap_servers, "topic_in": topic, "fetch": "shared"}
    async with engine_with(
        entrypoints={"ws": "websocket"},
        endpoints={"k": {"type": "kafka", "config": {**config, **FAST_GROUPS}}},
        routes=[{"source": "k", "target": "ws", "channel_size": 8}],
    ) as engine:
        endpoint = engine.endpoints["k"]
        with trio.fail_after(WAIT):
            await endpoint.state.wait_value(EndpointState.UP)
        process = cast(KafkaEndpoint, endpoint)._admin_process
        real = process.command
        async with open_ws(url(engine, "ws", "/?client_id=bystander", "ws")) as bystander:
            await trio.to_thread.run_sync(put, b"before")
            with trio.fail_after(WAIT):
                assert await bystander.get_message() == "before"
            process.command = fake_child(
                "for line in sys.stdin:\n"
                "    sys.stdout.buffer.write(bytes(range(256)) * 4 + b'\\n')\n"
                "    sys.stdout.flush()\n"
            )
            process.restart()
            for n in range(20):
                await trio.to_thread.run_sync(put, b"during %d" % n)
                with trio.fail_after(WAIT):
                    assert await bystander.get_message() == f"during {n}"
            newcomer = await RawClient.connect(engine.ports["ws"])
            try:
                await newcomer.send(ws_upgrade("newcomer"))
                with trio.fail_after(WAIT):
                    head = await newcomer.read_until(b"\r\n\r\n")
            finally:
                newcomer.reset()
            # Its position could not be read: refused as on a broker failure.
            assert head.startswith(b"HTTP/1.1 503"), head
            async with httpx.AsyncClient() as client:
                health = await client.get(url(engine, "health", "/healthz"))
            assert health.status_code == 200
            process.command = real
            process.restart()
            with trio.fail_after(WAIT):
                while True:  # the good child may take a moment to be the one answering
                    try:
                        async with open_ws(url(engine, "ws", "/?client_id=later", "ws")) as later:
                            await trio.to_thread.run_sync(put, b"after")
                            assert await later.get_message() == "after"
                            assert await bystander.get_message() == "after"
                            break
                    except ConnectionRejected:
                        await trio.sleep(0.1)
