"""Broker endpoints, one module per broker; ``memory`` is the reference every other one matches."""

from __future__ import annotations

import importlib
from typing import cast

from ..config import EndpointConfig
from .base import Endpoint, EndpointState, Outbound, Subscription

# type -> (module, class). Modules are imported on first use, so a broker's client library is
# needed only by configurations that use that broker.
_IMPLEMENTATIONS = {
    "memory": ("memory", "MemoryEndpoint"),
    "kafka": ("kafka", "KafkaEndpoint"),
    "rabbitmq": ("rabbitmq", "RabbitMQEndpoint"),
    "mqtt5": ("mqtt5", "MQTT5Endpoint"),
    "jms": ("jms", "JMSEndpoint"),
    "solace": ("solace", "SolaceEndpoint"),
}


def create_endpoint(config: EndpointConfig) -> Endpoint:
    """Build the endpoint for a validated ``[[endpoints]]`` table."""
    module_name, class_name = _IMPLEMENTATIONS[config.type]
    module = importlib.import_module(f".{module_name}", __name__)
    return cast(Endpoint, getattr(module, class_name)(config.name, config.config))


__all__ = ["Endpoint", "EndpointState", "Outbound", "Subscription", "create_endpoint"]
