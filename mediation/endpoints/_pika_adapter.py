"""Every use of pika's private API, for the RabbitMQ endpoint: nothing else touches its internals.

pika is pinned (pyproject.toml) to the version these were written and tested against, and
``tests/test_pika_internals.py`` fails loudly when one of them moves. Each use is scoped to the
endpoint's own connections (an instance attribute, a subclass): no other pika user in the process
sees a difference.

=====================================  ===================================================
private API                            what for
=====================================  ===================================================
``Connection._read_frame`` (override)  :class:`LenientConnection`: a content header pika
``Connection._frame_buffer`` (read)    cannot decode is one rejected message, not the end
                                       of the connection every session shares
``Connection._adapter_emit_data``      :class:`Writer`: a Trio -> thread batch is written
(wrapped, on the instance)             in one ``send``
``Connection._transport``,
``_AsyncPlaintextTransport`` with its
``_state``, ``_STATE_ACTIVE``,
``_sock``
``Connection._adapter_disconnect_      :func:`cut`: a close the broker does not answer
stream``                               within ``CLOSE_TIMEOUT`` drops the socket
=====================================  ===================================================

Everything here runs on the connection's I/O thread (pika is not thread-safe).
"""

from __future__ import annotations

import struct
from typing import Any

import pika  # type: ignore[import-untyped]
import pika.frame  # type: ignore[import-untyped]
import pika.spec  # type: ignore[import-untyped]
from pika.adapters.utils.io_services_utils import (  # type: ignore[import-untyped]
    _AsyncPlaintextTransport as _PLAINTEXT,
)


class UndecodableProperties(pika.spec.BasicProperties):  # type: ignore[misc]
    """Stands for a content header pika could not decode (see :class:`LenientConnection`)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = f"{type(error).__name__}: {error}"


class LenientConnection(pika.SelectConnection):  # type: ignore[misc]
    """pika's ``SelectConnection``, where a content header that pika cannot decode is one bad
    message rather than the end of the connection.

    pika decodes each frame as it arrives; a content header it cannot decode (a timestamp
    header beyond the year 9999 raises ``OverflowError`` in ``datetime``, for one) raised out of
    its frame reader and closed the connection, every session's; the broker then delivered the
    message again on the next connection, and the connection ended again. Here that frame is
    read as a content header of :class:`UndecodableProperties`, so that the message (its method
    frame came before, its body frames follow) reaches the consumer callback and is rejected
    alone. Anything else that cannot be decoded (a method frame, broken framing) still ends the
    connection.
    """

    def _read_frame(self) -> tuple[int, Any]:
        try:
            return super()._read_frame()  # type: ignore[no-any-return]
        except Exception as error:
            frame = _undecodable_header(self._frame_buffer, error)
            if frame is None:
                raise
            return frame


def _undecodable_header(data: bytes, error: BaseException) -> tuple[int, Any] | None:
    """``(bytes used, Header frame)`` for a complete content header frame at the start of
    ``data`` whose properties could not be decoded, else None."""
    if len(data) < 7 + 12:
        return None
    frame_type, channel, size = struct.unpack_from(">BHL", data)
    end = 7 + size + 1
    if frame_type != pika.spec.FRAME_HEADER or len(data) < end:
        return None
    if data[end - 1] != pika.spec.FRAME_END:
        return None
    class_id, _weight, body_size = struct.unpack_from(">HHQ", data, 7)
    if class_id != pika.spec.BasicProperties.INDEX:
        return None
    return end, pika.frame.Header(channel, body_size, UndecodableProperties(error))


def cut(connection: Any) -> None:
    """Abort ``connection``'s transport now (its close callback follows): for a close the broker
    does not answer. pika's public ``close()`` only ever waits for the broker's Close-Ok."""
    connection._adapter_disconnect_stream()


class Writer:
    """Writes what one Trio -> thread batch says (acks, publishes, channel methods) to the socket
    at the end of that batch, in one ``send``, from the I/O thread (pika is not thread-safe).

    pika's transport never writes when asked: it appends each frame to a buffer, turns on the
    socket's write watch (``epoll_ctl``), and sends on the ioloop's next pass (``epoll_wait``,
    then a ``send`` per frame, then ``epoll_ctl`` again). At ``channel_size = 1`` that is every
    ack. While corked, this connection's ``_adapter_emit_data`` (every frame pika emits goes
    through it; wrapped on this one instance only) collects frames instead; :meth:`flush` joins
    them and sends them at once when pika's own buffer is empty (else order would break), and
    hands pika whatever the socket did not take (a full socket, an error: pika's write path deals
    with it as before). TLS connections, and everything outside a batch, keep pika's path.
    """

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._emit = connection._adapter_emit_data  # pika's (bound method)
        self._corked: list[bytes] | None = None
        connection._adapter_emit_data = self._collect

    def _collect(self, data: bytes) -> None:
        if self._corked is None:
            self._emit(data)
        else:
            self._corked.append(data)

    def cork(self) -> None:
        if self._corked is None:
            self._corked = []

    def flush(self) -> None:
        corked, self._corked = self._corked, None
        if not corked:
            return
        transport = self._connection._transport
        if (
            type(transport) is not _PLAINTEXT
            or transport._state != _PLAINTEXT._STATE_ACTIVE
            or transport.get_write_buffer_size()
        ):
            for data in corked:
                self._emit(data)
            return
        data = b"".join(corked)
        try:
            sent = transport._sock.send(data)
        except OSError:
            sent = 0  # would block, or broken: pika's write path retries or reports it
        if sent < len(data):
            self._emit(data[sent:])
