"""One accepted WebSocket connection: wsproto, through its public API, on the HTTP server's stream.

The HTTP server (:mod:`.server`) reads and checks the handshake like any request head and hands
it over as an :class:`~.server.Upgrade`; :meth:`WebSocket.accept` answers it with wsproto's
``AcceptConnection`` and processes whatever the client sent with its head (its first frames)
before anything read later. Then :meth:`WebSocket.run_reader` (one task) reads the stream:
frames go through :class:`.wsframes.ClientFrames` (small whole data frames taken directly, the
rest to wsproto in order, ``max_message_bytes`` enforced from frame headers: 1009), pings are
answered, a close is answered and ends the reader. Client messages wait in a bounded inbox for
whoever calls :meth:`get_message`.

Writes (messages, pongs, pings, the close) go out one at a time under one lock, each as one
``send_all``; data frames are made by :func:`.wsframes.server_frames` while the connection is open.
A write that fails marks the connection closed (1006) and raises :class:`ConnectionClosed`.

Cancellation: cancelling :meth:`run_reader` stops reading (the connection stays as it is);
:meth:`aclose` sends a close frame and reads until the client's answer, within ``CLOSE_TIMEOUT``.
The stream itself belongs to the HTTP server, which closes it when the handler returns.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Final

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from .server import RECEIVE_SIZE, Upgrade
from .wsframes import BINARY, TEXT, ClientFrames, ForWsproto, MessageTooBig, server_frames

# How long a closing handshake with the client may take before the connection is dropped.
CLOSE_TIMEOUT = 5.0
# Client messages read and not yet taken (see _Inbox): at most this many, and beyond the first
# at most this many bytes.
INBOX_MESSAGES = 64
INBOX_BYTES = 64 * 1024

ABNORMAL_CLOSURE: Final = 1006
MESSAGE_TOO_BIG: Final = 1009
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)

Message = str | bytes


class ConnectionClosed(Exception):
    """The connection is closed (or closing): ``code`` and ``reason`` say how."""

    def __init__(self, code: int, reason: str | None = None) -> None:
        super().__init__(f"WebSocket closed with {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


class HandshakeFailed(Exception):
    """wsproto did not take a handshake the server had checked: refused with 400."""


class WebSocket:
    """An accepted connection; get one from :meth:`accept`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: WSConnection,
        max_message_bytes: int,
        first_bytes: bytes,
        heard: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._frames = ClientFrames(max_message_bytes)
        self._first_bytes = first_bytes
        self._heard = heard
        self._inbox = _Inbox()
        self._write_lock = trio.Lock()
        # The parts of a message wsproto is still receiving.
        self._text: list[str] = []
        self._binary = bytearray()
        # How the connection ended (or is ending), once it is.
        self.closed: ConnectionClosed | None = None

    @classmethod
    async def accept(
        cls,
        upgrade: Upgrade,
        *,
        subprotocol: str | None,
        max_message_bytes: int,
        heard: Callable[[], None] = lambda: None,
    ) -> WebSocket:
        """Answer ``upgrade`` with ``101``; :class:`HandshakeFailed` if wsproto refuses it."""
        protocol = WSConnection(ConnectionType.SERVER)
        try:
            protocol.receive_data(upgrade.head)
            requests = [event for event in protocol.events() if isinstance(event, Request)]
            if len(requests) != 1:
                raise HandshakeFailed("not a WebSocket handshake")
            data = protocol.send(AcceptConnection(subprotocol=subprotocol))
        except ProtocolError as error:
            raise HandshakeFailed(str(error)) from None
        await upgrade.stream.send_all(data)
        upgrade.accepted = True
        return cls(upgrade.stream, protocol, max_message_bytes, upgrade.rest, heard)

    # -- reading -------------------------------------------------------------------------------

    async def run_reader(self) -> None:
        """Read until the client closes or the connection fails; then :meth:`get_message`
        raises :class:`ConnectionClosed`. Never raises itself (except Cancelled)."""
        try:
            data: bytes | bytearray = self._first_bytes
            self._first_bytes = b""
            while self.closed is None:
                if data:
                    self._heard()
                    await self._received(data)
                    if self.closed is not None:
                        break
                try:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                except _GONE:
                    data = b""
                if not data:
                    self._mark_closed(ConnectionClosed(ABNORMAL_CLOSURE, "the client left"))
        except MessageTooBig as error:
            await self._fail(MESSAGE_TOO_BIG, str(error))
        finally:
            self._inbox.end()

    async def _received(self, data: bytes | bytearray) -> None:
        protocol = self._protocol
        for item in self._frames.feed(data):
            if isinstance(item, ForWsproto):
                protocol.receive_data(item.data)
                for event in protocol.events():
                    await self._handle(event)
                    if self.closed is not None:
                        return
            else:
                await self._inbox.put(item.message)

    async def _handle(self, event: object) -> None:
        if isinstance(event, TextMessage):
            self._text.append(event.data)
            if event.message_finished:
                text, self._text = "".join(self._text), []
                await self._inbox.put(text)
        elif isinstance(event, BytesMessage):
            self._binary += event.data
            if event.message_finished:
                binary, self._binary = bytes(self._binary), bytearray()
                await self._inbox.put(binary)
        elif isinstance(event, Ping):
            await self._write_control(event.response())
        elif isinstance(event, Pong):
            pass  # heard: the idle timer was reset when its bytes arrived
        elif isinstance(event, CloseConnection):
            state = self._protocol.state
            if state is ConnectionState.REMOTE_CLOSING:  # the client began it: answer
                await self._write_control(event.response())
            elif state is ConnectionState.OPEN:  # wsproto failed the connection (1002, 1007)
                await self._write_control(CloseConnection(event.code, event.reason))
            self._mark_closed(ConnectionClosed(event.code, event.reason))

    async def get_message(self) -> Message:
        """The next client message; :class:`ConnectionClosed` once there are no more."""
        message = await self._inbox.take()
        if message is None:
            raise self.closed or ConnectionClosed(ABNORMAL_CLOSURE)
        return message

    def get_message_nowait(self) -> Message | None:
        """A client message already read, or None."""
        return self._inbox.take_nowait()

    # -- writing -------------------------------------------------------------------------------

    async def send_messages(self, messages: list[tuple[int, bytes]]) -> None:
        """Send several messages, each ``(TEXT or BINARY, data)``, in one write; then one round
        of the scheduler.

        The server's stream goes through the scheduler only when a write has to wait, so a
        writer with a full session channel would otherwise write batch after batch while the
        consumer that refills the channel (and the relay taking acks) wait: the round after
        each write keeps them in step, as trio's own socket stream did (docs/performance.md).
        """
        await self._write(lambda: server_frames(messages))
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_message(self, message: Message) -> None:
        if isinstance(message, str):
            await self.send_messages([(TEXT, message.encode("utf-8"))])
        else:
            await self.send_messages([(BINARY, message)])

    async def ping(self) -> None:
        await self._write_control(Ping(os.urandom(4)))

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close with ``code``: the close frame, then the client's answer (read here, while no
        reader runs), within ``CLOSE_TIMEOUT``. Does nothing once closed."""
        if self.closed is not None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            # A close reason must fit a control frame (125 bytes, 2 of them the code).
            reason = (reason or "").encode()[:120].decode(errors="ignore") or None
            await self._write_control(CloseConnection(code, reason))
            self._mark_closed(ConnectionClosed(code, reason))
            await self._await_close_answer()
        self._mark_closed(ConnectionClosed(code, reason))

    async def _await_close_answer(self) -> None:
        protocol = self._protocol
        while protocol.state is ConnectionState.LOCAL_CLOSING:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except _GONE:
                return
            if not data:
                return
            try:
                protocol.receive_data(bytes(data))
                for _event in protocol.events():
                    pass  # messages after our close are dropped; the close ends the loop
            except ProtocolError:
                return

    async def _fail(self, code: int, reason: str) -> None:
        """End the connection for a client's fault: the close frame, without waiting."""
        await self._write_control(CloseConnection(code, reason))
        self._mark_closed(ConnectionClosed(code, reason))

    async def _write_control(self, event: Ping | Pong | CloseConnection) -> None:
        def frame() -> bytes:
            try:
                return self._protocol.send(event)
            except ProtocolError:  # closing or closed already: nothing more is said
                return b""

        with suppress(ConnectionClosed):
            await self._write(frame, when_closing=True)

    async def _write(self, make: Callable[[], bytes], *, when_closing: bool = False) -> None:
        """Write what ``make`` returns, made under the lock (so a close cannot come between
        making data frames and writing them)."""
        lock = self._write_lock
        try:
            lock.acquire_nowait()  # nearly always free: no extra round of the scheduler for it
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if not when_closing and (
                self.closed is not None or self._protocol.state is not ConnectionState.OPEN
            ):
                raise self.closed or ConnectionClosed(ABNORMAL_CLOSURE, "closing")
            data = make()
            if data:
                try:
                    await self._stream.send_all(data)
                except _GONE:
                    self._mark_closed(ConnectionClosed(ABNORMAL_CLOSURE, "the client left"))
                    raise self.closed from None  # type: ignore[misc]
        finally:
            lock.release()

    def _mark_closed(self, closed: ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = closed


class _Inbox:
    """Client messages the reader has read and nobody has taken yet.

    The reader puts a message without a checkpoint while there is room (fewer than
    ``INBOX_MESSAGES`` messages and ``INBOX_BYTES`` bytes; any one message fits an empty inbox),
    so a run of envelope acks read in one ``recv`` is all there when the relay next looks, and
    is settled in one round of the scheduler instead of one round per ack. Memory per
    connection: ``INBOX_BYTES`` plus one message of at most ``max_message_bytes``.
    """

    __slots__ = ("_arrived", "_bytes", "_ended", "_messages", "_taken")

    def __init__(self) -> None:
        self._messages: deque[Message] = deque()
        self._bytes = 0
        self._ended = False
        self._arrived = trio.lowlevel.ParkingLot()  # the taker, waiting for a message
        self._taken = trio.lowlevel.ParkingLot()  # the reader, waiting for room

    async def put(self, message: Message) -> None:
        size = len(message)
        while self._messages and (
            len(self._messages) >= INBOX_MESSAGES or self._bytes + size > INBOX_BYTES
        ):
            await self._taken.park()
        self._messages.append(message)
        self._bytes += size
        if self._arrived:
            self._arrived.unpark_all()

    def take_nowait(self) -> Message | None:
        if not self._messages:
            return None
        message = self._messages.popleft()
        self._bytes -= len(message)
        if self._taken:
            self._taken.unpark_all()
        return message

    async def take(self) -> Message | None:
        """The next message, waiting for it; None once the reader ended and all were taken."""
        while not self._messages:
            if self._ended:
                await trio.lowlevel.checkpoint()
                return None
            await self._arrived.park()
        return self.take_nowait()

    def end(self) -> None:
        self._ended = True
        self._arrived.unpark_all()
