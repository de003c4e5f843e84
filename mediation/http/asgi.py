"""Requests and responses for the ASGI-shaped apps on our HTTP server (:mod:`.server`): the
HTTP entrypoints and the health server.

We write plain ASGI apps rather than using a framework: each HTTP entrypoint has one to four paths,
and streaming (SSE) needs direct control of the response (no framework response timeout, the final
chunk on shutdown). How an entrypoint serves its apps (a client connection counted per request)
is :func:`mediation.entrypoints._requests.serve_listener`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qs

import trio

from ..errors import MediationError, MessageTooLarge, response_headers
from .server import ASGIApp as ASGIApp
from .server import Message as Message
from .server import Receive as Receive
from .server import Scope as Scope
from .server import Send as Send

log = logging.getLogger(__name__)


def header_map(scope: Scope) -> dict[str, str]:
    """A request's headers by name (lower case). The headers that must not be repeated
    (identity, authorization, origin, ...) were refused by the server if they were; of the
    others, the first wins. Values are ASCII (the server refuses other bytes)."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1")
        if key not in headers:
            headers[key] = value.decode("latin-1")
    return headers


def query_map(scope: Scope) -> dict[str, list[str]]:
    """A request's query parameters, as :func:`urllib.parse.parse_qs` gives them."""
    query: bytes = scope.get("query_string", b"")
    return parse_qs(query.decode("latin-1")) if query else {}


def peer_certificate(scope: Scope) -> dict[str, Any] | None:
    """The client certificate the TLS handshake verified (as ``ssl.SSLSocket.getpeercert()``
    gives it), or None: plain HTTP, or TLS without mutual authentication."""
    extensions = scope.get("extensions")
    if extensions is None or "tls" not in extensions:
        return None
    certificate: dict[str, Any] | None = extensions["tls"]["peer_certificate"]
    return certificate


class Request:
    """The parts of an ASGI HTTP scope the entrypoints use."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        # As received (still percent-encoded): path parameters are decoded once, by
        # mediation.params, after the path is split into segments.
        self.raw_path: str = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        self.headers = header_map(scope)
        self.query = query_map(scope)
        self.peer_certificate = peer_certificate(scope)
        self._receive = receive

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    async def body(self, limit: int) -> bytes:
        """The whole body; :class:`MessageTooLarge` past ``limit`` bytes (read no further)."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise MessageTooLarge(f"body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise trio.BrokenResourceError("client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise MessageTooLarge(f"body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def wait_disconnect(self) -> None:
        """Return when the client goes away (only meaningful once the body has been read)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass


def _encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


_JSON: Final = (b"content-type", b"application/json")


async def respond(
    send: Send, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> None:
    if headers:
        encoded = _encode_headers({"content-length": str(len(body)), **headers}.items())
    else:
        encoded = [(b"content-length", b"%d" % len(body))]
    await _respond(send, status, body, encoded)


async def respond_json(
    send: Send, status: int, document: object, headers: Mapping[str, str] | None = None
) -> None:
    body = json.dumps(document, separators=(",", ":")).encode()
    await respond_encoded_json(send, status, body, headers)


async def respond_encoded_json(
    send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> None:
    """A JSON answer already encoded (the hot paths format theirs without :mod:`json`)."""
    encoded = [(b"content-length", b"%d" % len(body)), _JSON]
    if headers:
        encoded += _encode_headers(headers.items())
    await _respond(send, status, body, encoded)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, error: MediationError) -> None:
    """The documented status for a domain error, with a JSON body saying why."""
    log.info("request refused", extra={"status": error.http_status, "reason": str(error)})
    await respond_json(
        send,
        error.http_status,
        {"error": str(error) or type(error).__name__},
        response_headers(error),
    )
