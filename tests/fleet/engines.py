"""Engine processes for the fleet test: ``python -m mediation run`` each, killed with SIGKILL
when the test says so (the crash a fleet must survive), else stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 60.0


@dataclass
class EngineProcess:
    name: str
    process: trio.Process
    ports: dict[str, int] = field(default_factory=dict)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=50))  # last stdout lines

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no goodbye to clients or brokers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _read_lines(
    stream: trio.abc.ReceiveStream, engine: EngineProcess, listening: trio.Event
) -> None:
    """Every stdout line into ``engine.tail``; the "listening" one sets the ports. Drained to
    the end, so the engine never blocks on a full pipe."""
    buffer = b""
    while chunk := await stream.receive_some():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            engine.tail.append(text)
            if not listening.is_set() and '"listening"' in text:
                engine.ports = dict(json.loads(text)["ports"])
                listening.set()


@asynccontextmanager
async def running_engines(config: Path, count: int) -> AsyncIterator[list[EngineProcess]]:
    """``count`` engines on ``config`` (ports 0), once each logged "listening"."""
    async with trio.open_nursery() as nursery:
        engines: list[EngineProcess] = []
        try:
            waits = []
            for index in range(count):
                process = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "mediation", "run", "--config", str(config)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    cwd=str(REPO),
                    env=_env(),
                )
                engine = EngineProcess(f"engine{index + 1}", process)
                engines.append(engine)
                listening = trio.Event()
                assert process.stdout is not None
                nursery.start_soon(_read_lines, process.stdout, engine, listening)
                waits.append((engine, listening))
            for engine, listening in waits:
                with trio.move_on_after(STARTUP_TIMEOUT) as waited:
                    await listening.wait()
                if waited.cancelled_caught:
                    raise AssertionError(
                        f"{engine.name} never listened:\n" + "\n".join(engine.tail)
                    )
            yield engines
        finally:
            with trio.CancelScope(shield=True):
                for engine in engines:
                    if engine.process.returncode is None:
                        engine.process.terminate()
                with trio.move_on_after(35):
                    for engine in engines:
                        await engine.process.wait()
                for engine in engines:
                    if engine.process.returncode is None:
                        engine.process.kill()
                        await engine.process.wait()
            nursery.cancel_scope.cancel()
    for engine in engines:
        if engine.process.stdout is not None:
            await engine.process.stdout.aclose()
