"""paho's PUBLISH decoder vs the engine's (``QuickProperties``), per packet, in memory.

One MQTT 5 QoS 1 PUBLISH with two user properties and a 100-byte payload, decoded 20,000 times,
best of 5 repeats, twice over; prints microseconds per decode for each decoder.
    python -m bench.paho_decode
"""

from __future__ import annotations

import struct
import timeit

import paho.mqtt._packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion

from mediation.endpoints._mqtt_wire import decode_publish

DECODES = 20_000
PUBLISH_QOS1 = (3 << 4) | 2


def _user_property(name: bytes, value: bytes) -> bytes:
    return b"\x26" + struct.pack("!H", len(name)) + name + struct.pack("!H", len(value)) + value


def _packet() -> bytes:
    properties = _user_property(b"event_id", b"0123456789abcdef") + _user_property(
        b"client_id", b"c1"
    )
    topic = b"bench/topic"
    head = struct.pack("!H", len(topic)) + topic + struct.pack("!H", 7)
    return head + bytes([len(properties)]) + properties + b"x" * 100


def main() -> None:
    packet = _packet()
    decoders = (
        (
            "paho _packet.decode_publish (Properties)",
            lambda: paho_packet.decode_publish(PUBLISH_QOS1, packet, MQTTProtocolVersion.MQTTv5),
        ),
        (
            "EngineClient decode_publish (QuickProperties)",
            lambda: decode_publish(PUBLISH_QOS1, packet),
        ),
    )
    for _ in range(2):
        for name, decode in decoders:
            best = min(timeit.repeat(decode, number=DECODES, repeat=5)) / DECODES
            print(f"{name:48s} {best * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
