"""Load generators, each run in a process of its own: ``python -m bench.load '<json spec>'``.

The harness (:mod:`bench.procs`) starts one of these per client role, so the engine and the
clients never share an interpreter. The protocol on the pipes is line based:

- stdout: ``event <name>`` lines when a phase is reached (``open``: every connection is up;
  ``warm``: every connection got a warm-up message), then one ``result <json>`` line at the end.
- stdin: ``go`` lets a publisher leave its warm-up phase, or a holder of idle sessions let go.

Payloads: a measured message starts with ``x``, a warm-up message with ``w`` (receivers count only
``x``). ``stamp`` puts ``time.monotonic_ns()`` of the publish into the payload right after the
``x``: CLOCK_MONOTONIC is system-wide on Linux, so a receiver in another process gets the latency.

Warm-ups exist because a subscription is not always in place when a client's connection is:
publishers repeat warm-ups until every receiver has seen one, and only then publish what counts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

STAMP_DIGITS = 20


def emit(name: str) -> None:
    print(f"event {name}", flush=True)


def result(data: dict[str, Any]) -> None:
    print("result " + json.dumps(data), flush=True)


def payload(size: int, marker: bytes = b"x", stamp: bool = False) -> bytes:
    head = marker + (b"%020d" % time.monotonic_ns() if stamp else b"")
    return head + b"." * max(0, size - len(head))


def latency_ms(data: bytes | str, now_ns: int) -> float | None:
    if isinstance(data, str):
        data = data.encode()
    digits = data[1 : 1 + STAMP_DIGITS]
    if len(digits) < STAMP_DIGITS or not digits.isdigit():
        return None
    return (now_ns - int(digits)) / 1e6


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stdin_go() -> threading.Event:
    """An event set when ``go`` (or EOF) arrives on stdin."""
    go = threading.Event()

    def read() -> None:
        for line in sys.stdin:
            if line.strip() == "go":
                break
        go.set()

    threading.Thread(target=read, daemon=True).start()
    return go


def percentiles(values: list[float]) -> dict[str, float | None]:
    from .stats import percentile

    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


class Counter:
    """Counts measured messages: from the first to the ``count``-th, and their latencies."""

    def __init__(self, count: int, stamp: bool) -> None:
        self.count = count
        self.stamp = stamp
        self.seen = 0
        self.first = 0.0
        self.last = 0.0
        self.warm = False
        self.latencies: list[float] = []
        self.done = asyncio.Event()

    def on(self, data: bytes | str) -> None:
        self.record(data)
        if self.seen >= self.count:
            self.done.set()

    def record(self, data: bytes | str) -> None:
        """Counts one message (a warm-up message only marks the counter warm)."""
        head = data[:1]
        if head in (b"w", "w"):
            self.warm = True
            return
        now = time.perf_counter()
        if self.seen == 0:
            self.first = now
        self.seen += 1
        self.last = now
        if self.stamp:
            value = latency_ms(data, time.monotonic_ns())
            if value is not None:
                self.latencies.append(value)

    def summary(self) -> dict[str, Any]:
        seconds = self.last - self.first
        data: dict[str, Any] = {
            "count": self.seen,
            "seconds": round(seconds, 4),
            # messages after the first over the time from the first to the last
            "rate": (self.seen - 1) / seconds if seconds > 0 and self.seen > 1 else None,
        }
        if self.stamp:
            data.update(percentiles(self.latencies))
        return data


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response off a keep-alive connection: its head, its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return head


async def until_warm(counter: Counter, live: bool) -> None:
    if not live:
        return
    while not counter.warm:  # noqa: ASYNC110 - set from the receive loop, polled cheaply
        await asyncio.sleep(0.005)
    emit("warm")


# -- one WebSocket client (websockets) ---------------------------------------------------------


async def ws_recv(spec: dict[str, Any]) -> None:
    """One WebSocket client: receive ``count`` messages (acking each one for ``ack``)."""
    from websockets.asyncio.client import connect

    counter = Counter(spec["count"], spec.get("stamp", False))
    envelope = spec.get("envelope", False)
    ack = spec.get("ack", False)
    subprotocols = [spec["subprotocol"]] if spec.get("subprotocol") else None
    async with connect(
        spec["url"],
        subprotocols=subprotocols,  # type: ignore[arg-type]
        max_size=None,
        max_queue=None,
        compression=None,
        ping_interval=None,
        open_timeout=60,
    ) as ws:
        emit("open")
        warm = asyncio.create_task(until_warm(counter, spec.get("live", False)))
        while not counter.done.is_set():
            message = await ws.recv()
            if envelope:
                event = json.loads(message)
                data = event["payload"]
                if event.get("encoding") == "base64":
                    data = base64.b64decode(data)
                if ack:
                    await ws.send(json.dumps({"ack": event["id"]}))
                counter.on(data)
            else:
                counter.on(message)
        warm.cancel()
    result(counter.summary())


# -- one SSE client (httpx) --------------------------------------------------------------------


async def sse_recv(spec: dict[str, Any]) -> None:
    """One SSE client: receive ``count`` events (the ``session`` event is not counted)."""
    import httpx

    counter = Counter(spec["count"], spec.get("stamp", False))
    timeout = httpx.Timeout(60.0, read=None)
    async with httpx.AsyncClient(timeout=timeout) as client:
        headers = {"Accept": "text/event-stream"}
        async with client.stream("GET", spec["url"], headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"SSE: HTTP {response.status_code}")
            emit("open")
            warm = asyncio.create_task(until_warm(counter, spec.get("live", False)))
            rest = b""
            event_name = b""
            async for chunk in response.aiter_raw():
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line.startswith(b"data:"):
                        if event_name:
                            continue  # the session event, or an error event
                        counter.on(line[5:].lstrip(b" "))
                    elif line.startswith(b"event:"):
                        event_name = line[6:].strip()
                        if event_name == b"error":
                            raise RuntimeError(f"SSE: error event: {chunk[-300:]!r}")
                    elif not line:
                        event_name = b""
                if counter.done.is_set():
                    break
            warm.cancel()
    result(counter.summary())


# -- raw sockets: many connections -----------------------------------------------------------


def _request(url: str, kind: str, extra_headers: str = "") -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    if kind == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
    else:
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
    return host, port, (head + extra_headers + "\r\n").encode()


class RawSession:
    """One raw WebSocket or SSE connection that counts the messages (``w``/``x``) it receives."""

    def __init__(self, url: str, kind: str, rcvbuf: int = 0) -> None:
        self.url = url
        self.kind = kind
        self.rcvbuf = rcvbuf
        self.warm = False
        self.received = 0
        self.first_at: int | None = None  # monotonic_ns of the first measured message
        self.last_at = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.on_message: Callable[[RawSession, bytes], None] | None = None

    async def open(self) -> None:
        host, port, request = _request(self.url, self.kind)
        sock = None
        if self.rcvbuf:  # a stalled client: the server's sends back up after a few KiB
            import socket

            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        else:
            self.reader, self.writer = await asyncio.open_connection(host, port, limit=1 << 20)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        wanted = b"101" if self.kind == "ws" else b"200"
        if status != wanted:
            raise RuntimeError(f"{self.kind}: HTTP {status.decode()}")
        self.chunked = b"chunked" in head.lower()

    def got(self, data: bytes) -> None:
        if data[:1] == b"w":
            self.warm = True
            return
        if data[:1] == b"x":
            self.received += 1
            self.last_at = time.monotonic_ns()
            if self.first_at is None:
                self.first_at = self.last_at
            if self.on_message is not None:
                self.on_message(self, data)

    async def read_forever(self) -> None:
        assert self.reader is not None
        if self.kind == "ws":
            await self._read_ws()
        else:
            await self._read_sse()

    async def _read_ws(self) -> None:
        reader = self.reader
        assert reader is not None
        while True:
            b0, b1 = await reader.readexactly(2)
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            data = await reader.readexactly(length)
            opcode = b0 & 0x0F
            if opcode == 8:
                return
            if opcode in (1, 2):
                self.got(data)

    async def _read_sse(self) -> None:
        # Chunked framing can split a line: a chunk-size line ("\r\n1f\r\n") lands inside the
        # text, so lines are taken only from the de-chunked body.
        reader = self.reader
        assert reader is not None
        rest = b""
        event_name = b""
        while True:
            if self.chunked:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.strip().split(b";")[0], 16)
                if size == 0:
                    return
                body = await reader.readexactly(size + 2)
                body = body[:-2]
            else:
                body = await reader.read(65536)
                if not body:
                    return
            lines = (rest + body).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.startswith(b"data:"):
                    if not event_name:
                        self.got(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    event_name = line[6:].strip()
                    if event_name == b"session":
                        self.warm = self.warm  # the session is up: nothing to count
                elif not line:
                    event_name = b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def open_many(
    url: str, kind: str, n: int, parallel: int, rcvbuf: int = 0
) -> tuple[list[RawSession], int]:
    """Open ``n`` sessions, at most ``parallel`` handshakes at a time; (sessions, failures).
    ``{i}`` in ``url`` is the session's index (a stream of its own per session, S11)."""
    sessions: list[RawSession] = []
    failed = 0
    gate = asyncio.Semaphore(parallel)

    async def one(index: int) -> None:
        nonlocal failed
        session = RawSession(url.replace("{i}", str(index)), kind, rcvbuf)
        async with gate:
            try:
                await asyncio.wait_for(session.open(), 60)
            except (TimeoutError, OSError, RuntimeError, asyncio.IncompleteReadError):
                failed += 1
                session.close()
                return
        sessions.append(session)

    await asyncio.gather(*(one(i) for i in range(n)))
    return sessions, failed


async def idle(spec: dict[str, Any]) -> None:
    """Hold ``n`` idle sessions (raw sockets) until ``go``; then close them.

    ``stall``: never read (and a small receive buffer), the stalled client of S9.
    """
    raise_fd_limit()
    t0 = time.perf_counter()
    stall = spec.get("stall", False)
    sessions, failed = await open_many(
        spec["url"], spec["kind_session"], spec["n"], spec["parallel"], 4096 if stall else 0
    )
    readers = [] if stall else [asyncio.create_task(s.read_forever()) for s in sessions]
    opened = time.perf_counter() - t0
    emit("open")
    go = stdin_go()
    while not go.is_set():  # noqa: ASYNC110 - a threading.Event, set by the stdin thread
        await asyncio.sleep(0.05)
    lost = sum(1 for r in readers if r.done())
    for r in readers:
        r.cancel()
    for s in sessions:
        s.close()
    result({"held": len(sessions) - lost, "failed": failed, "lost": lost, "open_s": opened})


async def many(spec: dict[str, Any]) -> None:
    """``n`` live sessions: every one must get ``count`` measured messages (S7, S8).

    ``event open`` once all are connected, ``event warm`` once every session saw a warm-up (the
    publisher then sends what counts), and the result says how many sessions got everything,
    and (for fan-out) when the last one received the first measured message.
    """
    raise_fd_limit()
    count = spec["count"]
    sessions, failed = await open_many(
        spec["url"], spec["kind_session"], spec["n"], spec["parallel"]
    )
    readers = [asyncio.create_task(s.read_forever()) for s in sessions]
    emit("open")
    t0 = time.perf_counter()
    deadline = time.monotonic() + spec.get("warm_timeout", 120)
    while spec.get("warm", True) and not all(s.warm for s in sessions):
        if time.monotonic() > deadline:
            break
        if all(r.done() for r in readers):
            break
        await asyncio.sleep(0.02)
    warm = sum(1 for s in sessions if s.warm)
    emit("warm")
    deadline = time.monotonic() + spec.get("timeout", 60)
    while time.monotonic() < deadline:
        if all(s.received >= count for s in sessions):
            break
        await asyncio.sleep(0.005)
    complete = sum(1 for s in sessions if s.received >= count)
    seconds = time.perf_counter() - t0
    firsts = [s.first_at for s in sessions if s.first_at is not None]
    for r in readers:
        r.cancel()
    for s in sessions:
        s.close()
    result(
        {
            "sessions": len(sessions),
            "failed": failed,
            "warm": warm,
            "complete": complete,
            "received": sum(s.received for s in sessions),
            "seconds": seconds,
            "first_min_ns": min(firsts) if firsts else None,
            "first_max_ns": max(firsts) if firsts else None,
            "last_max_ns": max((s.last_at for s in sessions), default=None),
        }
    )


# -- HTTP POST load (raw HTTP/1.1 on keep-alive connections) ----------------------------------


async def post(spec: dict[str, Any]) -> None:
    """``connections`` keep-alive connections POSTing for ``duration`` seconds.

    ``rate`` None: closed loop (each connection sends its next request when the answer came);
    else requests are spread evenly at that total rate (open loop per connection; a late
    answer delays only its own connection's next request).
    """
    url = urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = url.path + ("?" + url.query if url.query else "")
    body = payload(spec["size"])
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    connections = spec["connections"]
    rate = spec.get("rate")
    interval = connections / rate if rate else 0.0
    warmup = spec.get("warmup", 0.5)
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + spec["duration"]

    async def one(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        next_at = time.perf_counter() + (interval * index / connections if rate else 0.0)
        try:
            while True:
                if rate:
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at += interval
                sent = time.perf_counter()
                if sent >= t_end:
                    return
                writer.write(request)
                head = await _read_response(reader)
                done = time.perf_counter()
                if sent >= t_measure:
                    status = head[9:12].decode()
                    statuses[status] = statuses.get(status, 0) + 1
                    latencies.append((done - sent) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(connections)))
    ok = statuses.get("202", 0) + statuses.get("200", 0)
    result(
        {
            "requests": len(latencies),
            "ok": ok,
            "statuses": statuses,
            "rate": ok / spec["duration"],
            **percentiles(latencies),
        }
    )


async def post_fan(spec: dict[str, Any]) -> None:
    """``count`` POSTs to each of ``topics`` URLs (``{i}`` in ``url``: 0 to topics - 1), round
    robin over the topics, on ``connections`` keep-alive connections, each sending its next
    request when the answer came (S11 on the memory endpoint: the engine's POST entrypoint is
    the way in)."""
    url = urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    path = url.path + ("?" + url.query if url.query else "")
    body = payload(spec["size"])
    topics, count, connections = spec["topics"], spec["count"], spec["connections"]
    requests = [
        (
            f"POST {path.replace('{i}', str(i))} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for i in range(topics)
    ]
    statuses: dict[str, int] = {}
    next_request = 0
    total = topics * count

    async def one() -> None:
        nonlocal next_request
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while next_request < total:
                request = requests[next_request % topics]
                next_request += 1
                writer.write(request)
                head = await _read_response(reader)
                status = head[9:12].decode()
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    seconds = time.perf_counter() - t0
    ok = statuses.get("202", 0)
    result({"sent": ok, "statuses": statuses, "seconds": seconds, "rate": ok / seconds})


# -- publishers ---------------------------------------------------------------------------------


def publish(spec: dict[str, Any]) -> None:
    """Warm-ups until ``go`` (when ``warm``), then ``count`` measured messages.

    ``rate`` None publishes as fast as the client allows; else paced at ``rate`` per second.
    Brokers: kafka (confluent-kafka), rabbitmq (pika, default exchange to the queue), mqtt
    (paho, QoS 1, a window of in-flight messages), http (POST to the engine's memory route).
    MQTT with ``topics``: ``{i}`` in ``topic`` goes round robin from 0 to topics - 1 (S11).
    """
    broker = spec["broker"]
    send, flush, close = _publisher(broker, spec)
    ticks: dict[str, Callable[[], None]] = {"kafka": lambda: None, "mqtt": lambda: None}
    try:
        if spec.get("warm"):
            go = stdin_go()
            while not go.wait(spec.get("warm_interval", 0.05)):
                send(payload(spec["size"], b"w"))
                flush()
        size, stamp, rate = spec["size"], spec.get("stamp", False), spec.get("rate")
        fan = [spec["topic"].replace("{i}", str(i)) for i in range(spec.get("topics", 0))]
        tick = ticks.get(broker, flush)
        t0_ns = time.monotonic_ns()
        t0 = time.perf_counter()
        for n in range(spec["count"]):
            if rate:
                delay = t0 + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if fan:
                send(payload(size, b"x", stamp), fan[n % len(fan)])
            else:
                send(payload(size, b"x", stamp))
            if rate:
                tick()
        flush()
        seconds = time.perf_counter() - t0
    finally:
        close()
    result(
        {"sent": spec["count"], "seconds": seconds, "rate": spec["count"] / seconds, "t0_ns": t0_ns}
    )


def _publisher(
    broker: str, spec: dict[str, Any]
) -> tuple[Callable[..., None], Callable[[], None], Callable[[], None]]:
    topic = spec["topic"]
    if broker == "kafka":
        from confluent_kafka import Producer

        linger = 0 if spec.get("rate") else 5  # paced: every message leaves at once
        producer = Producer({"bootstrap.servers": spec["address"], "linger.ms": linger, "acks": 1})

        def send(data: bytes) -> None:
            while True:
                try:
                    producer.produce(topic, data)
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)

        return send, lambda: (producer.flush(30), None)[1], lambda: None
    if broker == "rabbitmq":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(spec["address"]))
        channel = connection.channel()

        exchange = spec.get("exchange", "")

        def send_rabbit(data: bytes) -> None:
            channel.basic_publish(exchange, topic, data)

        def flush_rabbit() -> None:
            connection.process_data_events(0)

        return send_rabbit, flush_rabbit, connection.close
    if broker == "mqtt":
        return _mqtt_publisher(spec)
    if broker == "http":
        import httpx

        client = httpx.Client()

        def send_http(data: bytes) -> None:
            client.post(spec["address"], content=data).raise_for_status()

        return send_http, lambda: None, client.close
    raise ValueError(broker)


def _mqtt_publisher(
    spec: dict[str, Any],
) -> tuple[Callable[..., None], Callable[[], None], Callable[[], None]]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    url = urlsplit(spec["address"])
    version = mqtt.MQTTv311 if spec.get("mqtt311") else mqtt.MQTTv5
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=version)
    window = spec.get("window", 50)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    pending = 0
    lock = threading.Condition()

    def on_publish(*_: Any) -> None:
        nonlocal pending
        with lock:
            pending -= 1
            lock.notify_all()

    client.on_publish = on_publish
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(url.hostname or "127.0.0.1", url.port or 1883, 60)
    client.loop_start()
    if not connected.wait(30):
        raise RuntimeError("mqtt publisher: no CONNACK")

    def send(data: bytes, topic: str | None = None) -> None:
        nonlocal pending
        with lock:
            while pending >= window:
                lock.wait(1)
            pending += 1
        client.publish(topic or spec["topic"], data, qos=1)

    def flush() -> None:
        with lock:
            deadline = time.monotonic() + 30
            while pending and time.monotonic() < deadline:
                lock.wait(0.5)

    def close() -> None:
        client.disconnect()
        client.loop_stop()

    return send, flush, close


# -- raw broker legs: the broker's client alone --------------------------------------------------


def kafka_consume(spec: dict[str, Any]) -> None:
    """confluent-kafka consume() batches from a prefilled topic, no commit."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": spec["address"],
            "group.id": f"raw-{os.getpid()}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([spec["topic"]])
    emit("open")
    counter = _SyncCounter(spec["count"])
    deadline = time.monotonic() + 120
    try:
        while not counter.done and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    counter.on(message.value())
    finally:
        consumer.close()
    result(counter.summary())


def pika_consume(spec: dict[str, Any]) -> None:
    """pika basic_consume with manual acks and prefetch ``window`` from a prefilled queue."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(spec["address"]))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=spec["window"])
    counter = _SyncCounter(spec["count"])

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
        counter.on(body)
        if counter.done:
            ch.stop_consuming()

    channel.basic_consume(spec["topic"], on_message)
    emit("open")
    channel.start_consuming()
    connection.close()
    result(counter.summary())


def paho_recv(spec: dict[str, Any]) -> None:
    """A paho subscriber (QoS 1), over TCP or WebSocket (``transport``), live: warm-ups first."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    url = urlsplit(spec["address"])
    version = mqtt.MQTTv311 if spec.get("mqtt311") else mqtt.MQTTv5
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        protocol=version,
        transport=spec.get("transport", "tcp"),
    )
    if spec.get("transport") == "websockets":
        client.ws_set_options(path=spec.get("ws_path", "/mqtt"))
    counter = _SyncCounter(spec["count"], spec.get("stamp", False))
    subscribed = threading.Event()
    done = threading.Event()

    def on_message(c: Any, u: Any, message: Any) -> None:
        was_warm = counter.warm
        counter.on(message.payload)
        if counter.warm and not was_warm:
            emit("warm")
        if counter.done:
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe(spec["topic"], qos=1)
    client.connect(url.hostname or "127.0.0.1", url.port or 1883, 60)
    client.loop_start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("paho: not subscribed")
        emit("open")
        done.wait(spec.get("timeout", 120))
    finally:
        client.disconnect()
        client.loop_stop()
    result(counter.summary())


class _SyncCounter(Counter):
    def __init__(self, count: int, stamp: bool = False) -> None:
        self.count, self.stamp = count, stamp
        self.seen, self.first, self.last, self.warm = 0, 0.0, 0.0, False
        self.latencies = []
        self.lock = threading.Lock()

    @property
    def done(self) -> bool:  # type: ignore[override]
        return self.seen >= self.count

    def on(self, data: bytes | str) -> None:
        # No event to set: the sync loops poll ``done`` between reads.
        self.record(data)


ASYNC_KINDS = {
    "ws_recv": ws_recv,
    "sse_recv": sse_recv,
    "idle": idle,
    "many": many,
    "post": post,
    "post_fan": post_fan,
}
SYNC_KINDS = {
    "publish": publish,
    "kafka_consume": kafka_consume,
    "pika_consume": pika_consume,
    "paho_recv": paho_recv,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    kind = spec["kind"]
    if kind in ASYNC_KINDS:
        asyncio.run(ASYNC_KINDS[kind](spec))
    else:
        SYNC_KINDS[kind](spec)


if __name__ == "__main__":
    main()
