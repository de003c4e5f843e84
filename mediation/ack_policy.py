"""What each delivery guarantee means, in one place: the :class:`AckPlan` of a route.

The contract these plans keep: docs/design.md, "Delivery guarantees".

A route's ``delivery_guarantee`` is read here and nowhere else. :func:`plan_for` turns it into an
:class:`AckPlan`, a frozen record of every decision the guarantee makes; the session, the bridges
and the broker endpoints ask the plan (``route.ack_plan``), never the guarantee. Pure: no I/O, no
trio, no broker library.

Who reads which field:

- the session (:mod:`mediation.session`): ``ack_step``, ``keeps_until_confirmed``,
  ``writes_in_batches``, ``upstream_awaits_confirm``;
- the bridges (:mod:`mediation.bridge`): ``bridge_acks``, ``upstream_awaits_confirm``;
- Kafka: ``ack_awaits_broker`` (synchronous commits);
- RabbitMQ: ``drops_acked_redeliveries``;
- MQTT 5: ``drops_acked_redeliveries``, ``ack_awaits_broker`` (PUBACK written at once),
  ``redelivers_unconfirmed`` (subscription QoS at most 1);
- Solace: ``redelivers_unconfirmed`` (persistent receiver on ``queue_in`` instead of a direct
  one, and config validation of what the route consumes), ``drops_when_behind`` (what a direct
  receiver does with a client that fell too far behind).

How do I change ``at_most_once`` (or any guarantee)? Edit its row in ``_PLANS`` below: each row
spells out a guarantee's whole behaviour, and ``tests/test_ack_policy.py`` holds the same table
plus the invariants between fields (which a change must keep, or change knowingly). Then run the
conformance suites (``tests/test_conformance_*.py``), which check the promises per broker. A new
kind of decision is a new field here, read by whoever needs it; never a test of the guarantee's
value at a call site.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Guarantee(enum.StrEnum):
    NONE = "none"
    AUTO = "auto"
    AT_MOST_ONCE = "at_most_once"
    AT_LEAST_ONCE = "at_least_once"


class Step(enum.Enum):
    """The points in a downstream delivery's life at which it may be acked."""

    RECEIVED = "received"  # the endpoint handed it to the session's consumer task
    CHANNEL_ENTERED = "channel_entered"  # it is in the session channel
    BEFORE_WRITE = "before_write"  # the writer took it and is about to write it to the client
    CONFIRMED = "confirmed"  # the client confirmed it (envelope ack, /ack, or a completed write)


class BridgeAck(enum.Enum):
    """When a bridge acks the delivery it took from its source."""

    BEFORE_PUBLISH = "before_publish"  # before handing it to the target
    PUBLISHED = "published"  # once the target's producer took it
    CONFIRMED = "confirmed"  # once the target's broker confirmed it (a refusal nacks it)


@dataclass(frozen=True, slots=True)
class AckPlan:
    """Everything a guarantee decides, for the session, the bridges and the endpoints."""

    guarantee: Guarantee
    # Downstream: the step at which a delivery is acked to its broker.
    ack_step: Step
    # The writer keeps a written delivery until the client confirms it (the at-least-once window
    # of channel_size events; a refusal nacks it).
    keeps_until_confirmed: bool
    # The writer may write several events in one send. Not where each event is acked right before
    # its own write: batched, the acks of a burst would all come before its first write.
    writes_in_batches: bool
    # An ack returns only once it went to the broker, as far as the protocol lets the endpoint
    # know: Kafka commits synchronously and waits for the answer, MQTT writes the PUBACK at once
    # instead of with the next burst. (RabbitMQ's basic.ack has no answer: nothing to wait for.)
    ack_awaits_broker: bool
    # The endpoint remembers what the session acked and acks, without handing it out, a redelivery
    # the broker flagged (RabbitMQ redelivered, MQTT DUP): an ack lost with a connection must not
    # make the client see the event twice (endpoints/_written.py).
    drops_acked_redeliveries: bool
    # The broker must be able to deliver again what the client did not confirm: Solace consumes
    # through a persistent receiver on queue_in instead of a direct subscription, MQTT subscribes
    # at QoS 1 at most (paho answers a QoS 2 PUBLISH with PUBREC on receipt, after which the
    # message itself can never come back).
    redelivers_unconfirmed: bool
    # A consumer without broker flow control (Solace direct) whose client fell further behind
    # than its buffer drops the newest messages (counted, logged, and flagged on the next event)
    # rather than ending the session with ClientTooSlow.
    drops_when_behind: bool
    # Upstream: a publish is answered (HTTP 202, envelope ack) only after the broker confirmed it.
    upstream_awaits_confirm: bool
    # Bridges: when the source is acked, the target's publish taking the place of the write.
    bridge_acks: BridgeAck

    def acks_at(self, step: Step) -> bool:
        """Whether a delivery is acked to its broker when it reaches ``step``."""
        return self.ack_step is step


# One row per guarantee, every field spelled out: a guarantee's whole behaviour, read in one place.
_PLANS = {
    Guarantee.NONE: AckPlan(
        guarantee=Guarantee.NONE,
        ack_step=Step.RECEIVED,
        keeps_until_confirmed=False,
        writes_in_batches=True,
        ack_awaits_broker=False,
        drops_acked_redeliveries=False,
        redelivers_unconfirmed=False,
        drops_when_behind=True,
        upstream_awaits_confirm=False,
        bridge_acks=BridgeAck.BEFORE_PUBLISH,
    ),
    Guarantee.AUTO: AckPlan(
        guarantee=Guarantee.AUTO,
        ack_step=Step.CHANNEL_ENTERED,
        keeps_until_confirmed=False,
        writes_in_batches=True,
        ack_awaits_broker=False,
        drops_acked_redeliveries=False,
        redelivers_unconfirmed=False,
        drops_when_behind=False,  # auto promises no loss the client is not told about
        upstream_awaits_confirm=False,
        bridge_acks=BridgeAck.PUBLISHED,
    ),
    Guarantee.AT_MOST_ONCE: AckPlan(
        guarantee=Guarantee.AT_MOST_ONCE,
        ack_step=Step.BEFORE_WRITE,
        keeps_until_confirmed=False,
        writes_in_batches=False,
        ack_awaits_broker=True,
        drops_acked_redeliveries=True,
        redelivers_unconfirmed=False,
        drops_when_behind=True,
        upstream_awaits_confirm=False,
        bridge_acks=BridgeAck.BEFORE_PUBLISH,
    ),
    Guarantee.AT_LEAST_ONCE: AckPlan(
        guarantee=Guarantee.AT_LEAST_ONCE,
        ack_step=Step.CONFIRMED,
        keeps_until_confirmed=True,
        writes_in_batches=True,
        ack_awaits_broker=False,
        drops_acked_redeliveries=False,
        redelivers_unconfirmed=True,
        drops_when_behind=False,  # never direct: its messages wait in a queue on the broker
        upstream_awaits_confirm=True,
        bridge_acks=BridgeAck.CONFIRMED,
    ),
}


def plan_for(guarantee: Guarantee) -> AckPlan:
    """The plan of a route with ``guarantee`` (the same object for every such route)."""
    return _PLANS[guarantee]
