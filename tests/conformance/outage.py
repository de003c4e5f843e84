"""One broker-outage and client-reconnect scenario for every broker, through the engine.

Each broker's engine test module subclasses :class:`OutageConformance` and provides the
``adapter`` fixture (a :class:`BrokerAdapter`: the endpoint's config table, how to publish natively
into what the endpoint consumes, how to stop and start the shared broker, and what to ask the broker
once a client has left). The scenario then checks, with real web clients, the documented outcomes:

- broker outage: WebSocket 1011 within 15 s, SSE ``event: error``, polling GET 503, POST 503,
  envelope ``{"nack"}`` with an error, ``/readyz`` 503 while down and 200 after, only the upstream
  WebSocket session left, new sessions and the same upstream session working after recovery, and
  nothing refused during the outage ever reaching the broker;
- a client that disconnects mid-stream and comes back with the same client id: at_least_once loses
  nothing (and what it confirmed does not come again), at_most_once delivers nothing twice.

What differs between brokers by design is declared on the adapter, each with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from mediation.endpoints import EndpointState
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL

from ..conftest import EngineFactory, clients_gone, envelope, open_ws, sse_events, url

WAIT = 20.0  # every wait on the broker or the engine is bounded
# The documented bound for a downstream session to end once its broker went away.
NOTICED_WITHIN = 15.0

# The client ids the scenarios use (brokers with a queue per client make one for each).
CLIENTS = ("w1", "s1", "p1", "up1", "alo", "amo")

Scenario = Literal["outage", "reconnect"]


class BrokerAdapter:
    """How the scenarios drive one broker. Subclass it in the broker's test module."""

    # The endpoint's name in the engine.
    name = "broker"
    # An event a client left unconfirmed before the broker restarted comes to its next session
    # (the broker keeps durable per-client queues across a restart).
    keeps_unconfirmed_across_restart = False
    # What /readyz says of the endpoint while the broker is down (endpoints that retry fast say
    # "connecting" between their attempts).
    down_states: tuple[str, ...] = ("down",)
    # The id the engine gave an upstream event comes back as the id of its delivery.
    event_id_travels = True
    # What is published for a client while it has no session waits for its next one (queues,
    # consumer groups), rather than only what a session left unconfirmed.
    keeps_for_absent_clients = True
    # What a client left unconfirmed comes to its next session in order, ahead of what it had not
    # been sent yet.
    redelivers_in_order = True

    def table(self, scenario: Scenario) -> dict[str, Any]:
        """The endpoint's config table (``type`` and ``config``): for ``outage`` what it
        publishes must reach its own consumers (a loop), for ``reconnect`` a source that keeps
        what a client has not confirmed for that client's next session."""
        raise NotImplementedError

    async def publish(self, scenario: Scenario, *payloads: bytes) -> None:
        """Publish natively (as an application on the far side) into what the endpoint consumes;
        return once the broker has every one."""
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def recovered(self) -> None:
        """After the restart, before any client uses the broker again."""

    async def client_left(self, client_id: str, unconfirmed: int) -> None:
        """The at_least_once client has gone (the engine is done with it): the broker holds its
        ``unconfirmed`` events for it and nothing consumes them."""

    async def settled(self, engine: MediationEngine, client_id: str, confirmed: int | None) -> None:
        """Every session has ended, the client having confirmed everything it was sent
        (``confirmed`` events since the engine started, where the scenario knows it): nothing is
        left for it on the broker and nothing consumes for it."""


def ws_url(engine: MediationEngine, entrypoint: str, client_id: str) -> str:
    return url(engine, entrypoint, f"/?client_id={client_id}", scheme="ws")


@asynccontextmanager
async def open_client(
    engine: MediationEngine, entrypoint: str, client_id: str
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket client that speaks the envelope protocol."""
    async with open_ws(ws_url(engine, entrypoint, client_id), subprotocols=[SUBPROTOCOL]) as ws:
        assert ws.subprotocol == SUBPROTOCOL
        yield ws


async def ack(ws: WebSocketConnection, event: dict[str, Any]) -> None:
    await ws.send_message(json.dumps({"ack": event["id"]}))


def numbered(n: int, start: int = 0) -> list[bytes]:
    return [b"%03d" % i for i in range(start, start + n)]


async def gone(engine: MediationEngine) -> None:
    """Until the engine has finished with every client, bounded: a session that never ends
    fails the test rather than hanging it."""
    with trio.fail_after(WAIT):
        await clients_gone(engine)


async def message(ws: WebSocketConnection) -> str | bytes:
    with trio.fail_after(WAIT):
        return await ws.get_message()


class OutageConformance:
    async def test_broker_outage_ends_sessions_refuses_publishes_and_recovers(
        self, engine_with: EngineFactory, adapter: BrokerAdapter
    ) -> None:
        name = adapter.name
        entrypoints = {
            "ws": "websocket",
            "sse": "sse",
            "poll": "http_get",
            "post": "http_post",
            "up": "websocket",
        }
        routes = [
            {"source": name, "target": "ws", "delivery_guarantee": "at_least_once"},
            {"source": name, "target": "sse"},
            {"source": name, "target": "poll"},
            {"source": "post", "target": name, "delivery_guarantee": "at_least_once"},
            {"source": "up", "target": name, "delivery_guarantee": "at_least_once"},
        ]
        async with (
            engine_with(
                entrypoints=entrypoints,
                routes=routes,
                endpoints={name: adapter.table("outage")},
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as client,
        ):
            endpoint = engine.endpoints[name]
            with trio.fail_after(WAIT):
                await endpoint.state.wait_value(EndpointState.UP)
            readyz = url(engine, "health", "/readyz")
            assert (await client.get(readyz)).status_code == 200
            poller = {"X-Client-ID": "p1"}
            subscribed = await client.post(url(engine, "poll", "/subscribe"), headers=poller)
            assert subscribed.status_code == 201
            stopped = False
            try:
                async with (
                    open_client(engine, "up", "up1") as uplink,
                    sse_events(client, engine, "sse", **{"X-Client-ID": "s1"}) as sse,
                ):
                    async with open_client(engine, "ws", "w1") as ws:
                        before = await client.post(url(engine, "post"), content=b"before")
                        assert before.status_code == 202
                        delivered = await envelope(ws)
                        assert delivered["payload"] == "before"
                        if adapter.event_id_travels:
                            assert delivered["id"] == before.json()["id"]
                        # Left unconfirmed: the outage must not lose it where the broker keeps it.
                        await adapter.stop()
                        stopped = True
                        # Right away, whatever the endpoint has noticed yet: no 202.
                        await self._refused(client, engine, uplink, "u-0")
                        noticed = time.monotonic()
                        with trio.fail_after(WAIT):
                            await endpoint.state.wait_value(
                                lambda state: state.value in adapter.down_states
                            )
                            # The consumers end: their clients are told (1011, error, 503).
                            with pytest.raises(ConnectionClosed) as closed:
                                await ws.get_message()
                        assert closed.value.reason is not None
                        assert closed.value.reason.code == 1011
                        assert time.monotonic() - noticed < NOTICED_WITHIN
                        with trio.fail_after(WAIT):
                            events = [await anext(sse)]
                            while events[-1].event != "error":
                                events.append(await anext(sse))
                        assert [e.data for e in events[:-1]] in ([], ["before"])
                        # Each session's consumer notices the outage on its own (a Kafka consumer
                        # probes the broker first): the poller's may answer once more before.
                        with trio.fail_after(WAIT):
                            while (
                                polled := await client.get(
                                    url(engine, "poll", "/poll"), headers=poller
                                )
                            ).status_code != 503:
                                assert polled.status_code in (200, 204), polled.status_code
                        not_ready = await client.get(readyz)
                        assert not_ready.status_code == 503
                        assert not_ready.json()["endpoints"][name] in adapter.down_states
                        await self._refused(client, engine, uplink, "u-1")
                        # Only the upstream WebSocket is left: it outlives the outage.
                        assert {s.entrypoint for s in engine.sessions} == {"up"}
                        await adapter.start()
                        stopped = False
                    with trio.fail_after(WAIT):
                        await endpoint.state.wait_value(EndpointState.UP)
                    assert (await client.get(readyz)).status_code == 200
                    await adapter.recovered()
                    async with open_client(engine, "ws", "w1") as ws:
                        await uplink.send_message(json.dumps({"id": "u-2", "payload": "after ws"}))
                        assert await envelope(uplink) == {"ack": "u-2"}
                        accepted = await client.post(url(engine, "post"), content=b"after post")
                        assert accepted.status_code == 202
                        await adapter.publish("outage", b"marker")
                        # The unconfirmed event again where the broker kept it, then what came
                        # after, in order; what was refused during the outage never reached the
                        # broker (or it would stand before the marker).
                        expected = ["after ws", "after post", "marker"]
                        if adapter.keeps_unconfirmed_across_restart:
                            expected.insert(0, "before")
                        for payload in expected:
                            event = await envelope(ws)
                            assert event["payload"] == payload
                            await ack(ws, event)
                await gone(engine)
                await adapter.settled(engine, "w1", None)
            finally:
                if stopped:
                    with trio.move_on_after(120, shield=True):  # the harness bounds start()
                        await adapter.start()

    async def _refused(
        self,
        client: httpx.AsyncClient,
        engine: MediationEngine,
        uplink: WebSocketConnection,
        upstream_id: str,
    ) -> None:
        refused = await client.post(url(engine, "post"), content=b"while down")
        assert refused.status_code == 503
        await uplink.send_message(json.dumps({"id": upstream_id, "payload": "while down"}))
        reply = await envelope(uplink)
        assert reply["nack"] == upstream_id and reply["error"]


class ReconnectConformance:
    """A client that disconnects mid-stream and comes back with the same client id."""

    @staticmethod
    @asynccontextmanager
    async def _engine(
        engine_with: EngineFactory, adapter: BrokerAdapter, guarantee: str
    ) -> AsyncIterator[MediationEngine]:
        """One WebSocket entrypoint ``ws`` fed by the endpoint, once the endpoint is up."""
        route = {
            "source": adapter.name,
            "target": "ws",
            "delivery_guarantee": guarantee,
            "channel_size": 4,
        }
        endpoints = {adapter.name: adapter.table("reconnect")}
        async with engine_with(
            entrypoints={"ws": "websocket"}, routes=[route], endpoints=endpoints
        ) as engine:
            with trio.fail_after(WAIT):
                await engine.endpoints[adapter.name].state.wait_value(EndpointState.UP)
            yield engine

    async def test_at_least_once_client_that_reconnects_loses_nothing(
        self, engine_with: EngineFactory, adapter: BrokerAdapter
    ) -> None:
        async with self._engine(engine_with, adapter, "at_least_once") as engine:
            async with open_client(engine, "ws", "alo") as first:
                await adapter.publish("reconnect", *numbered(20))
                for n in range(5):
                    event = await envelope(first)
                    assert event["payload"] == f"{n:03d}"
                    await ack(first, event)
                # Four more fill the client's window of 4, which the engine opens again only
                # once it processed the ack of 004: so every ack above reached the broker.
                unconfirmed = [(await envelope(first))["payload"] for _ in range(4)]
                assert unconfirmed == ["005", "006", "007", "008"]
            await gone(engine)
            await adapter.client_left("alo", unconfirmed=15)
            async with open_client(engine, "ws", "alo") as second:
                again = []
                for _ in range(15):
                    event = await envelope(second)
                    again.append(event["payload"])
                    await ack(second, event)
            expected = [f"{n:03d}" for n in range(5, 20)]  # 005-008 again, the rest first
            if adapter.redelivers_in_order:
                assert again == expected
            else:
                assert sorted(again) == expected and len(set(again)) == 15
            await gone(engine)
            # Confirmed means acked: nothing comes again on the next connection either.
            async with open_client(engine, "ws", "alo") as third:
                await adapter.publish("reconnect", b"marker")
                marker = await envelope(third)
                assert marker["payload"] == "marker"
                await ack(third, marker)
            await gone(engine)
            await adapter.settled(engine, "alo", 21)

    async def test_at_most_once_client_that_reconnects_gets_nothing_twice(
        self, engine_with: EngineFactory, adapter: BrokerAdapter
    ) -> None:
        async with self._engine(engine_with, adapter, "at_most_once") as engine:
            # The events wait in the broker before the client comes (where the broker keeps
            # them for a client that has no session), so the first session can take no more
            # than it is sent; what it had taken but not sent is lost with it (at most once).
            if adapter.keeps_for_absent_clients:
                await adapter.publish("reconnect", *numbered(20))
            async with open_ws(ws_url(engine, "ws", "amo")) as first:
                if not adapter.keeps_for_absent_clients:
                    await adapter.publish("reconnect", *numbered(20))
                seen = [await message(first) for _ in range(5)]
            await gone(engine)
            async with open_ws(ws_url(engine, "ws", "amo")) as second:
                await adapter.publish("reconnect", b"end")
                while (received := await message(second)) != "end":
                    seen.append(received)
            await gone(engine)
            await adapter.settled(engine, "amo", None)
        assert len(seen) == len(set(seen))
        assert seen[:5] == ["000", "001", "002", "003", "004"]
