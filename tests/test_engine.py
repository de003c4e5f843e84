"""The embed API: ports, sessions, reload, health, shutdown, and errors at the boundary."""

from __future__ import annotations

import socket
import threading
from contextlib import aclosing

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from mediation import ConfigError, ListenError, MediationEngine, open_mediation_engine

from .conftest import EngineFactory, make_config, open_ws, url

ENTRYPOINTS = {"ws": "websocket", "sse": "sse", "post": "http_post", "poll": "http_get"}
ROUTES = [
    {"source": "ws", "target": "mem"},
    {"source": "post", "target": "mem"},
    {"source": "mem", "target": "ws"},
    {"source": "mem", "target": "sse"},
    {"source": "mem", "target": "poll"},
]


async def test_every_port_is_bound_when_the_block_begins(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine:
        assert set(engine.ports) == {*ENTRYPOINTS, "health"}
        for port in engine.ports.values():
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.aclose()
    for port in engine.ports.values():
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_sessions_snapshot(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine:
        assert engine.sessions == []
        async with open_ws(url(engine, "ws", "/?client_id=alice", scheme="ws")):
            [session] = engine.sessions
            assert (
                session.client_id,
                session.entrypoint,
                session.routes,
                session.channel_depth,
            ) == (
                "alice",
                "ws",
                ("ws->mem", "mem->ws"),
                0,
            )
            async with httpx.AsyncClient() as http:
                health = (await http.get(url(engine, "health", "/healthz"))).json()
            assert health == {"status": "ok", "sessions": 1}


async def test_no_thread_or_connection_outlives_the_engine(engine_with: EngineFactory) -> None:
    threads_before = threading.active_count()
    async with engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine:
        async with open_ws(url(engine, "ws", scheme="ws")) as ws:
            await ws.send_message("x")
            assert await ws.get_message() == "x"
    assert threading.active_count() == threads_before
    assert engine.sessions == []
    assert engine._context.connections.value == 0


async def test_readyz_follows_the_endpoints_and_metrics_are_prometheus_text(
    engine_with: EngineFactory,
) -> None:
    async with (
        engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine,
        httpx.AsyncClient() as http,
    ):
        ready = await http.get(url(engine, "health", "/readyz"))
        assert (ready.status_code, ready.json()) == (
            200,
            {"status": "ready", "endpoints": {"mem": "up"}},
        )
        engine.endpoints["mem"].fail()
        ready = await http.get(url(engine, "health", "/readyz"))
        assert (ready.status_code, ready.json()) == (
            503,
            {"status": "not ready", "endpoints": {"mem": "down"}},
        )
        engine.endpoints["mem"].recover()
        await http.post(url(engine, "post"), content=b"counted")
        metrics = (await http.get(url(engine, "health", "/metrics"))).text
        assert 'mediation_messages_total{direction="upstream",route="post->mem"} 1.0' in metrics
        assert 'mediation_bytes_total{direction="upstream",route="post->mem"} 7.0' in metrics
        assert 'mediation_endpoint_state{endpoint="mem",state="up"} 1.0' in metrics
        assert "mediation_sessions" in metrics


async def test_settlements_are_counted_per_route_and_outcome(engine_with: EngineFactory) -> None:
    async with (
        engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine,
        httpx.AsyncClient() as http,
    ):
        async with open_ws(url(engine, "ws", scheme="ws")) as ws:
            for text in ("one", "two"):
                await ws.send_message(text)
                assert await ws.get_message() == text  # acked (auto) before it was written
        metrics = (await http.get(url(engine, "health", "/metrics"))).text
        assert 'mediation_settlements_total{outcome="ack",route="mem->ws"} 2.0' in metrics
        assert "# TYPE mediation_settlements_total counter" in metrics


async def test_reload_changes_routes_and_closes_only_the_sessions_it_touched(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine:
        async with open_ws(url(engine, "ws", scheme="ws")) as ws, httpx.AsyncClient() as http:
            async with (
                http.stream("GET", url(engine, "sse")) as sse,
                aclosing(sse.aiter_lines()) as lines,
            ):
                assert await anext(lines) == "event: session"
                # The WebSocket loses its upstream route; SSE's routes stay as they were.
                new_routes = [r for r in ROUTES if r["source"] != "ws"]
                await engine.reload(make_config(entrypoints=ENTRYPOINTS, routes=new_routes))
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1012
                assert [s.entrypoint for s in engine.sessions] == ["sse"]
                await http.post(url(engine, "post"), content=b"still flowing")
                async for line in lines:
                    if line.startswith("data: ") and "still flowing" in line:
                        break
        async with open_ws(url(engine, "ws", scheme="ws")) as ws:
            assert engine.sessions[0].routes == ("mem->ws",)


async def test_reload_refuses_to_change_entrypoints_and_keeps_the_routes(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine:
        before = engine._context.routes
        with pytest.raises(ConfigError, match="restart"):
            await engine.reload(make_config(entrypoints={"ws": "websocket"}, routes=ROUTES[:1]))
        assert engine._context.routes is before


async def test_a_port_in_use_is_one_mediation_error_not_a_group() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = make_config(
            entrypoints={"ws": {"type": "websocket", "port": taken.getsockname()[1]}},
            routes=ROUTES[:1],
        )
        with pytest.raises(ListenError, match="cannot listen"):
            async with open_mediation_engine(config):
                pass


async def test_a_health_port_in_use_is_a_listen_error_too() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = make_config(
            entrypoints={"ws": "websocket"},
            routes=ROUTES[:1],
            engine={"health_port": taken.getsockname()[1]},
        )
        with pytest.raises(ListenError, match="cannot listen"):
            async with open_mediation_engine(config):
                pass


async def test_the_callers_own_exception_comes_out_unwrapped(engine_with: EngineFactory) -> None:
    class Mine(Exception):
        pass

    with pytest.raises(Mine):
        async with engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES):
            raise Mine


async def test_shutdown_waits_for_clients_to_be_told_then_stops(engine_with: EngineFactory) -> None:
    shut_down = trio.Event()

    async def run_engine(*, task_status: trio.TaskStatus[MediationEngine]) -> None:
        async with engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine:
            task_status.started(engine)
            await shut_down.wait()

    async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
        engine = await nursery.start(run_engine)
        async with (
            open_ws(url(engine, "ws", scheme="ws")) as ws,
            http.stream("GET", url(engine, "sse")) as sse,
            aclosing(sse.aiter_lines()) as lines,
        ):
            assert await anext(lines) == "event: session"
            assert (await anext(lines)).startswith("data: ")
            shut_down.set()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1001
            rest = [line async for line in lines]  # the stream ends cleanly: no protocol error
            assert "event: error" not in rest
