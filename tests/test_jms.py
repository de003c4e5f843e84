"""The jms endpoint (AMQP 1.0) through the engine, with real web clients and RabbitMQ's plugin.

Every test gets a fanout exchange of its own with one durable queue per client bound to it
(``fanout`` in test_conformance_jms): the endpoint consumes ``/amq/queue/<base>-{client_id}`` and
publishes to ``/exchange/<base>``. Broker state is read with pika (AMQP 0-9-1) and polled, bounded,
only where RabbitMQ offers no event (a consumer count after a link went away).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import pika
import pytest
import trio
from httpx_sse import aconnect_sse
from proton import Message
from proton.utils import BlockingConnection
from trio_websocket import ConnectionClosed, WebSocketConnection

from mediation.config import JMSConfig, RouteConfig
from mediation.endpoints.base import EndpointState, Outbound
from mediation.endpoints.jms import MAX_SENDERS, JMSEndpoint
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL
from mediation.events import Event

from .brokers import QueueCounts, RabbitMQ
from .conformance import CLIENTS, BrokerAdapter, OutageConformance, ReconnectConformance, Scenario
from .conftest import EngineFactory, clients_gone, open_ws, url
from .test_conformance_jms import fanout

WAIT = 20.0  # every wait on the broker or the engine is bounded


def endpoints(rabbitmq: RabbitMQ, base: str, **config: Any) -> dict[str, dict[str, Any]]:
    return {
        "jms": {
            "type": "jms",
            "config": {
                "url": rabbitmq.amqp1_url,
                "queue_in": f"/amq/queue/{base}-{{client_id}}",
                "queue_out": f"/exchange/{base}",
                "retry_interval": 0.2,
                "retry_max_interval": 1.0,
                **config,
            },
        }
    }


def jms(engine: MediationEngine) -> JMSEndpoint:
    endpoint = engine.endpoints["jms"]
    assert isinstance(endpoint, JMSEndpoint)
    return endpoint


async def connected(engine: MediationEngine) -> None:
    with trio.fail_after(WAIT):
        await jms(engine).state.wait_value(EndpointState.UP)


async def counts(rabbitmq: RabbitMQ, queue: str) -> QueueCounts:
    found = await trio.to_thread.run_sync(rabbitmq.queue_counts, queue)
    assert found is not None
    return found


async def settled_to(rabbitmq: RabbitMQ, queue: str, **wanted: int) -> QueueCounts:
    """Wait (bounded) until the queue has the given ``messages``/``consumers``."""
    return await trio.to_thread.run_sync(
        lambda: rabbitmq.wait_for_queue(queue, timeout=WAIT, **wanted)
    )


def ws_url(engine: MediationEngine, client_id: str, entrypoint: str = "ws") -> str:
    return url(engine, entrypoint, f"/?client_id={client_id}", scheme="ws")


@asynccontextmanager
async def envelope_ws(
    engine: MediationEngine, client_id: str, entrypoint: str = "ws"
) -> AsyncIterator[WebSocketConnection]:
    async with open_ws(ws_url(engine, client_id, entrypoint), subprotocols=[SUBPROTOCOL]) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        yield ws


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        document: dict[str, Any] = json.loads(await ws.get_message())
    return document


async def post(
    client: httpx.AsyncClient, engine: MediationEngine, body: bytes, **headers: str
) -> str:
    response = await client.post(url(engine, "post"), content=body, headers=headers)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def amqp_send(rabbitmq: RabbitMQ, address: str, messages: list[Message]) -> None:
    """An independent AMQP 1.0 producer (proton's blocking client; run it in a thread)."""
    connection = BlockingConnection(rabbitmq.amqp1_url, allowed_mechs="PLAIN", timeout=WAIT)
    try:
        sender = connection.create_sender(address)
        for message in messages:
            sender.send(message)
    finally:
        connection.close()


def pika_publish(rabbitmq: RabbitMQ, queue: str, body: bytes, **properties: Any) -> None:
    with rabbitmq.channel() as channel:
        channel.basic_publish("", queue, body, pika.BasicProperties(**properties))  # type: ignore[attr-defined]


# -- downstream ------------------------------------------------------------------------------


async def test_amqp_messages_reach_websocket_and_sse_clients_with_their_properties(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    with fanout(rabbitmq, ("w1", "s1")) as base:
        routes = [{"source": "jms", "target": "ws"}, {"source": "jms", "target": "sse"}]
        async with (
            engine_with(
                entrypoints={"ws": "websocket", "sse": "sse"},
                endpoints=endpoints(rabbitmq, base),
                routes=routes,
            ) as engine,
            httpx.AsyncClient() as client,
        ):
            await connected(engine)
            async with (
                envelope_ws(engine, "w1") as ws,
                aconnect_sse(client, "GET", url(engine, "sse", "/?client_id=s1")) as source,
            ):
                events = source.aiter_sse()
                try:
                    assert (await anext(events)).event == "session"
                    text = Message(
                        body="line one\nline two",  # an amqp-value string: a JMS TextMessage
                        id="m-1",
                        correlation_id="c-1",
                        subject="greeting",
                        content_type="text/plain",
                        properties={"x-trace": "t-1", "count": 3},
                    )
                    data = Message(body=b"\xff\x00raw")
                    data.inferred = True  # a data section: a JMS BytesMessage
                    await trio.to_thread.run_sync(
                        amqp_send, rabbitmq, f"/exchange/{base}", [text, data]
                    )
                    first = await receive(ws)
                    assert first["id"] == "m-1"
                    assert first["payload"] == "line one\nline two"
                    assert first["metadata"] == {
                        "message-id": "m-1",
                        "correlation-id": "c-1",
                        "subject": "greeting",
                        "content-type": "text/plain",
                        "x-trace": "t-1",
                        "count": "3",
                    }
                    second = await receive(ws)
                    assert second["encoding"] == "base64"
                    assert base64.b64decode(second["payload"]) == b"\xff\x00raw"
                    assert second["id"]  # no message id: the endpoint gave it one
                    assert second["metadata"] == {}
                    with trio.fail_after(WAIT):
                        sse_first = await anext(events)
                    assert (sse_first.id, sse_first.data) == ("m-1", "line one\nline two")
                finally:
                    await source.response.aclose()
                    with suppress(httpx.ReadError, httpx.StreamError):
                        async for _ in events:
                            pass
        assert (await counts(rabbitmq, f"{base}-w1")).consumers == 0


# -- upstream --------------------------------------------------------------------------------


async def test_post_at_least_once_answers_202_once_the_broker_accepted(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    with fanout(rabbitmq, ("reader",)) as base:
        async with (
            engine_with(
                entrypoints={"post": "http_post"},
                endpoints=endpoints(rabbitmq, base),
                routes=[{"source": "post", "target": "jms", "delivery_guarantee": "at_least_once"}],
            ) as engine,
            httpx.AsyncClient() as client,
        ):
            await connected(engine)
            event_id = await post(
                client, engine, b"hello", **{"content-type": "text/plain", "x-trace": "t-9"}
            )
            # 202 came after RabbitMQ's `accepted`: the message is in the queue already.
            assert (await counts(rabbitmq, f"{base}-reader")).messages == 1
        connection = BlockingConnection(rabbitmq.amqp1_url, allowed_mechs="PLAIN", timeout=WAIT)
        try:
            receiver = connection.create_receiver(f"/amq/queue/{base}-reader")
            message = await trio.to_thread.run_sync(receiver.receive, WAIT)
            receiver.accept()
        finally:
            connection.close()
        assert (message.id, bytes(message.body)) == (event_id, b"hello")
        assert (message.content_type, message.durable) == ("text/plain", True)
        assert message.properties == {"x-trace": "t-9"}


async def test_a_publish_the_broker_refuses_is_answered_with_its_reason(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    """A ``/queue/`` address declares a non-durable queue; RabbitMQ refuses that for a durable
    queue of the same name: the POST says so, naming the address, not just "sender closed"."""
    queue = rabbitmq.unique_name("jms-durable")
    with rabbitmq.channel() as channel:
        channel.queue_declare(queue, durable=True)  # type: ignore[attr-defined]
    try:
        table = endpoints(rabbitmq, "unused", queue_out=f"/queue/{queue}")
        async with (
            engine_with(
                entrypoints={"post": "http_post"},
                endpoints=table,
                routes=[{"source": "post", "target": "jms", "delivery_guarantee": "at_least_once"}],
            ) as engine,
            httpx.AsyncClient() as client,
        ):
            await connected(engine)
            with trio.fail_after(WAIT):
                response = await client.post(url(engine, "post"), content=b"refused")
            assert response.status_code == 503
            error = response.json()["error"]
            assert f"/queue/{queue}" in error
            assert "sender closed" not in error
    finally:
        with rabbitmq.channel() as channel:
            channel.queue_delete(queue)  # type: ignore[attr-defined]


# -- broker outage and client reconnects (the shared scenario) ---------------------------------


class JMSAdapter(BrokerAdapter):
    """Both scenarios on ``fanout``: what the endpoint publishes to the exchange comes back to
    every client's durable queue."""

    name = "jms"
    # Durable queues on the same node: what a client left unsettled survives the restart.
    keeps_unconfirmed_across_restart = True
    # The endpoint retries every 0.2-1 s and says "connecting" during each attempt.
    down_states = ("down", "connecting")

    def __init__(self, rabbitmq: RabbitMQ, base: str) -> None:
        self.rabbitmq, self.base = rabbitmq, base

    def table(self, scenario: Scenario) -> dict[str, Any]:
        return endpoints(self.rabbitmq, self.base)["jms"]

    async def publish(self, scenario: Scenario, *payloads: bytes) -> None:
        def publish() -> None:
            with self.rabbitmq.channel() as channel:
                channel.confirm_delivery()  # type: ignore[attr-defined]
                for payload in payloads:
                    channel.basic_publish(self.base, "", payload)  # type: ignore[attr-defined]

        await trio.to_thread.run_sync(publish)

    async def stop(self) -> None:
        await trio.to_thread.run_sync(self.rabbitmq.stop)

    async def start(self) -> None:
        await trio.to_thread.run_sync(self.rabbitmq.start)

    async def client_left(self, client_id: str, unconfirmed: int) -> None:
        queue = f"{self.base}-{client_id}"
        await settled_to(self.rabbitmq, queue, consumers=0, messages=unconfirmed)

    async def settled(self, engine: MediationEngine, client_id: str, confirmed: int | None) -> None:
        await settled_to(self.rabbitmq, f"{self.base}-{client_id}", consumers=0, messages=0)
        if confirmed is not None:
            stats = jms(engine).stats
            assert stats["acked"] == confirmed and stats["over_credit"] == 0


class TestJMSOutage(OutageConformance, ReconnectConformance):
    @pytest.fixture
    def adapter(self, rabbitmq: RabbitMQ) -> Iterator[BrokerAdapter]:
        with fanout(rabbitmq, CLIENTS) as base:
            yield JMSAdapter(rabbitmq, base)


# -- slow clients ----------------------------------------------------------------------------


async def test_a_slow_client_does_not_slow_or_starve_the_others(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    with fanout(rabbitmq, ("slow", "fast")) as base:
        routes = [
            {"source": "post", "target": "jms"},
            {"source": "jms", "target": "ws", "delivery_guarantee": "at_least_once"},
        ]
        async with (
            engine_with(
                entrypoints={"post": "http_post", "ws": "websocket"},
                endpoints=endpoints(rabbitmq, base),
                routes=routes,
            ) as engine,
            httpx.AsyncClient() as client,
        ):
            await connected(engine)
            async with envelope_ws(engine, "slow") as slow, envelope_ws(engine, "fast") as fast:
                for n in range(50):
                    await post(client, engine, b"%d" % n)
                first = await receive(slow)  # and then never confirms it
                assert first["payload"] == "0"
                for n in range(50):
                    event = await receive(fast)
                    assert event["payload"] == str(n)
                    await fast.send_message(json.dumps({"ack": event["id"]}))
                await settled_to(rabbitmq, f"{base}-fast", messages=0)
                # The slow client holds one event (its credit); the rest wait in its own queue.
                assert (await counts(rabbitmq, f"{base}-slow")).messages == 49
        # It left without confirming: its event went back, nothing lost.
        await settled_to(rabbitmq, f"{base}-slow", consumers=0, messages=50)


# -- resources and poison --------------------------------------------------------------------


async def test_links_released_on_every_exit_path(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    clients = ("ws-closes", "sse-drops", "at-shutdown")
    with fanout(rabbitmq, clients) as base:
        queues = [f"{base}-{client}" for client in clients]
        routes = [{"source": "jms", "target": "ws"}, {"source": "jms", "target": "sse"}]
        shut_down = trio.Event()

        async def run_engine(*, task_status: trio.TaskStatus[MediationEngine]) -> None:
            async with engine_with(
                entrypoints={"ws": "websocket", "sse": "sse"},
                endpoints=endpoints(rabbitmq, base),
                routes=routes,
            ) as engine:
                await connected(engine)
                task_status.started(engine)
                await shut_down.wait()

        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            engine = await nursery.start(run_engine)
            async with open_ws(ws_url(engine, "ws-closes")):
                assert (await counts(rabbitmq, queues[0])).consumers == 1
            async with aconnect_sse(
                client, "GET", url(engine, "sse", "/?client_id=sse-drops")
            ) as sse:
                events = sse.aiter_sse()
                assert (await anext(events)).event == "session"
                assert (await counts(rabbitmq, queues[1])).consumers == 1
                await sse.response.aclose()
                with suppress(httpx.ReadError, httpx.StreamError):
                    async for _ in events:
                        pass
            for queue in queues[:2]:
                await settled_to(rabbitmq, queue, consumers=0)
            async with open_ws(ws_url(engine, "at-shutdown")) as ws:
                assert (await counts(rabbitmq, queues[2])).consumers == 1
                shut_down.set()  # the engine stops while its client is still there
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(WAIT):
                    await ws.get_message()
                assert closed.value.reason.code == 1001
        await settled_to(rabbitmq, queues[2], consumers=0)


async def test_poison_and_oversized_messages_are_rejected_not_redelivered(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    with fanout(rabbitmq, ("p1",)) as base:
        queue = f"{base}-p1"
        routes = [{"source": "jms", "target": "ws", "delivery_guarantee": "at_least_once"}]
        async with engine_with(
            entrypoints={"ws": "websocket"},
            endpoints=endpoints(rabbitmq, base, max_message_bytes=4096),
            routes=routes,
        ) as engine:
            await connected(engine)
            # RabbitMQ hands an AMQP 0-9-1 message typed "amqp-1.0" to AMQP 1.0 clients as encoded
            # sections: a data section that promises 5 bytes and has none cannot be decoded.
            await trio.to_thread.run_sync(
                lambda: pika_publish(rabbitmq, queue, b"\x00\x53\x75\xa0\x05", type="amqp-1.0")
            )
            await trio.to_thread.run_sync(
                lambda: pika_publish(rabbitmq, queue, b"x" * 8192)  # over max_message_bytes
            )
            await trio.to_thread.run_sync(lambda: pika_publish(rabbitmq, queue, b"good"))
            async with envelope_ws(engine, "p1") as ws:
                event = await receive(ws)
                assert event["payload"] == "good"
                await ws.send_message(json.dumps({"ack": event["id"]}))
                await settled_to(rabbitmq, queue, messages=0)
            await clients_gone(engine)
            assert jms(engine).stats["rejected"] == 2
        # Rejected, not released: nothing comes back.
        await settled_to(rabbitmq, queue, consumers=0, messages=0)


async def test_a_frozen_broker_ends_consumers_within_the_idle_timeout(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    with fanout(rabbitmq, ("f1",)) as base:
        async with engine_with(
            entrypoints={"ws": "websocket"},
            endpoints=endpoints(rabbitmq, base, idle_timeout=1.0, open_timeout=2.0),
            routes=[{"source": "jms", "target": "ws"}],
        ) as engine:
            await connected(engine)
            async with open_ws(ws_url(engine, "f1")) as ws:
                with rabbitmq.frozen():  # SIGSTOP: the socket stays open, nothing is answered
                    with pytest.raises(ConnectionClosed) as closed, trio.fail_after(5):
                        await ws.get_message()
                    assert closed.value.reason.code == 1011
            await connected(engine)
        await settled_to(rabbitmq, f"{base}-f1", consumers=0)


async def test_sender_links_are_capped_least_recently_used_first(rabbitmq: RabbitMQ) -> None:
    """{client_id} in queue_out makes a sender link per client: at most MAX_SENDERS stay open.

    And the endpoint runs no thread of its own (proton's engine is driven from Trio).
    """
    threads = set(threading.enumerate())
    clients = MAX_SENDERS + 6
    with fanout(rabbitmq, ("all",)) as base:
        config = JMSConfig(url=rabbitmq.amqp1_url, queue_out=f"/exchange/{base}/{{client_id}}")
        endpoint = JMSEndpoint("jms", config)
        route = RouteConfig(source="clients", target="jms", direction="upstream")
        async with trio.open_nursery() as nursery:
            await nursery.start(endpoint.run)
            with trio.fail_after(WAIT):
                await endpoint.state.wait_value(EndpointState.UP)
                for n in range(clients):
                    outbound = Outbound(Event(b"%d" % n), route, f"client-{n}", "clients")
                    await endpoint.publish(outbound, confirm=n % 2 == 0)
                assert set(threading.enumerate()) <= threads
            nursery.cancel_scope.cancel()
        assert endpoint.stats["senders_closed"] == clients - MAX_SENDERS
        await settled_to(rabbitmq, f"{base}-all", messages=clients)


async def test_a_queue_deleted_under_a_client_ends_its_session_and_the_endpoint_recovers(
    engine_with: EngineFactory, rabbitmq: RabbitMQ
) -> None:
    """RabbitMQ 3.10's AMQP 1.0 plugin crashes on the consumer cancel of a deleted queue and drops
    the whole connection: every session on it ends (1011) and the endpoint reconnects."""
    with fanout(rabbitmq, ("doomed", "other")) as base:
        async with engine_with(
            entrypoints={"ws": "websocket"},
            endpoints=endpoints(rabbitmq, base),
            routes=[{"source": "jms", "target": "ws"}],
        ) as engine:
            await connected(engine)
            async with open_ws(ws_url(engine, "doomed")) as doomed:
                await trio.to_thread.run_sync(rabbitmq.delete_queue, f"{base}-doomed")
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(WAIT):
                    await doomed.get_message()
                assert closed.value.reason.code == 1011
            await connected(engine)
            async with open_ws(ws_url(engine, "other")) as other:
                await trio.to_thread.run_sync(
                    pika_publish, rabbitmq, f"{base}-other", b"still here"
                )
                with trio.fail_after(WAIT):
                    assert await other.get_message() == "still here"
        await settled_to(rabbitmq, f"{base}-other", consumers=0)
        with rabbitmq.channel() as channel:  # for fanout() to delete on exit
            channel.queue_declare(f"{base}-doomed", durable=True)  # type: ignore[attr-defined]
