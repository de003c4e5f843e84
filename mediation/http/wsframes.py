"""WebSocket frames (RFC 6455, 5.2) at the edges of wsproto. Pure: bytes in, bytes and
decisions out.

wsproto parses and validates every frame the engine does not take here. Two things it does per
frame cost more than the frames that matter most need:

- Sending: the engine only sends whole, unfragmented messages without extensions, so
  :func:`server_frames` makes such frames directly (what wsproto makes, byte for byte:
  ``tests/test_hot_path.py``).
- Receiving: a client confirming every event sends a stream of small text frames (envelope
  acks). :class:`ClientFrames` splits what the client sends at frame boundaries, takes small
  whole data frames that start and end a message itself (:func:`client_frame`), and hands
  everything else to wsproto in order, so that wsproto never sees a frame cut short by one the
  engine took: at every hand-over it is between frames, with no fragmented message under way.

It also enforces ``max_message_bytes`` from frame headers, before any of a message is kept:
wsproto has no limit of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Opcodes (RFC 6455, 5.2).
CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8

_HEAD = struct.Struct("!BB")
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")

# A whole small masked frame: 2 header bytes, the mask and at most 125 bytes.
_MAX_SMALL_FRAME = 6 + 125


def server_frames(messages: Iterable[tuple[int, bytes]]) -> bytes:
    """Unfragmented, unmasked (server to client) frames, one per ``(opcode, data)`` message, in
    one buffer: what wsproto makes for each whole message on a connection without extensions,
    in an eighth of the time. Each payload is copied once, into the buffer: a frame of its own
    first cost a second copy and an allocation of its size per message (docs/performance.md)."""
    parts: list[bytes] = []
    append = parts.append
    for opcode, data in messages:
        size = len(data)
        if size < 126:
            append(_HEAD.pack(0x80 | opcode, size))
        elif size < 65536:
            append(_HEAD_16.pack(0x80 | opcode, 126, size))
        else:
            append(_HEAD_64.pack(0x80 | opcode, 127, size))
        append(data)
    return b"".join(parts)


def client_frame(data: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """``(opcode, unmasked payload, frame length)`` of a small whole data frame at the start of
    ``data`` (FIN, no RSV bits, TEXT or BINARY, masked, at most 125 bytes), else None."""
    if len(data) < 6:
        return None
    first, size = data[0], data[1] - 0x80
    if (first != 0x81 and first != 0x82) or not 0 <= size <= 125 or len(data) < 6 + size:
        return None
    masked = int.from_bytes(data[6 : 6 + size], "little")
    key = int.from_bytes((bytes(data[2:6]) * (size // 4 + 1))[:size], "little")
    return first & 0x0F, (masked ^ key).to_bytes(size, "little"), 6 + size


class MessageTooBig(Exception):
    """A client message (all its frames) would exceed the limit: close with 1009."""


@dataclass(frozen=True, slots=True)
class Whole:
    """A whole message taken without wsproto: ``str`` for text, ``bytes`` for binary."""

    message: str | bytes


@dataclass(frozen=True, slots=True)
class ForWsproto:
    """Bytes of the client's stream for wsproto, in order."""

    data: bytes


class ClientFrames:
    """Splits the client's stream at frame boundaries. Pure.

    :meth:`feed` yields, in stream order, :class:`Whole` messages (small whole data frames)
    and :class:`ForWsproto` pieces; raises :class:`MessageTooBig` once a data frame's header
    announces more than ``max_message_bytes`` for its message. Buffers at most one small frame
    (131 bytes) or one frame header (14 bytes); everything else passes through as it comes.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._passing = 0  # bytes of the current frame still to hand to wsproto
        self._in_message = False  # a fragmented data message is under way
        self._message_bytes = 0
        self._closed = False  # a close frame went by: everything after is wsproto's

    def feed(self, data: bytes | bytearray) -> Iterator[Whole | ForWsproto]:
        if self._closed:
            if data:
                yield ForWsproto(bytes(data))
            return
        buffer = self._buffer
        buffer += data
        while buffer:
            if self._passing:
                piece = bytes(buffer[: self._passing])
                del buffer[: len(piece)]
                self._passing -= len(piece)
                yield ForWsproto(piece)
                continue
            if self._closed:  # wsproto parses nothing after a close: let it see that
                yield ForWsproto(bytes(buffer))
                buffer.clear()
                return
            if not self._in_message:
                whole = client_frame(buffer)
                if whole is not None:
                    opcode, payload, length = whole
                    if opcode == TEXT:
                        try:
                            text = payload.decode("utf-8")
                        except UnicodeDecodeError:
                            whole = None  # wsproto fails the connection with 1007
                        else:
                            self._check_size(len(payload), fresh=True)
                            del buffer[:length]
                            yield Whole(text)
                            continue
                    else:
                        self._check_size(len(payload), fresh=True)
                        del buffer[:length]
                        yield Whole(payload)
                        continue
            header = _frame_header(buffer)
            if header is None:
                return  # its header is not all here yet
            fin, opcode, header_length, payload_length = header
            length = header_length + payload_length
            if (
                len(buffer) < length <= _MAX_SMALL_FRAME
                and not self._in_message
                and buffer[0] in (0x81, 0x82)
            ):
                return  # a small frame, maybe taken whole once the rest arrives
            self._account(fin, opcode, payload_length)
            self._passing = length

    def _account(self, fin: bool, opcode: int, payload_length: int) -> None:
        if opcode == CLOSE or (opcode in (TEXT, BINARY) and self._in_message):
            # A close, or a protocol error wsproto fails the connection for: everything after
            # is wsproto's (which parses nothing more).
            self._closed = True
        elif opcode in (TEXT, BINARY):
            self._check_size(payload_length, fresh=True)
            self._in_message = not fin
        elif opcode == CONTINUATION:
            self._check_size(payload_length, fresh=False)
            if fin:
                self._in_message = False

    def _check_size(self, payload_length: int, *, fresh: bool) -> None:
        total = payload_length if fresh else self._message_bytes + payload_length
        if total > self.max_message_bytes:
            raise MessageTooBig(f"message exceeds {self.max_message_bytes} bytes")
        self._message_bytes = total


def _frame_header(buffer: bytearray) -> tuple[bool, int, int, int] | None:
    """``(fin, opcode, header length, payload length)`` of the frame at the start of
    ``buffer``, or None while its header is not all here."""
    if len(buffer) < 2:
        return None
    first, second = buffer[0], buffer[1]
    length7 = second & 0x7F
    extended = 2 if length7 == 126 else 8 if length7 == 127 else 0
    header_length = 2 + extended + (4 if second & 0x80 else 0)
    if len(buffer) < header_length:
        return None
    size = int.from_bytes(buffer[2 : 2 + extended], "big") if extended else length7
    return bool(first & 0x80), first & 0x0F, header_length, size
