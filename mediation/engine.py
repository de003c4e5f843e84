"""The engine: one nursery holding endpoints, entrypoints, the health server and the watcher.

::

    async with open_mediation_engine(load_config("mediation.toml")) as engine:
        print(engine.ports)          # {"ws-inbound": 8066, ..., "health": 9091}
        print(engine.sessions)       # [SessionInfo(...), ...]
        await engine.reload(new_config)

Start order: the packet log flusher and the endpoint watches (:class:`mediation.context.DownWatch`),
endpoints (each reports started at once and connects in the background), the bridges
(endpoint -> endpoint routes, :mod:`mediation.bridge`), the health server, then the entrypoints,
so every port in ``engine.ports`` is bound when the block begins. Entrypoints on one port share
its listener (:mod:`mediation.listeners`), and ``engine.ports`` names that port for each.
``engine.ports`` only ever holds ports that accept connections: each is added once its server
listens. The health server comes
first so that a load balancer can poll it during a slow start, but its ``/readyz`` says 503
(``"entrypoints": "starting"``) until the last entrypoint listens, which the engine records in
``EngineContext.entrypoints_listening``; after that, 200 whenever every endpoint is up.
Shutdown (leaving the block, or the CLI's SIGINT/SIGTERM): refuse new sessions (``/readyz`` 503
``"entrypoints": "shutting down"`` from then on), close every session
with :class:`EngineShuttingDown` (WebSocket 1001, SSE stream ended, unconfirmed events nacked),
wait for them up to ``shutdown_timeout``, then cancel the servers and disconnect the endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial

import trio
from trio_util import AsyncValue

from .bridge import run_bridges
from .client_state import ClientLedger
from .config import Config
from .context import EngineContext
from .cursors import Cursors
from .endpoints import Endpoint, create_endpoint
from .entrypoints import serve_listener
from .errors import ConfigError, EngineShuttingDown, RouteChanged
from .exception_groups import single_error
from .health import health_app
from .http.server import serve_http
from .listeners import plan_listeners
from .routing import RouteTable
from .session import SessionInfo
from .telemetry import Telemetry

log = logging.getLogger(__name__)


class MediationEngine:
    """A running engine; get one from :func:`open_mediation_engine`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # One ledger per endpoint: the session layer counts clients in it (max_clients), the
        # endpoint reads its ttl (and Kafka's sweep when each client left).
        clients = {
            e.name: ClientLedger(ttl=e.client_state_ttl, max_clients=e.max_clients)
            for e in config.endpoints
        }
        self.endpoints: Mapping[str, Endpoint] = {
            e.name: create_endpoint(e, clients[e.name]) for e in config.endpoints
        }
        self._context = EngineContext(
            endpoints=self.endpoints,
            clients=clients,
            telemetry=Telemetry(
                packet_logging=config.engine.packet_log,
                endpoint_states=lambda: {n: e.state.value for n, e in self.endpoints.items()},
                clients=clients,
            ),
            routes=RouteTable(config.routes),
            cursors=Cursors(config.engine.cursor_secret),  # fixed for the engine's life
        )
        self._bridge_routes = AsyncValue(self._context.routes.bridges)
        self.ports: dict[str, int] = {}

    @property
    def sessions(self) -> list[SessionInfo]:
        """A snapshot of the live client sessions."""
        return [session.info() for session in self._context.sessions.values()]

    async def reload(self, config: Config) -> None:
        """Replace the routes at once; sessions whose routes changed are closed, the rest untouched.

        Entrypoints and endpoints are fixed for the life of the engine: a config that changes them
        is refused with :class:`ConfigError` and the running routes stay.
        """
        if (
            config.entrypoints != self.config.entrypoints
            or config.endpoints != self.config.endpoints
        ):
            raise ConfigError(
                f"{config.source_path or '<config>'}: entrypoints and endpoints cannot change "
                "on reload (restart the engine); routes were not changed"
            )
        table = RouteTable(config.routes)
        self._context.routes = table
        self._bridge_routes.value = table.bridges
        self.config = config
        for session in list(self._context.sessions.values()):
            if table.for_entrypoint(session.entrypoint) != session.routes:
                session.close(RouteChanged("route changed by a configuration reload"))
        log.info("routes reloaded", extra={"routes": len(config.routes)})

    async def _serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            await nursery.start(self._context.telemetry.run)
            await nursery.start(self._context.run_watches)
            for endpoint in self.endpoints.values():
                await nursery.start(endpoint.run)
            await nursery.start(run_bridges, self._context, self._bridge_routes)
            self.ports["health"] = await nursery.start(
                partial(
                    serve_http,
                    on_error=lambda _scope: self._context.telemetry.connection_errors.labels(
                        "health"
                    ).inc(),
                ),
                health_app(self._context),
                config.engine.host,
                config.engine.health_port,
            )
            # One listener per port: entrypoints sharing a port share its server.
            for listener in plan_listeners(config.entrypoints):
                port = await nursery.start(
                    serve_listener, listener, self._context, config.engine.host
                )
                for entrypoint in listener.entrypoints:
                    self.ports[entrypoint.name] = port
            # Every entrypoint reported its port once listening: /readyz may now say 200.
            self._context.entrypoints_listening = True
            if config.source_path is not None and config.engine.reload_interval > 0:
                from .watcher import watch_config

                nursery.start_soon(
                    watch_config, self, config.source_path, config.engine.reload_interval
                )
            task_status.started()

    async def _shut_down(self) -> None:
        context = self._context
        context.shutting_down = True
        for session in list(context.sessions.values()):
            session.close(EngineShuttingDown("the engine is shutting down"))
        with trio.move_on_after(self.config.engine.shutdown_timeout) as waiting:
            await context.connections.wait_value(0)
        if waiting.cancelled_caught:
            log.warning(
                "shutdown timeout: clients cut off", extra={"clients": context.connections.value}
            )


@asynccontextmanager
async def open_mediation_engine(config: Config) -> AsyncIterator[MediationEngine]:
    """Run the engine for the duration of the block (see the module docstring)."""
    engine = MediationEngine(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine._serve)
            try:
                yield engine
            finally:
                with trio.CancelScope(shield=True):
                    await engine._shut_down()
                nursery.cancel_scope.cancel(reason="engine shut down")
    except BaseExceptionGroup as group:
        raise single_error(group) from None
    finally:
        engine._context.telemetry.flush()  # packet lines of the very last moments
