"""A small HTTP/1.1 server on Trio over httptools (llhttp), serving plain ASGI-shaped apps.

Why not hypercorn: our HTTP entrypoints answer many small requests on keep-alive connections,
and hypercorn's per-request machinery (an HTTPStream and a task spawned per request, a lock, the
idle timer restarted, two or three socket sends per response: head, body, end) was most of the
cost. Why httptools rather than h11 (which this server used first): h11's pure-Python parsing
and its state machine on every response were about a third of the engine's CPU per POST;
httptools is the C parser (llhttp, Node's) under uvicorn, and responses are written by hand (a
status line, the app's headers, the framing h11 would have chosen). Why not ``trio.SocketStream``
under it: each of its reads and writes is a full checkpoint through the scheduler inside a few
context managers; :class:`_SocketStream` drives the socket itself and only yields when a call
had to wait (or every :data:`YIELD_EVERY` calls). The measurements behind each choice are in
docs/performance.md.

What it does, per connection (one task each, in the server's nursery, nothing per request):

- httptools parses what one read brought (pushing heads, body pieces and ends onto a queue);
  requests are served one at a time in arrival order (keep-alive, pipelining), HTTP/1.0 and
  ``Connection: close`` end the connection after the response; ``HEAD`` gets the head without
  the body; ``Expect: 100-continue`` gets its ``100`` when the app first reads the body (a final
  answer without reading it closes the connection instead). An HTTP/1.1 request without
  ``Host`` is a 400 (RFC 9112), another version than 1.0 and 1.1 a 505. llhttp refuses (400)
  line ends other than CRLF, methods other than the registered ones in upper case, control
  characters in a header value. On top of it, when a head is complete (400 each): a header value
  with a byte outside ASCII, a second ``Host``, ``X-Client-ID``, ``Authorization``, ``Origin``,
  ``Content-Length`` or ``Sec-WebSocket-Key`` (:data:`SINGLE_HEADERS`: which copy a part of a
  system takes is how requests get smuggled), a target that is not an origin-form path, a
  ``Transfer-Encoding`` other than ``chunked`` alone. The header list is fixed then: trailers
  are read and dropped, within ``max_header_bytes``.
- A response's head waits for its first body message, so a plain response is one send; a
  streamed one (``more_body``) without ``content-length`` is chunked (HTTP/1.1) or ends with
  the connection (HTTP/1.0), one send per body message. A header name or value holding a line
  break is refused (the app's failure: a 500), never sent. A write to a client that went away
  raises ``trio.BrokenResourceError`` (or ``ClosedResourceError`` after a failed or cancelled
  write) in the app.
- ``receive()`` gives the body (``http.request``), then ``http.disconnect`` once the client
  closes its side (read by whoever waits for it, while another task writes).
- ``header_timeout`` runs from the connect and from the end of each response until a whole
  request head is in: a client trickling its headers is dropped when it runs out. One cancel
  scope per connection does it, by moving its deadline. ``body_timeout`` runs from the end of a
  head until its body is in: past it the app is told ``http.disconnect`` and the request is
  answered 408 (a body the client cut short by closing its side: 400).
- A head over ``max_header_bytes`` is answered 431 (counted on the bytes received: what a read
  brought besides body data, so whitespace llhttp skips counts too; pipelined heads in one read
  share their allowance; an incomplete one is refused at the limit without waiting for its end),
  as are trailers over it and chunk framing beyond :data:`CHUNK_FRAMING_ALLOWANCE` bytes a chunk;
  a malformed one (or a body that cannot be parsed: bad chunking) 400, and the connection
  closed. An unread request body is read and dropped up to
  :data:`DRAIN_LIMIT` bytes to keep the connection; past that, the connection is closed.
- The barrier: an app (or WebSocket handler) that raises before its response started gets a 500
  (and the connection is closed); after, the connection is just closed. Logged once with its
  traceback on ``mediation.http`` and counted (``on_error``); the server and every other
  connection go on.
- A WebSocket handshake goes to the ``websocket`` handler once :func:`handshake_problem` finds
  nothing wrong with it (else 400; without a handler, 400 too), as an :class:`Upgrade` holding
  what the client sent after its head. Other ``Upgrade`` proposals (``h2c``) are ignored, which
  RFC 9110 allows (llhttp stops at such a head: its ``Content-Length`` body is taken by hand, a
  chunked one refused 400).

- TLS (``tls``, a :class:`.tls.ServerTLS`): the accepted socket is wrapped in a
  ``trio.SSLStream`` in the connection's own task (never in the accept loop), and everything
  above is the same: the handshake is done by the first read, so it counts against
  ``header_timeout`` like the head it precedes; one that fails (garbage, no client certificate
  or one from another CA) ends that connection as a client closing it would. The scope says
  ``"scheme": "https"`` and carries ``extensions["tls"]``: the TLS ``version``, the ``cipher``
  and the verified ``peer_certificate`` (as ``ssl.SSLSocket.getpeercert()`` gives it, or
  None). The plaintext path is untouched: no wrapper, no check per read.

What it does not do: HTTP/2, lifespan events, trailers for the app.
When closing with request bytes possibly still on their way, it shuts its side down and reads
for up to :data:`LINGER_TIMEOUT` before closing, so that the client reads the answer rather
than a reset.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import math
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import unquote

import httptools
import trio

from ..errors import ListenError
from .tls import ServerTLS

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

# Linux's TCP_NOTSENT_LOWAT (25), which not every platform's socket module names.
TCP_NOTSENT_LOWAT: Final = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
NOTSENT_LOWAT = 16 * 1024
# Connections accepted in one go before the accept loop goes through the scheduler again.
ACCEPT_BURST = 64
# A connection's reads and writes that complete at once (no wait) between two yields.
YIELD_EVERY = 16
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_IGNORED_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0

# Headers a request may carry once: two of them are ambiguous (which identity, which length,
# which origin?), and two parts of a system choosing differently is how requests get smuggled.
SINGLE_HEADERS = frozenset(
    {
        b"host",
        b"x-client-id",
        b"authorization",
        b"origin",
        b"content-length",
        b"sec-websocket-key",
    }
)
# Each chunk of a chunked body may bring this much framing (its size line, extensions and line
# ends) besides its data, and the trailers as much as a head, before the request is refused.
CHUNK_FRAMING_ALLOWANCE = 64

WebSocketHandler = Callable[["Upgrade"], Awaitable[None]]
# Told of each connection an unexpected exception ended: the scope of the request (or WebSocket
# handshake) it was serving, or None when it failed outside any request.
ErrorHandler = Callable[[Scope | None], None]

# The path of an origin-form request target (RFC 9112 3.2.1, RFC 3986 3.3): "/" and path
# characters, "%" only as an escape. (The query may hold any visible ASCII: llhttp refuses the
# rest, and clients leave "|", "{", '"' and the like unescaped there.)
_ORIGIN_FORM_PATH = re.compile(rb"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


async def serve_http(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    websocket: WebSocketHandler | None = None,
    on_error: ErrorHandler | None = None,
    tls: ServerTLS | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; reports the bound port when listening.

    ``websocket``: the handler of WebSocket handshakes (an :class:`Upgrade` each, after the
    same head rules as every request and the handshake's own); without it they are a 400.
    ``on_error`` is called once for every connection an unexpected exception ended, with the
    scope of the request it was serving (the engine counts them per entrypoint). ``tls``:
    serve HTTPS (and WSS) with its current context, read for each new connection.
    :class:`ListenError` when the address cannot be bound.
    Cancellation closes every connection at once (the engine ends its sessions before it
    cancels its servers).
    """
    limits = _Limits(max_header_bytes, header_timeout, body_timeout)
    sock = bound_socket(host, port)
    try:
        sock.listen(socket.SOMAXCONN)
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.setblocking(False)

    async def handle(conn: socket.socket) -> None:
        stream: trio.abc.Stream = _SocketStream(conn)
        if tls is not None:
            # The handshake happens on the first read, under the connection's header_timeout.
            stream = trio.SSLStream(stream, tls.context(), server_side=True, https_compatible=True)
        try:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # As trio.SocketStream does: a write waits while 16 KiB are still unsent, so a
                # client that does not read holds little in the kernel (the rest stays on the
                # broker), not the megabytes send buffers grow to.
                conn.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
                client = conn.getpeername()[:2]
                server = conn.getsockname()[:2]
            except OSError:  # already reset by the client
                return
            await _serve(_Connection(stream, app, limits, websocket, on_error, client, server))
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with trio.open_nursery() as nursery:
            task_status.started(sock.getsockname()[1])
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(ACCEPT_BURST):
                    try:
                        conn, _address = sock.accept()
                    except BlockingIOError:
                        break
                    except OSError as error:
                        if error.errno in _ACCEPT_CAPACITY_ERRNOS:
                            # Out of file descriptors or memory: as trio.serve_listeners does.
                            log.error("accept failed (%s); retrying in 0.1 s", error)
                            await trio.sleep(0.1)
                            break
                        if error.errno in _ACCEPT_IGNORED_ERRNOS:
                            continue  # that connection is gone already
                        raise
                    conn.setblocking(False)
                    nursery.start_soon(handle, conn)
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def serve_connection(
    stream: trio.abc.Stream,
    app: ASGIApp,
    *,
    max_header_bytes: int,
    header_timeout: float,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    websocket: WebSocketHandler | None = None,
    on_error: ErrorHandler | None = None,
    client: tuple[str, int] | None = None,
    server: tuple[str, int] | None = None,
) -> None:
    """Serve the requests of one connection until it is to be closed (the caller closes it)."""
    limits = _Limits(max_header_bytes, header_timeout, body_timeout)
    await _serve(_Connection(stream, app, limits, websocket, on_error, client, server))


@dataclass(frozen=True, slots=True)
class _Limits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float


async def _serve(connection: _Connection) -> None:
    """The barrier around one connection: whatever its requests raise ends it alone."""
    try:
        if await connection.serve():
            await _linger(connection._stream)
    except _GONE:
        pass  # the client reset the connection
    except Exception:
        # A bug of ours, or input nothing foresaw: this connection ends, the server and the
        # other connections go on.
        log.exception("HTTP connection failed")
        connection.failed()


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


async def _linger(stream: trio.abc.Stream) -> None:
    """Shut our side down, then drop what the client still sends until it closes (bounded).
    (TLS cannot shut one side down: the client, which has its answer, closes first.)"""
    with trio.move_on_after(LINGER_TIMEOUT):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except _GONE:
            pass


class _SocketStream(trio.abc.HalfCloseableStream):
    """A connected TCP socket as a Trio stream, driving the stdlib socket itself.

    ``trio.SocketStream`` makes every ``send_all`` and ``receive_some`` a full checkpoint (a trip
    through the scheduler) wrapped in a few context managers; at one request and one response
    per round trip, that was about a tenth of the engine's CPU per webhook POST. Here a call
    that completes at once only checks for cancellation (a read that had to wait has been
    through the scheduler already), and one in :data:`YIELD_EVERY` yields anyway, so that a
    client whose requests are always there (pipelining) cannot keep the others waiting.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._unyielded = 0

    async def _maybe_yield(self) -> None:
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        waited = False
        while True:
            try:
                data = sock.recv(max_bytes or RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                waited = True
            except OSError as error:
                raise _stream_error(error) from None
            else:
                break
        if waited:
            self._unyielded = 0
        else:
            await self._maybe_yield()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        waited = False
        try:
            sent = sock.send(data)
            if sent < len(data):
                with memoryview(data) as view:
                    while sent < len(view):
                        try:
                            sent += sock.send(view[sent:])
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(sock)
                            waited = True
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            await self.send_all(data)  # nothing was sent: start again
            return
        except OSError as error:
            raise _stream_error(error) from None
        if waited:
            self._unyielded = 0
        else:
            await self._maybe_yield()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            raise _stream_error(error) from None

    async def aclose(self) -> None:
        if self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()


def _stream_error(error: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if error.errno in (errno.EBADF, errno.ENOTSOCK):
        return trio.ClosedResourceError("the connection was closed")
    return trio.BrokenResourceError(f"socket connection broken: {error}")


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


@dataclass(slots=True, eq=False)
class _Head:
    """A request head, as the parser reported it (header names lower-cased)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    version: str
    keep_alive: bool
    websocket: bool
    # Cleared once any of the body arrives, or the 100 (or the answer) went out.
    expect_continue: bool


@dataclass(slots=True, eq=False)
class _Refusal:
    """A request the parser refused (malformed, or a head over the limit): answered, then the
    connection closed."""

    status: int
    reason: str


class _Refused(Exception):
    """Raised in a parser callback to stop parsing with a refusal of ours."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.refusal = _Refusal(status, reason)


def handshake_problem(head: _Head) -> str | None:
    """Why a request with ``Upgrade: websocket`` is not a WebSocket handshake (RFC 6455,
    4.2.1), or None. Pure."""
    if head.method != b"GET" or head.version != "1.1":
        return "a WebSocket handshake is an HTTP/1.1 GET"
    connection = key = version = None
    for name, value in head.headers:
        if name == b"connection":
            connection = value if connection is None else connection + b"," + value
        elif name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            version = value if version is None else b"-"  # two of them: none valid
        elif name in (b"content-length", b"transfer-encoding"):
            return "a WebSocket handshake has no body"
    tokens = {token.strip().lower() for token in (connection or b"").split(b",")}
    if b"upgrade" not in tokens:
        return "Connection: Upgrade is missing"
    if version != b"13":
        return "Sec-WebSocket-Version must be 13"
    if key is None or not _valid_websocket_key(key):
        return "Sec-WebSocket-Key must be 16 bytes in base64"
    return None


def _valid_websocket_key(key: bytes) -> bool:
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:  # binascii.Error
        return False


class Upgrade:
    """A WebSocket handshake that passed the server's checks, handed to the WebSocket handler,
    which answers it: :meth:`refuse`, or the ``101`` written to :attr:`stream` (then
    :attr:`accepted` set). The connection is closed when the handler returns.

    ``scope`` is as an HTTP request's (``path``, ``query_string``, ``headers``, ``client``);
    ``head`` the request head re-made from what the server parsed (what wsproto's handshake
    reads); ``rest`` what the client sent after the head in the same read: its first frames,
    to be processed before anything read later.
    """

    def __init__(self, scope: Scope, request: _Head, rest: bytes, connection: _Connection) -> None:
        self.scope = scope
        self.rest = rest
        self.stream: trio.abc.Stream = connection._stream
        self.accepted = False
        self._request = request
        self._connection = connection

    @property
    def head(self) -> bytes:
        request = self._request
        lines = [b"%b %b HTTP/1.1\r\n" % (request.method, request.target)]
        lines.extend(b"%b: %b\r\n" % (name, value) for name, value in request.headers)
        lines.append(b"\r\n")
        return b"".join(lines)

    async def refuse(
        self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Answer the handshake with ``status`` and a JSON body saying why (then closed)."""
        await self._connection._answer(status, reason, head_only=False, headers=headers)


# Queue markers (the other entries are _Head, body bytes and _Refusal).
_END: Final = "end"  # the end of a request's body
_CLOSED: Final = "closed"  # the client closed its side (never taken off the queue)
_Event = _Head | bytes | _Refusal | str

# What a head costs besides its method, target and header lines: the spaces and " HTTP/1.1\r\n"
# of the request line, and the blank line.
_REQUEST_LINE_EXTRA = 1 + len(" HTTP/1.1\r\n") + 2


class _Connection:
    """One client connection: the parser, the queue of what it parsed, and ``receive``/``send``
    for the current request.

    httptools parses whatever it is fed at once (push), the server serves requests one at a time
    (pull): the parser's callbacks append heads, body pieces, ends and refusals to a queue that
    the server and ``receive`` take from, reading the socket only when the queue is empty. So
    what is parsed ahead is at most one read (:data:`RECEIVE_SIZE`).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        app: ASGIApp,
        limits: _Limits,
        websocket: WebSocketHandler | None,
        on_error: ErrorHandler | None,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> None:
        self._stream = stream
        self._app = app
        self._date = _Date()
        self._limits = limits
        self._max_header_bytes = limits.max_header_bytes
        self._websocket = websocket
        self._on_error = on_error
        self._error_counted = False
        self._scope: Scope | None = None  # of the request being (or last) served
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[_Event] = deque()
        self._client = client
        self._server = server
        self._receive = self.receive
        self._send = self.send
        # TLS: the SSLStream, whose handshake is done by the time a head is in; its extension
        # of the scope is made for the first request.
        self._tls = stream if isinstance(stream, trio.SSLStream) else None
        self._tls_extension: dict[str, Any] | None = None
        # Parser state.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0  # header lines of the head being parsed, as received
        self._in_head = False  # a head has begun and is not complete yet
        self._head_read = 0  # bytes of that head read in earlier reads
        self._read_used = 0  # bytes of the current read accounted for (heads, bodies)
        self._read_body = 0  # body bytes in the current read
        self._read_heads = 0  # heads begun in the current read
        self._chunks = 0  # chunks of the current message's body so far (0: not chunked)
        self._framing = 0  # bytes of its chunk framing and trailers so far, as received
        self._trailer_bytes = 0  # of its trailer lines, as parsed
        self._upgrade_rest = b""  # what followed a WebSocket handshake's head in its read
        self._last_head: _Head | None = None
        self._upgrade_body = -1  # bytes of an ignored upgrade's body still to come (-1: none)
        self._dead = False  # the parser refused something: nothing more is parsed
        self._pending = bytearray()  # read while a response was streaming, not parsed yet
        self._eof = False  # the client closed its side (or reset the connection)
        # Per request (reset by _respond).
        self._request: _Head | None = None
        self._head_only = False
        self._body_done = False
        self._start: Message | None = None  # the response start, held until the first body
        self._started = False  # the app sent http.response.start
        self._chunked = False  # the response body goes in chunks
        self._ended = False  # the response's last body message went out
        self._keep_alive = False  # the connection may carry another request after this one
        self._broken = False  # a write failed or was cancelled midway: nothing more can be sent
        self._failed = False  # the app raised, or returned without a response
        self._bad_body: _Refusal | None = None
        self._body_deadline = math.inf

    def failed(self) -> None:
        """Count this connection as ended by an unexpected error (once)."""
        if not self._error_counted:
            self._error_counted = True
            if self._on_error is not None:
                self._on_error(self._scope)

    # -- the parser's callbacks (httptools) --------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_read = 0
        self._read_heads += 1
        self._chunks = 0
        self._framing = 0
        self._trailer_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A trailer (after a chunked body): read and dropped, never one of the request's
            # headers (those were fixed when the head ended), within the head's limit.
            self._trailer_bytes += len(name) + len(value) + 4
            if self._trailer_bytes > self._max_header_bytes:
                raise _Refused(431, f"trailers exceed {self._max_header_bytes} bytes")
            return
        # Counted with the whitespace after the value, which llhttp leaves in it and RFC 9110
        # takes out (as h11 did).
        self._head_size += len(name) + len(value) + 4
        self._headers.append((name.lower(), value.rstrip(b" \t")))

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_headers_complete(self) -> None:
        parser = self._parser
        method = parser.get_method()
        url = self._url
        headers = self._headers
        size = len(method) + len(url) + _REQUEST_LINE_EXTRA + self._head_size
        self._head_size = 0
        if size > self._max_header_bytes:
            raise _Refused(431, f"request head exceeds {self._max_header_bytes} bytes")
        if _ORIGIN_FORM_PATH.fullmatch(url.partition(b"?")[0]) is None or not url.isascii():
            raise _Refused(400, "malformed request target (a path is expected)")
        websocket = expect = upgrade_seen = False
        seen: set[bytes] = set()
        codings: list[bytes] | None = None
        for name, value in headers:
            if not value.isascii():
                raise _Refused(400, "a header value holds a byte outside ASCII")
            if name in SINGLE_HEADERS:
                if name in seen:
                    raise _Refused(400, f"more than one {name.decode()} header")
                seen.add(name)
            elif name == b"upgrade" and not upgrade_seen:
                upgrade_seen = True
                websocket = value.strip().lower() == b"websocket"
            elif name == b"expect":
                expect = value.strip().lower() == b"100-continue"
            elif name == b"transfer-encoding":
                codings = (codings or []) + value.lower().split(b",")
        if codings is not None and [c.strip(b" \t") for c in codings] != [b"chunked"]:
            # The only coding we read is chunked, alone (RFC 9112 6.1, 6.3: any other body
            # framing cannot be known: refused before the head reaches an app).
            raise _Refused(400, "Transfer-Encoding must be chunked")
        version = parser.get_http_version()
        hosts = b"host" in seen
        if version == "1.1":
            if not hosts:
                raise _Refused(400, "Missing mandatory Host: header")
            keep_alive = parser.should_keep_alive()
        elif version == "1.0":
            keep_alive = expect = False  # as h11 did: HTTP/1.0 is one request a connection
        else:
            raise _Refused(505, f"HTTP/{version} is not supported")
        self._read_used += size - self._head_read
        self._in_head = False
        head = _Head(method, url, headers, version, keep_alive, websocket, expect)
        self._last_head = head
        self._events.append(head)

    def on_body(self, body: bytes) -> None:
        self._read_used += len(body)
        self._read_body += len(body)
        if self._last_head is not None:
            self._last_head.expect_continue = False
        self._events.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_upgrade():
            self._events.append(_END)
        # Else the body, if any, follows the HttpParserUpgrade (see _feed).

    # -- reading -------------------------------------------------------------------------------

    async def _next(self) -> _Event:
        events = self._events
        while not events:
            await self._fill()
        event = events[0]
        if event is not _CLOSED:
            events.popleft()
        return event

    async def _fill(self) -> None:
        """Parse more: what was read meanwhile, else one read (the end, when there is no more)."""
        data: bytes | bytearray
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
        elif self._eof or self._dead:
            self._events.append(_CLOSED)
            return
        else:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                data = b""  # reset by the client: as good as closed
            if not data:
                self._eof = True
                self._events.append(_CLOSED)
                return
        self._feed(data)

    def _feed(self, data: bytes | bytearray) -> None:
        if self._dead:
            return
        if self._upgrade_body > 0:
            data = self._take_upgrade_body(data)
        self._read_used = self._read_body = self._read_heads = 0
        carried = self._head_read if self._in_head else -1  # a head begun in an earlier read
        chunked = self._chunks > 0  # a chunked body was under way
        queued = len(self._events)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            used = upgrade.args[0]
            if not self._head_too_large(used - self._read_body, carried, queued):
                self._upgraded(data[used:])
            return
        except httptools.HttpParserError as error:
            context = error.__context__
            if isinstance(context, _Refused):
                self._refuse_parsing(context.refusal)
            else:
                self._refuse_parsing(_Refusal(400, str(error) or "malformed request"))
            return
        # What this read brought besides body data: heads, chunk framing and trailers, counted
        # as received (whitespace the parser skips included).
        framing = len(data) - self._read_body
        if chunked or self._chunks:
            self._framing += framing
            if self._framing > self._max_header_bytes + CHUNK_FRAMING_ALLOWANCE * self._chunks:
                self._unqueue(queued)
                self._refuse_parsing(_Refusal(431, "chunk framing and trailers too large"))
                return
        elif self._head_too_large(framing, carried, queued):
            return
        if self._in_head:
            # A head not complete yet: what it has used of this read is what the earlier
            # requests in it (heads, bodies) did not. Chunk-size lines of a chunked body before
            # it count as head: a little strict for pipelined chunked bodies only.
            self._head_read += len(data) - self._read_used
            if self._head_read > self._max_header_bytes:
                limit = self._max_header_bytes
                self._refuse_parsing(_Refusal(431, f"request head exceeds {limit} bytes"))

    def _head_too_large(self, head_bytes: int, carried: int, queued: int) -> bool:
        """Whether the heads of this read, ``head_bytes`` as received (plus ``carried`` bytes of
        one begun in an earlier read, or -1), are over the limit; if so, what this read queued
        is replaced by a 431. One head per read (the usual): exactly its size as received;
        pipelined heads in one read share their allowance."""
        heads = self._read_heads + (carried >= 0)
        if not heads or head_bytes + max(carried, 0) <= self._max_header_bytes * heads:
            return False
        self._unqueue(queued)
        limit = self._max_header_bytes
        self._refuse_parsing(_Refusal(431, f"request head exceeds {limit} bytes"))
        return True

    def _unqueue(self, queued: int) -> None:
        """Take back what the current read queued (it held an oversized head)."""
        while len(self._events) > queued:
            self._events.pop()

    def _refuse_parsing(self, refusal: _Refusal) -> None:
        self._events.append(refusal)
        self._dead = True

    def _upgraded(self, rest: bytes | bytearray) -> None:
        """An ``Upgrade`` request: llhttp stops at its head, the rest being another protocol's.
        A WebSocket one is answered 400 and the connection closed (nothing more is parsed);
        another (``h2c``) is ignored, which RFC 9110 allows: its body is taken as
        ``Content-Length`` says, and parsing goes on after it."""
        head = self._last_head
        assert head is not None
        if head.websocket:
            # What follows is the client's first frames: kept for the WebSocket handler.
            self._upgrade_rest = bytes(rest)
            self._events.append(_END)
            self._dead = True
            return
        length = b"0"
        for name, value in head.headers:
            if name == b"transfer-encoding":
                self._refuse_parsing(_Refusal(400, "a chunked body with an Upgrade"))
                return
            if name == b"content-length":
                length = value.strip()
        self._upgrade_body = int(length) if length.isdigit() else 0
        rest = self._take_upgrade_body(rest)
        if rest:
            self._feed(rest)

    def _take_upgrade_body(self, data: bytes | bytearray) -> bytes | bytearray:
        taken = bytes(data[: self._upgrade_body])
        if taken:
            self._upgrade_body -= len(taken)
            self._events.append(taken)
        if self._upgrade_body == 0:
            self._upgrade_body = -1
            self._events.append(_END)
        return data[len(taken) :]

    # -- serving -------------------------------------------------------------------------------

    async def serve(self) -> bool:
        """Serve requests until the connection is to be closed; True to linger before closing."""
        header_timeout = self._limits.header_timeout
        with trio.CancelScope(deadline=trio.current_time() + header_timeout) as head_timer:
            while True:
                event = await self._next()
                if type(event) is not _Head:
                    if type(event) is _Refusal:
                        return await self._refuse(event)
                    return False  # the client closed the connection between requests
                head_timer.deadline = math.inf
                await self._respond(event)
                if not (self._keep_alive and self._ended) or self._failed or self._broken:
                    # Connection: close or HTTP/1.0, a failed app or write, or a response that
                    # did not end: close, reading first what the client may still be sending.
                    return not self._body_done and not self._broken
                head_timer.deadline = trio.current_time() + header_timeout
                if not self._body_done and not await self._drain():
                    return True
        return False  # header_timeout: the client gets nothing, not even a 408

    async def _drain(self) -> bool:
        """Read and drop the rest of a body the app did not read; False past DRAIN_LIMIT."""
        drained = 0
        while drained <= DRAIN_LIMIT:
            event = await self._next()
            if type(event) is bytes:
                drained += len(event)
            elif event is _END:
                self._body_done = True
                return True
            else:
                return False
        return False

    async def _refuse(self, refusal: _Refusal) -> bool:
        """Answer a request the parser refused; True to linger before closing."""
        await self._answer(refusal.status, refusal.reason, head_only=False)
        return not self._eof

    async def _respond(self, request: _Head) -> None:
        self._request = request
        self._head_only = request.method == b"HEAD"
        self._body_done = False
        self._start = None
        self._started = False
        self._ended = False
        self._failed = False
        self._bad_body = None
        self._body_deadline = trio.current_time() + self._limits.body_timeout
        self._keep_alive = request.keep_alive
        path, _, query = request.target.partition(b"?")
        raw_path = path.decode("latin-1")
        scope: Scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.version,
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
        if self._tls is not None:
            scope["scheme"] = "https"
            scope["extensions"] = {"tls": self._tls_info(self._tls)}
        self._scope = scope
        if request.websocket:
            await self._upgrade(request, scope)
            return
        try:
            await self._app(scope, self._receive, self._send)
        except Exception:
            self._failed = True
            if self._bad_body is not None or self._broken or self._eof:
                # The app was told http.disconnect, or a write failed: not its fault.
                log.debug("request ended by its client", exc_info=True)
            else:
                log.exception("HTTP request handler failed")
                self.failed()
            if self._start is not None or not self._started:
                # Nothing of the response went out: it can still be an answer.
                await self._answer_failure()
            return
        if not self._started:
            self._failed = True
            if self._bad_body is None:
                log.error("an HTTP handler returned without a response")
            await self._answer_failure()

    def _tls_info(self, stream: trio.SSLStream[trio.abc.Stream]) -> dict[str, Any]:
        """The scope's ``extensions["tls"]``, the same for every request of the connection."""
        if self._tls_extension is None:
            cipher = stream.cipher()
            self._tls_extension = {
                "version": stream.version(),
                "cipher": cipher[0] if cipher else None,
                "peer_certificate": stream.getpeercert() or None,
            }
        return self._tls_extension

    async def _upgrade(self, request: _Head, scope: Scope) -> None:
        """A WebSocket handshake: checked, then the connection is the handler's until it
        returns (the connection is closed after it)."""
        self._keep_alive = False
        if self._websocket is None:
            await self._answer(400, "this port serves HTTP, not WebSocket", head_only=False)
            return
        problem = handshake_problem(request)
        if problem is not None:
            await self._answer(400, problem, head_only=False)
            return
        self._started = self._ended = True  # the handler answers, by the upgrade or a refusal
        upgrade = Upgrade(scope, request, self._upgrade_rest, self)
        self._upgrade_rest = b""
        await self._websocket(upgrade)
        # Once upgraded, the WebSocket closing handshake was the goodbye: no lingering.
        self._body_done = upgrade.accepted

    async def _answer_failure(self) -> None:
        if self._bad_body is not None:
            status, reason = self._bad_body.status, self._bad_body.reason
        else:
            status, reason = 500, "internal server error"
        await self._answer(status, reason, head_only=self._head_only)

    async def _answer(
        self,
        status: int,
        reason: str,
        *,
        head_only: bool,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """A JSON error response of our own, after which the connection is closed."""
        self._keep_alive = False
        body = json.dumps({"error": reason}).encode()
        data = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
            status,
            _reason(status),
            len(body),
        )
        for name, value in headers or ():
            if b"\r" in name + value or b"\n" in name + value:
                raise RuntimeError("a response header holds a line break")
            data += b"%b: %b\r\n" % (name, value)
        data += b"connection: close\r\ndate: " + self._date.now() + b"\r\n\r\n"
        if not head_only:
            data += body
        with contextlib.suppress(*_GONE):
            await self._write(data)

    async def receive(self) -> Message:
        """The next ASGI message: the body (``http.request``), then ``http.disconnect``."""
        if self._body_done:
            return await self._wait_disconnect()
        events = self._events
        chunks: list[bytes] = []
        while True:
            if not events:
                if chunks:
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": True}
                request = self._request
                if request is not None and request.expect_continue:  # no answer went out yet
                    await trio.lowlevel.checkpoint_if_cancelled()  # as in send()
                    request.expect_continue = False
                    await self._write(b"HTTP/1.1 100 %s\r\n\r\n" % _reason(100))
                with trio.move_on_at(self._body_deadline):
                    await self._fill()
                    continue
                # body_timeout: what came of the body is dropped, the request answered 408
                # (by whoever failed on the disconnect) and the connection closed.
                self._body_done = self._dead = True
                timeout = self._limits.body_timeout
                self._bad_body = _Refusal(408, f"request body not received within {timeout:g} s")
                return _DISCONNECT
            event = events[0]
            if type(event) is bytes:
                events.popleft()
                chunks.append(event)
            elif event is _END:
                events.popleft()
                self._body_done = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            else:
                self._body_done = True
                if type(event) is _Refusal:  # a body we cannot read (bad chunked encoding)
                    events.popleft()
                    self._bad_body = event
                else:  # _CLOSED: the client left (or shut its side) before its body ended
                    self._bad_body = _Refusal(400, "the request body ended early")
                return _DISCONNECT

    async def _wait_disconnect(self) -> Message:
        # Whatever arrives meanwhile is the next (pipelined) request: kept unparsed for later,
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
            self._pending += data
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
        if self._ended:
            raise RuntimeError("http.response.body after the response ended")
        # A cancelled send must leave the state as it was, so cancellation is checked first
        # (send_all checks it again, with no yield in between: once it raises, bytes have been
        # sent and the connection is really broken).
        await trio.lowlevel.checkpoint_if_cancelled()
        start = self._start
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if start is not None:
            data = self._response_head(start)  # may refuse it: then it can still be a 500
            self._start = None
        elif not self._started:
            raise RuntimeError("http.response.body before http.response.start")
        else:
            data = b""
        if self._head_only:
            pass
        elif self._chunked:
            if body:
                data += b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                data += b"0\r\n\r\n"
        else:
            data += body
        if not more:
            self._ended = True
        if data:
            await self._write(data)

    def _response_head(self, start: Message) -> bytes:
        """The status line and headers, with the framing and ``connection`` headers h11 would
        add: ``content-length`` as the app gives it, else chunked (HTTP/1.1) or the end of the
        connection (HTTP/1.0)."""
        status: int = start["status"]
        request = self._request
        assert request is not None
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        length_given = close_given = False
        for name, value in start.get("headers", ()):
            lower = name.lower()
            if lower == b"content-length":
                length_given = True
            elif lower == b"transfer-encoding":
                continue  # the framing is ours
            elif lower == b"connection":
                if b"close" in value.lower():
                    close_given = True
                    self._keep_alive = False
                else:
                    continue  # keep-alive is ours to decide
            lines.append(b"%b: %b\r\n" % (name, value))
        self._chunked = False
        if not (status < 200 or status == 204 or status == 304 or length_given):
            if request.version == "1.1":
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self._keep_alive = False  # the end of the body is the end of the connection
        if request.expect_continue:
            # The answer comes before the body was asked for: the client may send it or not,
            # so the connection cannot carry another request.
            request.expect_continue = False
            self._keep_alive = False
        if not self._keep_alive and not close_given:
            lines.append(b"connection: close\r\n")
        lines.append(b"date: %b\r\n\r\n" % self._date.now())
        head = b"".join(lines)
        # A CR or LF inside a name or value would end a line early (header injection).
        if head.count(b"\n") != len(lines) + 1 or head.count(b"\r") != len(lines) + 1:
            raise RuntimeError("a response header holds a line break")
        return head

    async def _write(self, data: bytes) -> None:
        # Broken until the write completes: after a failed or cancelled send_all, what reached
        # the client is unknown, so nothing more can be sent on this connection.
        self._broken = True
        await self._stream.send_all(data)
        self._broken = False


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")
