"""The WebSocket entrypoint (trio-websocket): both directions on one connection.

Every text or binary message from the client is one upstream event; every downstream event is one
message (text when the payload is UTF-8, unless ``frame_type`` says otherwise). A binary message
travels with the metadata ``content-type: application/octet-stream``, and an event with that
content type goes out binary, so a binary message stays binary even when its bytes are UTF-8
(Autobahn cases 1.2.1, 9.4.x, 9.8.1 echo exactly). With the
``mediation.v1`` subprotocol both directions use the JSON envelope of :mod:`mediation.envelope`,
and the client confirms each event, which is what ``at_least_once`` waits for.

The handshake is answered only after the session's consumers are subscribed, so whatever is
published after the client saw ``101`` reaches it. Refusals happen before the upgrade with the
documented status; once upgraded, the session's end is told with a close code (1001 shutdown, 1009
too big, 1011 broker failure, 1013 too slow, 1001 "idle"). trio-websocket enforces
``max_message_bytes`` (1009, also for a message sent in fragments) and does not compress: it never
accepts permessage-deflate, and a compressed frame is a protocol error (1002), so a message can
never inflate past the limit.

Per message: the writer sends what is ready in the session channel as one socket write, its frames
made directly (:func:`send_messages`); the relay handles every client message already read before
it yields, so a run of envelope acks is settled (and opens the at-least-once window) at once.
Client messages reach the relay through :class:`_Inbox` (trio-websocket's own channel handed one
message per scheduler round, so the relay took acks one at a time), and small whole frames (an
ack) are parsed by :func:`_fast_frames` instead of wsproto's per-frame machinery (a fifth of its
time; any other frame is still wsproto's). Measured on S3 (Kafka, ``at_least_once``, envelope,
the client acking every event, channel_size 64, 100-byte events, 12,000 per drain; engine CPU
from psutil, alternated with the previous commit on a machine shared with other benchmarks):
the engine's CPU per event 75-80 -> 38-45 us (``epoll_wait`` calls per event 1.0 -> 0.3), its
CPU per event divided by the client's (which normalises for the machine's load) 2.5 -> 1.7
(the hand-rolled bridge: 1.4), drain rate medians 9.2 k -> 14.6 k/s (bridge 16.5 k/s in the same
runs; single rounds vary 2x with the machine's load). Command: ``python -m bench --scenario S3``
does this drain; old against new ran it from two git worktrees, alternating, 3-4 rounds each.

Before trio-websocket sees a connection, :mod:`._head` reads its handshake within
``header_timeout`` and ``max_header_bytes`` (431 beyond; a slowloris client is dropped). Once
upgraded, a client silent for ``idle_timeout`` (no message, ack or pong, and nothing written to
it; the engine pings it half way) is closed with 1001 "idle".
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Generator
from contextlib import suppress
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, TextMessage
from wsproto.frame_protocol import CloseReason, Frame, FrameProtocol, Opcode, ParseFailed

from ..auth import BearerVerifier
from ..config import WebSocketEntrypoint
from ..envelope import SUBPROTOCOL, Confirmation, decode_client_message, encode_event, encode_reply
from ..errors import (
    BrokerUnavailable,
    ClientIdle,
    ListenError,
    MediationError,
    NoRoute,
    SessionNotFound,
    UnknownEvent,
    outcome_of,
    response_headers,
)
from ..identity import admit
from ..metadata import client_metadata
from ..session import EngineContext, Session, SessionDelivery, open_session
from ._head import HandoffListener, gate_connections

log = logging.getLogger(__name__)

# The content type that marks an event as binary (a binary frame, or a POST saying so).
OCTET_STREAM = "application/octet-stream"

# How long a closing handshake with the client may take before the connection is dropped.
CLOSE_TIMEOUT = 5.0

# Client messages read and not yet handled by the relay (see _Inbox): at most this many, and
# beyond the first at most this many bytes.
INBOX_MESSAGES = 64
INBOX_BYTES = 64 * 1024


async def serve(
    config: WebSocketEntrypoint,
    context: EngineContext,
    host: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    verifier = BearerVerifier.from_config(config)

    async def handle(request: WebSocketRequest) -> None:
        with context.client_connection():
            await _handle(config, context, verifier, request)

    try:
        sockets = await trio.open_tcp_listeners(config.port, host=host)
    except OSError as error:
        raise ListenError(f"cannot listen on {host}:{config.port}: {error.strerror}") from None
    handoff, handed = trio.open_memory_channel[trio.abc.Stream](0)
    server = WebSocketServer(
        handle,
        [HandoffListener(handed)],  # type: ignore[list-item]
        max_message_size=config.max_message_bytes,
        # Let the stream choose the read size, so the gate can replay a whole head in one read.
        receive_buffer_size=None,
        # The gate already waited for the head; this only bounds what trio-websocket waits.
        connect_timeout=config.header_timeout,
        disconnect_timeout=CLOSE_TIMEOUT,
        message_queue_size=INBOX_MESSAGES,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await nursery.start(
            gate_connections, sockets, handoff, config.max_header_bytes, config.header_timeout
        )
        task_status.started(sockets[0].socket.getsockname()[1])


async def _handle(
    config: WebSocketEntrypoint,
    context: EngineContext,
    verifier: BearerVerifier | None,
    request: WebSocketRequest,
) -> None:
    connection: WebSocketConnection | None = None
    try:
        target = urlsplit(request.path)
        if target.path != config.path:
            raise SessionNotFound(f"no WebSocket entrypoint at {target.path}")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        client_id = admit(
            headers,
            parse_qs(target.query),
            allowed_origins=config.allowed_origins,
            verifier=verifier,
        )
        enveloped = SUBPROTOCOL in request.proposed_subprotocols
        async with open_session(
            context,
            entrypoint=config.name,
            client_id=client_id,
            max_sessions=config.max_sessions,
            client_confirms=enveloped,
        ) as session:
            connection = await request.accept(subprotocol=SUBPROTOCOL if enveloped else None)
            _Inbox.install(connection)
            install_fast_frames(connection)
            await _converse(connection, session, config, enveloped)
    except MediationError as error:
        await _refuse_or_close(request, connection, error)
    except ConnectionClosed:
        # The client left during its handshake (accept or reject found the socket gone): its
        # session, if any, ended with it; nothing else is affected. (Escaping, this would end
        # the WebSocket server and the engine with it.)
        log.info("websocket client left during the handshake")


async def _refuse_or_close(
    request: WebSocketRequest, connection: WebSocketConnection | None, error: MediationError
) -> None:
    outcome = outcome_of(error)
    log.info(
        "websocket session ended",
        extra={
            "reason": outcome.reason,
            "status": outcome.http_status,
            "code": outcome.ws_close_code,
        },
    )
    with trio.move_on_after(CLOSE_TIMEOUT), suppress(ConnectionClosed):
        if connection is None:
            await request.reject(
                outcome.http_status,
                extra_headers=[
                    (k.encode(), v.encode()) for k, v in response_headers(error).items()
                ],
                body=outcome.reason.encode(),
            )
        else:
            # A close reason must fit a control frame (125 bytes, 2 of them the code).
            await connection.aclose(
                outcome.ws_close_code, outcome.reason.encode()[:120].decode(errors="ignore")
            )


Message = str | bytes


class _Inbox:
    """The client messages trio-websocket's reader task has read and the relay not yet taken.

    The reader hands each message over with ``await channel.send(message)``, a checkpoint per
    message, so the reader and the relay took turns message by message: a run of 20 envelope
    acks read in one ``recv`` cost 20 rounds of the scheduler (an ``epoll_wait`` each), and the
    relay settled them one at a time. Installed on a connection (whose channel trio-websocket
    opened with ``INBOX_MESSAGES`` places), the reader's ``send`` queues without a checkpoint
    while the queue holds fewer than ``INBOX_MESSAGES`` messages and ``INBOX_BYTES`` bytes (any
    one message fits an empty queue, as before), and otherwise waits until the relay took one,
    so the relay finds the whole run at once. Memory per connection stays bounded as before:
    ``INBOX_BYTES`` plus one message of at most ``max_message_bytes``.

    The two ends stand in for trio-websocket's ``_send_channel`` and ``_recv_channel``, which
    it uses only for ``send``, ``receive`` and ``aclose``; they wrap the channel it opened, so
    its own closing of that channel (the reader's ``async with``) ends the relay as before.
    """

    __slots__ = ("_closed", "_receive", "_send", "_taken", "bytes", "count")

    def __init__(
        self, send: trio.MemorySendChannel[Message], receive: trio.MemoryReceiveChannel[Message]
    ) -> None:
        self._send = send
        self._receive = receive
        self._taken = trio.lowlevel.ParkingLot()  # the reader, waiting for room
        self._closed = False
        self.count = 0
        self.bytes = 0

    @staticmethod
    def install(connection: WebSocketConnection) -> None:
        inbox = _Inbox(connection._send_channel, connection._recv_channel)
        connection._send_channel = inbox  # type: ignore[assignment]
        connection._recv_channel = _InboxReceiver(inbox)  # type: ignore[assignment]

    # -- the reader's side (trio-websocket's _send_channel) --

    async def send(self, message: Message) -> None:
        size = len(message)
        while self.count and (self.count >= INBOX_MESSAGES or self.bytes + size > INBOX_BYTES):
            if self._closed:
                raise trio.BrokenResourceError("the relay is gone")
            await self._taken.park()
        self.count += 1
        self.bytes += size
        try:
            try:
                self._send.send_nowait(message)  # the relay's end closed: Broken/ClosedResource
            except trio.WouldBlock:  # only if messages came before install(): wait as before
                await self._send.send(message)
        except BaseException:
            self.took(message)
            raise

    async def aclose(self) -> None:
        await self._send.aclose()

    # -- the relay's side --

    def took(self, message: Message) -> Message:
        # Clamped: a message queued before install() was not counted.
        self.count = max(0, self.count - 1)
        self.bytes = max(0, self.bytes - len(message))
        if self._taken:
            self._taken.unpark_all()
        return message

    async def close_receiver(self) -> None:
        self._closed = True
        self._taken.unpark_all()
        await self._receive.aclose()


class _InboxReceiver:
    """The relay's end of an :class:`_Inbox` (trio-websocket's ``_recv_channel``)."""

    __slots__ = ("_inbox",)

    def __init__(self, inbox: _Inbox) -> None:
        self._inbox = inbox

    async def receive(self) -> Message:
        return self._inbox.took(await self._inbox._receive.receive())

    def receive_nowait(self) -> Message:
        return self._inbox.took(self._inbox._receive.receive_nowait())

    async def aclose(self) -> None:
        await self._inbox.close_receiver()


class _Activity:
    """When the client last showed it is there (for ``idle_timeout``)."""

    def __init__(self) -> None:
        self.last = trio.current_time()
        # Messages from the client the engine is still handling (a publish waiting for the
        # broker): the wait is the engine's, not the client's silence.
        self.busy = 0

    def seen(self) -> None:
        self.last = trio.current_time()


async def _converse(
    connection: WebSocketConnection, session: Session, config: WebSocketEntrypoint, enveloped: bool
) -> None:
    """Run the upstream relay and the downstream writer until the client or the session leaves."""
    activity = _Activity()

    def message(item: SessionDelivery) -> tuple[int, bytes]:
        """The event as (opcode, data): its payload goes out as it is, decoded only to check
        that a text frame may carry it."""
        event = item.event
        if enveloped:
            return TEXT, encode_event(event.id, event.payload, event.metadata).encode("utf-8")
        if config.frame_type == "binary" or (
            config.frame_type == "auto" and event.metadata.get("content-type") == OCTET_STREAM
        ):
            return BINARY, event.payload
        try:
            event.payload.decode("utf-8")
        except UnicodeDecodeError:
            if config.frame_type == "text":
                raise
            return BINARY, event.payload
        return TEXT, event.payload

    async def write(batch: list[SessionDelivery]) -> None:
        await send_messages(connection, [message(item) for item in batch])
        # The client's TCP window took it: it is reading.
        activity.seen()

    async with trio.open_nursery() as nursery:

        async def relay_then_stop() -> None:
            await _relay_upstream(connection, session, enveloped, activity)
            nursery.cancel_scope.cancel(reason="client closed the connection")

        nursery.start_soon(relay_then_stop)
        if config.idle_timeout > 0:
            nursery.start_soon(_close_when_idle, connection, session, activity, config.idle_timeout)
        try:
            await session.run_writer(write)
        except ConnectionClosed:
            nursery.cancel_scope.cancel(reason="client closed the connection")


# Opcodes of the data frames the writer sends (RFC 6455, 5.2).
TEXT = 0x1
BINARY = 0x2
_HEAD = struct.Struct("!BB")
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


def server_frame(opcode: int, data: bytes) -> bytes:
    """One unfragmented, unmasked (server to client) WebSocket frame: what wsproto makes for a
    whole message on a connection without extensions, in an eighth of the time."""
    size = len(data)
    if size < 126:
        return _HEAD.pack(0x80 | opcode, size) + data
    if size < 65536:
        return _HEAD_16.pack(0x80 | opcode, 126, size) + data
    return _HEAD_64.pack(0x80 | opcode, 127, size) + data


def client_frame(data: bytearray) -> tuple[int, bytes, int] | None:
    """``(opcode, unmasked payload, frame length)`` of a small whole data frame at the start of
    ``data`` (FIN, no RSV bits, TEXT or BINARY, masked, at most 125 bytes), else None: anything
    else (a fragment, a control frame, a bigger or unmasked frame, too few bytes) is wsproto's."""
    if len(data) < 6:
        return None
    first, size = data[0], data[1] - 0x80
    if (first != 0x81 and first != 0x82) or not 0 <= size <= 125 or len(data) < 6 + size:
        return None
    masked = int.from_bytes(data[6 : 6 + size], "little")
    key = int.from_bytes((bytes(data[2:6]) * (size // 4 + 1))[:size], "little")
    return first & 0x0F, (masked ^ key).to_bytes(size, "little"), 6 + size


def _fast_frames(
    proto: FrameProtocol, wsproto_frames: Generator[Frame | None, None, None]
) -> Generator[Frame | None, None, None]:
    """A stand-in for wsproto's frame parser (``FrameProtocol._parse_more``) that takes small
    whole data frames itself (:func:`client_frame`) and hands everything else, one step at a
    time, to wsproto's own parser, which keeps its state (a fragmented message, a partial
    header, a close) as before. What it yields is what wsproto's parser yields for such a frame:
    a finished ``Frame`` with the text decoded (invalid UTF-8 fails the connection with 1007)."""
    decoder, messages = proto._frame_decoder, proto._message_decoder
    buffer = decoder.buffer
    while True:
        if decoder.header is None and messages.opcode is None and not buffer.bytes_used:
            whole = client_frame(buffer.buffer)
            if whole is not None:
                opcode, payload, length = whole
                del buffer.buffer[:length]
                if opcode == TEXT:
                    try:
                        text = payload.decode("utf-8")
                    except UnicodeDecodeError as error:
                        raise ParseFailed(
                            str(error), CloseReason.INVALID_FRAME_PAYLOAD_DATA
                        ) from None
                    yield Frame(Opcode.TEXT, text, True, True)
                else:
                    yield Frame(Opcode.BINARY, payload, True, True)
                continue
        frame = next(wsproto_frames, None)
        yield frame
        if frame is not None and frame.opcode is Opcode.CLOSE:
            return  # wsproto parses nothing after a close either


def install_fast_frames(connection: WebSocketConnection) -> None:
    """Parse the client's small messages with :func:`_fast_frames` (an ack in a fifth of
    wsproto's time); a no-op if wsproto's internals are not what this module knows (0.x)."""
    established = connection._wsproto.connection
    proto = getattr(established, "_proto", None)
    if (
        isinstance(proto, FrameProtocol)
        and hasattr(proto, "_parse_more")
        and not getattr(proto._frame_decoder, "extensions", True)
    ):
        proto._parse_more = _fast_frames(proto, proto._parse_more)


async def send_messages(connection: WebSocketConnection, messages: list[tuple[int, bytes]]) -> None:
    """Send several messages, each ``(TEXT or BINARY, data)``, with one write to the socket
    (``send_message`` makes one each).

    trio-websocket (0.12) has no batch API, so this does what its ``send_message`` and ``_send``
    do, for many frames at once: frames handed to the stream under the connection's send lock
    (so they cannot interleave with a pong, a reply or a close), and a broken stream turned into
    ``ConnectionClosed`` the same way. The frames are made without a checkpoint in between, as
    ``_send`` makes its one frame. While the connection is open they are made here
    (:func:`server_frame`): the engine never negotiates an extension and never fragments, so
    wsproto would only add its per-frame bookkeeping; otherwise wsproto makes them (and refuses
    them as it refuses ``send_message`` once a close began).
    """
    if connection._close_reason:
        raise ConnectionClosed(connection._close_reason)
    protocol = connection._wsproto
    if protocol.state is ConnectionState.OPEN:
        data = b"".join([server_frame(opcode, payload) for opcode, payload in messages])
    else:
        data = b"".join(
            [
                protocol.send(
                    TextMessage(data=payload.decode("utf-8"))
                    if opcode == TEXT
                    else BytesMessage(data=payload)
                )
                for opcode, payload in messages
            ]
        )
    lock = connection._stream_lock
    try:
        lock.acquire_nowait()  # nearly always free: no extra round of the scheduler for it
    except trio.WouldBlock:
        await lock.acquire()
    try:
        await connection._stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await connection._abort_web_socket()
        assert connection._close_reason is not None
        raise ConnectionClosed(connection._close_reason) from None
    finally:
        lock.release()


async def _close_when_idle(
    connection: WebSocketConnection, session: Session, activity: _Activity, idle_timeout: float
) -> None:
    """End the session with :class:`ClientIdle` once the client was silent for ``idle_timeout``.

    After half of it the client is pinged: a live client answers by itself (browsers and every
    WebSocket library do), so only a client that is gone, or stuck, reaches the timeout.
    """
    half = idle_timeout / 2
    while True:
        await trio.sleep_until(activity.last + half)
        if activity.busy:
            await trio.sleep(half)  # look again later; the relay marks its end as activity
            continue
        if trio.current_time() < activity.last + half:
            continue
        with trio.move_on_at(activity.last + idle_timeout):
            try:
                await connection.ping()
            except ConnectionClosed:
                return  # the relay sees it too and ends the conversation
            activity.seen()  # the pong
            continue
        if not activity.busy and trio.current_time() >= activity.last + idle_timeout:
            session.close(ClientIdle("idle"))
            return


async def _relay_upstream(
    connection: WebSocketConnection, session: Session, enveloped: bool, activity: _Activity
) -> None:
    """Each client message upstream (or, enveloped, a confirmation) until the client leaves."""
    while True:
        try:
            message = await connection.get_message()
        except ConnectionClosed:
            return
        activity.busy += 1
        try:
            # Then whatever else the client sent that is already read, without a checkpoint
            # in between: a run of acks is confirmed before the writer runs, which then sends
            # as many events as they freed the at-least-once window for, in one write (it sent
            # one per ack). trio-websocket has no get_message_nowait; its channel is what
            # get_message reads.
            while True:
                if not await _handle_message(connection, session, enveloped, message):
                    return
                try:
                    message = connection._recv_channel.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
        finally:
            activity.busy -= 1
            activity.seen()


async def _handle_message(
    connection: WebSocketConnection, session: Session, enveloped: bool, message: str | bytes
) -> bool:
    """Relay one client message; False once the client is gone."""
    if not enveloped:
        try:
            if isinstance(message, str):
                await session.publish(message.encode("utf-8"))
            else:
                await session.publish(message, {"content-type": OCTET_STREAM})
        except NoRoute:
            log.warning("message dropped: no upstream route", extra={"session_id": session.id})
        return True
    parsed = decode_client_message(message)
    if isinstance(parsed, Confirmation):
        try:
            await session.confirm(parsed.event_id, accepted=parsed.accepted)
        except UnknownEvent as error:
            log.info("confirmation ignored", extra={"session_id": session.id, "reason": str(error)})
        return True
    try:
        metadata = client_metadata(parsed.metadata.items(), header_names=False)
        await session.publish(parsed.payload, metadata, event_id=parsed.event_id)
    except (BrokerUnavailable, NoRoute) as error:
        reply = encode_reply(parsed.event_id, error=str(error))
    else:
        reply = encode_reply(parsed.event_id)
    try:
        await connection.send_message(reply)
    except ConnectionClosed:
        return False
    return True
