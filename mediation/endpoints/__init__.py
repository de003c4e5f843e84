"""Broker endpoints, one module per broker; ``memory`` is the reference every other one matches."""

from __future__ import annotations

import importlib
from typing import cast

from ..client_state import ClientLedger
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


# The endpoints that make per-client broker objects, and so take the client ledger (its ttl
# sets their expiry; Kafka's sweep reads when each client left).
_PER_CLIENT = {"kafka", "rabbitmq", "mqtt5", "solace"}


def create_endpoint(config: EndpointConfig, clients: ClientLedger | None = None) -> Endpoint:
    """Build the endpoint for a validated ``[[endpoints]]`` table; ``clients``: its ledger
    (``client_state_ttl``, ``max_clients``), else one made from the table."""
    module_name, class_name = _IMPLEMENTATIONS[config.type]
    module = importlib.import_module(f".{module_name}", __name__)
    if clients is None:
        clients = ClientLedger(ttl=config.client_state_ttl, max_clients=config.max_clients)
    extra = {"clients": clients} if config.type in _PER_CLIENT else {}
    return cast(Endpoint, getattr(module, class_name)(config.name, config.config, **extra))


__all__ = ["Endpoint", "EndpointState", "Outbound", "Subscription", "create_endpoint"]
