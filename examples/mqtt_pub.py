"""Publish one MQTT 5 message at QoS 1, as any MQTT application would (``mosquitto_pub`` does the
same where it is installed):

    .venv/bin/python examples/mqtt_pub.py localhost:1883 examples/mqtt/inbox/worker-1 'job 1'
"""

from __future__ import annotations

import argparse

import paho.mqtt.publish
from paho.mqtt.client import MQTTv5

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("broker", help="host:port")
    parser.add_argument("topic")
    parser.add_argument("message")
    arguments = parser.parse_args()
    host, _, port = arguments.broker.rpartition(":")
    paho.mqtt.publish.single(
        arguments.topic, arguments.message, qos=1, hostname=host, port=int(port), protocol=MQTTv5
    )
    print(f"published to {arguments.topic}")
