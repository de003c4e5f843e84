"""Real brokers on loopback for the test suite (DESIGN.md section 10).

Plain Python, no pytest: each `start_*()` is a context manager that starts a private broker
on a free 127.0.0.1 port (or the port given), waits until a real client can use it, yields
the harness object and stops it and removes its temp dir on exit. A start failure raises
BrokerStartError with the tail of the broker's log.

Every harness object has: host, port, address ('host:port'), workdir, log_path, pid,
start_seconds, and start() / stop() / kill() / restart() (same port), pause() / resume()
(SIGSTOP / SIGCONT), stopped() / frozen() (context managers for an outage), ensure_running(),
is_running(), paused, log_tail(), close().

The pytest fixtures (session scope) live in tests.brokers.fixtures.
"""

from ._common import LOOPBACK, Broker, BrokerStartError, free_port, port_accepts
from .mosquitto import Mosquitto, start_mosquitto
from .rabbitmq import QueueCounts, RabbitMQ, start_rabbitmq
from .tansu import CONSUMER_GROUP_SETTINGS, Tansu, find_tansu, start_tansu

__all__ = [
    "CONSUMER_GROUP_SETTINGS",
    "LOOPBACK",
    "Broker",
    "BrokerStartError",
    "Mosquitto",
    "QueueCounts",
    "RabbitMQ",
    "Tansu",
    "find_tansu",
    "free_port",
    "port_accepts",
    "start_mosquitto",
    "start_rabbitmq",
    "start_tansu",
]
