"""The data unit that flows through the engine, and the broker handle that travels with it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field


def new_event_id() -> str:
    return str(uuid.uuid4())


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
