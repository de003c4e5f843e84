"""How entrypoints are served on a port (:mod:`mediation.http.server`): one server per listener
(:mod:`mediation.listeners`), which hands each request to the entrypoint it is for. Each request
is counted as a client connection of the engine (shutdown waits for it), each unexpected error
on the entrypoint whose request it was."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass

import trio

from ..config import EntrypointConfig
from ..context import EngineContext
from ..http.asgi import Receive, Request, Scope, Send, respond_json
from ..http.server import Upgrade, WebSocketHandler, serve_http
from ..http.tls import ServerTLS
from ..listeners import Listener, Router

RequestHandler = Callable[[Request, Send], Awaitable[None]]


@dataclass(frozen=True)
class Handlers:
    """How one entrypoint answers what its listener gives it: ``request`` every request but a
    WebSocket handshake, ``upgrade`` WebSocket handshakes (a WebSocket entrypoint)."""

    request: RequestHandler | None = None
    upgrade: WebSocketHandler | None = None


OpenHandlers = Callable[[EntrypointConfig, EngineContext], AbstractAsyncContextManager[Handlers]]


async def serve_listener(
    listener: Listener,
    open_handlers: OpenHandlers,
    context: EngineContext,
    host: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the listener's entrypoints on its port until cancelled; reports the bound port.

    A request is for the entrypoint :meth:`Router.pick` names; none: ``404``. A plain request
    on a port with only WebSocket entrypoints is ``426`` (as a WebSocket entrypoint alone
    answers it); a handshake on a port without any is ``400`` (the server answers it). A
    request whose head is over ``max_header_bytes`` is answered 431 by the server, before any
    entrypoint is chosen: the listener's settings are its entrypoints' (the config checked
    they agree)."""
    router = Router(listener.entrypoints)
    errors = context.telemetry.connection_errors
    async with AsyncExitStack() as stack:
        handlers = {
            entrypoint.name: await stack.enter_async_context(open_handlers(entrypoint, context))
            for entrypoint in listener.entrypoints
        }

        def pick(scope: Scope, *, websocket: bool) -> str | None:
            return router.pick(websocket=websocket, raw_path=_raw_path(scope))

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if not router.serves(websocket=False):
                await respond_json(
                    send,
                    426,
                    {"error": "this port serves WebSocket only"},
                    {"upgrade": "websocket"},
                )
                return
            name = pick(scope, websocket=False)
            handle = None if name is None else handlers[name].request
            if handle is None:
                await respond_json(send, 404, {"error": "not found"})
                return
            with context.client_connection():
                await handle(Request(scope, receive), send)

        async def upgrade(request: Upgrade) -> None:
            name = pick(request.scope, websocket=True)
            handle = None if name is None else handlers[name].upgrade
            if handle is None:
                await request.refuse(404, "not found")
                return
            await handle(request)

        def on_error(scope: Scope | None) -> None:
            name = None if scope is None else pick(scope, websocket=_is_handshake(scope))
            errors.labels(name or listener.label).inc()

        # The only WebSocket entrypoint of its listener gets the handshakes itself: a dispatching
        # coroutine would stay on the stack of every WebSocket connection for its life.
        sole = router.sole(websocket=True)
        direct = None if sole is None else handlers[sole].upgrade
        first = listener.entrypoints[0]
        await serve_http(
            app,
            host,
            listener.port,
            max_header_bytes=first.max_header_bytes,
            header_timeout=first.header_timeout,
            body_timeout=first.body_timeout,
            websocket=direct or (upgrade if router.serves(websocket=True) else None),
            on_error=on_error,
            tls=ServerTLS.from_config(first),
            task_status=task_status,
        )


def _raw_path(scope: Scope) -> str:
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw.decode("latin-1")


def _is_handshake(scope: Scope) -> bool:
    """Whether the request was a WebSocket handshake (its first ``Upgrade`` says websocket, as
    the server decides it)."""
    for name, value in scope["headers"]:
        if name == b"upgrade":
            return bool(value.strip().lower() == b"websocket")
    return False
