"""Broker endpoints, one module per broker; ``memory`` is the reference every other one matches."""

from __future__ import annotations

from ..config import EndpointConfig
from .base import Endpoint, EndpointState, Outbound, Subscription


def create_endpoint(config: EndpointConfig) -> Endpoint:
    """Build the endpoint for a validated ``[[endpoints]]`` table.

    Broker modules are imported here, on first use, so that a broker's client library is needed
    only by configurations that use that broker.
    """
    if config.type == "memory":
        from .memory import MemoryEndpoint

        return MemoryEndpoint(config.name, config.config)
    if config.type == "kafka":
        from .kafka import KafkaEndpoint

        return KafkaEndpoint(config.name, config.config)
    if config.type == "rabbitmq":
        from .rabbitmq import RabbitMQEndpoint

        return RabbitMQEndpoint(config.name, config.config)
    if config.type == "mqtt5":
        from .mqtt5 import MQTT5Endpoint

        return MQTT5Endpoint(config.name, config.config)
    if config.type == "jms":
        from .jms import JMSEndpoint

        return JMSEndpoint(config.name, config.config)
    if config.type == "solace":
        from .solace import SolaceEndpoint

        return SolaceEndpoint(config.name, config.config)
    raise AssertionError(f"config validation let through endpoint type {config.type!r}")


__all__ = ["Endpoint", "EndpointState", "Outbound", "Subscription", "create_endpoint"]
