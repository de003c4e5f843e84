"""The hand-rolled bridges of ``just bench`` (bench/baselines) deliver what they should.

Each test starts the bridge as the harness does (a subprocess, the port from ``--port-file``)
against a real broker, with a window of 4, and checks on three topics at once: a WebSocket client
in ``ack=auto`` gets every message POSTed with ``confirm=1`` in order and its own upstream frame
back; a WebSocket client acking envelopes gets all of them (past the window of 4 only if its acks
reach the broker); an SSE client gets them as events, multi-line payloads intact.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from httpx_sse import aconnect_sse

from tests.brokers import Mosquitto, RabbitMQ, Tansu

from .conftest import open_ws
from .test_conformance_kafka import new_topic

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 4
COUNT = 12
WAIT = 30.0
PAYLOADS = [f"m-{i}" for i in range(COUNT - 1)] + ["two\nlines"]


@asynccontextmanager
async def bridge(broker: str, broker_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A running bridge process; yields its ``127.0.0.1:port``; SIGTERM must end it with 0."""
    port_file = tmp_path / f"{broker}.port"
    command = [sys.executable, "-m", "bench.baselines.bridge", "--broker", broker]
    command += ["--broker-url", broker_url, "--port-file", str(port_file)]
    command += ["--window", str(WINDOW)]
    process = await trio.lowlevel.open_process(command, cwd=ROOT)
    try:
        with trio.fail_after(WAIT):
            # The contract's readiness signal is a file, so poll for it (and for an early death).
            while not port_file.exists():
                assert process.poll() is None, f"the bridge exited with {process.returncode}"
                await trio.sleep(0.05)
        yield f"127.0.0.1:{int(port_file.read_text())}"
    finally:
        process.terminate()
        with trio.fail_after(WAIT):
            returncode = await process.wait()
    assert returncode == 0


async def check_bridge(address: str, topics: list[str], client_ids: tuple[str, str]) -> None:
    auto_topic, acked_topic, sse_topic = topics
    got: dict[str, list[str | bytes]] = {}
    subscribed = trio.Semaphore(0)

    async def ws_auto() -> None:
        async with open_ws(
            f"ws://{address}/ws?topic={auto_topic}&ack=auto&client_id={client_ids[0]}"
        ) as ws:
            subscribed.release()
            got["auto"] = [await ws.get_message() for _ in PAYLOADS]
            await ws.send_message("upstream")
            got["auto"].append(await ws.get_message())

    async def ws_acked() -> None:
        async with open_ws(
            f"ws://{address}/ws?topic={acked_topic}&ack=client&client_id={client_ids[1]}"
        ) as ws:
            subscribed.release()
            got["acked"] = []
            for _ in PAYLOADS:
                document: dict[str, Any] = json.loads(await ws.get_message())
                assert document["metadata"] == {}
                got["acked"].append(document["payload"])
                await ws.send_message(json.dumps({"ack": document["id"]}))

    async def sse(client: httpx.AsyncClient) -> None:
        async with aconnect_sse(client, "GET", f"/sse?topic={sse_topic}") as source:
            assert source.response.status_code == 200
            events = source.aiter_sse()
            try:
                session = await anext(events)
                assert session.event == "session"
                assert set(json.loads(session.data)) == {"client_id", "session_id"}
                subscribed.release()
                received = [await anext(events) for _ in PAYLOADS]
                got["sse"] = [event.data for event in received]
                assert all(event.id for event in received)
            finally:
                # Run httpx's iteration to its end (as conftest.sse_events does): an abandoned
                # async generator would be finalised by the garbage collector.
                await source.response.aclose()
                with suppress(httpx.ReadError, httpx.StreamError):
                    async for _ in events:
                        pass

    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=WAIT) as client:
        assert (await client.get("/healthz")).status_code == 200
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for task in (ws_auto, ws_acked):
                    nursery.start_soon(task)
                nursery.start_soon(sse, client)
                for _ in topics:
                    await subscribed.acquire()
                for payload in PAYLOADS:
                    for topic in topics:
                        response = await client.post(
                            "/publish", params={"topic": topic, "confirm": "1"}, content=payload
                        )
                        assert response.status_code == 202, response.text
                        assert response.json()["status"] == "accepted"
        unconfirmed = await client.post("/publish?topic=" + auto_topic, content=b"x")
        assert unconfirmed.status_code == 202
    assert got == {"auto": [*PAYLOADS, "upstream"], "acked": PAYLOADS, "sse": PAYLOADS}


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


def committed(tansu: Tansu, group: str, topic: str) -> int:
    """The group's committed offset of partition 0 (blocking)."""
    consumer = Consumer(tansu.consumer_config(group))
    try:
        [partition] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(partition.offset)
    finally:
        consumer.close()


async def test_kafka_bridge(tansu: Tansu, tmp_path: Path) -> None:
    admin = AdminClient(tansu.client_config())  # type: ignore[arg-type]
    topics = [await in_thread(lambda: new_topic(admin, "bridge")) for _ in range(3)]
    client_ids = (f"auto-{uuid.uuid4().hex[:8]}", f"acked-{uuid.uuid4().hex[:8]}")
    async with bridge("kafka", tansu.bootstrap_servers, tmp_path) as address:
        await check_bridge(address, topics, client_ids)
    # The bridge has stopped, so each group's last commit is in: auto committed all it consumed
    # (the upstream message too), the acking client everything it acked.
    groups = [f"bench-{client_id}" for client_id in client_ids]
    offsets = [
        await in_thread(partial(committed, tansu, g, t))
        for g, t in zip(groups, topics[:2], strict=True)
    ]
    assert offsets == [COUNT + 1, COUNT]


async def test_rabbitmq_bridge(rabbitmq: RabbitMQ, tmp_path: Path) -> None:
    queues = [rabbitmq.unique_name("bridge") for _ in range(3)]

    def declare() -> None:
        with rabbitmq.channel() as channel:
            for queue in queues:
                channel.queue_declare(queue, durable=True)  # type: ignore[attr-defined]

    await in_thread(declare)
    async with bridge("rabbitmq", rabbitmq.amqp_url, tmp_path) as address:
        await check_bridge(address, queues, ("auto", "acked"))
    # Every message was acked: nothing is left ready (the unconfirmed POST aside).
    counts = [await in_thread(partial(rabbitmq.queue_counts, queue)) for queue in queues]
    assert [c.messages if c else None for c in counts] == [1, 0, 0]


async def test_mqtt_bridge(mosquitto: Mosquitto, tmp_path: Path) -> None:
    topics = [f"bridge/{uuid.uuid4().hex[:8]}/{name}" for name in ("auto", "acked", "sse")]
    async with bridge("mqtt", mosquitto.url, tmp_path) as address:
        await check_bridge(address, topics, ("auto", "acked"))


@pytest.mark.parametrize("broker", ["kafka", "rabbitmq", "mqtt"])
async def test_bridge_fails_without_broker(broker: str, tmp_path: Path) -> None:
    """No broker: the bridge exits non-zero and never writes the port file."""
    port_file = tmp_path / "port"
    url = {"kafka": "127.0.0.1:1", "rabbitmq": "amqp://guest:guest@127.0.0.1:1/%2F"}
    command = [sys.executable, "-m", "bench.baselines.bridge", "--broker", broker]
    command += ["--broker-url", url.get(broker, "mqtt://127.0.0.1:1")]
    command += ["--port-file", str(port_file)]
    result = await trio.run_process(command, cwd=ROOT, check=False, capture_stderr=True)
    assert result.returncode != 0
    assert not port_file.exists()
