"""Raw HTTP/1.1 clients over plain TCP: just enough of a request to open a session (WebSocket
upgrade, SSE, HTTP GET polling), then whatever the caller wants, misbehaviour included.

Shared by the resilience tests and ``scripts/soak.py``, which need sessions that a polite client
library would not hold (thousands at once, never reading, reset with an RST).
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Any

import trio

HOST = "127.0.0.1"


class RawClient:
    """A TCP client that speaks just enough HTTP to open a session, then misbehaves."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.received = b""

    @classmethod
    async def connect(cls, port: int, *, receive_buffer: int | None = None) -> RawClient:
        sock = trio.socket.socket()
        try:
            if receive_buffer is not None:  # before connect: a small window from the start
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await sock.connect((HOST, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes) -> None:
        while data:
            sent = await self.sock.send(data)
            data = data[sent:]

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            chunk = await self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self.received[:200]!r}")
            self.received += chunk
        before, _, self.received = self.received.partition(marker)
        return before

    def reset(self) -> None:
        """Abort the connection: the peer gets an RST, and nothing is ever read again."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class StreamReader:
    """Bytes from a Trio stream, taken up to a marker or by size; HTTP responses parsed by hand
    (tests that send what no client library would, and read exactly what came back)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some()
        self.buffer += data
        return bool(data)

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not await self._fill():
                raise EOFError(bytes(self.buffer))
        end = self.buffer.index(marker) + len(marker)
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError(bytes(self.buffer))
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def response_head(self) -> tuple[int, dict[str, str]]:
        head = (await self.read_until(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and a ``Content-Length`` body (none for ``head_only``: HEAD)."""
        status, headers = await self.response_head()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        return status, headers, await self.read_exactly(length)


def ws_upgrade(client_id: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /?client_id={client_id} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def sse_request(client_id: str) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n"
        f"X-Client-ID: {client_id}\r\n\r\n"
    ).encode()


def http_request(method: str, path: str, client_id: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nX-Client-ID: {client_id}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def open_ws_raw(port: int, client_id: str, **kw: Any) -> RawClient:
    client = await RawClient.connect(port, **kw)
    await client.send(ws_upgrade(client_id))
    head = await client.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return client


async def open_sse_raw(port: int, client_id: str, **kw: Any) -> RawClient:
    client = await RawClient.connect(port, **kw)
    await client.send(sse_request(client_id))
    head = await client.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    await client.read_until(b"event: session")
    return client


async def open_poll_raw(port: int, client_id: str) -> RawClient:
    """Subscribed, and with a long poll under way."""
    client = await RawClient.connect(port)
    await client.send(http_request("POST", "/subscribe", client_id))
    head = await client.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201"), head
    await client.read_until(b"}")
    await client.send(http_request("GET", "/poll", client_id))
    return client
