"""How an HTTP entrypoint serves its requests on the HTTP server (:mod:`mediation.http.server`):
each request counted as a client connection of the engine, server errors counted per entrypoint."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..config import EntrypointConfig
from ..context import EngineContext
from ..http.asgi import Receive, Request, Scope, Send
from ..http.server import serve_http
from ..http.tls import ServerTLS


async def serve_requests(
    handle: Callable[[Request, Send], Awaitable[None]],
    context: EngineContext,
    host: str,
    config: EntrypointConfig,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handle(request, send)`` for every HTTP request on the entrypoint's port, each
    counted as a client connection (shutdown waits for it). A request whose head is over
    ``max_header_bytes`` is answered 431 by the server (:mod:`mediation.http.server`), whether
    it arrived whole or not."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        with context.client_connection():
            await handle(Request(scope, receive), send)

    await serve_http(
        app,
        host,
        config.port,
        max_header_bytes=config.max_header_bytes,
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
        on_error=context.telemetry.connection_errors.labels(config.name).inc,
        tls=ServerTLS.from_config(config),
        task_status=task_status,
    )
