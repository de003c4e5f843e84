"""The web leg alone: a server sending from memory, no broker (``python -m bench.raw ws|sse``).

Each connection asks for ``?n=COUNT&size=BYTES`` and gets that many ``x...`` messages as fast as the
server can send them, one message a send: the engine's own HTTP/1.1 server
(``mediation.http.server``) with its WebSocket connection (``mediation.http.websocket``) for
WebSocket, a plain ASGI app on the same server for SSE: what the engine is built on. The bound port
is written to ``--port-file`` once the server accepts connections.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import trio


def _params(query: str) -> tuple[int, int]:
    values = parse_qs(query)
    return int(values.get("n", ["1000"])[0]), int(values.get("size", ["100"])[0])


async def serve_ws(port_file: Path) -> None:
    from mediation.http.server import Upgrade, serve_http
    from mediation.http.websocket import WebSocket

    async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 426, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def handler(upgrade: Upgrade) -> None:
        n, size = _params(upgrade.scope["query_string"].decode())
        ws = await WebSocket.accept(upgrade, subprotocol=None, max_message_bytes=1 << 20)
        message = "x" + "." * (size - 1)
        for _ in range(n):
            await ws.send_message(message)
        await ws.aclose()

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(
                serve_http,
                refuse,
                "127.0.0.1",
                0,
                max_header_bytes=16384,
                header_timeout=10.0,
                websocket=handler,
            )
        )
        port_file.write_text(f"{port}\n")  # noqa: ASYNC240 - once, at start


async def serve_sse(port_file: Path) -> None:
    from mediation.http.server import serve_http

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        n, size = _params(scope["query_string"].decode())
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"event: session\ndata: {}\n\n"
        await send({"type": "http.response.body", "body": body, "more_body": True})
        data = b"x" + b"." * (size - 1)
        for i in range(n):
            event = b"id: %d\ndata: %s\n\n" % (i, data)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(serve_http, app, "127.0.0.1", 0, max_header_bytes=16384, header_timeout=10.0)
        )
        port_file.write_text(f"{port}\n")  # noqa: ASYNC240 - once, at start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("ws", "sse"))
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    trio.run(serve_ws if args.kind == "ws" else serve_sse, args.port_file)


if __name__ == "__main__":
    main()
