"""Session-scoped pytest fixtures for the real brokers: `tansu`, `rabbitmq`, `mosquitto`,
`mosquitto_tls`, and `tls_files` (the certificates of their TLS listeners).

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
from .tls import TLSFiles, make_certs


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """This run's CAs and certificates (trustme): see tests.brokers.tls."""
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tansu() -> Iterator[Tansu]:
    """A tansu (Kafka protocol) broker: `.bootstrap_servers`, `.consumer_config(group_id)`."""
    with start_tansu() as broker:
        yield broker


@pytest.fixture(scope="session")
def rabbitmq(tls_files: TLSFiles) -> Iterator[RabbitMQ]:
    """A RabbitMQ node: `.amqp_url`, `.amqp1_port`, `.queue_counts(queue)`, `.connection()`;
    and a TLS listener requiring client certificates (`.amqps_url`, `.amqp1s_url`)."""
    with start_rabbitmq(tls=tls_files) as broker:
        yield broker


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto MQTT 5 broker: `.host`, `.port`."""
    with start_mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def mosquitto_tls(tls_files: TLSFiles) -> Iterator[Mosquitto]:
    """A Mosquitto with TLS listeners as well: `.tls_url` (server certificate only) and
    `.mtls_url` (client certificate required)."""
    with start_mosquitto(tls=tls_files) as broker:
        yield broker
