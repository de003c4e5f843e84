"""Resilience under hostile client behaviour: disconnect storms and clients that never read.

Clients here are raw sockets, so they can do what real clients do when a phone loses its network
or a browser tab is killed: reset the connection (``SO_LINGER`` 0 sends an RST, no FIN), stop
half-way through a handshake, or never read what they asked for. The engine runs in this process,
so what leaks (Trio tasks, threads, file descriptors, memory) can be counted directly; the broker
is asked for its own counts (consumers, queue depth). Figures go to ``report_figures``.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pika
import psutil
import pytest
import trio

from mediation.engine import MediationEngine
from tests.brokers import RabbitMQ

from .conftest import EngineFactory, clients_gone, open_ws, sse_events, url
from .rawhttp import (
    RawClient,
    http_request,
    open_poll_raw,
    open_sse_raw,
    open_ws_raw,
    sse_request,
    ws_upgrade,
)
from .test_rabbitmq import rabbit_engine as rabbit_engine_of

WAIT = 60.0  # bound on any one wait (a loaded 2-core machine; RabbitMQ answers slowly then)


# -- what the process holds --------------------------------------------------------------------


def trio_tasks() -> int:
    count = 0
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


def engine_threads() -> set[str]:
    """Threads by name, without Trio's idle worker cache (workers linger ~10 s by design)."""
    return {t.name for t in threading.enumerate() if not t.name.startswith("Trio thread")}


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


@asynccontextmanager
async def counted_gc() -> AsyncIterator[None]:
    """Collect garbage around a measurement, so cycles awaiting collection are not 'leaks'."""
    gc.collect()
    yield
    gc.collect()


# -- the broker side ---------------------------------------------------------------------------


@pytest.fixture
def rabbit_queue(rabbitmq: RabbitMQ) -> Iterator[str]:
    name = rabbitmq.unique_name("storm")
    yield name
    rabbitmq.delete_queue(name)


def publish(rabbitmq: RabbitMQ, exchange: str, routing_key: str, bodies: Iterator[bytes]) -> None:
    """Publish with confirms, in a worker thread (blocking)."""
    with rabbitmq.channel() as channel:
        channel.confirm_delivery()  # type: ignore[attr-defined]
        for body in bodies:
            channel.basic_publish(exchange, routing_key, body, pika.BasicProperties())  # type: ignore[attr-defined]


async def consumers(rabbitmq: RabbitMQ, queue: str) -> int:
    counts = await trio.to_thread.run_sync(rabbitmq.queue_counts, queue)
    assert counts is not None
    return counts.consumers


# The storm also holds sessions on a memory endpoint; RabbitMQ answers slowly on a loaded machine.
rabbit_engine = partial(rabbit_engine_of, endpoints={"mem": {"type": "memory"}}, up_within=WAIT)


async def sessions_gauge(engine: MediationEngine) -> float:
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(url(engine, "health", "/metrics"))).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("mediation_sessions{")
    )


async def in_parallel(jobs: list[Callable[[], Any]], at_once: int = 64) -> list[Any]:
    """Run the jobs with at most ``at_once`` at a time; their results, in order."""
    limiter = trio.CapacityLimiter(at_once)
    results: list[Any] = [None] * len(jobs)

    async def run(index: int) -> None:
        async with limiter:
            results[index] = await jobs[index]()

    async with trio.open_nursery() as nursery:
        for index in range(len(jobs)):
            nursery.start_soon(run, index)
    return results


# -- disconnect storm --------------------------------------------------------------------------

STORM_ENTRYPOINTS = {
    "ws": "websocket",
    "sse": {"type": "sse", "heartbeat_interval": 0.5},
    # Polling sessions outlive their requests by design: they end on idle expiry.
    "poll": {"type": "http_get", "poll_timeout": 1.0, "session_idle_timeout": 1.5},
    "post": "http_post",
}
STORM_ROUTES = [
    {"source": "post", "target": "mem"},
    *({"source": src, "target": dst} for src in ("mem", "rmq") for dst in ("ws", "sse", "poll")),
]
WS_CLIENTS, SSE_CLIENTS, POLL_CLIENTS = 150, 150, 50
# Connections that never finish their request (or handshake), as many on each of these.
HALF_DONE_REQUESTS: tuple[tuple[str, Callable[[str], bytes]], ...] = (
    ("ws", ws_upgrade),
    ("sse", sse_request),
    ("poll", lambda client_id: http_request("GET", "/poll", client_id)),
)
HALF_DONE = 150


async def half_done(engine: MediationEngine, index: int) -> None:
    """Connect, send part of a request (two times in three) or nothing, reset."""
    name, request = HALF_DONE_REQUESTS[index % len(HALF_DONE_REQUESTS)]
    client = await RawClient.connect(engine.ports[name])
    if (index // len(HALF_DONE_REQUESTS)) % 3:
        data = request(f"half-{index}")
        await client.send(data[: len(data) // 2])
    client.reset()


async def test_disconnect_storm_leaks_nothing_and_leaves_the_engine_idle(
    engine_with: EngineFactory,
    rabbitmq: RabbitMQ,
    rabbit_queue: str,
    report_figures: Callable[..., None],
) -> None:
    process = psutil.Process()
    async with rabbit_engine(
        engine_with,
        rabbitmq,
        entrypoints=STORM_ENTRYPOINTS,
        routes=STORM_ROUTES,
        queue_in=rabbit_queue,
    ) as engine:
        # A first session on each entrypoint and a few worker threads warm up every code path
        # (imports, caches, Trio's thread cache) before the baseline is taken.
        warm = [
            await open_ws_raw(engine.ports["ws"], "warm-ws"),
            await open_sse_raw(engine.ports["sse"], "warm-sse"),
            await open_poll_raw(engine.ports["poll"], "warm-poll"),
        ]
        for client in warm:
            client.reset()
        with trio.fail_after(WAIT):
            await clients_gone(engine)
            while engine.sessions or await consumers(rabbitmq, rabbit_queue):  # noqa: ASYNC110
                await trio.sleep(0.05)
        async with counted_gc():
            tasks_before, threads_before = trio_tasks(), engine_threads()
            fds_before = process.num_fds()

        ports = engine.ports
        jobs: list[Callable[[], Any]] = [
            *(lambda n=n: open_ws_raw(ports["ws"], f"ws-{n}") for n in range(WS_CLIENTS)),
            *(lambda n=n: open_sse_raw(ports["sse"], f"sse-{n}") for n in range(SSE_CLIENTS)),
            *(lambda n=n: open_poll_raw(ports["poll"], f"poll-{n}") for n in range(POLL_CLIENTS)),
        ]
        with trio.fail_after(WAIT):
            clients: list[RawClient] = await in_parallel(jobs)
        total = WS_CLIENTS + SSE_CLIENTS + POLL_CLIENTS
        assert len(engine.sessions) == total
        assert await consumers(rabbitmq, rabbit_queue) == total

        # Events flow on both endpoints while the clients go: writers are busy when they vanish.
        async with trio.open_nursery() as flow:
            stop = trio.Event()

            async def post_steadily() -> None:
                async with httpx.AsyncClient() as http:
                    while not stop.is_set():
                        await http.post(url(engine, "post"), content=b"x" * 100)

            flow.start_soon(post_steadily)
            await trio.to_thread.run_sync(
                publish, rabbitmq, "", rabbit_queue, iter([b"y" * 100] * 500)
            )
            storm_started = time.monotonic()
            for client in clients:
                client.reset()
            with trio.fail_after(WAIT):
                await in_parallel([lambda n=n: half_done(engine, n) for n in range(HALF_DONE)])
            stop.set()

        with trio.fail_after(WAIT):
            await clients_gone(engine)
            while engine.sessions:  # noqa: ASYNC110 (the polling sessions expire on their own)
                await trio.sleep(0.05)
            sessions_gone_s = time.monotonic() - storm_started
            while await consumers(rabbitmq, rabbit_queue):  # noqa: ASYNC110 (the broker says)
                await trio.sleep(0.05)
            consumers_gone_s = time.monotonic() - storm_started

        # The engine is idle now: it must not spin (a writer sending to a dead client forever).
        cpu_before, wall_before = cpu_seconds(process), time.monotonic()
        await trio.sleep(1.0)  # a measurement interval, not a synchronisation
        idle_cpu = (cpu_seconds(process) - cpu_before) / (time.monotonic() - wall_before)

        with trio.fail_after(WAIT):
            # Per-connection tasks end as the servers see the resets.
            while trio_tasks() > tasks_before:  # noqa: ASYNC110
                await trio.sleep(0.05)
        async with counted_gc():
            tasks_after, threads_after = trio_tasks(), engine_threads()
            fds_after = process.num_fds()
        report_figures(
            clients=total,
            half_done=HALF_DONE,
            sessions_gone_s=sessions_gone_s,
            broker_consumers_gone_s=consumers_gone_s,
            idle_cpu_fraction=idle_cpu,
            tasks=f"{tasks_before}->{tasks_after}",
            threads=f"{len(threads_before)}->{len(threads_after)}",
            fds=f"{fds_before}->{fds_after}",
        )
        assert tasks_after <= tasks_before
        assert threads_after == threads_before
        assert fds_after <= fds_before
        assert engine._context.sessions == {}
        assert await sessions_gauge(engine) == 0
        # An idle engine with one RabbitMQ connection costs next to nothing; a spinning writer
        # costs a whole core (1.0). The bound leaves room for a loaded, shared machine.
        assert idle_cpu < 0.2

        # And it still serves: a new client gets what is published.
        async with open_ws(url(engine, "ws", "/?client_id=after", "ws")) as ws:
            await trio.to_thread.run_sync(publish, rabbitmq, "", rabbit_queue, iter([b"after"]))
            with trio.fail_after(WAIT):
                while (await ws.get_message()) != "after":
                    pass


async def test_a_client_that_resets_right_after_its_upgrade_request_harms_nobody(
    engine_with: EngineFactory,
) -> None:
    """The upgrade request is complete, so the engine opens the session and answers 101 to a
    client that is already gone: that client's handler fails, nothing else may."""
    async with engine_with(
        entrypoints={"ws": "websocket"},
        routes=[{"source": "ws", "target": "mem"}, {"source": "mem", "target": "ws"}],
    ) as engine:
        async with open_ws(url(engine, "ws", "/?client_id=bystander", "ws")) as bystander:
            for n in range(20):
                client = await RawClient.connect(engine.ports["ws"])
                await client.send(ws_upgrade(f"gone-{n}"))
                client.reset()
            with trio.fail_after(WAIT):
                await engine._context.connections.wait_value(1)
            await bystander.send_message("still here")
            with trio.fail_after(WAIT):
                assert await bystander.get_message() == "still here"


async def test_a_half_done_websocket_handshake_is_dropped_soon_after_a_reset(
    engine_with: EngineFactory,
) -> None:
    """The header gate in front of trio-websocket sees the reset and drops the connection at
    once (trio-websocket alone kept it for its 60 s connect_timeout). header_timeout is set far
    beyond the wait, so only the reset can end these connections in time."""
    async with engine_with(
        entrypoints={"ws": {"type": "websocket", "header_timeout": 10 * WAIT}},
        routes=[{"source": "mem", "target": "ws"}],
    ) as engine:
        tasks_before = trio_tasks()
        for n in range(10):
            client = await RawClient.connect(engine.ports["ws"])
            data = ws_upgrade(f"half-{n}")
            await client.send(data[: len(data) // 2])
            client.reset()
        with trio.fail_after(WAIT):
            while trio_tasks() > tasks_before:  # noqa: ASYNC110
                await trio.sleep(0.05)


# -- slow clients ------------------------------------------------------------------------------

SLOW_WS, SLOW_SSE = 50, 50  # clients that never read
SLOW_CHANNEL = 8  # channel_size of their routes, so also their broker prefetch
SLOW_MESSAGES, SLOW_BYTES = 1000, 1024  # per queue: each session has its own (broadcast)
# What RSS may grow by beyond the sessions' own buffers, whatever the number of sessions:
# allocator arenas that Python keeps once touched (pymalloc never returns a partly used arena),
# pika's frame buffers on the one shared connection, and the two fast clients' buffers in this
# same process. Measured here: 3-4 MiB beyond the buffers' 1.8 MiB.
SLOW_CONSTANT = 8 * 1024 * 1024


def rss(process: psutil.Process) -> int:
    gc.collect()
    return int(process.memory_info().rss)


async def test_clients_that_never_read_cost_their_buffers_and_leave_the_backlog_on_the_broker(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, report_figures: Callable[..., None]
) -> None:
    exchange = rabbitmq.unique_name("slow")
    routes = [
        {"source": "rmq", "target": target, "channel_size": SLOW_CHANNEL}
        for target in ("ws", "sse")
    ]
    process = psutil.Process()
    payload = b"s" * SLOW_BYTES
    async with (
        rabbit_engine(
            engine_with,
            rabbitmq,
            entrypoints={"ws": "websocket", "sse": "sse"},
            routes=routes,
            exchange=exchange,
            exchange_type="fanout",
        ) as engine,
        httpx.AsyncClient(timeout=WAIT) as http,
        open_ws(url(engine, "ws", "/?client_id=fast-ws", "ws")) as fast_ws,
        sse_events(http, engine, "sse", **{"X-Client-ID": "fast-sse"}) as fast_sse,
    ):
        # A 4 KiB receive buffer: the kernel cannot hide a client that does not read.
        slow_jobs: list[Callable[[], Any]] = [
            *(
                lambda n=n: open_ws_raw(engine.ports["ws"], f"slow-ws-{n}", receive_buffer=4096)
                for n in range(SLOW_WS)
            ),
            *(
                lambda n=n: open_sse_raw(engine.ports["sse"], f"slow-sse-{n}", receive_buffer=4096)
                for n in range(SLOW_SSE)
            ),
        ]
        with trio.fail_after(WAIT):
            slow: list[RawClient] = await in_parallel(slow_jobs)
        rss_connected = rss(process)

        fast_counts = {"ws": 0, "sse": 0}

        async def read_ws() -> None:
            while fast_counts["ws"] < SLOW_MESSAGES:
                assert await fast_ws.get_message() == payload.decode()
                fast_counts["ws"] += 1

        async def read_sse() -> None:
            while fast_counts["sse"] < SLOW_MESSAGES:
                event = await anext(fast_sse)
                if event.data:  # httpx-sse's spurious empty event after a heartbeat
                    assert event.data == payload.decode()
                    fast_counts["sse"] += 1

        started = time.monotonic()
        with trio.fail_after(WAIT * 2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_ws)
                nursery.start_soon(read_sse)
                await trio.to_thread.run_sync(
                    publish, rabbitmq, exchange, "", iter([payload] * SLOW_MESSAGES)
                )
        fast_s = time.monotonic() - started
        rss_loaded = rss(process)

        queues = await trio.to_thread.run_sync(rabbitmq.list_queues)
        slow_queues = [q for name, q in queues.items() if ".slow-" in name]
        backlog = sum(q["messages_ready"] for q in slow_queues)
        unacked = sum(q["messages_unacknowledged"] for q in slow_queues)
        growth = rss_loaded - rss_connected
        buffers = (SLOW_WS + SLOW_SSE) * (2 * SLOW_CHANNEL + 2) * SLOW_BYTES
        report_figures(
            slow_clients=len(slow),
            broker_messages=SLOW_MESSAGES * (len(slow) + 2),
            broker_backlog=backlog,
            broker_unacked=unacked,
            rss_connected_mib=rss_connected / 2**20,
            rss_growth_mib=growth / 2**20,
            session_buffers_mib=buffers / 2**20,
            fast_clients_s=fast_s,
        )
        assert len(slow_queues) == len(slow)
        # Each slow session holds at most its prefetch unacked; the rest waits on the broker,
        # less what the kernel's socket buffers took before the windows closed.
        assert unacked <= len(slow) * SLOW_CHANNEL
        assert backlog >= len(slow) * SLOW_MESSAGES * 0.8
        # Per slow session: the channel (channel_size), the consumer's prefetched deliveries
        # (channel_size), the event in the writer's hand and the one being sent.
        assert growth <= buffers + SLOW_CONSTANT
        for client in slow:
            client.reset()
