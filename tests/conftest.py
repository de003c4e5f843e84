"""Shared fixtures: engines on loopback with every port picked by the OS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import httpx
import pytest
import trio
from httpx_sse import ServerSentEvent, aconnect_sse
from trio_websocket import WebSocketConnection, open_websocket_url

from mediation.config import Config, build_config
from mediation.engine import MediationEngine, open_mediation_engine


def make_config(
    *,
    entrypoints: dict[str, str | dict[str, Any]],
    routes: list[dict[str, Any]],
    endpoints: dict[str, dict[str, Any]] | None = None,
    engine: dict[str, Any] | None = None,
) -> Config:
    """A config on loopback with port 0 everywhere.

    ``entrypoints`` maps name -> type, or name -> table (with ``type``); ``endpoints`` maps name
    -> table (default: one memory endpoint ``mem``); routes are given as tables.
    """
    tables = []
    for name, spec in entrypoints.items():
        table = {"type": spec} if isinstance(spec, str) else dict(spec)
        tables.append({"name": name, "port": 0, **table})
    endpoint_tables = [
        {"name": name, **table}
        for name, table in (endpoints or {"mem": {"type": "memory"}}).items()
    ]
    return build_config(
        {
            "engine": {
                "host": "127.0.0.1",
                "health_port": 0,
                "packet_log": False,
                **(engine or {}),
            },
            "entrypoints": tables,
            "endpoints": endpoint_tables,
            "routes": routes,
        }
    )


pytest_plugins = ["tests.brokers.fixtures", "tests.figures"]

EngineFactory = Callable[..., AbstractAsyncContextManager[MediationEngine]]


@pytest.fixture
def engine_with() -> EngineFactory:
    """``async with engine_with(entrypoints=..., routes=...) as engine:``, see :func:`make_config`."""

    @asynccontextmanager
    async def start(**kwargs: Any) -> AsyncIterator[MediationEngine]:
        async with open_mediation_engine(make_config(**kwargs)) as engine:
            yield engine

    return start


def url(engine: MediationEngine, entrypoint: str, path: str = "/", scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{engine.ports[entrypoint]}{path}"


@asynccontextmanager
async def open_ws(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    """trio-websocket's client, closing its socket even when the server closed first.

    (Its ``aclose`` returns early once a close reason is known, leaving the TCP socket to the
    garbage collector, which ``filterwarnings = error`` turns into a failure.)
    """
    async with open_websocket_url(url, **kwargs) as connection:
        try:
            yield connection
        finally:
            stream = connection._stream
    await stream.aclose()


async def clients_gone(engine: MediationEngine) -> None:
    """Wait until the engine has finished with every client (sessions ended, goodbyes said)."""
    await engine._context.connections.wait_value(0)


# Every wait for a web client in a shared helper is bounded: a broken engine fails, never hangs.
CLIENT_WAIT = 20.0


@asynccontextmanager
async def sse_events(
    client: httpx.AsyncClient,
    engine: MediationEngine,
    name: str = "sse",
    *,
    path: str = "/",
    **headers: str,
) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
    """An open SSE stream past its ``session`` event.

    On leaving, the connection is closed and the iteration run to its end: httpx leaves abandoned
    async generators to the garbage collector, which trio warns about (encode/httpx#3686).
    """
    async with aconnect_sse(client, "GET", url(engine, name, path), headers=headers) as source:
        assert source.response.status_code == 200
        events = source.aiter_sse()
        try:
            with trio.fail_after(CLIENT_WAIT):
                assert (await anext(events)).event == "session"
            yield events
        finally:
            await source.response.aclose()
            with suppress(httpx.ReadError, httpx.StreamError):
                async for _ in events:
                    pass


async def envelope(ws: WebSocketConnection) -> dict[str, Any]:
    """The next ``mediation.v1`` message, parsed."""
    with trio.fail_after(CLIENT_WAIT):
        document: dict[str, Any] = json.loads(await ws.get_message())
    return document
