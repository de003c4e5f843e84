"""The Solace endpoint on the fake of the Solace API: alone, then through the engine with real
web clients (trio-websocket, httpx with httpx-sse) over real sockets.

The engine builds the endpoint from its config like any other; ``api = "tests.solace_fake"`` in
the endpoint's table is what points it at the fake. Messages that "another Solace client"
publishes go straight into the fake broker (``publish_raw``).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from mediation.ack_policy import Guarantee
from mediation.config import RouteConfig, load_config
from mediation.endpoints.base import EndpointState, Outbound, Subscription
from mediation.endpoints.solace import DirectConsumerOverflow, SolaceAPI, SolaceEndpoint
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL
from mediation.errors import BrokerUnavailable, ClientTooSlow
from mediation.events import Delivery, Event

from .conftest import EngineFactory, clients_gone, envelope, open_ws, sse_events, url
from .solace_fake import FakeBroker, open_broker, topic_matches
from .solace_fake.harness import API, fake_table, fake_threads, publish_raw, running_endpoint

WAIT = 10.0
UP = EndpointState.UP


async def eventually(condition: Callable[[], object]) -> None:
    """Wait for what happens on the fake's threads, which have no event to wait on."""
    with trio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 (state changed by threads, no Trio signal)
            await trio.sleep(0.005)


async def receive(deliveries: AsyncIterator[Delivery]) -> Delivery:
    with trio.fail_after(WAIT):
        return await anext(deliveries)


def consumer(
    endpoint: SolaceEndpoint, guarantee: str, client_id: str = "c1", channel_size: int = 4
) -> AbstractAsyncContextManager[AsyncIterator[Delivery]]:
    route = RouteConfig(
        source=endpoint.name,
        target="clients",
        direction="downstream",
        delivery_guarantee=Guarantee(guarantee),
        channel_size=channel_size,
    )
    subscription = Subscription(
        client_id=client_id, session_id=str(uuid.uuid4()), entrypoint="clients", route=route
    )
    return endpoint.consume(subscription)


def outbound(endpoint: SolaceEndpoint, event: Event) -> Outbound:
    route = RouteConfig(source="clients", target=endpoint.name, direction="upstream")
    return Outbound(event=event, route=route, client_id="producer", entrypoint="clients")


# -- the fake ----------------------------------------------------------------------------------


def test_fake_topic_wildcards() -> None:
    assert topic_matches("a/*/c", "a/b/c")
    assert not topic_matches("a/*/c", "a/b/x/c")
    assert topic_matches("a/>", "a/b") and topic_matches("a/>", "a/b/c")
    assert not topic_matches("a/>", "a")
    assert topic_matches("a/b*", "a/bcd") and not topic_matches("a/b*", "a/cd")
    assert topic_matches("events/>", "events/eu/orders")
    assert not topic_matches("a/b", "a/b/c") and not topic_matches("a/b/c", "a/b")
    assert topic_matches("*", "a") and not topic_matches("*", "a/b")


# -- the endpoint alone ------------------------------------------------------------------------


async def test_metadata_ids_and_payloads() -> None:
    with open_broker() as broker:
        async with running_endpoint(broker) as endpoint, consumer(endpoint, "auto") as deliveries:
            event = Event(b"payload", metadata={"solace-correlation-id": "c-1", "x-trace": "t"})
            await endpoint.publish(outbound(endpoint, event), confirm=False)
            delivered = (await receive(deliveries)).event
            assert (delivered.id, delivered.payload) == (event.id, b"payload")
            assert delivered.metadata == {
                "x-trace": "t",
                "solace-destination": "t/events",
                "solace-application-message-id": event.id,
                "solace-correlation-id": "c-1",
                "solace-redelivered": "false",
            }
            # From a client that sets no application message id and sends text, not bytes.
            publish_raw(broker, "text from elsewhere", persistent=False, count=3)
            other = (await receive(deliveries)).event
            assert (other.payload, other.metadata["count"]) == (b"text from elsewhere", "3")
            assert uuid.UUID(other.id)


async def test_wildcard_topic_and_per_client_topics() -> None:
    with open_broker() as broker:
        async with (
            running_endpoint(broker, topic_in="devices/{client_id}/>") as endpoint,
            consumer(endpoint, "auto", "d1") as d1,
            consumer(endpoint, "auto", "d2") as d2,
        ):
            publish_raw(broker, b"to d2", "devices/d2/temp", persistent=False)
            publish_raw(broker, b"to d1", "devices/d1/temp", persistent=False)
            assert (await receive(d1)).event.payload == b"to d1"
            delivered = (await receive(d2)).event
            assert (delivered.payload, delivered.metadata["solace-destination"]) == (
                b"to d2",
                "devices/d2/temp",
            )


async def test_direct_auto_consumer_that_falls_behind_is_told_and_holds_up_no_one() -> None:
    with open_broker() as broker:
        async with (
            running_endpoint(broker, direct_buffer=4) as endpoint,
            consumer(endpoint, "auto", "slow", channel_size=1) as slow,
            consumer(endpoint, "auto", "fast", channel_size=16) as fast,
        ):
            for n in range(10):
                publish_raw(broker, b"%d" % n, persistent=False)
            for n in range(10):
                assert (await receive(fast)).event.payload == b"%d" % n
            await eventually(lambda: endpoint.stats["overflowed"])
            with pytest.raises(DirectConsumerOverflow, match="client too slow") as raised:
                await receive(slow)
            # The client hears "too slow" (1013); a bridge treats it as a broker failure.
            assert isinstance(raised.value, ClientTooSlow)
            assert isinstance(raised.value, BrokerUnavailable)


async def test_direct_none_drops_what_does_not_fit_and_flags_it() -> None:
    with open_broker() as broker:
        async with (
            running_endpoint(broker, direct_buffer=4) as endpoint,
            consumer(endpoint, "none", channel_size=1) as deliveries,
        ):
            for n in range(10):
                publish_raw(broker, b"%d" % n, persistent=False)
            await eventually(lambda: endpoint.stats["dropped"] == 6)
            for n in range(4):
                delivered = (await receive(deliveries)).event
                assert delivered.payload == b"%d" % n
                assert "solace-dropped" not in delivered.metadata
            publish_raw(broker, b"after the gap", persistent=False)
            delivered = (await receive(deliveries)).event
            assert (delivered.payload, delivered.metadata["solace-dropped"]) == (
                b"after the gap",
                "6",
            )


async def test_persistent_consumer_holds_no_more_than_its_credit() -> None:
    with open_broker() as broker:
        async with (
            running_endpoint(broker, queue_in="q/{client_id}") as endpoint,
            consumer(endpoint, "at_least_once", channel_size=2) as deliveries,
        ):
            for n in range(6):
                await endpoint.publish(outbound(endpoint, Event(b"%d" % n)), confirm=True)
            first, second = await receive(deliveries), await receive(deliveries)
            # The dispatch thread paused the receiver before handing over the second one.
            [flow] = broker.queues["q/c1"].flows
            assert flow._paused and len(flow._inbox) == 4
            await first.ack()
            assert (await receive(deliveries)).event.payload == b"2"
            assert not flow._paused or len(flow._inbox) == 3
            await second.nack()  # FAILED: back to the queue, to come after those in flight
            seen: list[tuple[bytes, str]] = []
            while len(seen) < 4:
                delivery = await receive(deliveries)
                event = delivery.event
                seen.append((event.payload, event.metadata["solace-redelivered"]))
                await delivery.ack()
            assert seen == [(b"3", "false"), (b"4", "false"), (b"5", "false"), (b"1", "true")]
            assert broker.queue_depth("q/c1") == 1  # the third one, never settled


async def test_nack_without_outcome_support_redelivers_when_the_flow_closes() -> None:
    api = dataclasses.replace(SolaceAPI.load(API), Outcome=None)  # an API without settle()
    with open_broker() as broker:
        async with running_endpoint(broker, api=api, queue_in="q/{client_id}") as endpoint:
            async with consumer(endpoint, "at_least_once") as deliveries:
                await endpoint.publish(outbound(endpoint, Event(b"refused")), confirm=True)
                first = await receive(deliveries)
                await first.nack()  # left unacknowledged (the fake refuses FAILED unless asked)
                assert broker.queue_depth("q/c1") == 1
            async with consumer(endpoint, "at_least_once") as deliveries:
                again = await receive(deliveries)
                assert again.event.id == first.event.id
                assert again.event.metadata["solace-redelivered"] == "true"
                await again.ack()
            assert broker.queue_depth("q/c1") == 0


async def test_confirmed_publish_returns_after_the_receipt_and_fails_when_refused() -> None:
    with open_broker() as broker:
        async with running_endpoint(broker) as endpoint:
            broker.hold_receipts()
            confirmed = trio.Event()

            async def publish() -> None:
                await endpoint.publish(outbound(endpoint, Event(b"kept")), confirm=True)
                confirmed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                await trio.testing.wait_all_tasks_blocked()
                assert not confirmed.is_set()
                assert broker.stats["published_persistent"] == 0
                broker.release_receipts()
            assert broker.stats["published_persistent"] == 1
            broker.refuse_publishes = "spool over quota"
            with pytest.raises(BrokerUnavailable, match="spool over quota"):
                await endpoint.publish(outbound(endpoint, Event(b"refused")), confirm=True)


async def test_a_full_publisher_buffer_waits_for_the_ready_notice() -> None:
    with open_broker() as broker:
        async with running_endpoint(broker, publish_buffer=2) as endpoint:
            broker.hold_receipts()
            async with trio.open_nursery() as nursery:
                for n in range(6):
                    message = outbound(endpoint, Event(b"%d" % n))
                    nursery.start_soon(partial(endpoint.publish, message, confirm=True))
                await trio.testing.wait_all_tasks_blocked()
                assert len(endpoint._connection.persistent.publisher._buffer) == 2  # type: ignore[union-attr]
                broker.release_receipts()
            assert broker.stats["published_persistent"] == 6


async def test_interruption_ends_consumers_fails_publishes_then_recovers() -> None:
    with open_broker() as broker:
        async with running_endpoint(broker, queue_in="q/{client_id}") as endpoint:
            async with (
                consumer(endpoint, "auto") as direct,
                consumer(endpoint, "at_least_once") as persistent,
            ):
                broker.hold_receipts()
                async with trio.open_nursery() as nursery:

                    async def waiting_for_its_receipt() -> None:
                        with pytest.raises(BrokerUnavailable):
                            await endpoint.publish(outbound(endpoint, Event(b"x")), confirm=True)

                    nursery.start_soon(waiting_for_its_receipt)
                    await trio.testing.wait_all_tasks_blocked()
                    await trio.to_thread.run_sync(broker.interrupt)
                with pytest.raises(BrokerUnavailable, match=r"interrupted|ended"):
                    await receive(direct)
                with pytest.raises(BrokerUnavailable):
                    await receive(persistent)
            with trio.fail_after(WAIT):
                await endpoint.state.wait_value(lambda state: state is not UP)
            with pytest.raises(BrokerUnavailable):
                await endpoint.publish(outbound(endpoint, Event(b"y")), confirm=False)
            assert broker.receiver_count() == 0
            broker.release_receipts()
            broker.recover()
            with trio.fail_after(WAIT):
                await endpoint.state.wait_value(UP)
            async with consumer(endpoint, "auto") as direct:
                await endpoint.publish(outbound(endpoint, Event(b"again")), confirm=False)
                assert (await receive(direct)).event.payload == b"again"
        assert broker.stats["receivers_started"] == broker.stats["receivers_terminated"] == 3


async def test_a_reconnect_ends_consumers_and_the_endpoint_is_up_again() -> None:
    with open_broker() as broker:
        async with running_endpoint(broker) as endpoint, consumer(endpoint, "auto") as deliveries:
            await trio.to_thread.run_sync(broker.reconnect)
            with pytest.raises(BrokerUnavailable, match="reconnecting"):
                await receive(deliveries)
            with trio.fail_after(WAIT):
                await endpoint.state.wait_value(UP)
            assert broker.stats["connects"] == 1  # the API reconnected, not the endpoint


# -- through the engine ------------------------------------------------------------------------


ENTRYPOINTS: dict[str, str | dict[str, Any]] = {
    "ws": "websocket",
    "sse": "sse",
    "post": "http_post",
}


@asynccontextmanager
async def solace_engine(
    engine_with: EngineFactory,
    broker: FakeBroker,
    routes: list[dict[str, Any]],
    entrypoints: dict[str, str | dict[str, Any]] | None = None,
    endpoints: dict[str, dict[str, Any]] | None = None,
    **table: Any,
) -> AsyncIterator[MediationEngine]:
    """An engine with the endpoint ``sol`` on ``broker``; once it has stopped, no thread the
    fake started for it is left."""
    async with engine_with(
        entrypoints=entrypoints or ENTRYPOINTS,
        endpoints={
            "sol": {"type": "solace", "config": fake_table(broker, **table)},
            **(endpoints or {}),
        },
        routes=routes,
    ) as engine:
        yield engine
    assert not fake_threads(), fake_threads()


@asynccontextmanager
async def up(engine: MediationEngine) -> AsyncIterator[SolaceEndpoint]:
    endpoint = engine.endpoints["sol"]
    assert isinstance(endpoint, SolaceEndpoint)
    with trio.fail_after(WAIT):
        await endpoint.state.wait_value(UP)
    yield endpoint


async def outage(broker: FakeBroker, endpoint: SolaceEndpoint) -> None:
    """The broker goes away (from a thread of its own), and the endpoint has noticed."""
    await trio.to_thread.run_sync(broker.interrupt)
    with trio.fail_after(WAIT):
        await endpoint.state.wait_value(lambda state: state is not UP)


def ws_url(engine: MediationEngine, client_id: str | None = None) -> str:
    return url(engine, "ws", f"/?client_id={client_id}" if client_id else "/", scheme="ws")


async def test_downstream_to_websocket_and_sse(engine_with: EngineFactory) -> None:
    routes = [{"source": "sol", "target": "ws"}, {"source": "sol", "target": "sse"}]
    with open_broker() as broker:
        async with (
            solace_engine(engine_with, broker, routes) as engine,
            up(engine),
            open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
            httpx.AsyncClient() as client,
            sse_events(client, engine) as events,
        ):
            publish_raw(broker, b"hello\nworld", persistent=False, origin="test")
            delivered = await envelope(ws)
            assert delivered["payload"] == "hello\nworld"
            assert delivered["metadata"]["origin"] == "test"
            assert delivered["metadata"]["solace-destination"] == "t/events"
            with trio.fail_after(WAIT):
                event = await anext(events)
            # No application message id on it: each session names it on its own.
            assert event.data == "hello\nworld" and event.id


async def test_upstream_at_least_once_is_answered_after_the_receipt_and_refused_in_an_outage(
    engine_with: EngineFactory,
) -> None:
    routes = [
        {"source": "post", "target": "sol", "delivery_guarantee": "at_least_once"},
        {"source": "ws", "target": "sol", "delivery_guarantee": "at_least_once"},
    ]
    with open_broker() as broker:
        async with (
            solace_engine(engine_with, broker, routes) as engine,
            up(engine) as endpoint,
            httpx.AsyncClient() as http,
            open_ws(ws_url(engine), subprotocols=[SUBPROTOCOL]) as ws,
        ):
            broker.hold_receipts()
            responses: list[httpx.Response] = []
            async with trio.open_nursery() as nursery:

                async def post() -> None:
                    responses.append(await http.post(url(engine, "post"), content=b"order 1"))

                nursery.start_soon(post)
                await trio.testing.wait_all_tasks_blocked()
                assert not responses  # no 202 before the broker confirmed
                broker.release_receipts()
            assert responses[0].status_code == 202
            assert broker.stats["published_persistent"] == 1

            await outage(broker, endpoint)
            refused = await http.post(url(engine, "post"), content=b"order 2")
            assert refused.status_code == 503
            await ws.send_message(json.dumps({"id": "up-1", "payload": "order 3"}))
            reply = await envelope(ws)
            assert reply["nack"] == "up-1" and "sol" in reply["error"]
            ready = await http.get(url(engine, "health", "/readyz"))
            assert ready.status_code == 503
            assert ready.json()["endpoints"]["sol"] in ("connecting", "down")

            broker.recover()
            with trio.fail_after(WAIT):
                await endpoint.state.wait_value(UP)
            assert (await http.get(url(engine, "health", "/readyz"))).status_code == 200
            assert (await http.post(url(engine, "post"), content=b"order 4")).status_code == 202
            await ws.send_message(json.dumps({"id": "up-2", "payload": "order 5"}))
            assert await envelope(ws) == {"ack": "up-2"}
            assert broker.stats["published_persistent"] == 3


async def test_an_outage_ends_downstream_sessions_which_resubscribe_after_recovery(
    engine_with: EngineFactory,
) -> None:
    routes = [{"source": "sol", "target": "ws"}, {"source": "sol", "target": "sse"}]
    with open_broker() as broker:
        async with (
            solace_engine(engine_with, broker, routes) as engine,
            up(engine) as endpoint,
            httpx.AsyncClient() as client,
        ):
            async with open_ws(ws_url(engine)) as ws, sse_events(client, engine) as events:
                await outage(broker, endpoint)
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(WAIT):
                    await ws.get_message()
                assert closed.value.reason.code == 1011
                with trio.fail_after(WAIT):
                    error = await anext(events)
                assert error.event == "error"
            await clients_gone(engine)
            assert broker.receiver_count() == 0
            broker.recover()
            with trio.fail_after(WAIT):
                await endpoint.state.wait_value(UP)
            async with open_ws(ws_url(engine)) as ws:
                publish_raw(broker, b"after the outage", persistent=False)
                with trio.fail_after(WAIT):
                    assert await ws.get_message() == "after the outage"


async def test_at_least_once_client_that_reconnects_loses_nothing(
    engine_with: EngineFactory,
) -> None:
    routes = [
        {
            "source": "sol",
            "target": "ws",
            "delivery_guarantee": "at_least_once",
            "channel_size": 2,
        }
    ]
    with open_broker() as broker:
        async with (
            solace_engine(engine_with, broker, routes, queue_in="q/{client_id}") as engine,
            up(engine),
        ):
            confirmed: set[int] = set()
            redelivered: set[int] = set()
            async with open_ws(ws_url(engine, "alice"), subprotocols=[SUBPROTOCOL]) as ws:
                for n in range(10):
                    publish_raw(broker, b"%d" % n)
                for n in range(5):  # confirm three, leave two unconfirmed
                    delivered = await envelope(ws)
                    assert int(delivered["payload"]) == n
                    if n < 3:
                        await ws.send_message(json.dumps({"ack": delivered["id"]}))
                        confirmed.add(n)
            await clients_gone(engine)
            for n in range(10, 20):  # published while alice is away: her queue keeps them
                publish_raw(broker, b"%d" % n)
            async with open_ws(ws_url(engine, "alice"), subprotocols=[SUBPROTOCOL]) as ws:
                while confirmed != set(range(20)):
                    delivered = await envelope(ws)
                    n = int(delivered["payload"])
                    if delivered["metadata"]["solace-redelivered"] == "true":
                        redelivered.add(n)
                    await ws.send_message(json.dumps({"ack": delivered["id"]}))
                    confirmed.add(n)
            assert {3, 4} <= redelivered
            await clients_gone(engine)
            assert broker.queue_depth("q/alice") == 0


async def test_one_client_leaving_leaves_the_others_receiving(engine_with: EngineFactory) -> None:
    with open_broker() as broker:
        async with (
            solace_engine(engine_with, broker, [{"source": "sol", "target": "ws"}]) as engine,
            up(engine),
            open_ws(ws_url(engine, "b")) as b,
        ):
            async with open_ws(ws_url(engine, "a")) as a:
                publish_raw(broker, b"1", persistent=False)
                with trio.fail_after(WAIT):
                    assert (await a.get_message(), await b.get_message()) == ("1", "1")
            await eventually(lambda: broker.receiver_count() == 1)
            publish_raw(broker, b"2", persistent=False)
            with trio.fail_after(WAIT):
                assert await b.get_message() == "2"


async def test_a_slow_client_neither_slows_nor_starves_the_others(
    engine_with: EngineFactory,
) -> None:
    routes = [{"source": "sol", "target": "ws", "delivery_guarantee": "at_least_once"}]
    with open_broker() as broker:
        async with (
            solace_engine(engine_with, broker, routes, queue_in="q/{client_id}") as engine,
            up(engine),
            open_ws(ws_url(engine, "slow"), subprotocols=[SUBPROTOCOL]) as slow,
            open_ws(ws_url(engine, "fast"), subprotocols=[SUBPROTOCOL]) as fast,
        ):
            for n in range(20):
                publish_raw(broker, b"%d" % n)
            for n in range(20):
                delivered = await envelope(fast)
                assert int(delivered["payload"]) == n
                await fast.send_message(json.dumps({"ack": delivered["id"]}))
            assert int((await envelope(slow))["payload"]) == 0  # and it never confirms
            assert broker.queue_depth("q/slow") == 20  # the broker holds its backlog
            await eventually(lambda: broker.queue_depth("q/fast") == 0)


async def test_receivers_end_on_every_exit_path(engine_with: EngineFactory) -> None:
    routes = [
        {"source": "sol", "target": "ws"},
        {"source": "sol", "target": "sse", "delivery_guarantee": "at_least_once"},
    ]

    def balanced() -> bool:
        stats = broker.stats
        return broker.receiver_count() == 0 and (
            stats["receivers_started"] == stats["receivers_terminated"]
        )

    async def run_engine(
        stop: trio.Event, *, task_status: trio.TaskStatus[MediationEngine]
    ) -> None:
        async with solace_engine(engine_with, broker, routes, queue_in="q/{client_id}") as engine:
            task_status.started(engine)
            await stop.wait()

    with open_broker() as broker:
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            stop = trio.Event()
            engine = await nursery.start(run_engine, stop)
            async with up(engine) as endpoint:
                async with open_ws(ws_url(engine)):  # the client closes
                    pass
                async with sse_events(client, engine):  # the client goes away
                    pass
                await clients_gone(engine)
                assert balanced()
                async with open_ws(ws_url(engine)) as ws:  # the broker goes away
                    await outage(broker, endpoint)
                    with pytest.raises(ConnectionClosed), trio.fail_after(WAIT):
                        await ws.get_message()
                await clients_gone(engine)
                assert balanced()
                broker.recover()
                with trio.fail_after(WAIT):
                    await endpoint.state.wait_value(UP)
            # The engine shuts down under connected clients.
            async with open_ws(ws_url(engine)) as ws, sse_events(client, engine) as events:
                assert broker.receiver_count() == 2
                stop.set()
                with pytest.raises(ConnectionClosed) as closed, trio.fail_after(WAIT):
                    await ws.get_message()
                assert closed.value.reason.code == 1001
                with trio.fail_after(WAIT):
                    assert [event async for event in events] == []
    assert balanced()
    assert broker.stats["receivers_started"] == 5


async def test_a_bridge_into_solace_confirms_before_acking_its_source(
    engine_with: EngineFactory,
) -> None:
    routes = [
        {"source": "post", "target": "mem"},
        {"source": "mem", "target": "sol", "delivery_guarantee": "at_least_once"},
        {"source": "sol", "target": "ws"},
    ]
    with open_broker() as broker:
        async with (
            solace_engine(
                engine_with, broker, routes, endpoints={"mem": {"type": "memory"}}
            ) as engine,
            up(engine),
            open_ws(ws_url(engine)) as ws,
            httpx.AsyncClient() as http,
        ):
            memory = engine.endpoints["mem"]
            await eventually(lambda: memory.subscriber_count("events") == 1)  # type: ignore[attr-defined]
            assert (await http.post(url(engine, "post"), content=b"bridged")).status_code == 202
            with trio.fail_after(WAIT):
                assert await ws.get_message() == "bridged"
            assert broker.stats["published_persistent"] == 1
            await eventually(lambda: memory.stats["acked"] == 1)  # type: ignore[attr-defined]


# -- the seed's example config -----------------------------------------------------------------


def test_seed_example_config_loads() -> None:
    config = load_config(Path(__file__).parent.parent / "examples" / "seed.toml")
    assert [e.name for e in config.entrypoints] == [
        "ws-inbound",
        "sse-feed",
        "webhook-receiver",
        "polling-api",
    ]
    assert {e.name: e.type for e in config.endpoints} == {
        "kafka-main": "kafka",
        "rabbitmq-orders": "rabbitmq",
        "mqtt5-iot": "mqtt5",
        "solace-events": "solace",
        "jms-legacy": "jms",
    }
    assert {(r.name, r.direction, r.delivery_guarantee, r.channel_size) for r in config.routes} == {
        ("ws-inbound->kafka-main", "upstream", "at_least_once", 1),
        ("kafka-main->ws-inbound", "downstream", "at_least_once", 1),
        ("webhook-receiver->rabbitmq-orders", "upstream", "auto", 10),
        ("mqtt5-iot->solace-events", "bridge", "none", 5),
    }
    solace = config.endpoint("solace-events").config
    assert (solace.topic_in, solace.topic_out, solace.api) == (
        "events/>",
        "processed/events",
        "solace.messaging",
    )
