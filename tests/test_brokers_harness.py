"""The broker harness (tests/brokers) starts real brokers that real clients can use."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from tests.brokers import (
    BrokerStartError,
    Mosquitto,
    RabbitMQ,
    Tansu,
    port_accepts,
)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- tansu (Kafka protocol) ---------------------------------------------------------------


def _produce(tansu: Tansu, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    producer = Producer(tansu.client_config())
    for v in values:
        producer.produce(topic, v)
    assert producer.flush(10) == 0


def test_tansu_produce_and_consume_with_a_group(tansu: Tansu) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = _name("harness")
    admin = AdminClient(tansu.client_config())
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    values = [f"m{i}".encode() for i in range(5)]
    _produce(tansu, topic, values)

    consumer = Consumer(tansu.consumer_config(_name("group"), **{"enable.auto.commit": False}))
    try:
        consumer.subscribe([topic])
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < len(values) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg.value())
        assert got == values
        consumer.commit(asynchronous=False)
        [committed] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        assert committed.offset == len(values)
    finally:
        consumer.close()


def test_tansu_stop_and_start_on_the_same_port(tansu: Tansu) -> None:
    port = tansu.port
    tansu.stop()
    assert not tansu.is_running()
    assert not port_accepts(tansu.host, port)
    tansu.start()
    assert tansu.port == port
    assert port_accepts(tansu.host, port)
    _produce(tansu, _name("after-restart"), [b"x"])


# -- RabbitMQ -----------------------------------------------------------------------------


def test_rabbitmq_pika_publish_consume_and_queue_counts(rabbitmq: RabbitMQ) -> None:
    import pika

    queue = _name("harness")
    assert rabbitmq.queue_counts(queue) is None
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.amqp_url))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, auto_delete=False)
        for i in range(3):
            ch.basic_publish("", queue, f"m{i}".encode())
        counts = rabbitmq.wait_for_queue(queue, messages=3)
        assert (counts.messages, counts.consumers) == (3, 0)

        got: list[bytes] = []
        ch.basic_qos(prefetch_count=10)
        ch.basic_consume(
            queue, lambda c, m, p, body: (got.append(body), c.basic_ack(m.delivery_tag))
        )
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert got == [b"m0", b"m1", b"m2"]
        assert rabbitmq.wait_for_queue(queue, messages=0, consumers=1).consumers == 1
    finally:
        conn.close()
    assert rabbitmq.wait_for_queue(queue, consumers=0).consumers == 0
    rabbitmq.delete_queue(queue)
    assert not rabbitmq.queue_exists(queue)


def test_rabbitmq_amqp_1_0_send_and_receive(rabbitmq: RabbitMQ) -> None:
    from proton import Message
    from proton.utils import BlockingConnection

    queue = _name("amqp1")
    with rabbitmq.channel() as ch:
        ch.queue_declare(queue)  # type: ignore[attr-defined]
    conn = BlockingConnection(
        f"{rabbitmq.host}:{rabbitmq.amqp1_port}",
        user=rabbitmq.username,
        password=rabbitmq.password,
        allowed_mechs="PLAIN",
        timeout=10,
    )
    try:
        sender = conn.create_sender(f"/amq/queue/{queue}")
        sender.send(Message(body="hello 1.0"))
        assert rabbitmq.wait_for_queue(queue, messages=1).messages == 1
        receiver = conn.create_receiver(f"/amq/queue/{queue}", name=_name("link"))
        msg = receiver.receive(timeout=5)
        assert msg.body == "hello 1.0"
        receiver.accept()
    finally:
        conn.close()
    assert rabbitmq.wait_for_queue(queue, messages=0, consumers=0).messages == 0


def test_rabbitmq_restart_keeps_durable_state_and_pause_blocks(rabbitmq: RabbitMQ) -> None:
    import pika

    queue = _name("durable")
    with rabbitmq.channel() as ch:
        ch.queue_declare(queue, durable=True)  # type: ignore[attr-defined]
        props = pika.BasicProperties(delivery_mode=2)
        ch.basic_publish("", queue, b"kept", properties=props)  # type: ignore[attr-defined]
    port = rabbitmq.port
    with rabbitmq.stopped():
        assert not port_accepts(rabbitmq.host, port)
    assert rabbitmq.port == port
    assert rabbitmq.queue_counts(queue) == (1, 0)
    assert "kept" not in rabbitmq.log_tail()  # log_tail works; the body is never logged

    # With connection_attempts=1 pika raises its connector's own exception, no AMQPError.
    from pika.adapters.utils.connection_workflow import AMQPConnectorException

    with rabbitmq.frozen(), pytest.raises((pika.exceptions.AMQPError, AMQPConnectorException)):
        rabbitmq.connection(connection_attempts=1, socket_timeout=0.5, stack_timeout=1)
    assert rabbitmq.queue_counts(queue) is not None
    rabbitmq.delete_queue(queue)


# -- Mosquitto (MQTT 5) -------------------------------------------------------------------


def _mqtt_client(mosquitto: Mosquitto, client_id: str):  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    connected = threading.Event()
    client.on_connect = lambda c, u, flags, rc, props: connected.set()
    client.connect(mosquitto.host, mosquitto.port, keepalive=30)
    client.loop_start()
    assert connected.wait(5)
    return client


def test_mosquitto_mqtt5_publish_subscribe(mosquitto: Mosquitto) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    received: list[tuple[str, bytes, list[tuple[str, str]]]] = []
    got = threading.Event()
    subscribed = threading.Event()
    sub = _mqtt_client(mosquitto, _name("sub"))
    pub = _mqtt_client(mosquitto, _name("pub"))
    try:

        def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
            props = getattr(msg.properties, "UserProperty", [])
            received.append((msg.topic, msg.payload, props))
            got.set()

        sub.on_message = on_message
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.subscribe("harness/#", qos=1)
        assert subscribed.wait(5)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", "v")]
        pub.publish("harness/a", b"payload", qos=1, properties=props).wait_for_publish(5)
        assert got.wait(5)
        assert received == [("harness/a", b"payload", [("k", "v")])]
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def test_mosquitto_stop_start_pause_resume(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    with mosquitto.stopped():
        assert not mosquitto.is_running()
        assert not port_accepts(mosquitto.host, port)
    assert mosquitto.port == port and mosquitto.is_running()

    client = _mqtt_client(mosquitto, _name("pause"))
    try:
        with mosquitto.frozen():
            info = client.publish("harness/p", b"x", qos=1)
            time.sleep(0.3)
            assert not info.is_published()
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


# -- failures -----------------------------------------------------------------------------


def test_start_on_a_port_in_use_fails_at_once() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with Mosquitto(port=taken.getsockname()[1]) as broker:
            with pytest.raises(BrokerStartError, match="already in use"):
                broker.start()
            assert not broker.is_running()
    assert not broker.workdir.exists()


def test_start_failure_raises_with_the_log_tail() -> None:
    with Mosquitto(extra_config="no_such_option 1") as broker:
        with pytest.raises(BrokerStartError, match=r"(?s)failed to start.*no_such_option"):
            broker.start(timeout=10)
        assert not broker.is_running()
    assert not broker.workdir.exists()
