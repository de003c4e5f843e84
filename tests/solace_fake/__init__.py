"""An in-process fake of the Solace PubSub+ Python API (``solace.messaging``), for the tests.

No Solace broker can run here, so the Solace endpoint is tested against this fake at the library
boundary: ``SolaceConfig(api="tests.solace_fake")`` makes the endpoint load these names instead
of the real package's (see :class:`mediation.endpoints.solace.SolaceAPI`). It implements exactly
what the endpoint uses (``MessagingService`` and its builder, listeners, direct and persistent
receivers and publishers, messages, ``Topic``, ``TopicSubscription``, ``Queue``), with the real
API's threading (callbacks on threads the fake owns; see ``_api``) and a broker behind it (topic
wildcards, durable queues that redeliver; see ``_broker``).

::

    with open_broker() as broker:                # reachable at broker.host while the block runs
        config = SolaceConfig(host=broker.host, api="tests.solace_fake", topic_in="t/>")
        ...
        broker.interrupt()                       # an outage: sessions down, connects refused
        broker.recover()

It is a fake, not a simulator: no flow-control windows beyond a per-flow limit, no TTLs, DMQs,
ACLs, or message VPN configuration.
"""

from ._api import (
    IllegalStateError,
    InboundMessage,
    IncompleteMessageDeliveryError,
    MessageHandler,
    MessagePublishReceiptListener,
    MessageRejectedByBrokerError,
    MessagingService,
    MissingResourcesCreationStrategy,
    Outcome,
    PublisherOverflowError,
    PublisherReadinessListener,
    PubSubPlusClientError,
    Queue,
    ReconnectionAttemptListener,
    ReconnectionListener,
    ServiceInterruptionListener,
    ServiceUnreachableError,
    TerminationNotificationListener,
    Topic,
    TopicSubscription,
)
from ._broker import FakeBroker, open_broker, topic_matches

__all__ = [
    "FakeBroker",
    "IllegalStateError",
    "InboundMessage",
    "IncompleteMessageDeliveryError",
    "MessageHandler",
    "MessagePublishReceiptListener",
    "MessageRejectedByBrokerError",
    "MessagingService",
    "MissingResourcesCreationStrategy",
    "Outcome",
    "PubSubPlusClientError",
    "PublisherOverflowError",
    "PublisherReadinessListener",
    "Queue",
    "ReconnectionAttemptListener",
    "ReconnectionListener",
    "ServiceInterruptionListener",
    "ServiceUnreachableError",
    "TerminationNotificationListener",
    "Topic",
    "TopicSubscription",
    "open_broker",
    "topic_matches",
]
