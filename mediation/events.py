"""The data unit that flows through the engine, and the broker handle that travels with it."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

# Version 4 and the RFC 4122 variant, in a 128-bit UUID as an integer.
_UUID4_MASK = ~((0xF << 76) | (0x3 << 62))
_UUID4_BITS = (0x4 << 76) | (0x2 << 62)
_random_bits = random.getrandbits


def new_event_id() -> str:
    """A random (version 4) UUID as a string, for events that bring no id of their own.

    An id only has to be unique, not secret (a client can only confirm events of its own
    session), so its 122 random bits come from the process's PRNG (seeded from ``os.urandom``
    and reseeded after ``fork``) rather than from ``uuid.uuid4``, which makes a system call per
    id: a quarter of the time of ``str(uuid.uuid4())``, for every event of a RabbitMQ or MQTT
    message without a message id.
    """
    h = "%032x" % ((_random_bits(128) & _UUID4_MASK) | _UUID4_BITS)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Event:
    """One message. Never stored: it is passed along bounded channels and then forgotten.

    ``id`` is what clients see (envelope ``id``, SSE ``id:``, ``X-Event-ID``); endpoints that can
    resume from a position (Kafka) encode that position in it.
    """

    payload: bytes
    id: str = field(default_factory=new_event_id)
    metadata: Mapping[str, str] = field(default_factory=dict)
    client_id: str | None = None
    timestamp: float = field(default_factory=time.time)


Settle = Callable[[bool], Awaitable[None]]


class Delivery:
    """An event an endpoint handed to a session, with the means to ack or nack it on the broker.

    Settling is idempotent: the first ``ack``/``nack`` goes to the broker, later ones do nothing,
    so every exit path of a session may nack "whatever is still unsettled" without bookkeeping.
    """

    __slots__ = ("_settle", "event", "settled")

    def __init__(self, event: Event, settle: Settle) -> None:
        self.event = event
        self._settle = settle
        self.settled = False

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self._settle(True)

    async def nack(self) -> None:
        """Give the event back to the broker for redelivery."""
        if not self.settled:
            self.settled = True
            await self._settle(False)
