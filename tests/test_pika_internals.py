"""The pika internals the RabbitMQ endpoint relies on, all in mediation/endpoints/_pika_adapter.py
(pika pinned to the tested version in pyproject.toml): this fails, rather than the endpoint
misbehaving, when an upgrade moves one of them.

- ``Connection._read_frame`` and ``_frame_buffer``: read leniently, so that one message whose
  content header pika cannot decode is rejected alone instead of ending the connection every
  session shares (``LenientConnection``);
- ``Connection._adapter_emit_data``, ``BaseConnection._transport``, ``_AsyncPlaintextTransport``
  with ``_state``, ``_STATE_ACTIVE`` and ``_sock``: where a corked batch of acks and publishes
  is written in one send (``Writer``; its behaviour on a live connection is
  ``tests/test_rabbitmq.py::test_a_corked_batch_is_written_at_once_and_in_order``);
- ``Connection._adapter_disconnect_stream``: a close the broker does not answer (``cut``).

No other module of the engine may touch pika's private API (the last test checks the sources).
"""

from __future__ import annotations

import inspect
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.frame
import pika.spec
import pytest
from pika.adapters.base_connection import BaseConnection
from pika.adapters.select_connection import IOLoop, SelectConnection
from pika.adapters.utils import io_services_utils
from pika.connection import Connection

import mediation
from mediation.endpoints import _pika_adapter
from mediation.endpoints._pika_adapter import LenientConnection, UndecodableProperties

# The pika versions the adapter was tested against (pyproject.toml pins the same).
TESTED = {"1.4.4"}


def test_pika_is_a_tested_version() -> None:
    assert pika.__version__ in TESTED, pika.__version__


@pytest.fixture
def connection() -> Iterator[LenientConnection]:
    """A connection that is never started: its ioloop does not run."""
    ioloop = IOLoop()
    try:
        yield LenientConnection(
            pika.ConnectionParameters(host="127.0.0.1", port=1), custom_ioloop=ioloop
        )
    finally:
        ioloop.close()


def _header_frame(properties: bytes, *, channel: int = 1, body_size: int = 5) -> bytes:
    payload = struct.pack(">HHQ", pika.spec.BasicProperties.INDEX, 0, body_size) + properties
    head = struct.pack(">BHL", pika.spec.FRAME_HEADER, channel, len(payload))
    return head + payload + bytes([pika.spec.FRAME_END])


def test_an_undecodable_content_header_is_read_as_one_bad_message(
    connection: LenientConnection,
) -> None:
    # A timestamp header value beyond the year 9999: pika's decoder raises on it.
    table = b"\x04when" + b"T" + struct.pack(">Q", 2**63)
    properties = struct.pack(">H", pika.spec.BasicProperties.FLAG_HEADERS)
    properties += struct.pack(">I", len(table)) + table
    frame = _header_frame(properties)
    with pytest.raises(Exception):  # noqa: B017 (whatever pika raises: it must raise)
        pika.spec.BasicProperties().decode(properties)
    connection._frame_buffer = frame + b"next"
    used, header = connection._read_frame()
    assert used == len(frame)
    assert isinstance(header, pika.frame.Header)
    assert (header.channel_number, header.body_size) == (1, 5)
    assert isinstance(header.properties, UndecodableProperties)


def test_a_decodable_frame_is_pikas(connection: LenientConnection) -> None:
    frame = _header_frame(struct.pack(">H", 0))
    connection._frame_buffer = frame
    used, header = connection._read_frame()
    assert used == len(frame)
    assert type(header.properties) is pika.spec.BasicProperties


def test_the_write_hooks_are_where_the_writer_expects_them(
    connection: LenientConnection,
) -> None:
    assert issubclass(LenientConnection, SelectConnection)
    assert issubclass(SelectConnection, BaseConnection)
    assert inspect.signature(Connection._read_frame).parameters.keys() == {"self"}
    # An instance attribute the Writer can wrap, used for every frame pika sends.
    assert list(inspect.signature(connection._adapter_emit_data).parameters) == ["data"]
    assert "self._adapter_emit_data(" in inspect.getsource(Connection._output_marshaled_frames)
    # The transport, once connected, and what the Writer reads of it.
    assert "_transport" in vars(connection) and connection._transport is None
    assert "self._transport = transport" in inspect.getsource(BaseConnection)
    plaintext = io_services_utils._AsyncPlaintextTransport
    assert issubclass(plaintext, io_services_utils._AsyncTransportBase)
    assert isinstance(plaintext._STATE_ACTIVE, int)
    base_init = inspect.getsource(io_services_utils._AsyncTransportBase.__init__)
    assert "self._sock = sock" in base_init
    assert "self._state = self._STATE_ACTIVE" in base_init
    assert callable(plaintext.get_write_buffer_size)


def test_the_cut_hook_aborts_the_transport() -> None:
    assert inspect.signature(Connection._adapter_disconnect_stream).parameters.keys() == {"self"}
    assert "_adapter_disconnect_stream" in vars(BaseConnection)
    assert "abort()" in inspect.getsource(BaseConnection._adapter_disconnect_stream)


def test_no_other_module_uses_pikas_private_api() -> None:
    """Private pika names (``_x`` attributes of pika objects, pika modules' ``_X``) appear only in
    the adapter; the RabbitMQ endpoint uses its named functions."""
    adapter = Path(inspect.getfile(_pika_adapter))
    private = re.compile(
        r"\b(?:connection|transport|_connection|channel|frame)\._(?!_)\w+|"
        r"_adapter_\w+|_read_frame|_frame_buffer|_Async\w+Transport|_STATE_\w+"
    )
    offenders = []
    for path in Path(inspect.getfile(mediation)).parent.rglob("*.py"):
        text = path.read_text()
        if path == adapter or "pika" not in text:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if private.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []
