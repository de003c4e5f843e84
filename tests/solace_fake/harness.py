"""Running the Solace endpoint on the fake: what the Solace test modules share."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from mediation.config import SolaceConfig
from mediation.endpoints.base import EndpointState
from mediation.endpoints.solace import SolaceEndpoint

from ._broker import FakeBroker

API = "tests.solace_fake"
WAIT = 10.0


def fake_config(broker: FakeBroker, **config: Any) -> SolaceConfig:
    """A config for ``broker``: topic ``t/events`` both ways unless given, fast retries."""
    settings: dict[str, Any] = {
        "host": broker.host,
        "api": API,
        "topic_in": "t/events",
        "topic_out": "t/events",
        "retry_interval": 0.05,
    }
    return SolaceConfig(**{**settings, **config})


def fake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("solace-fake-")]


@asynccontextmanager
async def running_endpoint(
    broker: FakeBroker, name: str = "sol", **config: Any
) -> AsyncIterator[SolaceEndpoint]:
    """The endpoint, connected to ``broker``; on leaving, stopped, with every thread it made the
    fake start joined."""
    endpoint = SolaceEndpoint(name, fake_config(broker, **config))
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(WAIT):
            await endpoint.state.wait_value(EndpointState.UP)
        yield endpoint
        nursery.cancel_scope.cancel()
    assert endpoint.state.value is EndpointState.DOWN
    assert not fake_threads(), fake_threads()
