"""``/readyz`` says 200 only once every entrypoint accepts connections (issue 12, finding 11).

The engine starts its health server before its entrypoints, so that a load balancer can poll it
while the engine starts; these tests watch the start from outside, on real sockets: the health
port is known as soon as it listens (a wrapper around the engine's ``serve_http``), the engine
object as soon as it exists (a subclass recording itself), before ``open_mediation_engine``
hands it over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio

import mediation.engine
from mediation.config import Config
from mediation.engine import MediationEngine, open_mediation_engine

from .conftest import make_config
from .test_engine import ENTRYPOINTS, ROUTES

# One entrypoint of each type, all on the memory endpoint.
ALL_PORTS = {*ENTRYPOINTS, "health"}


@dataclass
class Start:
    """An engine being started in the background, watched from outside."""

    health_listening: trio.Event = field(default_factory=trio.Event)
    health_port: int = 0
    engines: list[MediationEngine] = field(default_factory=list)
    block_began: trio.Event = field(default_factory=trio.Event)

    @property
    def engine(self) -> MediationEngine:
        [engine] = self.engines
        return engine

    async def readyz(self, http: httpx.AsyncClient) -> httpx.Response:
        return await http.get(f"http://127.0.0.1:{self.health_port}/readyz")


@pytest.fixture
def start(monkeypatch: pytest.MonkeyPatch) -> Start:
    watched = Start()
    serve_http = mediation.engine.serve_http

    async def serve_health(
        *args: Any, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED, **kwargs: Any
    ) -> None:
        async def serve(*, task_status: trio.TaskStatus[int]) -> None:
            await serve_http(*args, task_status=task_status, **kwargs)

        async with trio.open_nursery() as nursery:
            watched.health_port = await nursery.start(serve)
            watched.health_listening.set()
            task_status.started(watched.health_port)

    class RecordedEngine(MediationEngine):
        def __init__(self, config: Config) -> None:
            super().__init__(config)
            watched.engines.append(self)

    monkeypatch.setattr(mediation.engine, "serve_http", serve_health)
    monkeypatch.setattr(mediation.engine, "MediationEngine", RecordedEngine)
    return watched


@asynccontextmanager
async def engine_in_background(start: Start) -> AsyncIterator[trio.Event]:
    """Start the engine in the background (the block begins at once); it stops once the event
    given is set, or after the block."""
    stop = trio.Event()

    async def run() -> None:
        config = make_config(entrypoints=ENTRYPOINTS, routes=ROUTES)
        async with open_mediation_engine(config):
            start.block_began.set()
            await stop.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield stop
        stop.set()


async def connect_to_all(ports: dict[str, int]) -> dict[str, str]:
    """Connect to every port at once: name -> "accepted", or the error a refusal raised."""
    outcomes: dict[str, str] = {}

    async def connect(name: str, port: int) -> None:
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError as error:
            outcomes[name] = f"refused: {error}"
        else:
            outcomes[name] = "accepted"
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for name, port in ports.items():
            nursery.start_soon(connect, name, port)
    return outcomes


async def test_every_port_accepts_connections_once_readyz_says_200(start: Start) -> None:
    with trio.fail_after(10):
        async with engine_in_background(start), httpx.AsyncClient() as http:
            await start.health_listening.wait()
            # Poll from the moment the health server listens, as a load balancer would.
            while (ready := await start.readyz(http)).status_code != 200:
                assert ready.status_code == 503
            ports = dict(start.engine.ports)  # what the embed API says at that moment
            assert set(ports) == ALL_PORTS
            assert await connect_to_all(ports) == {name: "accepted" for name in ALL_PORTS}
            assert ready.json() == {"status": "ready", "endpoints": {"mem": "up"}}


def hold_until(
    entered: trio.Event,
    release: trio.Event,
    serving: Callable[..., AbstractAsyncContextManager[Any]],
) -> Callable[..., AbstractAsyncContextManager[Any]]:
    """An entrypoint's ``serving`` that waits for ``release`` before its listener may listen."""

    @asynccontextmanager
    async def held(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        entered.set()
        await release.wait()
        async with serving(*args, **kwargs) as handlers:
            yield handlers

    return held


async def test_readyz_is_503_while_the_entrypoints_are_starting(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The polling entrypoint (the last one started) waits before it listens.
    import mediation.entrypoints.http_get as http_get

    entered, release = trio.Event(), trio.Event()
    monkeypatch.setattr(http_get, "serving", hold_until(entered, release, http_get.serving))
    with trio.fail_after(10):
        async with engine_in_background(start), httpx.AsyncClient() as http:
            await entered.wait()
            not_ready = await start.readyz(http)
            assert (not_ready.status_code, not_ready.json()) == (
                503,
                {"status": "not ready", "entrypoints": "starting", "endpoints": {"mem": "up"}},
            )
            # engine.ports has the ports that listen, and only those.
            ports = dict(start.engine.ports)
            assert set(ports) == {"health", "ws", "sse", "post"}
            assert await connect_to_all(ports) == {name: "accepted" for name in ports}
            assert not start.block_began.is_set()

            release.set()
            await start.block_began.wait()
            ready = await start.readyz(http)
            assert (ready.status_code, ready.json()) == (
                200,
                {"status": "ready", "endpoints": {"mem": "up"}},
            )


async def test_readyz_is_503_once_shutdown_begins(start: Start) -> None:
    with trio.fail_after(10):
        async with engine_in_background(start) as stop, httpx.AsyncClient() as http:
            await start.block_began.wait()
            assert (await start.readyz(http)).status_code == 200
            # A POST whose body has not all come holds the shutdown (up to shutdown_timeout).
            async with await trio.open_tcp_stream("127.0.0.1", start.engine.ports["post"]) as post:
                await post.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhalf")
                await start.engine._context.connections.wait_value(lambda count: count > 0)
                stop.set()
                while (not_ready := await start.readyz(http)).status_code == 200:
                    pass
                assert (not_ready.status_code, not_ready.json()) == (
                    503,
                    {
                        "status": "not ready",
                        "entrypoints": "shutting down",
                        "endpoints": {"mem": "up"},
                    },
                )
