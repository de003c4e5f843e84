"""One paho-mqtt client driven from Trio's own I/O: no ``loop_start()``, no network thread.

paho lets an external event loop own its socket (``socket()``, ``loop_read``, ``loop_write``,
``loop_misc``, ``want_write``). :class:`Wire` is that loop for Trio, and the only code that touches
a paho client's socket. Everything here runs in the Trio thread, so paho's callbacks do too: they
may append to plain containers and set attributes, nothing more.

Only the TCP connect is blocking in paho (``socket.create_connection`` in ``connect()``): it runs
in a worker thread through the caller's limiter, before any callback that touches Trio is
installed. Writes are made inline by paho when a packet is queued (it does so when no
``on_socket_register_write`` is set and it is not inside a callback); what the socket could not take
at once is written by :meth:`Wire.flush`. Reading happens only when a task calls
:meth:`Wire.receive_some`, so a reader that stops asking stops reading the socket and the broker
meets TCP backpressure on that one connection.

::

    wire = Wire(client)
    await wire.connect(host, port, keepalive=10, clean_start=True, properties=None,
                       limiter=limiter)           # CONNECT sent and CONNACK received
    client.subscribe("a/b", qos=1); await wire.flush()
    while ...: await wire.receive_some()          # callbacks (on_message...) run in here
    wire.close()                                  # always; idempotent

Reads: paho reads a packet's first byte, its length and its body with a ``recv`` each; once
connected it reads through :class:`_ReadAhead`, which serves those from one ``recv`` of up to
:data:`READ_AHEAD` bytes (held only until paho took them).

Acks: :meth:`Wire.send_acks` writes a batch of PUBACK/PUBCOMP packets as one paho packet (one
socket write), where ``client.ack`` makes a packet and a write each.

Decoding: paho builds the name and type tables of its ``Properties`` anew in every instance, once
per received PUBLISH. The engine's clients (:class:`EngineClient`, a subclass of paho's
``Client``; paho itself and every other client of the process are untouched) decode PUBLISH
packets with :class:`QuickProperties`, the same class with those tables shared (they are never
changed; docs/performance.md, "The MQTT wire"). It also reads the UTF-8 strings of properties
leniently: paho raised on a user property (or content type, ...) that is not
UTF-8, or holds U+0000 or U+FEFF, which the MQTT spec forbids but Mosquitto forwards; paho then
dropped the connection (or, for bad UTF-8, let ``UnicodeDecodeError`` out of ``loop_read``), and
the broker sent the message again to the client's next connection. Such strings are decoded
with replacement characters and kept as they are otherwise: one odd message, not a lost session.

TLS (``mqtts://``): paho wraps the socket itself (``tls_set_context``) and does the handshake in
``connect()``, so in the worker thread, bounded by ``client.connect_timeout``; a handshake that
fails (unknown CA, wrong name, no client certificate) is :class:`ConnectionLost` with OpenSSL's
reason. From then on the socket is a non-blocking ``ssl.SSLSocket``: paho turns its
``SSLWantReadError``/``SSLWantWriteError`` into "try again", and :class:`_ReadAhead` counts what
the SSL object has decrypted but not handed out (``pending()``) as bytes waiting to be read,
because the socket will not wake a reader for those: they have left the kernel already. A TLS
error after the handshake (TLS 1.3 servers refuse a client certificate only then) is kept as the
reason the connection was lost. Renegotiation (a read that needs a write) is not supported: TLS 1.3
has none, and brokers do not ask for it.

Garbage: a connection without keepalive (every consumer's) waits for the broker without a
cancel scope (it would never fire): one object graph fewer per wait, each alive as long as its
wait, for the cyclic collector to promote and scan (with many consumers, full collections are
long: see ``tune_garbage_collector`` in :mod:`mediation.cli`).

Cancellation: every await is a wait on the socket; cancelling one loses nothing, the bytes stay
in paho's buffers (or the kernel's) for the next call. :meth:`connect` waits for the worker thread's
TCP connect to finish (bounded by ``client.connect_timeout``) before the cancellation takes effect.
"""

from __future__ import annotations

import functools
import socket
import ssl
import struct
from collections.abc import Iterable
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket, MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ._tls import describe

# How often a waiting reader wakes to let paho send its keepalive PINGREQ and notice a broker that
# stopped answering one (paho's own loop uses the same one-second tick); for long keepalives
# (a Server Keep Alive of 65535 s, say) a 60th of it is soon enough.
KEEPALIVE_TICK = 1.0
# The most a connection reads from its socket at once (see _ReadAhead).
READ_AHEAD = 16384


# The fixed header of the acks a consumer sends: PUBACK (QoS 1), PUBCOMP (QoS 2 after PUBREL).
_ACK_COMMAND = {1: PacketTypes.PUBACK << 4, 2: PacketTypes.PUBCOMP << 4}
_ACK = struct.Struct("!BBH")


def ack_packets(acks: Iterable[tuple[int, int]]) -> bytes:
    """The PUBACK (QoS 1) or PUBCOMP (QoS 2) packets for ``(packet id, qos)`` pairs, back to
    back: reason code Success, no properties, as paho's ``Client.ack`` makes them."""
    return b"".join([_ACK.pack(_ACK_COMMAND[qos], 2, mid) for mid, qos in acks])


_PROPERTY_TABLES = ("types", "names", "properties")


class QuickProperties(Properties):
    """paho's ``Properties``, with the tables every instance builds made once and shared."""

    _tables: ClassVar[dict[str, Any]] = {}

    def __init__(self, packetType: int) -> None:
        tables = QuickProperties._tables
        if not tables:
            Properties.__init__(self, packetType)  # type: ignore[no-untyped-call]
            tables.update({name: getattr(self, name) for name in _PROPERTY_TABLES})
            return
        object.__setattr__(self, "packetType", packetType)
        for name, table in tables.items():
            object.__setattr__(self, name, table)

    def clear(self) -> None:
        # paho's clear() looks up every known property name; only the set ones are attributes.
        for name in [n for n in vars(self) if n != "packetType" and n not in _PROPERTY_TABLES]:
            delattr(self, name)

    def readProperty(self, buffer: bytes, type: int, propslen: int) -> tuple[object, int]:
        """paho's, with UTF-8 strings read leniently (see the module docstring)."""
        if type == _UTF8_STRING:
            return _lenient_utf8(buffer, propslen)
        if type == _UTF8_PAIR:
            name, used = _lenient_utf8(buffer, propslen)
            text, more = _lenient_utf8(buffer[used:], propslen - used)
            return (name, text), used + more
        read: tuple[object, int] = Properties.readProperty(self, buffer, type, propslen)  # type: ignore[no-untyped-call]
        return read


_UTF8_STRING = 5  # indexes in paho's Properties.types
_UTF8_PAIR = 6


def _lenient_utf8(buffer: bytes, maxlen: int) -> tuple[str, int]:
    """paho's ``readUTF`` without refusing what a broker forwarded: ``(text, bytes used)``."""
    if maxlen < 2:
        raise MalformedPacket("Not enough data to read string length")
    (length,) = struct.unpack_from("!H", buffer)
    if length > maxlen - 2:
        raise MalformedPacket("Length delimited string too long")
    return bytes(buffer[2 : 2 + length]).decode("utf-8", "replace"), length + 2


# What paho's packet decoders turn into MalformedPacket (paho.mqtt._packet.DECODE_ERRORS).
_DECODE_ERRORS = (struct.error, IndexError, KeyError, ValueError, MQTTException)


def decode_publish(header: int, packet: bytes | bytearray) -> mqtt.MQTTMessage:
    """paho's MQTT 5 PUBLISH decoder (``paho.mqtt._packet.decode_publish``), with
    :class:`QuickProperties`: the message ``Client._handle_publish`` makes of it."""
    try:
        (length,) = struct.unpack_from("!H", packet)
        topic = bytes(packet[2 : 2 + length])
        if len(topic) != length:
            raise MalformedPacket("topic longer than the packet")
        offset = 2 + length
        qos = (header & 0x06) >> 1
        mid = 0
        if qos > 0:
            (mid,) = struct.unpack_from("!H", packet, offset)
            offset += 2
        properties = QuickProperties(PacketTypes.PUBLISH)
        _, used = properties.unpack(packet[offset:])  # type: ignore[no-untyped-call]
    except _DECODE_ERRORS as error:
        raise MalformedPacket(str(error)) from error
    message = mqtt.MQTTMessage(mid=mid, topic=topic)
    message.dup = (header & 0x08) != 0
    message.qos = qos
    message.retain = (header & 0x01) != 0
    message.properties = properties
    message.payload = bytes(packet[offset + used :])
    return message


class EngineClient(mqtt.Client):
    """paho's ``Client`` for the engine's own MQTT 5 connections: received PUBLISH packets are
    decoded with :class:`QuickProperties` (see the module docstring). Only instances of this
    class are affected; paho and every other client of the process are left as they are.

    ``_handle_publish`` (private in paho) is paho 2.2.0's for MQTT 5 with that decoder, minus its
    debug log line (the engine never enables paho's logger).
    """

    def _handle_publish(self) -> MQTTErrorCode:
        if self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        message = decode_publish(self._in_packet["command"], self._in_packet["packet"])
        message.timestamp = mqtt.time_func()
        if message.qos == 0:
            self._handle_on_message(message)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if message.qos == 1:
            self._handle_on_message(message)
            if self._manual_ack:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            return self._send_puback(message.mid)
        if message.qos == 2:
            rc = self._send_pubrec(message.mid)
            message.state = mqtt.mqtt_ms_wait_for_pubrel
            with self._in_message_mutex:
                self._in_messages[message.mid] = message
            return rc
        return MQTTErrorCode.MQTT_ERR_PROTOCOL


class ConnectionLost(Exception):
    """The connection ended (or never came up); ``str()`` says why, for the endpoint's error."""


class Wire:
    """The Trio side of one paho client's connection (see the module docstring)."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.session_present = False
        # The broker's Receive Maximum from its CONNACK (65535 when it sets none). Only the
        # value is kept: a paho Properties object holds its own name and type tables, several
        # KiB per connection for the life of the connection.
        self.server_receive_maximum = 65535
        self._connack: ReasonCode | None = None
        self._sock: socket.socket | None = None
        self._read_ahead: _ReadAhead | None = None
        self._lost: str | None = None
        # The broker ended the connection with DISCONNECT 0x8E "Session taken over": another
        # connection with this MQTT client id (another instance's session of the same client).
        self.taken_over = False
        self._connect_failure: str | None = None
        self._write_lock = trio.Lock()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect

    @property
    def alive(self) -> bool:
        return self._sock is not None and self._lost is None and self.client.socket() is not None

    async def connect(
        self,
        host: str,
        port: int,
        *,
        keepalive: int,
        clean_start: bool,
        properties: Properties | None,
        limiter: trio.CapacityLimiter,
    ) -> None:
        """Open the connection and wait for a successful CONNACK; :class:`ConnectionLost` if not.

        The caller bounds the wait for the CONNACK (a frozen broker accepts TCP and says nothing).
        """
        connect = functools.partial(
            self.client.connect,
            host,
            port,
            keepalive,
            clean_start=clean_start,
            properties=properties,
        )
        # A TLS 1.3 broker refuses a client certificate only after the handshake, so paho's
        # CONNECT write or first read fails, in the worker thread; the socket paho then closes
        # says why (only this attribute is set from that thread).
        self.client.on_socket_close = self._on_socket_close_in_connect
        try:
            try:
                await trio.to_thread.run_sync(connect, limiter=limiter)
            except (OSError, ValueError) as error:
                raise ConnectionLost(
                    f"cannot connect to {host}:{port}: {describe(error)}"
                ) from None
            sock = self.client.socket()
            # tcp, or tcp in TLS (ssl.SSLSocket is a socket.socket); never websocket wrappers
            if not isinstance(sock, socket.socket):
                reason = self._connect_failure or "no socket"
                raise ConnectionLost(f"cannot connect to {host}:{port}: {reason}")
            self._sock = sock
            self._read_ahead = _ReadAhead(sock)
            # paho reads through it from here on (it only calls recv, send, close and
            # setblocking on its socket, and ``socket()`` returns it).
            self.client._sock = self._read_ahead
            # From here on paho only runs in this thread: it may now call back into Trio.
            self.client.on_socket_close = self._on_socket_close
            await self.flush()
            while self._connack is None:
                await self.receive_some()
        except BaseException:
            self.close()
            raise
        if self._connack.is_failure:
            self.close()
            raise ConnectionLost(f"{host}:{port} refused the connection: {self._connack}")

    async def receive_some(self, budget: int = 1) -> None:
        """Wait until the broker sent something, then let paho read and dispatch it.

        Reads up to ``budget`` packets while they keep coming (paho reads one per call). Also
        gives paho its keepalive turn at least every :data:`KEEPALIVE_TICK` seconds (or a 60th
        of the keepalive, if longer) while the connection is idle, so a loop of ``receive_some``
        is all a connection needs.
        Raises :class:`ConnectionLost` once the connection is gone.
        """
        sock = self._live_socket()
        keepalive = self.client.keepalive
        if keepalive:
            with trio.move_on_after(max(KEEPALIVE_TICK, keepalive / 60)):
                await self._read(sock, budget)
        else:
            # No keepalive (consumer connections): no deadline, so no cancel scope either (one
            # per wait, and with a thousand connections waiting they fed the garbage collector).
            await self._read(sock, budget)
        if self.client.loop_misc() != mqtt.MQTT_ERR_SUCCESS or not self.alive:
            raise self._lost_error()
        if self.client.want_write():
            await self.flush()

    async def flush(self) -> None:
        """Write what paho could not write inline; returns once the kernel took all of it."""
        async with self._write_lock:
            while self.client.want_write():
                sock = self._live_socket()
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    raise self._lost_error() from None
                if self.client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
                    raise self._lost_error()

    def send_acks(self, acks: list[tuple[int, int]]) -> None:
        """Queue PUBACKs/PUBCOMPs for ``(packet id, qos)`` pairs as one packet, and write it if
        the socket takes it now (what it does not take, :meth:`flush` writes)."""
        if acks:
            # paho's own queue, as Client.ack uses it, so the bytes stay in order with paho's.
            self.client._packet_queue(PacketTypes.PUBACK << 4, ack_packets(acks), 0, 1)

    def close(self, reason: str = "closed") -> None:
        """Close the socket now (no DISCONNECT: send one first for a clean goodbye). Idempotent."""
        if self._lost is None:
            self._lost = reason
        sock = self.client.socket()
        self.client.on_socket_close = None
        self.client.on_connect = None
        self.client.on_disconnect = None
        if isinstance(sock, _ReadAhead):
            sock = sock.raw
        for owned in {sock, self._sock} - {None}:
            assert isinstance(owned, socket.socket)
            if owned.fileno() >= 0:
                trio.lowlevel.notify_closing(owned)
                owned.close()
        self._sock = None

    # -- internals -----------------------------------------------------------------------------

    async def _read(self, sock: socket.socket, budget: int) -> None:
        read_ahead = self._read_ahead
        if read_ahead is None or not read_ahead.pending:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                raise self._lost_error() from None
        for _ in range(max(1, budget)):
            if self.client.loop_read() != mqtt.MQTT_ERR_SUCCESS or not self.alive:
                raise self._lost_error()
            if not (read_ahead is not None and read_ahead.pending) and not _readable_now(sock):
                break

    def _live_socket(self) -> socket.socket:
        if not self.alive:
            raise self._lost_error()
        assert self._sock is not None
        return self._sock

    def _lost_error(self) -> ConnectionLost:
        if self._lost is None:
            self._lost = self._tls_failure() or "connection lost"
        return ConnectionLost(self._lost)

    def _tls_failure(self) -> str | None:
        return None if self._read_ahead is None else self._read_ahead.failure

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack = reason
        self.session_present = flags.session_present
        self.server_receive_maximum = getattr(properties, "ReceiveMaximum", 65535)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._lost is None:
            from_broker = " by the broker" if flags.is_disconnect_packet_from_server else ""
            self.taken_over = bool(from_broker) and getattr(reason, "value", None) == 0x8E
            self._lost = self._tls_failure() or f"disconnected{from_broker}: {reason}"

    def _on_socket_close_in_connect(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._connect_failure = getattr(sock, "tls_failure", None)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Wake whoever waits on the socket before paho closes it under them.
        if isinstance(sock, _ReadAhead):
            sock = sock.raw
        if isinstance(sock, socket.socket) and sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)


class _ReadAhead:
    """A paho client's socket, read in chunks: paho asks for a packet's first byte, its length
    bytes and its body in separate reads (and Wire looked for the next packet with a peek), four
    system calls per message; this serves them from one ``recv`` of up to ``READ_AHEAD`` bytes.

    It holds at most one such chunk, and only while paho has not read it: a consumer that stops
    reading (its client is slow) leaves the rest in the kernel, as before.

    Over TLS ``raw`` is an ``ssl.SSLSocket``: what its SSL object decrypted and holds counts as
    pending too, and a TLS error (not a "want read/write") is kept in ``failure``.
    """

    __slots__ = ("_chunk", "_offset", "_tls", "failure", "raw")

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self._tls = raw if isinstance(raw, ssl.SSLSocket) else None
        self._chunk = b""
        self._offset = 0
        self.failure: str | None = None

    @property
    def pending(self) -> bool:
        """Bytes read from the socket and not yet handed to paho (or held by the SSL object)."""
        if self._offset < len(self._chunk):
            return True
        return self._tls is not None and self._tls.fileno() >= 0 and self._tls.pending() > 0

    def recv(self, buffer_size: int) -> bytes:
        size = buffer_size
        if self._offset >= len(self._chunk):
            data = self._recv(max(size, READ_AHEAD))  # BlockingIOError, EOF: as paho expects
            if len(data) <= size:
                self._chunk, self._offset = b"", 0
                return data
            self._chunk, self._offset = data, 0
        start = self._offset
        self._offset = min(start + size, len(self._chunk))
        if self._offset == len(self._chunk):
            chunk, self._chunk, self._offset = self._chunk, b"", 0
            return chunk[start:]
        return self._chunk[start : self._offset]

    def _recv(self, size: int) -> bytes:
        if self._tls is None:
            return self.raw.recv(size)
        try:
            return self._tls.recv(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # paho's "try again"
        except ssl.SSLError as error:
            self.failure = describe(error)
            raise

    def send(self, buffer: bytes | bytearray) -> int:
        if self._tls is None:
            return self.raw.send(buffer)
        try:
            return self._tls.send(buffer)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as error:
            self.failure = describe(error)
            raise

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()


def _readable_now(sock: socket.socket) -> bool:
    """Whether another packet's first byte is already waiting (no syscall beyond a peek).

    Over TLS, whether bytes of another record are waiting in the kernel (the SSL object's own
    are :attr:`_ReadAhead.pending`): ``SSLSocket.recv`` takes no flags, so the socket's own
    ``recv`` peeks at the encrypted bytes.
    """
    try:
        return bool(socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # let paho's next read see the error
