"""paho's PUBLISH decoder vs the engine's (QuickProperties): ``python -m bench.paho_decode``."""
import struct, timeit
import paho.mqtt._packet as p
from paho.mqtt.enums import MQTTProtocolVersion
from mediation.endpoints._mqtt_wire import decode_publish
def up(n, v): return b"\x26" + struct.pack("!H", len(n)) + n + struct.pack("!H", len(v)) + v
props = up(b"event_id", b"0123456789abcdef") + up(b"client_id", b"c1")
topic = b"bench/topic"
pkt = struct.pack("!H", len(topic)) + topic + struct.pack("!H", 7) + bytes([len(props)]) + props + b"x" * 100
h = (3 << 4) | 2
for _ in range(2):
    for name, f in (("paho _packet.decode_publish (Properties)", lambda: p.decode_publish(h, pkt, MQTTProtocolVersion.MQTTv5)),
                    ("EngineClient decode_publish (QuickProperties)", lambda: decode_publish(h, pkt))):
        best = min(timeit.repeat(f, number=20000, repeat=5)) / 20000
        print(f"{name:48s} {best*1e6:6.2f} us")
