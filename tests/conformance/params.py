"""Client-chosen streams for every broker, through the engine with real web clients.

:meth:`ParamsConformance.test_several_subscriptions_per_session`: clients of ``/orders`` with
``?order_id=A&order_id=B`` (a WebSocket on 4 and 5, an SSE stream on 7 and 8, a poller on 9 and
10) receive both of their orders, each event naming its subscription; the WebSocket client then
subscribes to 6 and unsubscribes from 5 and receives only 4 and 6; the broker-side subscription
of each order exists from its subscribe to its unsubscribe or the client's disconnect
(:meth:`ParamsAdapter.consumers`).


Each broker's test module subclasses :class:`ParamsConformance` and provides the
``params_adapter`` fixture (a :class:`ParamsAdapter`: the endpoint's config table, whose
downstream and upstream names both hold ``{order_id}``, and whatever the broker needs before a
client may use the names of orders ``1``, ``2`` and ``3``). Every entrypoint has the path
``/orders/{order_id}``: a WebSocket client on ``/orders/1``, an SSE client on ``/orders/2`` and a
polling client on ``/orders/3/subscribe`` each receive exactly what was POSTed to their own
``/orders/N``, in order, and nothing of the others'.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import trio
from httpx_sse import ServerSentEvent

from mediation.endpoints import EndpointState
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL

from ..conftest import EngineFactory, clients_gone, envelope, open_ws, sse_events, url

WAIT = 20.0
ORDERS = ("1", "2", "3")
PATH = "/orders/{order_id}"


class ParamsAdapter:
    """How the scenario drives one broker. Subclass it in the broker's test module."""

    name = "broker"

    def table(self) -> dict[str, Any]:
        """The endpoint's config table (``type`` and ``config``): what is published to the
        upstream name of order N reaches the consumers of the downstream name of order N."""
        raise NotImplementedError

    async def prepare(self, orders: tuple[str, ...]) -> None:
        """Whatever the broker needs before the names of ``orders`` are used (Kafka topics,
        queues); nothing by default."""

    async def consumers(self, engine: MediationEngine, orders: tuple[str, ...]) -> int:
        """How many broker-side subscriptions (consumers, bound session queues, granted MQTT
        subscriptions, group members) the names of ``orders`` have now, counted at the broker
        where it can say (see each broker's module)."""
        raise NotImplementedError


def sse_on(
    client: httpx.AsyncClient, engine: MediationEngine, path: str, **headers: str
) -> AbstractAsyncContextManager[AsyncIterator[ServerSentEvent]]:
    """An open SSE stream of the "sse" entrypoint on ``path``, past its ``session`` event."""
    return sse_events(client, engine, "sse", path=path, **headers)


class ParamsConformance:
    async def test_each_client_receives_only_its_own_orders(
        self, engine_with: EngineFactory, params_adapter: ParamsAdapter
    ) -> None:
        name = params_adapter.name
        await params_adapter.prepare(ORDERS)
        entrypoints = {
            kind: {"type": kind, "path": PATH} for kind in ("websocket", "sse", "http_get")
        }
        entrypoints["post"] = {"type": "http_post", "path": PATH}
        routes = [
            {"source": name, "target": "websocket", "delivery_guarantee": "at_least_once"},
            {"source": name, "target": "sse"},
            {"source": name, "target": "http_get", "delivery_guarantee": "at_least_once"},
            {"source": "post", "target": name, "delivery_guarantee": "at_least_once"},
        ]
        async with (
            engine_with(
                entrypoints={**entrypoints, "sse": entrypoints.pop("sse")},
                routes=routes,
                endpoints={name: params_adapter.table()},
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as client,
        ):
            with trio.fail_after(WAIT):
                await engine.endpoints[name].state.wait_value(EndpointState.UP)
            poller = {"X-Client-ID": "p3"}
            subscribed = await client.post(
                url(engine, "http_get", "/orders/3/subscribe"), headers=poller
            )
            assert subscribed.status_code == 201, subscribed.text
            ws_url = url(engine, "websocket", "/orders/1?client_id=w1", scheme="ws")
            async with (
                open_ws(ws_url, subprotocols=[SUBPROTOCOL]) as ws,
                sse_on(client, engine, "/orders/2", **{"X-Client-ID": "s2"}) as sse,
            ):
                for order, payload in [
                    ("1", "1-a"),
                    ("2", "2-a"),
                    ("3", "3-a"),
                    ("1", "1-b"),
                    ("3", "3-b"),
                    ("2", "2-b"),
                    ("1", "1-end"),
                    ("2", "2-end"),
                    ("3", "3-end"),
                ]:
                    posted = await client.post(
                        url(engine, "post", f"/orders/{order}"), content=payload
                    )
                    assert posted.status_code == 202, posted.text
                got_ws = []
                while not got_ws or got_ws[-1] != "1-end":
                    event = await envelope(ws)
                    got_ws.append(event["payload"])
                    await ws.send_message(json.dumps({"ack": event["id"]}))
                assert got_ws == ["1-a", "1-b", "1-end"]
                got_sse = []
                with trio.fail_after(WAIT):
                    while not got_sse or got_sse[-1] != "2-end":
                        got_sse.append((await anext(sse)).data)
                assert got_sse == ["2-a", "2-b", "2-end"]
                got_poll = []
                with trio.fail_after(WAIT):
                    while not got_poll or got_poll[-1] != "3-end":
                        polled = await client.get(
                            url(engine, "http_get", "/orders/3/poll"), headers=poller
                        )
                        if polled.status_code == 204:
                            continue
                        assert polled.status_code == 200, polled.text
                        got_poll.append(polled.text)
                        acked = await client.post(
                            url(engine, "http_get", "/orders/3/ack"),
                            headers={**poller, "X-Event-ID": polled.headers["x-event-id"]},
                        )
                        assert acked.status_code == 204
                assert got_poll == ["3-a", "3-b", "3-end"]
            gone = await client.delete(
                url(engine, "http_get", "/orders/3/unsubscribe"), headers=poller
            )
            assert gone.status_code == 200
            with trio.fail_after(WAIT):
                await clients_gone(engine)

    async def test_a_value_outside_its_pattern_is_refused_before_any_session(
        self, engine_with: EngineFactory, params_adapter: ParamsAdapter
    ) -> None:
        name = params_adapter.name
        async with (
            engine_with(
                entrypoints={
                    "sse": {"type": "sse", "path": PATH, "params": {"order_id": "[0-9]{1,12}"}}
                },
                routes=[{"source": name, "target": "sse"}],
                endpoints={name: params_adapter.table()},
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as client,
        ):
            for bad in ("%2B", "%23", "%2A", "1%2F2", "%2E%2E", "x", "1" * 13):
                refused = await client.get(
                    url(engine, "sse", f"/orders/{bad}"), headers={"Accept": "text/event-stream"}
                )
                assert refused.status_code == 400, (bad, refused.status_code)
            assert engine.sessions == []


MULTI = ("4", "5", "6", "7", "8", "9", "10")


async def _count_becomes(
    adapter: ParamsAdapter, engine: MediationEngine, orders: tuple[str, ...], expected: int
) -> None:
    """Wait (bounded, polling the broker) until ``orders`` have ``expected`` subscriptions."""
    with trio.fail_after(WAIT):
        while (count := await adapter.consumers(engine, orders)) != expected:  # noqa: ASYNC110
            await trio.sleep(0.1)  # the broker's count, not an event we could wait for
    assert count == expected


class SeveralSubscriptionsConformance:
    async def test_several_subscriptions_per_session(
        self, engine_with: EngineFactory, params_adapter: ParamsAdapter
    ) -> None:
        adapter = params_adapter
        name = adapter.name
        await adapter.prepare(MULTI)
        query = {"order_id": "[0-9]{1,12}"}
        entrypoints: dict[str, Any] = {
            kind: {"type": kind, "path": "/orders", "params": query}
            for kind in ("websocket", "sse", "http_get")
        }
        entrypoints["post"] = {"type": "http_post", "path": PATH}
        routes = [
            {"source": name, "target": "websocket", "delivery_guarantee": "at_least_once"},
            {"source": name, "target": "sse"},
            {"source": name, "target": "http_get", "delivery_guarantee": "at_least_once"},
            {"source": "post", "target": name, "delivery_guarantee": "at_least_once"},
        ]
        async with (
            engine_with(
                entrypoints=entrypoints, routes=routes, endpoints={name: adapter.table()}
            ) as engine,
            httpx.AsyncClient(timeout=WAIT) as client,
        ):
            with trio.fail_after(WAIT):
                await engine.endpoints[name].state.wait_value(EndpointState.UP)

            async def post(order: str, payload: str, *, nobody_ok: bool = False) -> None:
                posted = await client.post(url(engine, "post", f"/orders/{order}"), content=payload)
                if nobody_ok and "NO_ROUTE" in posted.text:
                    return  # RabbitMQ's mandatory publish: no queue is bound for it any more
                assert posted.status_code == 202, posted.text

            poller = {"X-Client-ID": "p9"}
            subscribed = await client.post(
                url(engine, "http_get", "/orders/subscribe?order_id=9&order_id=10"),
                headers=poller,
            )
            assert subscribed.status_code == 201, subscribed.text
            ws_url = url(engine, "websocket", "/orders?order_id=4&order_id=5", scheme="ws")
            async with (
                open_ws(ws_url, subprotocols=[SUBPROTOCOL]) as ws,
                sse_on(client, engine, "/orders?order_id=7&order_id=8") as sse,
            ):
                await _count_becomes(adapter, engine, ("4", "5", "7", "8", "9", "10"), 6)
                for order in ("4", "5", "7", "8", "9", "10"):
                    await post(order, f"{order}-a")
                for order in ("4", "5", "7", "8", "9", "10"):
                    await post(order, f"{order}-b")

                async def from_ws(count: int) -> list[tuple[str, str]]:
                    got = []
                    while len(got) < count:
                        event = await envelope(ws)
                        assert "ack" not in event, event
                        got.append((event["payload"], event["subscription"]))
                        await ws.send_message(json.dumps({"ack": event["id"]}))
                    return got

                got_ws = await from_ws(4)
                by_order = {payload.split("-")[0]: sub for payload, sub in got_ws}
                assert sorted(p for p, _ in got_ws) == ["4-a", "4-b", "5-a", "5-b"]
                assert [p for p, _ in got_ws if p.startswith("4")] == ["4-a", "4-b"]
                assert len(set(by_order.values())) == 2
                got_sse = []
                with trio.fail_after(WAIT):
                    while len(got_sse) < 4:
                        event = await anext(sse)
                        got_sse.append((event.data, event.event))
                assert sorted(p for p, _ in got_sse) == ["7-a", "7-b", "8-a", "8-b"]
                assert len({e for _, e in got_sse}) == 2 and "message" not in {
                    e for _, e in got_sse
                }
                got_poll = []
                with trio.fail_after(WAIT):
                    while len(got_poll) < 4:
                        polled = await client.get(
                            url(engine, "http_get", "/orders/poll"), headers=poller
                        )
                        if polled.status_code == 204:
                            continue
                        assert polled.status_code == 200, polled.text
                        got_poll.append((polled.text, polled.headers["x-subscription"]))
                        acked = await client.post(
                            url(engine, "http_get", "/orders/ack"),
                            headers={**poller, "X-Event-ID": polled.headers["x-event-id"]},
                        )
                        assert acked.status_code == 204
                assert sorted(p for p, _ in got_poll) == ["10-a", "10-b", "9-a", "9-b"]
                assert len({s for _, s in got_poll}) == 2

                # The WebSocket client subscribes to 6 and leaves 5.
                await ws.send_message(json.dumps({"subscribe": {"order_id": "6"}}))
                subscribed_6 = (await envelope(ws))["ack"]
                await _count_becomes(adapter, engine, ("6",), 1)
                await ws.send_message(json.dumps({"unsubscribe": {"order_id": "5"}}))
                assert (await envelope(ws))["ack"] == by_order["5"]
                await _count_becomes(adapter, engine, ("5",), 0)
                await ws.send_message(json.dumps({"unsubscribe": {"order_id": "5"}}))
                refused = await envelope(ws)
                assert refused["nack"] == by_order["5"] and "not subscribed" in refused["error"]
                for order in ("5", "6", "4"):
                    await post(order, f"{order}-c", nobody_ok=order == "5")
                got_after = await from_ws(2)
                assert sorted(got_after) == sorted([("4-c", by_order["4"]), ("6-c", subscribed_6)])
            gone = await client.delete(
                url(engine, "http_get", "/orders/unsubscribe"), headers=poller
            )
            assert gone.status_code == 200
            with trio.fail_after(WAIT):
                await clients_gone(engine)
            await _count_becomes(adapter, engine, MULTI, 0)
