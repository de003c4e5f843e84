"""Web-facing entrypoints, one module per protocol.

Each module has ``serve(config, context, host, *, task_status)``: it listens on the entrypoint's
port, reports the bound port through ``task_status``, and serves until cancelled. Every client
session goes through :func:`mediation.session.open_session`, so routing, acks and lifecycle are
the same for all of them; a module only speaks its protocol.
"""

from __future__ import annotations

import trio

from ..config import EntrypointConfig
from ..context import EngineContext


async def serve_entrypoint(
    config: EntrypointConfig,
    context: EngineContext,
    host: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    if config.type == "websocket":
        from .websocket import serve
    elif config.type == "sse":
        from .sse import serve  # type: ignore[assignment]
    elif config.type == "http_post":
        from .http_post import serve  # type: ignore[assignment]
    else:
        from .http_get import serve  # type: ignore[assignment]
    await serve(config, context, host, task_status=task_status)  # type: ignore[arg-type]
