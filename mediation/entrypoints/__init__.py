"""Web-facing entrypoints, one module per protocol.

Each module has ``serving(config, context)``: an async context manager giving the entrypoint's
:class:`~._requests.Handlers` (what it answers requests and WebSocket handshakes with) for as
long as its listener serves. Listeners (:mod:`mediation.listeners`: one per port, several
entrypoints on one port when their paths differ) are served by :func:`serve_listener`. Every
client session goes through :func:`mediation.session.open_session`, so routing, acks and
lifecycle are the same for all of them; a module only speaks its protocol.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import trio

from ..config import EntrypointConfig
from ..context import EngineContext
from ..listeners import Listener
from . import _requests
from ._requests import Handlers


async def serve_listener(
    listener: Listener,
    context: EngineContext,
    host: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a listener's entrypoints on its port until cancelled; reports the bound port."""
    await _requests.serve_listener(listener, _serving, context, host, task_status=task_status)


def _serving(
    config: EntrypointConfig, context: EngineContext
) -> AbstractAsyncContextManager[Handlers]:
    if config.type == "websocket":
        from .websocket import serving
    elif config.type == "sse":
        from .sse import serving  # type: ignore[assignment]
    elif config.type == "http_post":
        from .http_post import serving  # type: ignore[assignment]
    else:
        from .http_get import serving  # type: ignore[assignment]
    return serving(config, context)  # type: ignore[arg-type]
