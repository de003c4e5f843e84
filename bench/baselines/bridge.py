"""The hand-rolled bridge: what a competent Python team writes instead of adopting a gateway.

``python -m bench.baselines.bridge --broker {kafka,rabbitmq,mqtt} --broker-url URL
[--host 127.0.0.1] [--port 0] --port-file PATH [--window N]`` serves, per the contract with the
harness (bench/procs.py starts it): ``GET /ws?topic=T&client_id=C&ack=auto|client`` (WebSocket),
``GET /sse?topic=T&client_id=C`` (Server-Sent Events), ``POST /publish?topic=T&confirm=0|1``,
``GET /healthz``; ``from=earliest`` on /ws and /sse starts a new Kafka group at the beginning.
The port goes to ``--port-file`` once the broker connection is up and the socket accepts. It runs
until SIGTERM/SIGINT (uvicorn's graceful shutdown, at most 2 s; then it exits 0).

Stack: Starlette on uvicorn, one worker, asyncio (uvloop and httptools when installed, else
asyncio's loop and h11), uvicorn's ``websockets`` (sans-I/O) WebSocket protocol; aiokafka,
aio-pika, aiomqtt. The broker modules (``kafka``, ``rabbitmq``, ``mqtt``) hold what is specific
to each broker.

Fairness review
===============
The bridge does the engine's job per message, no more and no less, the way the libraries are
meant to be used: no batching where the engine does not batch, nothing slowed down on purpose.

Shape of a session (the same for every broker, as the engine's session):

- One broker consumer per client connection, subscribed before the client is told so: the
  WebSocket handshake is accepted, and the SSE ``session`` event sent, only after the consumer is
  subscribed (Kafka: partitions assigned and start offsets fixed; RabbitMQ: ConsumeOk; MQTT:
  SUBACK), as the engine does.
- A consumer task takes messages from the broker client and puts them in an ``asyncio.Queue`` of
  ``--window`` entries (the engine's session channel, ``channel_size``); a writer task takes them
  out one at a time and writes one WebSocket frame or one SSE event each (one ``send`` per
  message, as the engine's writer); a reader task reads the client's frames.
- Bounded per session: the queue (``--window``), the broker's own window (RabbitMQ
  ``prefetch_count`` = window; MQTT Receive Maximum = window; Kafka 64 KiB per-partition fetches,
  the engine's librdkafka prefetch cap) and, with client acks, at most ``--window`` messages
  handed out and not acked (a semaphore the consumer task takes per message and an ack returns).
  Writes wait for the socket to drain (uvicorn's flow control), so a slow client stalls its own
  session and nothing else.
- No handicaps that a team would notice and remove: no compression
  (``ws_per_message_deflate=False``; the engine's WebSocket does not compress, and clients
  offering permessage-deflate would otherwise make the bridge compress every frame); no access
  log and no aiomqtt "pending publish calls" warning per request (the engine logs no line per
  message either); ``TCP_NODELAY`` on every connection (asyncio sets it only on sockets whose
  protocol says TCP, so the listening socket is made with ``IPPROTO_TCP``; without it Nagle and
  delayed ACKs cost ~40 ms per request).

Per broker and ack mode, what happens per message:

======================  ===============================================================
Kafka, ``auto``         ``async for`` over the consumer (aiokafka's fetcher decodes
                        record batches, as librdkafka does for the engine); put in the
                        queue; write. ``enable_auto_commit``: aiokafka commits the consumed
                        position every 5 s. Engine ``auto``: acks when the event enters the
                        channel, with coalesced asynchronous commits; no commit per message
                        on either side.
Kafka, client acks      as above with ``enable_auto_commit=False``; the client's
                        ``{"ack": id}`` removes the offset from the partition's outstanding
                        set, and one committer task commits each partition's lowest
                        outstanding offset (or the next to hand out), one commit in flight
                        at a time, coalescing the acks that came meanwhile. The engine's
                        ``at_least_once`` commits the same point the same way.
RabbitMQ, ``auto``      aio-pika queue iterator (manual acks, prefetch = window); put in
                        the queue, then ``basic_ack``; write. Engine ``auto``: acks when the
                        event enters the channel, before it is written.
RabbitMQ, client acks   ``basic_ack`` when the client's ack arrives. Engine
                        ``at_least_once``: the same.
MQTT, ``auto``          aiomqtt's message iterator (QoS 1 subscription, manual PUBACK);
                        put in the queue, then PUBACK; write. Engine ``auto``: the same
                        point. (aiomqtt's own automatic ack would PUBACK on receipt and
                        leave the session without any bound.)
MQTT, client acks       PUBACK when the client's ack arrives. Engine ``at_least_once``:
                        the same.
======================  ===============================================================

The ack point of ``auto`` is the engine's (``ack_policy``: ``auto`` acks when the event enters
the session channel), not "after the frame is written" as the harness contract first worded
it for RabbitMQ: acking after the write would keep a window of 1 from overlapping the broker's next
delivery with the write, a handicap the engine does not have.

The message ids are the broker's positions (Kafka ``topic:partition:offset``, RabbitMQ delivery
tag, MQTT a per-session counter); the WebSocket envelope is ``{"id", "payload", "metadata": {}}``
(the engine also fills metadata from the broker's headers, so it does slightly more work here).
SSE events are ``id:`` plus one ``data:`` line per payload line, as the engine frames them.

Upstream: a text or binary frame from a WebSocket client in ``ack=auto`` is published to the
topic unconfirmed; ``POST /publish`` publishes the body and answers 202, after the broker's
confirmation with ``confirm=1`` (Kafka delivery report, RabbitMQ publisher confirm of a persistent
mandatory message, MQTT PUBACK), 503 on failure. One producer per process, as the engine's one
per endpoint: Kafka an ``AIOKafkaProducer`` with ``acks="all"`` and ``linger_ms=5`` (the
engine's producer is idempotent with the same linger; aiokafka's idempotence fails against tansu,
whose InitProducerId answers UnknownError, and it adds only sequence numbers); RabbitMQ one
channel in confirm mode and one without; MQTT one connection at QoS 1 with paho's 20 in flight
(the engine's ``publish_window``); an unconfirmed MQTT publish is handed to paho at once and its
PUBACK awaited in a task (at most 1024), as aiomqtt always waits for it. In ``ack=client``, client
frames other than acks are ignored (the engine would publish envelopes).

Not matched, in the engine's disfavour: the engine fills event metadata, and its MQTT consumers
keep a persistent MQTT session (``clean_start=False``, expiry 600 s) where the bridge's start
clean; with ``latest`` the engine commits the start offset of a new Kafka group. Not built, as
no benchmark needs it: reconnecting after a broker outage, a slow-client policy, auth, resume.

Kafka group timing, which dominates how long a session takes to start against tansu (it answers a
JoinGroup after half the session timeout): ``session_timeout_ms`` 6000 and
``heartbeat_interval_ms`` 500, the engine's defaults (``--kafka-session-timeout-ms`` to follow an
engine configured otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from .base import Backend, Delivery, Source, Start

log = logging.getLogger("bench.baselines.bridge")

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def make_backend(broker: str, url: str, *, kafka_session_timeout_ms: int = 6000) -> Backend:
    if broker == "kafka":
        from .kafka import KafkaBackend

        return KafkaBackend(url, session_timeout_ms=kafka_session_timeout_ms)
    if broker == "rabbitmq":
        from .rabbitmq import RabbitMQBackend

        return RabbitMQBackend(url)
    if broker == "mqtt":
        from .mqtt import MQTTBackend

        return MQTTBackend(url)
    raise ValueError(f"unknown broker {broker!r}")


# -- one session -------------------------------------------------------------------------------


class Session:
    """A client connection's consumer side: the queue between the consumer and the writer."""

    def __init__(self, source: Source, window: int, *, client_acks: bool) -> None:
        self.source = source
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(window)
        self.client_acks = client_acks
        self._slots = asyncio.Semaphore(window)
        self._unacked: dict[str, Delivery] = {}

    async def pump(self) -> None:
        """Broker -> queue. ``auto`` acks as the message enters the queue (the engine's point)."""
        async with contextlib.aclosing(self.source.deliveries()) as deliveries:
            if not self.client_acks:
                async for delivery in deliveries:
                    await self.queue.put(delivery)
                    await self.source.ack(delivery)
                return
            while True:
                await self._slots.acquire()  # at most `window` handed out and not acked
                delivery = await anext(deliveries)
                self._unacked[delivery.id] = delivery
                await self.queue.put(delivery)

    async def client_ack(self, event_id: str) -> None:
        delivery = self._unacked.pop(event_id, None)
        if delivery is None:
            return  # unknown or already acked: nothing to do
        await self.source.ack(delivery)
        self._slots.release()


@asynccontextmanager
async def open_session(
    request: Request | WebSocket, *, client_acks: bool
) -> AsyncIterator[tuple[Session, str]]:
    """Subscribe a consumer for this client; yields the session and the client id."""
    params = request.query_params
    topic = params["topic"]
    client_id = params.get("client_id") or str(uuid.uuid4())
    start: Start = "earliest" if params.get("from") == "earliest" else "latest"
    state = request.app.state
    async with state.backend.consume(
        topic, client_id, window=state.window, client_acks=client_acks, start=start
    ) as source:
        yield Session(source, state.window, client_acks=client_acks), client_id


# -- WebSocket ---------------------------------------------------------------------------------


async def websocket_endpoint(websocket: WebSocket) -> None:
    if "topic" not in websocket.query_params:
        await websocket.close(code=1008)
        return
    client_acks = websocket.query_params.get("ack", "auto") == "client"
    try:
        async with open_session(websocket, client_acks=client_acks) as (session, _):
            await websocket.accept()
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(session.pump())
                writer = tasks.create_task(_write_frames(websocket, session))
                await _read_frames(websocket, session)  # until the client leaves
                pump.cancel()
                writer.cancel()
    except* WebSocketDisconnect:
        pass  # the client left while we wrote
    except* Exception:
        log.exception("WebSocket session failed")
        with contextlib.suppress(Exception):
            await websocket.close(code=1011)


async def _write_frames(websocket: WebSocket, session: Session) -> None:
    queue = session.queue
    if session.client_acks:
        while True:
            delivery = await queue.get()
            envelope = {
                "id": delivery.id,
                "payload": delivery.payload.decode("utf-8", "replace"),
                "metadata": {},
            }
            text = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
            await websocket.send_text(text)
    while True:
        delivery = await queue.get()
        try:
            text = delivery.payload.decode()
        except UnicodeDecodeError:
            await websocket.send_bytes(delivery.payload)
        else:
            await websocket.send_text(text)


async def _read_frames(websocket: WebSocket, session: Session) -> None:
    """Client -> bridge: acks (``ack=client``), else messages published upstream."""
    backend: Backend = websocket.app.state.backend
    topic = websocket.query_params["topic"]
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        if session.client_acks:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                event_id = json.loads(text or data or b"").get("ack")
                if isinstance(event_id, str):
                    await session.client_ack(event_id)
            continue
        payload = text.encode() if text is not None else (data or b"")
        await backend.publish(topic, payload, confirm=False)


# -- SSE -----------------------------------------------------------------------------------------


def sse_event(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    lines = [f"event: {event}"] if event else []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


class SSEEndpoint:
    """``GET /sse``: an ASGI app, so the consumer task can live as long as the response does."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if "topic" not in request.query_params:
            await PlainTextResponse("topic is required", 400)(scope, receive, send)
            return
        try:
            async with open_session(request, client_acks=False) as (session, client_id):
                hello = json.dumps({"client_id": client_id, "session_id": str(uuid.uuid4())})

                async def events() -> AsyncIterator[bytes]:
                    yield sse_event(hello, event="session")
                    while True:
                        delivery = await session.queue.get()
                        text = delivery.payload.decode("utf-8", "replace")
                        yield sse_event(text, event_id=delivery.id)

                response = StreamingResponse(
                    events(), media_type="text/event-stream", headers=SSE_HEADERS
                )
                async with asyncio.TaskGroup() as tasks:
                    pump = tasks.create_task(session.pump())
                    await response(scope, receive, send)  # until the client leaves
                    pump.cancel()
        except Exception:
            log.exception("SSE session failed")
            raise


# -- HTTP POST, health -------------------------------------------------------------------------


async def publish_endpoint(request: Request) -> Response:
    topic = request.query_params.get("topic")
    if not topic:
        return JSONResponse({"error": "topic is required"}, 400)
    confirm = request.query_params.get("confirm", "0") == "1"
    body = await request.body()
    try:
        await request.app.state.backend.publish(topic, body, confirm=confirm)
    except Exception as error:
        return JSONResponse({"error": f"not published: {error!r}"}, 503)
    return JSONResponse({"status": "accepted", "id": str(uuid.uuid4())}, 202)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def make_app(backend: Backend, window: int) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with backend:  # type: ignore[attr-defined]
            yield

    app = Starlette(
        routes=[
            WebSocketRoute("/ws", websocket_endpoint),
            Route("/sse", SSEEndpoint(), methods=["GET"]),
            Route("/publish", publish_endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.backend = backend
    app.state.window = window
    return app


# -- process -----------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """Writes the port file once uvicorn listens (after the lifespan connected the broker)."""

    def __init__(self, config: uvicorn.Config, port_file: Path, port: int) -> None:
        super().__init__(config)
        self._port_file = port_file
        self._port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            temporary = self._port_file.with_name(self._port_file.name + ".tmp")
            temporary.write_text(f"{self._port}\n")
            os.replace(temporary, self._port_file)  # readers never see half a port

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A stop we were asked for is the normal end: exit 0 rather than re-raise the signal
        # after the graceful shutdown (uvicorn's default, for process managers).
        self._captured_signals.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines.bridge", description=__doc__)
    parser.add_argument("--broker", required=True, choices=["kafka", "rabbitmq", "mqtt"])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--kafka-session-timeout-ms", type=int, default=6000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    backend = make_backend(
        args.broker, args.broker_url, kafka_session_timeout_ms=args.kafka_session_timeout_ms
    )
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and accepted sockets inherit the listener's 0 otherwise (Nagle + delayed ACKs: ~40 ms a
    # request). uvicorn binding by itself gets it from getaddrinfo.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    config = uvicorn.Config(
        make_app(backend, max(1, args.window)),
        lifespan="on",
        log_level="warning",
        access_log=False,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=2,
    )
    server = _Server(config, args.port_file, listener.getsockname()[1])
    server.run(sockets=[listener])
    if not server.started:
        sys.exit(3)  # the broker connection failed (uvicorn logged why)


if __name__ == "__main__":
    main()
