"""The WebSocket writer alone: memory endpoint -> one client (``python -m bench.ws_memory``).

For comparing two versions of the engine's WebSocket path, run from two git worktrees, alternated:
an engine in this process publishes ``N`` events of ``SIZE`` bytes into its memory endpoint, on a
route with ``channel_size`` ``CS`` (environment variables: 50,000, 4096 and 1024 by default), to a
client in a subprocess that only counts frames. Prints events per second and this process's CPU
time per event (engine and publisher; the client's is its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import trio

from mediation.config import build_config
from mediation.endpoints import Outbound
from mediation.engine import open_mediation_engine
from mediation.events import Event

N = int(os.environ.get("N", "50000"))
SIZE = int(os.environ.get("SIZE", "4096"))
CS = int(os.environ.get("CS", "1024"))

# The client: a handshake, then frames counted (server frames are unmasked).
CLIENT = r"""
import base64, os, socket, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(
    f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
)
data = b""
while b"\r\n\r\n" not in data:
    data += s.recv(65536)
view = bytearray(data.split(b"\r\n\r\n", 1)[1])
print("ready", flush=True)
count = 0
while count < n:
    while len(view) >= 2:
        size, start = view[1] & 0x7F, 2
        if size == 126:
            if len(view) < 4:
                break
            size, start = struct.unpack("!H", view[2:4])[0], 4
        elif size == 127:
            if len(view) < 10:
                break
            size, start = struct.unpack("!Q", view[2:10])[0], 10
        if len(view) < start + size:
            break
        del view[: start + size]
        count += 1
    if count < n:
        more = s.recv(262144)
        if not more:
            break
        view += more
"""


async def main() -> None:
    config = build_config(
        {
            "engine": {"host": "127.0.0.1", "health_port": 0, "packet_log": False},
            "entrypoints": [{"name": "ws", "type": "websocket", "port": 0, "frame_type": "binary"}],
            "endpoints": [{"name": "mem", "type": "memory", "config": {"capacity": 1024}}],
            "routes": [{"source": "mem", "target": "ws", "channel_size": CS}],
        }
    )
    async with open_mediation_engine(config) as engine:
        command = [sys.executable, "-c", CLIENT, str(engine.ports["ws"]), str(N)]
        client = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        assert client.stdout is not None
        said = b""
        while b"ready" not in said:
            said += await client.stdout.receive_some(100)
        # 101 is answered once the session's consumer is subscribed: publishing can start.
        route = engine.config.routes[0]
        endpoint = engine.endpoints["mem"]
        payload = b"x" * SIZE
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(N):
            event = Event(payload, id=str(i))
            outbound = Outbound(event=event, route=route, client_id="p", entrypoint="bench")
            await endpoint.publish(outbound, confirm=False)
        await client.wait()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"{N / elapsed:,.0f} events/s, {cpu / N * 1e6:.1f} us of this process's CPU per event")


if __name__ == "__main__":
    trio.run(main)
