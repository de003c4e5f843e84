"""What the engine shares with its sessions, entrypoints, bridges and health server.

:class:`EngineContext` holds the endpoints, the current routes, the live sessions and the counts
shutdown and ``/readyz`` wait on; the engine makes one and hands it down. :class:`DownWatch`
(one per endpoint, run by the engine) cancels the waits registered with it when its endpoint
goes down.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio
from trio_util import AsyncValue

from .client_state import ClientLedger
from .cursors import Cursors
from .endpoint_state import EndpointState
from .endpoints.base import Endpoint
from .routing import RouteTable
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .session import Session


@dataclass
class EngineContext:
    """What sessions and entrypoints share: the endpoints, the current routes, the live sessions."""

    endpoints: Mapping[str, Endpoint]
    telemetry: Telemetry
    routes: RouteTable
    sessions: dict[str, Session] = field(default_factory=dict)
    # Per endpoint: the clients it keeps per-client broker state for (max_clients).
    clients: Mapping[str, ClientLedger] = field(default_factory=dict)
    # Client connections being handled (sessions, and requests like a POST): shutdown waits for
    # them to have told their client, which happens after their session ended.
    connections: AsyncValue[int] = field(default_factory=lambda: AsyncValue(0))
    # Set once shutdown begins: no new sessions are admitted.
    shutting_down: bool = False
    # Set by the engine once every entrypoint listens (/readyz waits for it).
    entrypoints_listening: bool = False
    # Signs and checks the event ids that carry a broker position ([engine] cursor_secret).
    cursors: Cursors = field(default_factory=lambda: Cursors(None))
    # One per endpoint, run by the engine (run_watches): see DownWatch.
    watches: dict[str, DownWatch] = field(init=False)

    def __post_init__(self) -> None:
        self.watches = {name: DownWatch(endpoint) for name, endpoint in self.endpoints.items()}

    async def run_watches(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            for watch in self.watches.values():
                nursery.start_soon(watch.run)
            task_status.started()

    @contextmanager
    def client_connection(self) -> Iterator[None]:
        """Count one client's handler for its whole duration, including its goodbye."""
        self.connections.value += 1
        try:
            yield
        finally:
            self.connections.value -= 1

    def session_count(self, entrypoint: str) -> int:
        return sum(1 for s in self.sessions.values() if s.entrypoint == entrypoint)


class DownWatch:
    """Cancels the waits registered with it when its endpoint goes down.

    One task per endpoint watches the endpoint's state for every consumer waiting on a full
    session channel, so such a wait costs a cancel scope, not a task of its own.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._waits: set[trio.CancelScope] = set()

    async def run(self) -> None:
        state = self._endpoint.state
        while True:
            await state.wait_value(EndpointState.DOWN)
            for wait in self._waits:
                wait.cancel()
            await state.wait_value(lambda value: value is not EndpointState.DOWN)

    @contextmanager
    def cancel_when_down(self) -> Iterator[trio.CancelScope]:
        """A cancel scope cancelled if the endpoint is or goes down while it is entered."""
        with trio.CancelScope() as wait:
            if self._endpoint.state.value is EndpointState.DOWN:
                wait.cancel()
            self._waits.add(wait)
            try:
                yield wait
            finally:
                self._waits.discard(wait)
