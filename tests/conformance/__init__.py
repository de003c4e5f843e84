"""One behavioural suite for every endpoint, the way trio checks every stream with one suite.

A broker's test module subclasses :class:`EndpointConformance` and provides the ``under_test``
fixture (an :class:`EndpointUnderTest`, with the endpoint running). The suite then checks, against
the real broker: subscribed on enter, ordering, ack, nack and redelivery, per-client isolation,
metadata, and broker resources released on every exit path. What differs between brokers by
design (whether a nacked event comes back to the same consumer, or to the client's next consumer)
is declared by the adapter and checked as declared.

:mod:`.params` checks client-chosen streams (``/orders/{order_id}``) per broker, through the engine.

:mod:`.outage` does the same one level up, through the engine with real web clients: one broker
outage and one client-reconnect scenario, each broker's engine tests providing a ``BrokerAdapter``.
"""

from __future__ import annotations

from .delivery import DeliveryConformance
from .outage import CLIENTS, BrokerAdapter, OutageConformance, ReconnectConformance, Scenario
from .params import ParamsAdapter, ParamsConformance, SeveralSubscriptionsConformance
from .suite import ClientResumeConformance, EndpointConformance, EndpointUnderTest

__all__ = [
    "CLIENTS",
    "BrokerAdapter",
    "ClientResumeConformance",
    "DeliveryConformance",
    "EndpointConformance",
    "EndpointUnderTest",
    "OutageConformance",
    "ParamsAdapter",
    "ParamsConformance",
    "ReconnectConformance",
    "Scenario",
    "SeveralSubscriptionsConformance",
]
