"""Hot reload under load: a config file edited while many sessions receive a steady stream.

One engine reads its routes from a file (the watcher looks every ``INTERVAL`` seconds, real time:
a real broker is involved, so no mock clock). Sessions on several entrypoints receive
sequence-numbered events from the memory endpoint (WebSocket, SSE, HTTP GET polling) and from
Kafka (SSE), while a publisher keeps posting. Mid-stream the file is first replaced by
pathological TOML (the watcher logs it and the routes stay), then by a config that removes one
route, changes another and leaves the rest. The evidence:

- sessions on unchanged routes are the same sessions afterwards and received every number, in
  order, with no gap and no duplicate;
- sessions on the removed route are closed with 1012 (WebSocket) or answered 410 (polling);
- SSE sessions on the changed Kafka route get ``event: error`` with the reason, and the id of the
  last event they received, sent back as ``Last-Event-ID``, resumes them with no gap.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from httpx_sse import aconnect_sse
from trio_websocket import ConnectionClosed

from mediation import MediationEngine, load_config, open_mediation_engine
from mediation.endpoints import EndpointState
from tests.brokers import Tansu

from .conftest import open_ws, url
from .test_conformance_kafka import new_topic
from .test_watcher import LogWatch, reloaded, watcher_error, watching_logs

INTERVAL = 0.2  # the watcher's look, in real seconds
WAIT = 60.0  # bound on any one wait for the clients or the broker (a loaded machine)
END = "end"

WS_KEPT, SSE_KEPT, POLL_KEPT = 25, 25, 8  # on routes the reload leaves alone
WS_GONE, POLL_GONE = 10, 2  # on the route the reload removes
SSE_KAFKA = 3  # on the Kafka route the reload changes

ENTRYPOINTS = """
[engine]
host = "127.0.0.1"
health_port = 0
packet_log = false
reload_interval = {interval}

[[entrypoints]]
name = "post"
type = "http_post"
port = 0

[[entrypoints]]
name = "ws"
type = "websocket"
port = 0

[[entrypoints]]
name = "sse"
type = "sse"
port = 0

[[entrypoints]]
name = "poll"
type = "http_get"
port = 0
poll_timeout = 5

[[entrypoints]]
name = "ws_gone"
type = "websocket"
port = 0

[[entrypoints]]
name = "poll_gone"
type = "http_get"
port = 0
poll_timeout = 5

[[entrypoints]]
name = "sse_k"
type = "sse"
port = 0

[[endpoints]]
name = "mem"
type = "memory"

[[endpoints]]
name = "kafka"
type = "kafka"
[endpoints.config]
brokers = "{brokers}"
topic_in = "{topic}"
session_timeout_ms = 3000
heartbeat_interval_ms = 500
"""

KEPT = """
[[routes]]
source = "post"
target = "mem"

[[routes]]
source = "mem"
target = "ws"

[[routes]]
source = "mem"
target = "sse"

[[routes]]
source = "mem"
target = "poll"
"""

REMOVED = """
[[routes]]
source = "mem"
target = "ws_gone"

[[routes]]
source = "mem"
target = "poll_gone"
"""

CHANGED = """
[[routes]]
source = "kafka"
target = "sse_k"
channel_size = {channel_size}
"""


class Received:
    """What one client got: the numbers, and how its session ended."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.ids: list[str] = []
        self.ended: str | None = None  # a close code, a status, or an SSE error's data

    def check_complete(self, total: int) -> None:
        assert self.numbers == list(range(total)), _first_gap(self.numbers)


def _first_gap(numbers: list[int]) -> str:
    for index, number in enumerate(numbers):
        if number != index:
            return f"at position {index}: got {number} ({len(numbers)} received)"
    return f"{len(numbers)} received"


@asynccontextmanager
async def engine_from(path: Path) -> AsyncIterator[tuple[MediationEngine, LogWatch]]:
    with watching_logs(logging.INFO) as watch:
        async with open_mediation_engine(load_config(path)) as engine:
            with trio.fail_after(WAIT):
                await engine.endpoints["kafka"].state.wait_value(EndpointState.UP)
            yield engine, watch


@pytest.fixture
def kafka_topic(tansu: Tansu) -> Iterator[str]:
    tansu.ensure_running()
    yield new_topic(AdminClient(tansu.client_config()), "reload")  # type: ignore[arg-type]


def produce(tansu: Tansu, topic: str, payloads: list[bytes]) -> None:
    """One record batch per payload (see tests/test_kafka.py on tansu's watermarks); blocking."""
    producer = Producer(tansu.client_config(**{"linger.ms": 0}))
    for payload in payloads:
        producer.produce(topic, payload)
        assert producer.flush(10) == 0


async def ws_client(
    engine: MediationEngine, name: str, got: Received, *, task_status: trio.TaskStatus[None]
) -> None:
    async with open_ws(url(engine, name, f"/?client_id={name}-{uuid.uuid4().hex[:8]}", "ws")) as ws:
        task_status.started()
        try:
            while (message := await ws.get_message()) != END:
                got.numbers.append(int(message))
        except ConnectionClosed as closed:
            got.ended = str(closed.reason.code if closed.reason else None)


async def sse_client(
    http: httpx.AsyncClient,
    engine: MediationEngine,
    name: str,
    got: Received,
    *,
    client_id: str | None = None,
    last_event_id: str | None = None,
    last: int | None = None,
    task_status: trio.TaskStatus[None],
) -> None:
    """Read the stream until ``END`` (or ``last``), an ``error`` event, or its end."""
    headers = {"X-Client-ID": client_id or f"{name}-{uuid.uuid4().hex[:8]}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with aconnect_sse(http, "GET", url(engine, name), headers=headers) as source:
        assert source.response.status_code == 200
        events = source.aiter_sse()
        assert (await anext(events)).event == "session"
        task_status.started()
        async for event in events:
            if event.event == "error":
                got.ended = event.data
                break
            if event.data == END:
                break
            if not event.data:
                # httpx-sse dispatches an empty event (with the last id) after the blank line
                # that ends each heartbeat comment; the WHATWG parser dispatches nothing there.
                continue
            got.numbers.append(int(event.data))
            got.ids.append(event.id)
            if got.numbers[-1] == last:
                break
        await source.response.aclose()
        with suppress(httpx.ReadError, httpx.StreamError):
            async for _ in events:  # drain (see conftest.sse_events)
                pass


async def poll_client(
    http: httpx.AsyncClient,
    engine: MediationEngine,
    name: str,
    got: Received,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    client = {"X-Client-ID": f"{name}-{uuid.uuid4().hex[:8]}"}
    subscribed = await http.post(url(engine, name, "/subscribe"), headers=client)
    assert subscribed.status_code == 201
    task_status.started()
    while True:
        response = await http.get(url(engine, name, "/poll"), headers=client)
        if response.status_code == 204:
            continue
        if response.status_code != 200:
            got.ended = f"{response.status_code} {response.json()['error']}"
            return
        if response.content == END.encode():
            return
        got.numbers.append(int(response.content))


async def test_reload_under_load_touches_only_the_changed_routes(
    tmp_path: Path, tansu: Tansu, kafka_topic: str
) -> None:
    path = tmp_path / "mediation.toml"
    head = ENTRYPOINTS.format(interval=INTERVAL, brokers=tansu.bootstrap_servers, topic=kafka_topic)
    path.write_text(head + KEPT + REMOVED + CHANGED.format(channel_size=1))

    kept = [Received() for _ in range(WS_KEPT + SSE_KEPT + POLL_KEPT)]
    gone = [Received() for _ in range(WS_GONE + POLL_GONE)]
    kafka_first = [Received() for _ in range(SSE_KAFKA)]
    kafka_resumed = [Received() for _ in range(SSE_KAFKA)]
    kafka_ids = [f"sse_k-{n}" for n in range(SSE_KAFKA)]
    published = 0
    kafka_published = 0
    reload_done = trio.Event()

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with (
        engine_from(path) as (engine, logs),
        httpx.AsyncClient(timeout=WAIT, limits=limits) as http,
        trio.open_nursery() as clients,
    ):
        with trio.fail_after(WAIT):
            for got in kept[:WS_KEPT]:
                await clients.start(ws_client, engine, "ws", got)
            for got in kept[WS_KEPT : WS_KEPT + SSE_KEPT]:
                await clients.start(sse_client, http, engine, "sse", got)
            for got in kept[WS_KEPT + SSE_KEPT :]:
                await clients.start(poll_client, http, engine, "poll", got)
            for got in gone[:WS_GONE]:
                await clients.start(ws_client, engine, "ws_gone", got)
            for got in gone[WS_GONE:]:
                await clients.start(poll_client, http, engine, "poll_gone", got)
            async with trio.open_nursery() as joining:  # Kafka group joins take seconds each
                for got, client_id in zip(kafka_first, kafka_ids, strict=True):
                    joining.start_soon(
                        clients.start,
                        partial(sse_client, http, engine, "sse_k", got, client_id=client_id),
                    )
        sessions_before = {s.id: s for s in engine.sessions}
        assert len(sessions_before) == len(kept) + len(gone) + len(kafka_first)

        async def publish_memory() -> None:
            nonlocal published
            async with httpx.AsyncClient(timeout=WAIT) as poster:
                # Until the reload is done, and as much again after it.
                while not reload_done.is_set() or published < 2 * at_reload:
                    response = await poster.post(url(engine, "post"), content=str(published))
                    assert response.status_code == 202
                    published += 1
                assert (await poster.post(url(engine, "post"), content=END)).status_code == 202

        async def publish_kafka() -> None:
            nonlocal kafka_published
            while not reload_done.is_set():
                batch = [str(kafka_published + n).encode() for n in range(5)]
                await trio.to_thread.run_sync(produce, tansu, kafka_topic, batch)
                kafka_published += len(batch)

        at_reload = 0
        async with trio.open_nursery() as publishers:
            publishers.start_soon(publish_memory)
            publishers.start_soon(publish_kafka)
            with trio.fail_after(WAIT):
                while published < 50 or not all(k.numbers for k in kafka_first):  # noqa: ASYNC110
                    await trio.sleep(0.01)  # load first: the edits land mid-stream

                # A file that cannot be a configuration: logged, routes and sessions untouched.
                routes = engine._context.routes
                path.write_text("a=" + "[" * 100_000)
                record = await logs.next(watcher_error)
                assert "nested too deeply" in record.error  # type: ignore[attr-defined]
                assert engine._context.routes is routes
                assert {s.id for s in engine.sessions} == set(sessions_before)

                # The watcher is still there: one route removed, one changed, the rest kept.
                path.write_text(head + KEPT + CHANGED.format(channel_size=4))
                await logs.next(reloaded)
                at_reload = published
                reload_done.set()
                assert {s.id for s in engine.sessions} >= {
                    s.id for s in sessions_before.values() if s.entrypoint in ("ws", "sse", "poll")
                }
        # Records the cut-off sessions cannot have had: the resumed ones must get them too.
        await trio.to_thread.run_sync(
            produce, tansu, kafka_topic, [str(kafka_published + n).encode() for n in range(5)]
        )
        kafka_total = kafka_published + 5

        with trio.fail_after(WAIT):
            # The resumed SSE clients pick up where they were cut off, through the last record.
            async with trio.open_nursery() as resuming:
                for first, again, client_id in zip(
                    kafka_first, kafka_resumed, kafka_ids, strict=True
                ):
                    assert first.ended == "route changed by a configuration reload"
                    resumed = partial(
                        sse_client,
                        http,
                        engine,
                        "sse_k",
                        again,
                        client_id=client_id,
                        last_event_id=first.ids[-1],
                        last=kafka_total - 1,
                    )
                    resuming.start_soon(clients.start, resumed)
    # Every client has finished (the nursery waited for them).
    for got in kept:
        got.check_complete(published)
        assert got.ended is None
    for got in gone[:WS_GONE]:
        assert got.ended == "1012"
    for got in gone[WS_GONE:]:
        assert got.ended == "410 session ended: route changed by a configuration reload"
    for first, again in zip(kafka_first, kafka_resumed, strict=True):
        assert first.numbers, "no Kafka event before the reload"
        assert first.numbers + again.numbers == list(range(kafka_total))
    assert published >= 2 * at_reload > 0
