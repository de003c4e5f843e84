"""``/healthz`` latency while something bad happens: a thread polls it and keeps every latency.

A thread of its own, not a Trio task: if the engine's event loop were wedged, a probe running in
that same loop would be wedged with it and measure nothing.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

INTERVAL = 0.02  # between probes
TIMEOUT = 5.0  # a probe slower than this counts as failed


class HealthProbe:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.latencies: list[float] = []  # seconds, of the probes that answered 200
        self.failures = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        try:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    connection.request("GET", "/healthz")
                    response = connection.getresponse()
                    response.read()
                    ok = response.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    connection.close()
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
                if ok:
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.failures += 1
                self._stop.wait(INTERVAL)
        finally:
            connection.close()

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        assert ordered, "no probe answered"
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(0.99)

    @property
    def max_ms(self) -> float:
        return 1000 * max(self.latencies)


@asynccontextmanager
async def probing(host: str, port: int) -> AsyncIterator[HealthProbe]:
    """Probe ``/healthz`` for the block's duration."""
    probe = HealthProbe(host, port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, probe._run)
        try:
            yield probe
        finally:
            probe._stop.set()
