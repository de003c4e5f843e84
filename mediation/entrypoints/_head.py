"""The request head of a WebSocket handshake, read before trio-websocket sees the connection.

trio-websocket (through wsproto and h11) refuses an oversized handshake with a 400 at a fixed
16 KiB, and waits for a slow one as long as its ``connect_timeout``. The entrypoint puts this gate
in front of it: every accepted connection first has its head read here, within
``header_timeout`` seconds and ``max_header_bytes`` bytes (431 beyond, then the connection is
closed), and only a complete head is handed to the WebSocket server, replayed by
:class:`ReplayStream`. The server gets the streams through :class:`HandoffListener`, an ordinary
``trio.abc.Listener``, so nothing of trio-websocket's is patched or subclassed.

::

    send, receive = trio.open_memory_channel[trio.abc.Stream](0)
    server = WebSocketServer(handler, [HandoffListener(receive)], receive_buffer_size=None, ...)
    await nursery.start(server.run)
    await nursery.start(gate_connections, sockets, send, limit, header_timeout)
"""

from __future__ import annotations

import errno
import logging
import re

import trio

log = logging.getLogger(__name__)

# h11 ends a head at the first empty line, and accepts a bare LF as a line end.
_BLANK_LINE = re.compile(rb"\n\r?\n")


class HeaderTooLarge(Exception):
    pass


class HeadScanner:
    """Finds the end of a request head in the bytes received so far. Pure.

    Each call scans only what is new (plus the 2 bytes a blank line may straddle), so a client
    that sends its head a byte per packet costs linear time, not quadratic.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._scanned = 0

    def end(self, buffer: bytes | bytearray) -> int | None:
        """The head's length (through its blank line), or None while it is incomplete;
        :class:`HeaderTooLarge` once it cannot end within ``limit`` bytes."""
        match = _BLANK_LINE.search(buffer, max(0, self._scanned - 2), self.limit)
        if match is not None:
            return match.end()
        if len(buffer) >= self.limit:
            raise HeaderTooLarge
        self._scanned = len(buffer)
        return None


def refusal(status: int, phrase: str, body: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    content = body.encode()
    return (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(content)}\r\nconnection: close\r\n\r\n"
    ).encode() + content


# How long the 431 answer may take to be written: the client may not be reading.
_REFUSAL_TIMEOUT = 1.0


async def read_head_then_hand_over(
    handoff: trio.MemorySendChannel[trio.abc.Stream],
    limit: int,
    header_timeout: float,
    stream: trio.abc.Stream,
) -> None:
    """Read ``stream``'s request head, then give the stream (head replayed) to ``handoff``.

    A head longer than ``limit`` gets 431; one not complete within ``header_timeout`` seconds of the
    connect, or a client that leaves, gets nothing. Either way the connection is closed here.
    Never raises (the accept loop would end), except Cancelled.
    """
    handed_over = False
    try:
        head = None
        buffer = bytearray()
        scanner = HeadScanner(limit)
        with trio.move_on_after(header_timeout):
            try:
                while scanner.end(buffer) is None:
                    data = await stream.receive_some()
                    if not data:
                        return
                    buffer += data
                head = bytes(buffer)
            except HeaderTooLarge:
                with trio.move_on_after(_REFUSAL_TIMEOUT):
                    await stream.send_all(
                        refusal(
                            431,
                            "Request Header Fields Too Large",
                            f"request head exceeds {limit} bytes",
                        )
                    )
                return
        if head is not None:
            await handoff.send(ReplayStream(stream, head))
            handed_over = True
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        if not handed_over:
            await trio.aclose_forcefully(stream)


class ReplayStream(trio.abc.Stream):
    """``stream``, with ``head`` (already read from it) received first."""

    def __init__(self, stream: trio.abc.Stream, head: bytes) -> None:
        self.transport_stream = stream
        self._head = head

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._head:
            # The whole head at once when the caller lets us choose (wsproto's h11 then parses
            # a head larger than its own 16 KiB incomplete-event limit).
            size = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:size], self._head[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


class HandoffListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are the streams sent to ``streams``."""

    def __init__(self, streams: trio.MemoryReceiveChannel[trio.abc.Stream]) -> None:
        self._streams = streams

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._streams.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError from None

    async def aclose(self) -> None:
        await self._streams.aclose()


# Running out of file descriptors or memory is no reason to stop serving: wait, then accept again.
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_CAPACITY_PAUSE = 0.1


async def gate_connections(
    listeners: list[trio.SocketListener],
    handoff: trio.MemorySendChannel[trio.abc.Stream],
    limit: int,
    header_timeout: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on ``listeners`` until cancelled, each connection through
    :func:`read_head_then_hand_over`.

    Like ``trio.serve_listeners``, except that a handler's return does not close its stream:
    the stream belongs to the WebSocket server once handed over.
    """
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handoff, limit, header_timeout, nursery)
        task_status.started()


async def _accept_loop(
    listener: trio.SocketListener,
    handoff: trio.MemorySendChannel[trio.abc.Stream],
    limit: int,
    header_timeout: float,
    nursery: trio.Nursery,
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:
                if error.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error("cannot accept a connection", extra={"reason": error.strerror})
                await trio.sleep(_CAPACITY_PAUSE)
            else:
                nursery.start_soon(read_head_then_hand_over, handoff, limit, header_timeout, stream)
