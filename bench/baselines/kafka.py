"""Kafka for the hand-rolled bridge: aiokafka, one consumer (own group) per session.

Settings that matter for fairness are the engine's (mediation/endpoints/kafka.py,
mediation/config.py): ``session.timeout.ms`` 6000 and ``heartbeat.interval.ms`` 500 (tansu
completes a JoinGroup only after half the session timeout), 64 KiB per-partition fetches (the
engine caps librdkafka's prefetch at 64 KiB), a producer with ``acks=all`` and ``linger.ms`` 5.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

from .base import Delivery, Start

log = logging.getLogger(__name__)

FETCH_BYTES = 64 * 1024
ASSIGN_TIMEOUT = 30.0


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.event = asyncio.Event()

    async def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self.event.set()


@dataclass
class _Partition:
    """Offsets handed out in order; the commit point is the lowest one not acked yet."""

    handed_out: deque[int] = field(default_factory=deque)
    acked: set[int] = field(default_factory=set)  # acked, still behind an unacked offset
    next_offset: int = 0

    def hand_out(self, offset: int) -> None:
        self.handed_out.append(offset)
        self.next_offset = offset + 1

    def ack(self, offset: int) -> None:
        self.acked.add(offset)
        while self.handed_out and self.handed_out[0] in self.acked:
            self.acked.discard(self.handed_out.popleft())

    def commit_point(self) -> int:
        return self.handed_out[0] if self.handed_out else self.next_offset


class _Source:
    def __init__(self, consumer: AIOKafkaConsumer, client_acks: bool) -> None:
        self._consumer = consumer
        self._client_acks = client_acks
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._dirty = asyncio.Event()
        self._closing = False

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        async for message in self._consumer:
            tp = TopicPartition(message.topic, message.partition)
            if self._client_acks:
                self._partitions.setdefault(tp, _Partition()).hand_out(message.offset)
            yield Delivery(
                f"{message.topic}:{message.partition}:{message.offset}",
                message.value or b"",
                (tp, message.offset),
            )

    async def ack(self, delivery: Delivery) -> None:
        if not self._client_acks:
            return  # enable_auto_commit: aiokafka commits the consumed position every 5 s
        tp, offset = cast(tuple[TopicPartition, int], delivery.handle)
        self._partitions[tp].ack(offset)
        self._dirty.set()

    def close(self) -> None:
        """Let the committer commit what was acked so far, then end."""
        self._closing = True
        self._dirty.set()

    async def committer(self) -> None:
        """Commit each partition's commit point, one commit at a time (coalescing acks meanwhile),
        as the engine does: a commit never passes an offset the client has not acked."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            offsets = {
                tp: OffsetAndMetadata(point, "")
                for tp, partition in self._partitions.items()
                if (point := partition.commit_point()) != self._committed.get(tp)
            }
            if offsets:
                await self._consumer.commit(offsets)
                self._committed.update({tp: meta.offset for tp, meta in offsets.items()})
            if self._closing and not self._dirty.is_set():
                return


class KafkaBackend:
    """One idempotent producer for the process; a consumer per session."""

    def __init__(self, bootstrap_servers: str, *, session_timeout_ms: int = 6000) -> None:
        self._servers = bootstrap_servers
        self._session_timeout_ms = session_timeout_ms
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> KafkaBackend:
        # acks=all as the engine's idempotent producer; aiokafka's idempotence itself fails
        # against tansu (InitProducerId answers UnknownError), and it only adds sequence numbers.
        self._producer = AIOKafkaProducer(bootstrap_servers=self._servers, acks="all", linger_ms=5)
        try:
            await self._producer.start()  # fetches cluster metadata: the broker is up
        except BaseException:
            await self._producer.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, topic: str, payload: bytes, *, confirm: bool) -> None:
        assert self._producer is not None
        delivered = await self._producer.send(topic, payload)  # queued in the accumulator
        if confirm:
            await delivered
        else:
            delivered.add_done_callback(_log_failure)

    @asynccontextmanager
    async def consume(
        self, topic: str, client_id: str, *, window: int, client_acks: bool, start: Start
    ) -> AsyncIterator[_Source]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._servers,
            group_id=f"bench-{client_id}",
            enable_auto_commit=not client_acks,
            auto_offset_reset=start,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=500,
            max_partition_fetch_bytes=FETCH_BYTES,
        )
        assigned = _Assigned()
        await consumer.start()
        try:
            consumer.subscribe([topic], listener=assigned)
            async with asyncio.timeout(ASSIGN_TIMEOUT):
                await assigned.event.wait()
                # Fix the start offsets now (``latest`` resolves to the end once), so whatever
                # is published after the client was told "subscribed" reaches it.
                for tp in consumer.assignment():
                    await consumer.position(tp)
            source = _Source(consumer, client_acks)
            if not client_acks:
                yield source
                return
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(source.committer())
                try:
                    yield source
                finally:
                    # The last commit, not cut short: an interrupted one would fail inside
                    # aiokafka once the consumer stopped.
                    source.close()
        finally:
            await consumer.stop()


def _log_failure(delivered: asyncio.Future[object]) -> None:
    if not delivered.cancelled() and delivered.exception() is not None:
        log.warning("unconfirmed publish failed: %s", delivered.exception())
