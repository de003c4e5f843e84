"""The RabbitMQ endpoint through the engine, with real web clients and the harness's RabbitMQ.

Messages are put into RabbitMQ and read back out of it with pika from a worker thread, as an
application on the other side of the broker would; the broker's own counters (ready messages,
consumers) are the evidence for backpressure and released consumers. Waits for broker-side state
that the broker announces to nobody are bounded polls.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import pika
import pika.exceptions
import pytest
import trio
import trio.testing

from mediation.endpoints import EndpointState
from mediation.endpoints.memory import MemoryEndpoint
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL
from tests.brokers import QueueCounts, RabbitMQ

from .conformance import BrokerAdapter, OutageConformance, ReconnectConformance, Scenario
from .conftest import EngineFactory, clients_gone, envelope, open_ws, sse_events, url

WAIT = 20.0


# -- the broker side ---------------------------------------------------------------------------


def _put(
    rabbitmq: RabbitMQ,
    routing_key: str,
    bodies: list[bytes],
    exchange: str = "",
    mandatory: bool = True,
    **properties: Any,
) -> None:
    """Publish with confirms (blocking): once this returns, the broker has every message."""
    with rabbitmq.channel() as channel:
        channel.confirm_delivery()  # type: ignore[attr-defined]
        for body in bodies:
            channel.basic_publish(  # type: ignore[attr-defined]
                exchange,
                routing_key,
                body,
                pika.BasicProperties(**properties),
                mandatory=mandatory,
            )


async def put(rabbitmq: RabbitMQ, routing_key: str, *bodies: bytes, **kwargs: Any) -> None:
    await trio.to_thread.run_sync(lambda: _put(rabbitmq, routing_key, list(bodies), **kwargs))


def _take_all(rabbitmq: RabbitMQ, queue: str) -> list[tuple[Any, bytes]]:
    with rabbitmq.channel() as channel:
        taken = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)  # type: ignore[attr-defined]
            if method is None:
                return taken
            taken.append((properties, body))


async def take_all(rabbitmq: RabbitMQ, queue: str) -> list[tuple[Any, bytes]]:
    """Every ready message of ``queue`` (properties, body), removed from it."""
    return await trio.to_thread.run_sync(_take_all, rabbitmq, queue)


async def counts(rabbitmq: RabbitMQ, queue: str) -> QueueCounts:
    found = await trio.to_thread.run_sync(rabbitmq.queue_counts, queue)
    assert found is not None, f"no queue {queue}"
    return found


async def wait_for_consumers(rabbitmq: RabbitMQ, queue: str, consumers: int, within: float) -> None:
    """The broker tells nobody when a consumer goes away: ask it until it says so."""
    with trio.fail_after(within):
        while (await counts(rabbitmq, queue)).consumers != consumers:  # noqa: ASYNC110
            await trio.sleep(0.02)


@pytest.fixture
def names(rabbitmq: RabbitMQ) -> Iterator[Any]:
    """Fresh queue and exchange names for one test, deleted afterwards."""
    made: list[str] = []

    def new(prefix: str) -> str:
        made.append(rabbitmq.unique_name(prefix))
        return made[-1]

    yield new
    with rabbitmq.channel() as channel:
        for name in made:
            with suppress(pika.exceptions.AMQPError):
                channel.queue_delete(name)  # type: ignore[attr-defined]
    with rabbitmq.channel() as channel:
        for name in made:
            with suppress(pika.exceptions.AMQPError):
                channel.exchange_delete(name)  # type: ignore[attr-defined]


# -- the engine side -------------------------------------------------------------------------


@asynccontextmanager
async def rabbit_engine(
    engine_with: EngineFactory,
    rabbitmq: RabbitMQ,
    *,
    entrypoints: dict[str, Any],
    routes: list[dict[str, Any]],
    endpoints: dict[str, dict[str, Any]] | None = None,
    up_within: float = WAIT,
    **config: Any,
) -> AsyncIterator[MediationEngine]:
    """An engine with the endpoint ``rmq`` on the harness's broker (and ``endpoints``), once
    ``rmq`` is connected; ``config`` goes into ``rmq``'s table."""
    tables = {"rmq": {"type": "rabbitmq", "config": {"url": rabbitmq.amqp_url, **config}}}
    async with engine_with(
        entrypoints=entrypoints, routes=routes, endpoints={**tables, **(endpoints or {})}
    ) as engine:
        with trio.fail_after(up_within):
            await engine.endpoints["rmq"].state.wait_value(EndpointState.UP)
        yield engine


def ws_url(engine: MediationEngine, name: str = "ws", client_id: str | None = None) -> str:
    return url(engine, name, f"/?client_id={client_id}" if client_id else "/", scheme="ws")


def numbered(n: int, start: int = 0) -> list[bytes]:
    return [b"%03d" % i for i in range(start, start + n)]


# -- downstream ---------------------------------------------------------------------------------


async def test_broadcast_reaches_websocket_and_sse_with_amqp_metadata(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    exchange = names("x")
    routes = [{"source": "rmq", "target": "ws"}, {"source": "rmq", "target": "sse"}]
    async with (
        rabbit_engine(
            engine_with,
            rabbitmq,
            entrypoints={"ws": "websocket", "sse": "sse"},
            routes=routes,
            exchange=exchange,
            binding_key="orders.#",
        ) as engine,
        httpx.AsyncClient() as client,
        sse_events(client, engine) as sse,
        open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
    ):
        await put(rabbitmq, "other.1", b"not bound", exchange=exchange, mandatory=False)
        await put(
            rabbitmq,
            "orders.eu",
            b"line one\nline two",
            exchange=exchange,
            message_id="m-1",
            content_type="text/plain",
            correlation_id="c-9",
            headers={"x-trace-id": "t-1", "x-attempt": 2},
        )
        delivered = await envelope(ws)
        assert (delivered["id"], delivered["payload"]) == ("m-1", "line one\nline two")
        assert delivered["metadata"] == {
            "x-trace-id": "t-1",
            "x-attempt": "2",
            "content-type": "text/plain",
            "message_id": "m-1",
            "correlation_id": "c-9",
            "exchange": exchange,
            "routing_key": "orders.eu",
            "redelivered": "false",
        }
        with trio.fail_after(WAIT):
            event = await anext(sse)
        assert (event.id, event.data) == ("m-1", "line one\nline two")
        # Without a message_id the engine names the event.
        await put(rabbitmq, "orders.us", b"anonymous", exchange=exchange)
        anonymous = await envelope(ws)
        assert anonymous["payload"] == "anonymous" and len(anonymous["id"]) == 36
        await ws.send_message(json.dumps({"ack": "m-1"}))


# -- upstream -----------------------------------------------------------------------------------


async def test_post_at_least_once_is_answered_after_the_broker_confirmed(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    queue = names("out")
    routes = [
        {"source": "post", "target": "rmq", "delivery_guarantee": "at_least_once"},
        {"source": "up", "target": "rmq", "delivery_guarantee": "at_least_once"},
    ]
    async with (
        rabbit_engine(
            engine_with,
            rabbitmq,
            entrypoints={"post": "http_post", "up": "websocket"},
            routes=routes,
            queue_out=queue,
        ) as engine,
        httpx.AsyncClient() as client,
    ):
        response = await client.post(
            url(engine, "post"),
            content=b'{"order": 1}',
            headers={"content-type": "application/json", "X-Trace-ID": "t-7"},
        )
        assert response.status_code == 202
        # Confirmed means enqueued: no waiting, the queue has it now.
        assert (await counts(rabbitmq, queue)).messages == 1
        async with open_ws(ws_url(engine, "up"), subprotocols=[SUBPROTOCOL]) as ws:
            await ws.send_message(json.dumps({"id": "up-1", "payload": "from ws"}))
            assert await envelope(ws) == {"ack": "up-1"}
            assert (await counts(rabbitmq, queue)).messages == 2
        [(properties, body), (_, second)] = await take_all(rabbitmq, queue)
    assert (body, second) == (b'{"order": 1}', b"from ws")
    assert properties.message_id == response.json()["id"]
    assert properties.content_type == "application/json"
    assert properties.headers == {"x-trace-id": "t-7"}
    assert properties.delivery_mode == 2  # at_least_once: persistent


async def test_unroutable_at_least_once_publish_is_refused(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    """Nothing bound to the exchange: the broker returns the message, so no 202."""
    exchange = names("x")
    async with (
        rabbit_engine(
            engine_with,
            rabbitmq,
            entrypoints={"post": "http_post"},
            routes=[{"source": "post", "target": "rmq", "delivery_guarantee": "at_least_once"}],
            exchange=exchange,
            routing_key="nowhere",
        ) as engine,
        httpx.AsyncClient() as client,
    ):
        response = await client.post(url(engine, "post"), content=b"lost?")
        assert response.status_code == 503
        assert "unroutable" in response.json()["error"]


# -- broker outage and client reconnects (the shared scenario) ---------------------------------


class RabbitMQAdapter(BrokerAdapter):
    """Outage: ``exchange`` broadcast with ``routing_key``, so what the endpoint publishes comes
    back to every session's own queue. Reconnect: a shared durable ``queue_in``, whose unacked
    messages go back to the queue when their consumer leaves."""

    name = "rmq"
    # A session queue is exclusive and auto-delete: it goes with the connection the outage ends.
    keeps_unconfirmed_across_restart = False
    # The requeued 005-008 go back to the head of the queue, but basic.recover/requeue gives no
    # ordering promise among them and the rest (RabbitMQ documents "position is kept if possible").
    redelivers_in_order = False

    def __init__(self, rabbitmq: RabbitMQ, names: Any) -> None:
        self.rabbitmq = rabbitmq
        self.exchange, self.queue = names("x"), names("in")

    def table(self, scenario: Scenario) -> dict[str, Any]:
        if scenario == "outage":
            config = {"exchange": self.exchange, "binding_key": "#", "routing_key": "events"}
        else:
            config = {"queue_in": self.queue}
        return {"type": "rabbitmq", "config": {"url": self.rabbitmq.amqp_url, **config}}

    async def publish(self, scenario: Scenario, *payloads: bytes) -> None:
        if scenario == "outage":
            await put(self.rabbitmq, "events", *payloads, exchange=self.exchange)
        else:
            await put(self.rabbitmq, self.queue, *payloads)

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.rabbitmq.stop)

    async def start(self) -> None:
        await trio.to_thread.run_sync(self.rabbitmq.ensure_running)

    async def client_left(self, client_id: str, unconfirmed: int) -> None:
        await trio.to_thread.run_sync(
            lambda: self.rabbitmq.wait_for_queue(
                self.queue, consumers=0, messages=unconfirmed, timeout=WAIT
            )
        )

    async def settled(self, engine: MediationEngine, client_id: str, confirmed: int | None) -> None:
        if client_id == "w1":
            return  # the outage's session queues are exclusive and auto-delete: nothing to ask
        assert await counts(self.rabbitmq, self.queue) == QueueCounts(messages=0, consumers=0)


class TestRabbitMQOutage(OutageConformance, ReconnectConformance):
    @pytest.fixture
    def adapter(self, rabbitmq: RabbitMQ, names: Any) -> BrokerAdapter:
        return RabbitMQAdapter(rabbitmq, names)


# -- backpressure and broker-side resources -----------------------------------------------------


async def test_a_client_that_stops_reading_leaves_the_messages_in_the_broker(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    queue = names("in")
    total, payload = 200, b"x" * 65536
    route = {"source": "rmq", "target": "ws", "channel_size": 2}
    async with rabbit_engine(
        engine_with, rabbitmq, entrypoints={"ws": "websocket"}, routes=[route], queue_in=queue
    ) as engine:
        async with open_ws(ws_url(engine)) as ws:
            await put(rabbitmq, queue, *[b"%03d" % n + payload for n in range(total)])
            [session] = engine.sessions
            with trio.fail_after(WAIT):
                while session.channel_depth < 2:  # engine-side state: nothing to wait on
                    await trio.sleep(0.01)
                    [session] = engine.sessions
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)
            stalled = await counts(rabbitmq, queue)
            # The engine holds its channel (2) and its prefetch (2); the sockets buffer a few
            # more (about 5 of these 64 KiB messages here). Everything else waits in the broker.
            assert stalled.messages >= total - 40, stalled
            [session] = engine.sessions
            assert session.channel_depth == 2
            unacked = (await trio.to_thread.run_sync(rabbitmq.list_queues))[queue]
            assert unacked["messages_unacknowledged"] <= 2
            for n in range(total):
                with trio.fail_after(WAIT):
                    assert (await ws.get_message())[:3] == f"{n:03d}"


@pytest.mark.parametrize("entrypoint", ["websocket", "sse"])
async def test_client_disconnect_removes_its_consumer_within_a_second(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any, entrypoint: str
) -> None:
    queue = names("in")
    async with rabbit_engine(
        engine_with,
        rabbitmq,
        entrypoints={"client": entrypoint},
        routes=[{"source": "rmq", "target": "client"}],
        queue_in=queue,
    ) as engine:
        if entrypoint == "websocket":
            async with open_ws(ws_url(engine, "client")):
                # Subscribed before the handshake completed: the broker already knows.
                assert (await counts(rabbitmq, queue)).consumers == 1
        else:
            async with httpx.AsyncClient() as client, sse_events(client, engine, "client"):
                assert (await counts(rabbitmq, queue)).consumers == 1
        await wait_for_consumers(rabbitmq, queue, 0, within=1.0)


async def test_each_client_gets_its_own_queue_and_only_its_messages(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    exchange = names("x")
    async with rabbit_engine(
        engine_with,
        rabbitmq,
        entrypoints={"ws": "websocket"},
        routes=[{"source": "rmq", "target": "ws"}],
        exchange=exchange,
        binding_key="user.{client_id}",
        session_queue=exchange + ".{client_id}",
    ) as engine:
        async with (
            open_ws(ws_url(engine, client_id="alice")) as alice,
            open_ws(ws_url(engine, client_id="bob")) as bob,
        ):
            for queue in (f"{exchange}.alice", f"{exchange}.bob"):
                assert await trio.to_thread.run_sync(queue_exists, rabbitmq, queue)
            await put(rabbitmq, "user.alice", b"for alice", exchange=exchange)
            await put(rabbitmq, "user.bob", b"for bob", exchange=exchange)
            await put(rabbitmq, "user.alice", b"alice again", exchange=exchange)
            assert [await alice.get_message() for _ in range(2)] == ["for alice", "alice again"]
            assert await bob.get_message() == "for bob"
        await clients_gone(engine)
        for queue in (f"{exchange}.alice", f"{exchange}.bob"):  # exclusive, auto-delete: gone
            assert not await trio.to_thread.run_sync(queue_exists, rabbitmq, queue)


async def test_one_io_thread_per_endpoint_and_none_after_the_engine(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    queue = names("in")

    def io_threads() -> int:
        return sum(1 for thread in threading.enumerate() if thread.name == "rabbitmq rmq")

    async with rabbit_engine(
        engine_with,
        rabbitmq,
        entrypoints={"ws": "websocket"},
        routes=[{"source": "rmq", "target": "ws"}],
        queue_in=queue,
    ) as engine:
        async with open_ws(ws_url(engine)), open_ws(ws_url(engine)), open_ws(ws_url(engine)):
            assert (await counts(rabbitmq, queue)).consumers == 3
            assert io_threads() == 1  # sessions are channels on the one connection
    assert io_threads() == 0


def queue_exists(rabbitmq: RabbitMQ, queue: str) -> bool:
    """Exclusive queues of other connections included (their passive declare is a 405)."""
    connection = rabbitmq.connection()
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code not in (404, 405):
            raise
        return error.reply_code == 405
    finally:
        with suppress(pika.exceptions.AMQPError):
            connection.close()


# -- bridges ------------------------------------------------------------------------------------


async def test_bridge_from_rabbitmq_loses_nothing(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    queue = names("in")
    routes = [
        {"source": "rmq", "target": "mem", "delivery_guarantee": "at_least_once"},
        {"source": "mem", "target": "ws", "delivery_guarantee": "at_least_once"},
    ]
    async with rabbit_engine(
        engine_with,
        rabbitmq,
        entrypoints={"ws": "websocket"},
        routes=routes,
        endpoints={"mem": {"type": "memory", "config": {"topic_in": "t", "topic_out": "t"}}},
        queue_in=queue,
    ) as engine:
        async with open_ws(ws_url(engine)) as ws:
            await put(rabbitmq, queue, *numbered(100))
            received = [await ws.get_message() for _ in range(100)]
        assert received == [m.decode() for m in numbered(100)]
        await wait_for_consumers(rabbitmq, queue, 1, within=WAIT)  # the bridge's
        assert (await counts(rabbitmq, queue)).messages == 0


async def test_bridge_to_rabbitmq_loses_nothing(
    engine_with: EngineFactory, rabbitmq: RabbitMQ, names: Any
) -> None:
    queue = names("out")
    routes = [
        {"source": "post", "target": "mem"},
        {"source": "mem", "target": "rmq", "delivery_guarantee": "at_least_once"},
    ]
    async with rabbit_engine(
        engine_with,
        rabbitmq,
        entrypoints={"post": "http_post"},
        routes=routes,
        endpoints={"mem": {"type": "memory", "config": {"topic_in": "t", "topic_out": "t"}}},
        queue_out=queue,
    ) as engine:
        memory = engine.endpoints["mem"]
        assert isinstance(memory, MemoryEndpoint)
        with trio.fail_after(WAIT):
            while memory.subscriber_count("t") == 0:  # noqa: ASYNC110 (the bridge subscribing)
                await trio.sleep(0.01)
        async with httpx.AsyncClient() as client:
            for body in numbered(100):
                assert (await client.post(url(engine, "post"), content=body)).status_code == 202
        with trio.fail_after(WAIT):
            while (await counts(rabbitmq, queue)).messages < 100:  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert [body for _, body in await take_all(rabbitmq, queue)] == numbered(100)
        assert memory.stats["acked"] == 100 and memory.stats["nacked"] == 0


def test_a_corked_batch_is_written_at_once_and_in_order(rabbitmq: RabbitMQ) -> None:
    """Writer: what a Trio -> thread batch emits goes to the socket at the flush, in one send,
    where pika alone would leave it buffered for the ioloop's next pass; behind frames pika still
    holds, it waits its turn (pika's path), so the broker gets everything in order."""
    from mediation.endpoints._pika_adapter import Writer

    queue = f"writer-{threading.get_ident()}-{id(rabbitmq)}"
    seen: list[int] = []
    failures: list[BaseException] = []

    def on_channel(channel: Any) -> None:
        channel.queue_declare(queue, durable=True, callback=lambda _frame: publish(channel))

    def publish(channel: Any) -> None:
        transport = connection._transport
        try:
            writer.cork()
            for body in (b"1", b"2", b"3"):
                channel.basic_publish("", queue, body)
            seen.append(transport.get_write_buffer_size())  # corked: nothing handed to pika
            writer.flush()
            seen.append(transport.get_write_buffer_size())  # sent directly
            channel.basic_publish("", queue, b"4")  # outside a batch: pika's buffer
            seen.append(transport.get_write_buffer_size())
            writer.cork()
            channel.basic_publish("", queue, b"5")
            writer.flush()  # behind pika's buffered frame: pika's path keeps the order
            seen.append(transport.get_write_buffer_size())
        except BaseException as error:  # reported by the test, not lost in the ioloop
            failures.append(error)
        connection.close()

    connection = pika.SelectConnection(
        pika.URLParameters(rabbitmq.amqp_url),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
        on_open_error_callback=lambda _conn, error: failures.append(error),
        on_close_callback=lambda _conn, _reason: connection.ioloop.stop(),
    )
    writer = Writer(connection)
    connection.ioloop.start()
    connection.ioloop.close()
    assert not failures
    assert seen[0] == 0 and seen[1] == 0
    assert seen[2] > 0 and seen[3] > seen[2]
    bodies = [body for _properties, body in _take_all(rabbitmq, queue)]
    assert bodies == [b"1", b"2", b"3", b"4", b"5"]
