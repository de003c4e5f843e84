"""The shipped HAProxy configuration (examples/deploy/haproxy.cfg), run on loopback.

:func:`loopback_config` rewrites only addresses and ports: each frontend's ``bind :PORT``
becomes ``bind fd@N``, a listening socket this process bound on port 0 and hands to HAProxy (so
the port is the OS's choice and there is no race for it), and each ``server engineK
10.0.0.1K:PORT`` becomes engine K's own port for the entrypoint the shipped config serves on
PORT (read from examples/deploy/mediation.toml), checked on engine K's health port. Servers
beyond the engines given are dropped, and the check interval may be shortened (a dead engine
is out sooner; the check's timeout stays the shipped interval, so a busy one is not); everything
else (balancing, hashing, health checks, timeouts, retries) is the shipped file's.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "examples" / "deploy"
SHIPPED = DEPLOY / "haproxy.cfg"
FLEET_CONFIG = DEPLOY / "mediation.toml"

# One engine's ports: entrypoint name -> port, and "health".
EnginePorts = Mapping[str, int]


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise RuntimeError("haproxy is not installed: run scripts/install-system-deps")
    return found


def shipped_ports() -> dict[int, str]:
    """The deploy config's entrypoint ports: port -> entrypoint name."""
    document = tomllib.loads(FLEET_CONFIG.read_text())
    return {table["port"]: table["name"] for table in document["entrypoints"]}


def loopback_config(
    engines: Sequence[EnginePorts], fds: Mapping[int, int], *, inter: str | None = None
) -> str:
    """The shipped configuration with the test's addresses (see the module docstring).

    ``fds``: shipped frontend port -> the file descriptor HAProxy inherits for it."""
    by_port = shipped_ports()
    lines = []
    for line in SHIPPED.read_text().splitlines():
        bind = re.fullmatch(r"(\s+)bind :(\d+)", line)
        server = re.fullmatch(r"(\s+)server engine(\d+) [0-9.]+:(\d+)(.*)", line)
        if bind:
            lines.append(f"{bind[1]}bind fd@{fds[int(bind[2])]}")
        elif server:
            index = int(server[2]) - 1
            if index >= len(engines):
                continue
            ports = engines[index]
            port = ports[by_port[int(server[3])]]
            lines.append(
                f"{server[1]}server engine{index + 1} 127.0.0.1:{port}{server[4]}"
                f" port {ports['health']}"
            )
        elif inter is not None and line.strip().startswith("default-server"):
            # A check's timeout is its interval unless "timeout check" says otherwise: keep the
            # shipped one, so that a busy engine is not taken out sooner than it would be.
            shipped = re.search(r"inter (\S+)", line)
            assert shipped is not None, line
            indent = line[: len(line) - len(line.lstrip())]
            lines.append(f"{indent}timeout check {shipped[1]}")
            lines.append(re.sub(r"inter \S+", f"inter {inter}", line))
        elif line.strip().startswith("maxconn"):
            # The fleet's figure needs a raised file limit; a test machine may not grant it.
            lines.append(re.sub(r"maxconn \d+", "maxconn 4096", line))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


@dataclass
class HAProxy:
    process: trio.Process
    ports: dict[str, int]  # entrypoint name -> the port clients connect to
    config: Path


@asynccontextmanager
async def running_haproxy(
    engines: Sequence[EnginePorts], directory: Path, *, inter: str | None = "200ms"
) -> AsyncIterator[HAProxy]:
    """HAProxy with the shipped configuration in front of ``engines``, until the block ends."""
    by_port = shipped_ports()
    with ExitStack() as sockets:
        fds: dict[int, int] = {}
        ports: dict[str, int] = {}
        for shipped_port, name in by_port.items():
            listener = sockets.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            listener.set_inheritable(True)
            fds[shipped_port] = listener.fileno()
            ports[name] = listener.getsockname()[1]
        config = directory / "haproxy.cfg"
        config.write_text(loopback_config(engines, fds, inter=inter))
        check = await trio.run_process(
            [haproxy_binary(), "-c", "-q", "-f", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            pass_fds=tuple(fds.values()),
        )
        assert check.returncode == 0, (check.stdout + check.stderr).decode()
        process = await trio.lowlevel.open_process(
            [haproxy_binary(), "-db", "-f", str(config)],
            pass_fds=tuple(fds.values()),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield HAProxy(process, ports, config)
        finally:
            process.terminate()
            with trio.move_on_after(5, shield=True) as waited:
                await process.wait()
            if waited.cancelled_caught:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
