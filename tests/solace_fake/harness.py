"""Running the Solace endpoint on the fake: what the Solace test modules share."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from mediation.config import SolaceConfig
from mediation.endpoints.base import EndpointState
from mediation.endpoints.solace import SolaceAPI, SolaceEndpoint

from ._broker import FakeBroker, Stored

API = "tests.solace_fake"
WAIT = 10.0


def fake_table(broker: FakeBroker, **config: Any) -> dict[str, Any]:
    """The ``config`` table of a solace endpoint on ``broker``: topic ``t/events`` both ways
    unless given, fast retries."""
    settings: dict[str, Any] = {
        "host": broker.host,
        "api": API,
        "topic_in": "t/events",
        "topic_out": "t/events",
        "retry_interval": 0.05,
    }
    return {**settings, **config}


def publish_raw(
    broker: FakeBroker,
    payload: bytes | str,
    topic: str = "t/events",
    *,
    persistent: bool = True,
    **properties: Any,
) -> None:
    """Publish as some other Solace client would (no application message id)."""
    stored = Stored(
        payload=payload if isinstance(payload, bytes) else None,
        text=payload if isinstance(payload, str) else None,
        destination=topic,
        application_message_id=None,
        correlation_id=None,
        properties=properties,
    )
    broker.publish(stored, persistent=persistent)


def fake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("solace-fake-")]


@asynccontextmanager
async def running_endpoint(
    broker: FakeBroker, name: str = "sol", *, api: SolaceAPI | None = None, **config: Any
) -> AsyncIterator[SolaceEndpoint]:
    """The endpoint, connected to ``broker``; on leaving, stopped, with every thread it made the
    fake start joined."""
    endpoint = SolaceEndpoint(name, SolaceConfig(**fake_table(broker, **config)), api=api)
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(WAIT):
            await endpoint.state.wait_value(EndpointState.UP)
        yield endpoint
        nursery.cancel_scope.cancel()
    assert endpoint.state.value is EndpointState.DOWN
    assert not fake_threads(), fake_threads()
