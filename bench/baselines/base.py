"""What the bridge needs from a broker: a per-session source of deliveries, and publishing."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol

Start = Literal["earliest", "latest"]


@dataclass(slots=True)
class Delivery:
    """One broker message: its id (unique within the session), its payload, the broker's handle."""

    id: str
    payload: bytes
    handle: object


class Source(Protocol):
    """One session's broker consumer, subscribed once its context was entered."""

    def deliveries(self) -> AsyncGenerator[Delivery, None]: ...

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge (RabbitMQ basic_ack, MQTT PUBACK, Kafka commit) one delivery."""


class Backend(Protocol):
    """One broker connection (or client) for the whole process, opened by the app's lifespan."""

    def consume(
        self, topic: str, client_id: str, *, window: int, client_acks: bool, start: Start
    ) -> AbstractAsyncContextManager[Source]: ...

    async def publish(self, topic: str, payload: bytes, *, confirm: bool) -> None:
        """Publish one message; with ``confirm``, return once the broker confirmed it."""
