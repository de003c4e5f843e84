"""The pika internals the RabbitMQ endpoint relies on (pinned to pika 1.4.x in pyproject.toml):
this fails, rather than the endpoint misbehaving, when an upgrade moves them.

- ``_adapter_emit_data``: the connection's frame writer, corked to write a batch of acks and
  publishes in one send (see ``_Cork`` in mediation/endpoints/rabbitmq.py);
- ``_AsyncPlaintextTransport`` and its ``_sock``: where the corked batch is written directly;
- ``_read_frame``: read leniently, so that one message whose content header pika cannot decode
  is rejected alone instead of ending the connection every session shares.
"""

from __future__ import annotations

import inspect

import pika
from pika.adapters.select_connection import SelectConnection
from pika.adapters.utils import io_services_utils
from pika.connection import Connection


def test_pika_is_the_pinned_minor_version() -> None:
    assert pika.__version__.startswith("1.4."), pika.__version__


def test_the_connection_hooks_are_where_the_endpoint_expects_them() -> None:
    assert inspect.signature(Connection._read_frame).parameters.keys() == {"self"}
    assert "data" in inspect.signature(Connection._adapter_emit_data).parameters
    transport = io_services_utils._AsyncPlaintextTransport
    assert issubclass(transport, io_services_utils._AsyncTransportBase)
    assert "self._sock" in inspect.getsource(io_services_utils._AsyncTransportBase.__init__)
    assert issubclass(SelectConnection, Connection)
