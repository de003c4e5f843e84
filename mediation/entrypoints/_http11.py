"""A small HTTP/1.1 server on Trio over h11, serving plain ASGI-shaped apps.

Why not hypercorn: our HTTP entrypoints answer many small requests on keep-alive connections,
and hypercorn's per-request machinery (an HTTPStream and a task spawned per request, a lock, the
idle timer restarted, two or three socket sends per response: head, body, end) was most of the
cost. Measured on the same shared 2-core machine, old and new alternately, 3 runs each: the
HTTP POST entrypoint with a memory endpoint under 64 keep-alive connections (``python -m
bench.load`` kind ``post``, 100 B bodies, 10 s) answered 2.0-2.6 k requests/s on hypercorn and
4.0-6.7 k requests/s on this server (the rest is now mostly the app, h11's parsing and the one
``send`` system call per response); memory -> one SSE client went from 19-20 k to 21-23 k
events/s.

What it does, per connection (one task each, in the server's nursery, nothing per request):

- h11 parses; requests are served one at a time in arrival order (keep-alive, pipelining),
  HTTP/1.0 and ``Connection: close`` end the connection after the response; ``HEAD`` gets the
  head without the body; ``Expect: 100-continue`` gets its ``100`` when the app first reads the
  body (a final answer without reading it closes the connection instead).
- A response's head waits for its first body message, so a plain response is one send; a
  streamed one (``more_body``) is chunked by h11, one send per body message. A write to a client
  that went away raises ``trio.BrokenResourceError`` (or ``ClosedResourceError`` after a failed
  or cancelled write) in the app.
- ``receive()`` gives the body (``http.request``), then ``http.disconnect`` once the client
  closes its side (read by whoever waits for it, while another task writes).
- ``header_timeout`` runs from the connect and from the end of each response until a whole
  request head is in: a client trickling its headers is dropped when it runs out. One cancel
  scope per connection does it, by moving its deadline.
- A head that h11 cannot buffer within ``max_header_bytes`` is answered 431, a malformed one
  (or a body h11 cannot parse: bad chunking) 400, and the connection closed. An unread request
  body is read and dropped up to :data:`DRAIN_LIMIT` bytes to keep the connection; past that,
  the connection is closed.
- An app that raises before its response started gets a 500 (and the connection is closed); after,
  the connection is just closed. Logged on ``mediation.http``, as hypercorn did.
- A WebSocket upgrade is answered 400 (the WebSocket entrypoint has its own server); other
  ``Upgrade`` proposals (``h2c``) are ignored, which RFC 9110 allows.

What it does not do: HTTP/2 (hypercorn never offered it without TLS, and the engine sits behind
a proxy that terminates TLS), TLS, lifespan events, trailers, request timeouts beyond the head.
When closing with request bytes possibly still on their way, it shuts its side down and reads
for up to :data:`LINGER_TIMEOUT` before closing, so that the client reads the answer rather
than a reset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import unquote

import h11
import trio

from ..errors import ListenError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("mediation.http")

# One read from a socket (a head, a small body and any pipelined requests usually come in one).
RECEIVE_SIZE = 64 * 1024
# How much of a body the app did not read is read and dropped to keep the connection for the
# next request; beyond it, the connection is closed.
DRAIN_LIMIT = 64 * 1024
# How long a closing connection keeps reading (and dropping) what the client still sends, after
# our side is shut down: closing with unread bytes would send a reset, which may destroy the
# answer before the client reads it.
LINGER_TIMEOUT = 2.0

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_DISCONNECT: Final = {"type": "http.disconnect"}
# What a write to a client that went away raises (and reads that find it gone).
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0


async def serve_http(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; reports the bound port when listening.

    :class:`ListenError` when the address cannot be bound. Cancellation closes every
    connection at once (the engine ends its sessions before it cancels its servers).
    """
    sock = trio.socket.from_stdlib_socket(bound_socket(host, port))
    try:
        sock.listen(socket.SOMAXCONN)
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror}") from None

    async def handle(stream: trio.SocketStream) -> None:
        try:
            client = stream.socket.getpeername()[:2]
            server = stream.socket.getsockname()[:2]
        except OSError:  # already reset by the client
            return
        await serve_connection(
            stream,
            app,
            max_header_bytes=max_header_bytes,
            header_timeout=header_timeout,
            client=client,
            server=server,
        )

    task_status.started(sock.getsockname()[1])
    await trio.serve_listeners(handle, [trio.SocketListener(sock)])


async def serve_connection(
    stream: trio.abc.HalfCloseableStream,
    app: ASGIApp,
    *,
    max_header_bytes: int,
    header_timeout: float,
    client: tuple[str, int] | None = None,
    server: tuple[str, int] | None = None,
) -> None:
    """Serve the requests of one connection until it is to be closed (the caller closes it)."""
    try:
        connection = _Connection(stream, app, max_header_bytes, client, server)
        if await connection.serve(header_timeout):
            await _linger(stream)
    except _GONE:
        pass  # the client reset the connection
    except Exception:
        # A bug of ours: this connection ends, the server and the other connections go on.
        log.exception("HTTP connection failed")


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet); :class:`ListenError` if not."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


async def _linger(stream: trio.abc.HalfCloseableStream) -> None:
    """Shut our side down, then drop what the client still sends until it closes (bounded)."""
    with trio.move_on_after(LINGER_TIMEOUT):
        try:
            await stream.send_eof()
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except _GONE:
            pass


class _Date:
    """The ``Date`` header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode()
        return self._value


class _Connection:
    """One client connection: the h11 state, and ``receive``/``send`` for the current request."""

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream,
        app: ASGIApp,
        max_header_bytes: int,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> None:
        self._stream = stream
        self._app = app
        self._date = _Date()
        self._max_header_bytes = max_header_bytes
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._client = client
        self._server = server
        self._receive = self.receive
        self._send = self.send
        # Per request (reset by _respond).
        self._head_only = False
        self._body_done = False
        self._start: Message | None = None  # the response start, held until the first body
        self._started = False  # the app sent http.response.start
        self._broken = False  # a write failed or was cancelled midway: nothing more can be sent
        self._failed = False  # the app raised, or returned without a response
        self._eof = False  # the client closed its side (or reset the connection)
        self._bad_body: h11.RemoteProtocolError | None = None

    async def serve(self, header_timeout: float) -> bool:
        """Serve requests until the connection is to be closed; True to linger before closing."""
        h = self._h11
        with trio.CancelScope(deadline=trio.current_time() + header_timeout) as head_timer:
            while True:
                try:
                    event = await self._next_event()
                except h11.RemoteProtocolError as error:
                    return await self._refuse(error.error_status_hint, str(error))
                if type(event) is not h11.Request:
                    return False  # the client closed the connection between requests
                head_timer.deadline = math.inf
                await self._respond(event)
                if h.our_state is not h11.DONE or self._failed or self._broken:
                    # Connection: close or HTTP/1.0 (MUST_CLOSE), a failed app or write, or a
                    # response that did not end: close, reading first what the client may
                    # still be sending.
                    return h.their_state is h11.SEND_BODY and not self._broken
                head_timer.deadline = trio.current_time() + header_timeout
                if h.their_state is not h11.DONE and not await self._drain():
                    return True
                h.start_next_cycle()
        return False  # header_timeout: the client gets nothing, not even a 408

    async def _next_event(self) -> Any:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._fill()

    async def _fill(self) -> None:
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except trio.BrokenResourceError:
            data = b""  # reset by the client: as good as closed
        if not data:
            self._eof = True
        self._h11.receive_data(data)  # type: ignore[arg-type]  # bytearray is fine

    async def _drain(self) -> bool:
        """Read and drop the rest of a body the app did not read; False past DRAIN_LIMIT."""
        drained = 0
        while drained <= DRAIN_LIMIT:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                return False
            if type(event) is h11.EndOfMessage:
                return True
            if event is h11.NEED_DATA:
                if self._eof:
                    return False
                await self._fill()
            elif type(event) is h11.Data:
                drained += len(event.data)
            else:
                return False
        return False

    async def _refuse(self, status: int, reason: str) -> bool:
        """Answer a request h11 refused, if we still can; True to linger before closing."""
        h = self._h11
        if h.our_state is not h11.IDLE and h.our_state is not h11.SEND_RESPONSE:
            return False
        await self._answer(status, reason, head_only=False)
        return not self._eof

    async def _respond(self, request: h11.Request) -> None:
        self._head_only = request.method == b"HEAD"
        self._body_done = False
        self._start = None
        self._started = False
        self._failed = False
        self._bad_body = None
        path, _, query = request.target.partition(b"?")
        raw_path = path.decode("latin-1")
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "1.1" if self._h11.their_http_version == b"1.1" else "1.0",
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path) if "%" in raw_path else raw_path,
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": self._client,
            "server": self._server,
        }
        if _is_websocket_upgrade(request):
            await self._answer(400, "this port serves HTTP, not WebSocket", head_only=False)
            return
        try:
            await self._app(scope, self._receive, self._send)
        except Exception:
            self._failed = True
            if self._bad_body is not None or self._broken or self._eof:
                # The app was told http.disconnect, or a write failed: not its fault.
                log.debug("request ended by its client", exc_info=True)
            else:
                log.exception("Error in ASGI Framework")
            if self._start is not None or not self._started:
                # Nothing of the response went out: it can still be an answer.
                await self._answer_failure()
            return
        if not self._started:
            self._failed = True
            if self._bad_body is None:
                log.error("an HTTP handler returned without a response")
            await self._answer_failure()

    async def _answer_failure(self) -> None:
        if self._bad_body is not None:
            status, reason = self._bad_body.error_status_hint, str(self._bad_body)
        else:
            status, reason = 500, "internal server error"
        await self._answer(status, reason, head_only=self._head_only)

    async def _answer(self, status: int, reason: str, *, head_only: bool) -> None:
        """A JSON error response of our own, after which the connection is closed."""
        h = self._h11
        body = json.dumps({"error": reason}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
            (b"date", self._date.now()),
        ]
        parts = [h.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))]
        if not head_only:
            parts.append(h.send(h11.Data(data=body)))
        parts.append(h.send(h11.EndOfMessage()))
        with contextlib.suppress(*_GONE):
            await self._write(b"".join(parts))

    async def receive(self) -> Message:
        """The next ASGI message: the body (``http.request``), then ``http.disconnect``."""
        if self._body_done:
            return await self._wait_disconnect()
        h = self._h11
        chunks: list[bytes] = []
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as error:
                self._bad_body = error  # a body we cannot read (bad chunked encoding)
                self._body_done = True
                return _DISCONNECT
            if type(event) is h11.Data:
                chunks.append(event.data)
            elif type(event) is h11.EndOfMessage:
                self._body_done = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            elif event is h11.NEED_DATA:
                if chunks:
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": True}
                if h.they_are_waiting_for_100_continue:
                    await trio.lowlevel.checkpoint_if_cancelled()  # as in send()
                    continue_ = h11.InformationalResponse(status_code=100, headers=[])
                    await self._write(h.send(continue_))
                await self._fill()
            else:  # ConnectionClosed: the client left before its body ended
                self._body_done = True
                return _DISCONNECT

    async def _wait_disconnect(self) -> Message:
        # Whatever arrives meanwhile is the next (pipelined) request: h11 keeps it for later,
        # up to a head's worth; beyond that this waits without reading (writes still tell).
        buffered = 0
        while not self._eof:
            if buffered > self._max_header_bytes:
                await trio.sleep_forever()
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self._eof = True
            buffered += len(data)
            self._h11.receive_data(data)  # type: ignore[arg-type]  # bytearray is fine
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        """``http.response.start`` (held), then ``http.response.body`` messages, each one send."""
        if message["type"] != "http.response.body":
            if message["type"] != "http.response.start" or self._started:
                raise RuntimeError(f"unexpected ASGI message {message['type']!r}")
            self._start = message
            self._started = True
            return
        if self._broken:
            raise trio.ClosedResourceError("the connection to the client is broken")
        # A cancelled send must leave the h11 state as it was, so cancellation is checked
        # before h11 is told (send_all checks it again, with no yield in between: once it
        # raises, bytes have been sent and the connection is really broken).
        await trio.lowlevel.checkpoint_if_cancelled()
        h = self._h11
        parts = []
        start = self._start
        if start is not None:
            self._start = None
            status = start["status"]
            headers = [*start.get("headers", ()), (b"date", self._date.now())]
            if h.they_are_waiting_for_100_continue:
                # The answer comes before the body was asked for: the client may send it or
                # not, so the connection cannot carry another request.
                headers.append((b"connection", b"close"))
            parts.append(
                h.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
            )
        elif not self._started:
            raise RuntimeError("http.response.body before http.response.start")
        body = message.get("body", b"")
        if body and not self._head_only:
            parts.append(h.send(h11.Data(data=body)))
        if not message.get("more_body", False):
            parts.append(h.send(h11.EndOfMessage()))
        data = b"".join(parts)
        if data:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        # Broken until the write completes: after a failed or cancelled send_all, what reached
        # the client is unknown, so nothing more can be sent on this connection.
        self._broken = True
        await self._stream.send_all(data)
        self._broken = False


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


def _is_websocket_upgrade(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"upgrade":
            return value.strip().lower() == b"websocket"
    return False
