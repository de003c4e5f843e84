"""A test double of an endpoint whose event ids are its positions (Kafka's kind), with
retention: what the wire side of resume (signed cursors, ``reset``) needs, without a broker.

One partition, ids ``"{topic}:0:{offset}"``. ``oldest`` is the first offset the "broker" still
holds (raise it to play retention). A consumer starts at its client's committed offset (acks
commit, as a consumer group would), else at the end; with ``resume_after`` right after that
position, or, when that position is gone, at ``oldest`` after telling
``subscription.position_gone``. Several engines may share one log: it is the "broker" of a fleet.
Credit, nacks and failures are the real endpoints' business (the conformance suite), not this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio_util import AsyncValue

from mediation.endpoints.base import Deliveries, EndpointState, Outbound, Subscription
from mediation.events import Delivery, Event


class PositionedLog:
    ids_are_positions = True

    def __init__(self, name: str, topic: str = "log") -> None:
        self.name = name
        self.topic = topic
        self.state = AsyncValue(EndpointState.UP)
        self.payloads: list[bytes] = []
        self.oldest = 0
        self.committed: dict[str, int] = {}
        self._appended = trio.lowlevel.ParkingLot()

    def append(self, payload: bytes) -> None:
        self.payloads.append(payload)
        self._appended.unpark_all()

    def position(self, offset: int) -> str:
        return f"{self.topic}:0:{offset}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    @asynccontextmanager
    async def consume(self, subscription: Subscription) -> AsyncIterator[AsyncIterator[Delivery]]:
        client = subscription.client_id
        start = self.committed.get(client, len(self.payloads))
        if subscription.resume_after is not None:
            topic, _, offset = subscription.resume_after.split(":")
            if topic == self.topic:
                start = int(offset) + 1
                if start < self.oldest:
                    subscription.position_gone(
                        f"offset {start} of {self.topic}:0 is gone; the oldest is {self.oldest}"
                    )
                    start = self.oldest
        start = max(start, self.oldest)
        cursor = [start]

        async def next_delivery() -> Delivery:
            while cursor[0] >= len(self.payloads):
                await self._appended.park()
            offset = cursor[0]
            cursor[0] += 1

            async def settle(accepted: bool) -> None:
                if accepted:
                    self.committed[client] = max(self.committed.get(client, 0), offset + 1)

            event = Event(self.payloads[offset], id=self.position(offset), metadata={})
            return Delivery(event, settle)

        yield Deliveries(next_delivery)

    async def publish(self, message: Outbound, *, confirm: bool) -> None:
        self.append(message.event.payload)
