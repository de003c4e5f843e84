"""When a delivery is acknowledged to its broker, per delivery guarantee (DESIGN section 5).

This is the only place that knows the guarantees. The session asks it at each step of a delivery's
life (received from the endpoint, entered the session channel, about to be written, written,
confirmed by the client) whether the broker should be acked now. Pure: no I/O, no trio.
"""

from __future__ import annotations

import enum


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


_ACK_STEP = {
    Guarantee.NONE: Step.RECEIVED,
    Guarantee.AUTO: Step.CHANNEL_ENTERED,
    Guarantee.AT_MOST_ONCE: Step.BEFORE_WRITE,
    Guarantee.AT_LEAST_ONCE: Step.CONFIRMED,
}


def acks_at(guarantee: Guarantee, step: Step) -> bool:
    """Whether a delivery under ``guarantee`` is acked to the broker when it reaches ``step``."""
    return _ACK_STEP[guarantee] is step


def needs_client_confirmation(guarantee: Guarantee) -> bool:
    """Whether the writer must keep the delivery until the client confirms it."""
    return guarantee is Guarantee.AT_LEAST_ONCE


def upstream_awaits_confirm(guarantee: Guarantee) -> bool:
    """Whether an upstream publish is answered only after the broker confirmed it."""
    return guarantee is Guarantee.AT_LEAST_ONCE
