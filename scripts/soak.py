#!/usr/bin/env python3
"""Soak the engine: many live sessions for a long time, memory and open files sampled (`just soak`).

    python scripts/soak.py [--sessions 2000] [--minutes 30] [--rate 5] [--rabbitmq]

Starts the engine as a subprocess (``python -m mediation run``) on loopback with a memory
endpoint and WebSocket, SSE and HTTP POST entrypoints on free ports; opens ``--sessions``
sessions (half WebSocket, half SSE; raw sockets that complete the handshake and then drain
whatever comes); posts ``--rate`` events a second, each of which every session receives; and
samples the engine's RSS and open file count at the start and then every minute (more often for
runs of a few minutes), printing each sample and, at the end, the memory slope (least squares
over the samples after the first, in MiB per minute) and the file count's range. With
``--rabbitmq`` a private RabbitMQ node is started (tests/brokers) and every session also
consumes from it (a queue of its own bound to a fanout exchange), the events published there too.

Exit status 0 when every session stayed up and received events to the end, 1 otherwise. The
figures are for a person to read: a flat slope is the point, no bound is asserted. Not run in CI.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, closing
from pathlib import Path

import httpx
import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The raw clients of the resilience tests: tests/ is importable from the checkout, as
# tests.brokers is for --rabbitmq.
from tests.rawhttp import HOST, RawClient, sse_request, ws_upgrade  # noqa: E402

CONNECT_AT_ONCE = 100  # handshakes in flight while the sessions open


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def config_text(ports: dict[str, int], rabbitmq_url: str | None, exchange: str) -> str:
    text = f"""
[engine]
host = "{HOST}"
health_port = {ports["health"]}
packet_log = false
log_level = "warning"
reload_interval = 0

[[entrypoints]]
name = "ws"
type = "websocket"
port = {ports["ws"]}

[[entrypoints]]
name = "sse"
type = "sse"
port = {ports["sse"]}

[[entrypoints]]
name = "post"
type = "http_post"
port = {ports["post"]}

[[endpoints]]
name = "mem"
type = "memory"

[[routes]]
source = "post"
target = "mem"

[[routes]]
source = "mem"
target = "ws"

[[routes]]
source = "mem"
target = "sse"
"""
    if rabbitmq_url is not None:
        text += f"""
[[endpoints]]
name = "rmq"
type = "rabbitmq"
[endpoints.config]
url = "{rabbitmq_url}"
exchange = "{exchange}"
exchange_type = "fanout"

[[routes]]
source = "rmq"
target = "ws"

[[routes]]
source = "rmq"
target = "sse"
"""
    return text


class Client:
    """One session: a raw socket past its handshake, drained by a task of its own."""

    def __init__(self) -> None:
        self.bytes = 0
        self.closed: str | None = None

    async def run(
        self, port: int, request: bytes, ready: bytes, task_status: trio.TaskStatus[None]
    ) -> None:
        client = await RawClient.connect(port)
        with client.sock:
            await client.send(request)
            await client.read_until(ready)
            task_status.started()
            while True:
                chunk = await client.sock.recv(65536)
                if not chunk:
                    self.closed = "closed by the engine"
                    return
                self.bytes += len(chunk)


async def wait_listening(port: int, engine: subprocess.Popen[bytes], within: float) -> None:
    with trio.fail_after(within):
        while True:
            if engine.poll() is not None:
                raise SystemExit(f"the engine exited with {engine.returncode} while starting")
            try:
                stream = await trio.open_tcp_stream(HOST, port)
            except OSError:
                await trio.sleep(0.1)
                continue
            await stream.aclose()
            return


def slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MiB) points; 0 for fewer than two."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread if spread else 0.0


async def _drive(
    args: argparse.Namespace,
    engine: subprocess.Popen[bytes],
    ports: dict[str, int],
    publish_rabbit: object,
    exchange: str,
) -> int:
    for port in ports.values():
        await wait_listening(port, engine, 60)
    process = psutil.Process(engine.pid)
    clients = [Client() for _ in range(args.sessions)]
    published = 0
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(CONNECT_AT_ONCE)

        async def open_one(index: int) -> None:
            async with limiter:
                if index % 2:
                    request, port, ready = (
                        sse_request(f"soak-sse-{index}"),
                        ports["sse"],
                        b"event: session",
                    )
                else:
                    request, port, ready = ws_upgrade(f"soak-ws-{index}"), ports["ws"], b"\r\n\r\n"
                await nursery.start(clients[index].run, port, request, ready)

        with trio.fail_after(max(120, args.sessions / 10)):
            async with trio.open_nursery() as opening:
                for index in range(args.sessions):
                    opening.start_soon(open_one, index)
        print(f"{args.sessions} sessions open in {time.monotonic() - started:.1f} s", flush=True)

        async def publish() -> None:
            # httpx opens a new connection when the server ends a keep-alive one (hypercorn did
            # after 1,000 requests, and a hand-written client spun on the EOF).
            nonlocal published
            async with httpx.AsyncClient(base_url=f"http://{HOST}:{ports['post']}") as http:
                while True:
                    body = f"soak {published} {time.time():.3f}".encode()
                    response = await http.post("/", content=body)
                    if response.status_code != 202:
                        raise RuntimeError(f"publish refused: {response.status_code}")
                    if publish_rabbit is not None:
                        await trio.to_thread.run_sync(publish_rabbit, exchange, body)  # type: ignore[arg-type]
                    published += 1
                    await trio.sleep(1 / args.rate)

        nursery.start_soon(publish)

        duration = args.minutes * 60
        interval = min(60.0, duration / 6)
        samples: list[tuple[float, float]] = []
        files: list[int] = []
        begin = time.monotonic()
        print(
            f"{'minute':>7} {'rss MiB':>9} {'open files':>10} {'published':>9}"
            f" {'received MiB':>12}",
            flush=True,
        )
        while True:
            elapsed = time.monotonic() - begin
            rss_mib = process.memory_info().rss / 2**20
            open_files = process.num_fds()
            received = sum(c.bytes for c in clients) / 2**20
            samples.append((elapsed / 60, rss_mib))
            files.append(open_files)
            print(
                f"{elapsed / 60:7.2f} {rss_mib:9.1f} {open_files:10d} {published:9d}"
                f" {received:12.1f}",
                flush=True,
            )
            if elapsed >= duration - 0.5:
                break
            await trio.sleep(min(interval, duration - elapsed))
        before = [c.bytes for c in clients]
        await trio.sleep(max(3.0, 3 / args.rate))  # every live session gets the next events
        stalled = sum(1 for c, b in zip(clients, before, strict=True) if c.bytes == b)
        closed = sum(1 for c in clients if c.closed)
        nursery.cancel_scope.cancel()

    memory_slope = slope(samples[1:])
    print(
        f"memory slope {memory_slope:+.3f} MiB/min"
        f" over {len(samples) - 1} samples after the first; "
        f"open files {min(files)}..{max(files)}; {published} events published; "
        f"{closed} sessions closed, {stalled} received nothing in the last seconds",
        flush=True,
    )
    return 0 if not closed and not stalled else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=5.0, help="events published per second")
    parser.add_argument("--rabbitmq", action="store_true", help="also consume from RabbitMQ")
    args = parser.parse_args()
    with ExitStack() as stack:
        rabbitmq_url = None
        publish_rabbit = None
        if args.rabbitmq:
            from tests.brokers import start_rabbitmq

            broker = stack.enter_context(start_rabbitmq())
            rabbitmq_url = broker.amqp_url
            channel = stack.enter_context(broker.channel())

            def publish_rabbit(exchange: str, body: bytes) -> None:
                channel.basic_publish(exchange, "", body)  # type: ignore[attr-defined]

        ports = {name: free_port() for name in ("health", "ws", "sse", "post")}
        exchange = f"soak-{os.getpid()}"
        workdir = stack.enter_context(tempfile.TemporaryDirectory())
        path = Path(workdir) / "soak.toml"
        path.write_text(config_text(ports, rabbitmq_url, exchange))
        engine = subprocess.Popen(
            [sys.executable, "-m", "mediation", "run", "--config", str(path)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            return trio.run(_drive, args, engine, ports, publish_rabbit, exchange)
        finally:
            engine.send_signal(signal.SIGTERM)
            try:
                engine.wait(60)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait()
    return 1


if __name__ == "__main__":
    sys.exit(main())
