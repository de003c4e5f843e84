"""The paho-mqtt internals the MQTT 5 endpoint relies on, all in mediation/endpoints/_mqtt_wire.py
(paho pinned to the tested version in pyproject.toml), and proof that they stay the engine's own:
importing the engine changes nothing in paho, and a plain paho client is paho's.

Private paho API used, by ``EngineClient`` (a ``Client`` subclass) and ``Wire``:
``Client._handle_publish`` (overridden: paho's, with ``QuickProperties``), ``_protocol``,
``_in_packet``, ``_handle_on_message``, ``_manual_ack``, ``_send_puback``, ``_send_pubrec``,
``_in_message_mutex``, ``_in_messages``, ``_sock`` (set to the read-ahead socket),
``_packet_queue`` (a batch of acks as one packet); ``Properties.readProperty`` and ``unpack``
(subclassed); module names ``time_func`` and ``mqtt_ms_wait_for_pubrel``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import struct
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import paho.mqtt
import paho.mqtt._packet as paho_packet
import paho.mqtt.client as mqtt
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mediation.config import MQTT5Config
from mediation.endpoints import EndpointState
from mediation.endpoints._mqtt_wire import EngineClient, QuickProperties, decode_publish
from mediation.endpoints.mqtt5 import MQTT5Endpoint

from .brokers import Mosquitto

# The paho-mqtt versions the adapter was tested against (pyproject.toml pins the same).
TESTED = {"2.2.0"}

# The sources EngineClient copies or relies on, as paho 2.2.0 has them: a change in any of them
# needs a look at _mqtt_wire.py (then update the digest).
SOURCES = {
    "Client._handle_publish": (mqtt.Client._handle_publish, "1bbaa3ef0e3afc6d"),
    "_packet.decode_publish": (paho_packet.decode_publish, "50c158487fa3d96e"),
    "Client._packet_queue": (mqtt.Client._packet_queue, "e298fa9ab31e5f79"),
}


def test_paho_is_a_tested_version() -> None:
    assert paho.mqtt.__version__ in TESTED, paho.mqtt.__version__


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_the_copied_and_used_paho_code_is_unchanged(name: str) -> None:
    function, digest = SOURCES[name]
    assert hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16] == digest


def test_the_private_names_are_where_the_adapter_expects_them() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    for attribute in ("_protocol", "_in_packet", "_manual_ack", "_in_messages", "_sock"):
        assert attribute in vars(client), attribute
    assert isinstance(client._in_message_mutex, type(threading.Lock()))
    for method in ("_handle_on_message", "_send_puback", "_send_pubrec", "_packet_queue"):
        assert callable(getattr(client, method)), method
    assert "self._handle_publish()" in inspect.getsource(mqtt.Client._packet_handle)
    assert "self._sock.recv(" in inspect.getsource(mqtt.Client._sock_recv)
    assert callable(mqtt.time_func)
    assert mqtt.mqtt_ms_wait_for_pubrel is not None
    assert inspect.signature(Properties.readProperty).parameters.keys() == {
        "self",
        "buffer",
        "type",
        "propslen",
    }


def _publish_packet(qos: int, properties: bytes, *, topic: bytes = b"a/b") -> bytes:
    packet = struct.pack("!H", len(topic)) + topic
    if qos:
        packet += struct.pack("!H", 7)
    return packet + bytes([len(properties)]) + properties + b"payload"


def _user_property(name: bytes, value: bytes) -> bytes:
    return b"\x26" + struct.pack("!H", len(name)) + name + struct.pack("!H", len(value)) + value


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_the_engine_decodes_a_publish_as_paho_does(qos: int) -> None:
    properties = _user_property(b"k", b"v") + b"\x03" + struct.pack("!H", 4) + b"text"
    header = (PacketTypes.PUBLISH << 4) | (qos << 1) | 0x09  # dup, retain
    packet = _publish_packet(qos, properties)
    ours = decode_publish(header, packet)
    paho = paho_packet.decode_publish(header, packet, MQTTProtocolVersion.MQTTv5)
    assert type(ours.properties) is QuickProperties
    assert type(paho.properties) is Properties  # paho's own decoder is paho's
    assert (ours.topic, ours.mid, ours.qos, ours.dup, ours.retain, ours.payload) == (
        paho.topic.decode(),
        paho.mid,
        paho.qos,
        paho.dup,
        paho.retain,
        paho.payload,
    )
    assert ours.properties.UserProperty == paho.properties.UserProperty == [("k", "v")]  # type: ignore[union-attr]
    assert ours.properties.ContentType == "text"


def test_the_engine_reads_forbidden_strings_leniently_and_paho_does_not() -> None:
    header = (PacketTypes.PUBLISH << 4) | (1 << 1)
    packet = _publish_packet(1, _user_property(b"k", b"\xff\x00"))
    with pytest.raises(MalformedPacket):
        paho_packet.decode_publish(header, packet, MQTTProtocolVersion.MQTTv5)
    assert decode_publish(header, packet).properties.UserProperty == [("k", "\ufffd\x00")]
    with pytest.raises(MalformedPacket):
        decode_publish(header, packet[:3])  # truncated: malformed, as paho says


_SNAPSHOT = r"""
import importlib, json, pkgutil, sys
import paho.mqtt, paho.mqtt.client
def snapshot():
    names = {}
    modules = [m.name for m in pkgutil.iter_modules(paho.mqtt.__path__, "paho.mqtt.")]
    for name in modules:
        module = importlib.import_module(name)
        for key, value in vars(module).items():
            names[f"{name}.{key}"] = id(value)
            if isinstance(value, type) and value.__module__ == name:
                for attr, member in vars(value).items():
                    names[f"{name}.{key}.{attr}"] = id(member)
    return names
before = snapshot()
for name in sys.argv[1:]:
    importlib.import_module(name)
after = snapshot()
changed = sorted(k for k in before if after.get(k) != before[k])
print(json.dumps({"changed": changed, "modules": len(before)}))
"""

ENGINE_MODULES = [
    "mediation",
    "mediation.engine",
    "mediation.endpoints.kafka",
    "mediation.endpoints.rabbitmq",
    "mediation.endpoints.mqtt5",
    "mediation.endpoints.jms",
    "mediation.endpoints.solace",
    "mediation.endpoints.memory",
]


def test_importing_the_engine_changes_nothing_in_paho() -> None:
    """In a fresh interpreter (the test session's import order cannot hide a change): every
    name of every paho.mqtt module, and every member of their classes, is the same object
    before and after importing the engine and each endpoint module."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT, *ENGINE_MODULES],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": ""},
        timeout=60,
    )
    report = json.loads(result.stdout)
    assert report["modules"] > 100
    assert report["changed"] == []


async def test_a_plain_paho_client_next_to_a_running_endpoint_is_pahos(
    mosquitto: Mosquitto,
) -> None:
    topic = f"paho-internals/{uuid.uuid4().hex}"
    endpoint = MQTT5Endpoint(
        f"mqtt-{uuid.uuid4().hex[:8]}",
        MQTT5Config(broker=f"tcp://{mosquitto.host}:{mosquitto.port}", topic_in=topic),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.run)
        with trio.fail_after(10):
            await endpoint.state.wait_value(EndpointState.UP)
        assert endpoint._link is not None
        assert type(endpoint._link.wire.client) is EngineClient
        plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        assert type(plain) is mqtt.Client
        assert type(plain)._handle_publish is vars(mqtt.Client)["_handle_publish"]
        assert "EngineClient" not in repr(type(plain).__mro__)
        assert paho_packet.Properties is Properties
        header = (PacketTypes.PUBLISH << 4) | (1 << 1)
        decoded = paho_packet.decode_publish(
            header, _publish_packet(1, b""), MQTTProtocolVersion.MQTTv5
        )
        assert type(decoded.properties) is Properties
        nursery.cancel_scope.cancel()
