"""Session-scoped pytest fixtures for the real brokers: `tansu`, `rabbitmq`, `mosquitto`.

Load with `pytest_plugins = ["tests.brokers.fixtures"]` in tests/conftest.py. Each broker
starts the first time a test asks for it (a failure to start is an error, never a skip) and
stops at the end of the session. The brokers are shared by the whole session: a test that
causes an outage should use `with broker.stopped():` / `with broker.frozen():` (which bring
the broker back), or call `broker.ensure_running()` in its teardown.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import Mosquitto, RabbitMQ, Tansu, start_mosquitto, start_rabbitmq, start_tansu


@pytest.fixture(scope="session")
def tansu() -> Iterator[Tansu]:
    """A tansu (Kafka protocol) broker: `.bootstrap_servers`, `.consumer_config(group_id)`."""
    with start_tansu() as broker:
        yield broker


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    """A RabbitMQ node: `.amqp_url`, `.amqp1_port`, `.queue_counts(queue)`, `.connection()`."""
    with start_rabbitmq() as broker:
        yield broker


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto MQTT 5 broker: `.host`, `.port`."""
    with start_mosquitto() as broker:
        yield broker
