"""RabbitMQ for the hand-rolled bridge: aio-pika, one connection, one channel per session.

As the engine (mediation/endpoints/rabbitmq.py): one AMQP connection for the process, a channel
per session with ``basic_qos(prefetch_count=window)`` and manual acks, consuming from the existing
queue ``topic``; closing the channel requeues what the session left unacked. Publishing goes to
the default exchange with the queue name as routing key: confirmed publishes (persistent,
mandatory) on a channel in confirm mode, the others on a channel without confirms.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from .base import Delivery, Start


class _Source:
    def __init__(self, iterator: AsyncIterator[AbstractIncomingMessage]) -> None:
        self._iterator = iterator

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        async for message in self._iterator:
            yield Delivery(str(message.delivery_tag), message.body, message)

    async def ack(self, delivery: Delivery) -> None:
        message: AbstractIncomingMessage = delivery.handle  # type: ignore[assignment]
        await message.ack()


class RabbitMQBackend:
    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: AbstractConnection | None = None
        self._confirming: AbstractChannel | None = None
        self._plain: AbstractChannel | None = None

    async def __aenter__(self) -> RabbitMQBackend:
        self._connection = connection = await aio_pika.connect(self._url)
        self._confirming = await connection.channel(publisher_confirms=True)
        self._plain = await connection.channel(publisher_confirms=False)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def publish(self, topic: str, payload: bytes, *, confirm: bool) -> None:
        if confirm:
            assert self._confirming is not None
            message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            # Returns once the broker acked it; a nack or a return raises.
            await self._confirming.default_exchange.publish(message, topic, mandatory=True)
        else:
            assert self._plain is not None
            await self._plain.default_exchange.publish(
                aio_pika.Message(payload), topic, mandatory=False
            )

    @asynccontextmanager
    async def consume(
        self, topic: str, client_id: str, *, window: int, client_acks: bool, start: Start
    ) -> AsyncIterator[_Source]:
        assert self._connection is not None
        async with self._connection.channel(publisher_confirms=False) as channel:
            await channel.set_qos(prefetch_count=window)
            queue = await channel.get_queue(topic, ensure=False)  # the harness declared it
            async with queue.iterator() as iterator:  # entered once the broker said ConsumeOk
                yield _Source(iterator)
