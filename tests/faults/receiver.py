"""A ``mediation.v1`` WebSocket client that outlives its sessions: it reconnects when the engine
closes one (1011 after a broker failure) or refuses a new one (503 while the endpoint is down).

Every payload is a sequence number (:mod:`.tally`); each is recorded in order and acked at once
(an ack on a route that is not ``at_least_once`` is ignored by the engine).
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import trio
from trio_util import AsyncValue
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from mediation.envelope import SUBPROTOCOL

from .tally import Tally, seq_of

# Pause between connection attempts while the engine refuses them: a client's own backoff.
RETRY = 0.2


class Receiver:
    def __init__(self, name: str, url: str, tally: Tally) -> None:
        self.name = name
        self.url = url
        self.tally = tally
        self.count = AsyncValue(0)  # len(tally.received)
        self.connected = AsyncValue(False)
        self.sessions = 0  # sessions the engine confirmed (101)
        self.close_codes: list[int] = []
        self.redelivered: list[int] = []  # those the broker flagged as delivered before
        self.refused = 0  # handshakes the engine refused (its endpoint down)
        self.last_close: float | None = None  # time.monotonic() of the last session's end
        # hold(n): after the n-th payload, read and ack nothing more until release() (so that
        # a fault finds deliveries unconfirmed in the engine and waiting in the broker).
        self._hold_at: int | None = None
        self._released = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive until cancelled; ``started`` once the first session is confirmed."""
        while True:
            try:
                await self._session(task_status)
            except* ConnectionClosed as closed:
                reason = getattr(closed.exceptions[0], "reason", None)
                self.close_codes.append(reason.code if reason else -1)
                self.last_close = time.monotonic()
            except* (HandshakeError, OSError):
                self.refused += 1
            finally:
                self.connected.value = False
            await trio.sleep(RETRY)

    async def _session(self, task_status: trio.TaskStatus[None]) -> None:
        # Our own TCP stream under trio-websocket, closed here on every path: its
        # open_websocket_url leaves the socket of a refused handshake to the garbage collector.
        parsed = urlsplit(self.url)
        host, port = parsed.hostname or "", parsed.port or 80
        resource = f"{parsed.path or '/'}?{parsed.query}" if parsed.query else parsed.path or "/"
        stream = await trio.open_tcp_stream(host, port)
        try:
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(
                    nursery, stream, f"{host}:{port}", resource, subprotocols=[SUBPROTOCOL]
                )
                try:
                    self.sessions += 1
                    self.connected.value = True
                    if self.sessions == 1:
                        task_status.started()
                    await self._receive(ws)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await stream.aclose()

    async def _receive(self, ws: WebSocketConnection) -> None:
        while True:
            document = json.loads(await ws.get_message())
            seq = seq_of(document["payload"])
            self.tally.received.append(seq)
            if document.get("metadata", {}).get("redelivered") == "true":
                self.redelivered.append(seq)
            self.count.value = len(self.tally.received)
            if self.count.value == self._hold_at:
                await self._released.wait()
            await ws.send_message(json.dumps({"ack": document["id"]}))

    def hold(self, at: int) -> None:
        self._hold_at = at

    def release(self) -> None:
        self._released.set()

    async def until_received(self, count: int, within: float) -> None:
        with trio.fail_after(within):
            await self.count.wait_value(lambda n: n >= count)

    async def until_has(self, seqs: set[int], within: float) -> None:
        """Until every one of ``seqs`` arrived (fails after ``within`` seconds, listing the rest)."""
        try:
            with trio.fail_after(within):
                await self.count.wait_value(lambda _: seqs <= set(self.tally.received))
        except trio.TooSlowError:
            missing = sorted(seqs - set(self.tally.received))
            raise AssertionError(
                f"{self.name}: {len(missing)} never arrived, first {missing[:10]}; "
                f"sessions {self.sessions}, closes {self.close_codes}, refused {self.refused}"
            ) from None
