"""MQTT 5 for the hand-rolled bridge: aiomqtt, one MQTT connection per session.

As the engine (mediation/endpoints/mqtt5.py): a connection per session with Receive Maximum =
window and one QoS 1 subscription, acked manually (PUBACK) when the engine would ack; one more
connection for the process publishes at QoS 1 with paho's default 20 messages in flight (the
engine's ``publish_window``).

aiomqtt 2.5 has no public manual acknowledgement yet; this uses the workaround its maintainers'
issue gives (empicano/aiomqtt#345): ``client._client.manual_ack_set(True)`` before subscribing and
``client._client.ack(mid, qos)`` per message. Without it paho acks every message on receipt, so
neither the window nor the client's acks could hold anything back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .base import Delivery, Start

log = logging.getLogger(__name__)

# Unconfirmed publishes (confirm=0) in flight at most, as the engine bounds its publishers.
PUBLISH_WINDOW = 1024


class _Source:
    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client

    async def deliveries(self) -> AsyncGenerator[Delivery, None]:
        ids = itertools.count()
        async for message in self._client.messages:
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = b"" if payload is None else str(payload).encode()
            yield Delivery(str(next(ids)), payload, message)

    async def ack(self, delivery: Delivery) -> None:
        message: aiomqtt.Message = delivery.handle  # type: ignore[assignment]
        self._client._client.ack(message.mid, message.qos)


class MQTTBackend:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 1883
        self._stack = contextlib.AsyncExitStack()
        self._publisher: aiomqtt.Client | None = None
        self._window = asyncio.Semaphore(PUBLISH_WINDOW)
        self._unconfirmed: set[asyncio.Task[None]] = set()

    def _client(self, identifier: str, **kwargs: object) -> aiomqtt.Client:
        return aiomqtt.Client(
            self._host,
            self._port,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            **kwargs,  # type: ignore[arg-type]
        )

    async def __aenter__(self) -> MQTTBackend:
        name = f"bench-publisher-{uuid.uuid4().hex[:8]}"
        self._publisher = await self._stack.enter_async_context(self._client(name))
        # aiomqtt logs a warning per publish while more than 10 wait for their PUBACK: with 64
        # POST clients that is a log line per request, which the engine does not pay.
        self._publisher.pending_calls_threshold = 2 * PUBLISH_WINDOW
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._unconfirmed:
            task.cancel()
        await self._stack.aclose()

    async def publish(self, topic: str, payload: bytes, *, confirm: bool) -> None:
        assert self._publisher is not None
        if confirm:
            await self._publisher.publish(topic, payload, qos=1)  # returns on the PUBACK
            return
        # aiomqtt's publish always waits for the PUBACK: an unconfirmed publish is handed to
        # paho at once and its wait goes on in a task, at most PUBLISH_WINDOW of them.
        await self._window.acquire()
        task = asyncio.create_task(self._publisher.publish(topic, payload, qos=1))
        self._unconfirmed.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._unconfirmed.discard(task)
        self._window.release()
        if not task.cancelled() and task.exception() is not None:
            log.warning("unconfirmed publish failed: %s", task.exception())

    @asynccontextmanager
    async def consume(
        self, topic: str, client_id: str, *, window: int, client_acks: bool, start: Start
    ) -> AsyncIterator[_Source]:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.ReceiveMaximum = window
        identifier = f"bench-{client_id}-{uuid.uuid4().hex[:8]}"
        async with self._client(identifier, properties=properties) as client:
            client._client.manual_ack_set(True)
            await client.subscribe(topic, qos=1)  # returns on the SUBACK
            yield _Source(client)
