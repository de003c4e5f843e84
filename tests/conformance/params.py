"""Client-chosen streams for every broker, through the engine with real web clients.

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
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import trio
from httpx_sse import ServerSentEvent, aconnect_sse

from mediation.endpoints import EndpointState
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL

from ..conftest import EngineFactory, clients_gone, envelope, open_ws, url

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


@asynccontextmanager
async def sse_on(
    client: httpx.AsyncClient, engine: MediationEngine, path: str, **headers: str
) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
    """An open SSE stream on ``path``, past its ``session`` event."""
    async with aconnect_sse(client, "GET", url(engine, "sse", path), headers=headers) as source:
        assert source.response.status_code == 200, source.response.status_code
        events = source.aiter_sse()
        try:
            with trio.fail_after(WAIT):
                assert (await anext(events)).event == "session"
            yield events
        finally:
            await source.response.aclose()
            with suppress(httpx.ReadError, httpx.StreamError):
                async for _ in events:
                    pass


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
