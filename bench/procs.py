"""The processes of a benchmark: the engine, a baseline, raw servers and load generators.

Each is a child process in a session of its own (so a signal reaches its children), stopped by
its pid when its ``with`` block ends. The engine is ``python -m mediation run --config FILE`` with
a generated TOML file (every port 0; the bound ports are read from its ``listening`` log line).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import psutil

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parent.parent


class RunFailed(RuntimeError):
    """A process of the benchmark failed; the message ends with the tail of its output."""


class BaselineMissing(RunFailed):
    """bench/baselines is not there (yet): the table says n/a."""


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# -- TOML (the engine's config) -------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def _toml_table(lines: list[str], header: str, table: Mapping[str, Any]) -> None:
    lines.append(header)
    nested = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    for key, value in table.items():
        if key not in nested:
            lines.append(f"{key} = {_toml_value(value)}")
    name = header.strip("[]")
    for key, value in nested.items():
        _toml_table(lines, f"[{name}.{key}]", value)
    lines.append("")


def engine_toml(
    entrypoints: dict[str, dict[str, Any]],
    endpoints: dict[str, dict[str, Any]],
    routes: list[dict[str, Any]],
    packet_log: bool = False,
) -> str:
    """A config on 127.0.0.1 with port 0 everywhere, no reload; endpoints: name -> table with
    ``type`` and ``config``."""
    lines: list[str] = []
    _toml_table(
        lines,
        "[engine]",
        {
            "host": "127.0.0.1",
            "health_port": 0,
            "log_level": "info",  # "listening" (the bound ports) is an info line
            "packet_log": packet_log,
            "reload_interval": 0,
            "shutdown_timeout": 5,
        },
    )
    for name, table in entrypoints.items():
        _toml_table(lines, "[[entrypoints]]", {"name": name, "port": 0, **table})
    for name, table in endpoints.items():
        _toml_table(lines, "[[endpoints]]", {"name": name, **table})
    for route in routes:
        _toml_table(lines, "[[routes]]", route)
    return "\n".join(lines)


class Resources:
    """RSS and threads of a process (and the baseline figures to subtract)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def rss_kib(self) -> int:
        return int(self.process.memory_info().rss // 1024)

    def threads(self) -> int:
        return int(self.process.num_threads())

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)


class Server:
    """A server process that reports its port(s): the engine, a baseline, a raw-leg server."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def resources(self) -> Resources:
        return Resources(self.pid)

    def start(self) -> None:
        log: IO[bytes]
        # The log is appended to across restarts: readiness is read from this start's part.
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=_raise_fd_limit,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def failed(self, what: str) -> RunFailed:
        return RunFailed(
            f"{self.name}: {what}\n--- tail of {self.log_path} ---\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


class Engine(Server):
    """``python -m mediation run --config <generated file>``."""

    def __init__(self, toml: str, workdir: Path, name: str = "engine") -> None:
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(toml)
        super().__init__(
            name, [PYTHON, "-m", "mediation", "run", "--config", str(self.config_path)], workdir
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise self.failed("exited before listening")
            with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                for line in log:
                    if b'"listening"' in line:
                        self.ports = json.loads(line)["ports"]
                        return
            time.sleep(0.05)
        raise self.failed("not listening in time")

    def url(self, entrypoint: str, scheme: str = "http", path: str = "/") -> str:
        return f"{scheme}://127.0.0.1:{self.ports[entrypoint]}{path}"

    def wait_readyz(self, timeout: float = 60.0) -> None:
        """Every endpoint up (``/readyz`` 200)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url("health", path="/readyz"), timeout=2).status_code == 200:
                    return
            if not self.alive():
                raise self.failed("exited")
            time.sleep(0.1)
        raise self.failed("/readyz not 200 in time")


class PortFileServer(Server):
    """A process that writes its bound port to ``--port-file`` when it serves."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.port_file = workdir / f"{name}.port"
        self.port_file.unlink(missing_ok=True)
        super().__init__(name, [*argv, "--port-file", str(self.port_file)], workdir)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.port_file.read_text() if self.port_file.exists() else ""
            if text.endswith("\n"):
                self.ports["main"] = int(text)
                return
            if not self.alive():
                raise self.failed("exited before serving")
            time.sleep(0.05)
        raise self.failed("no port file in time")

    def url(self, scheme: str = "http", path: str = "/") -> str:
        return f"{scheme}://127.0.0.1:{self.ports['main']}{path}"


def baseline_available() -> bool:
    return (ROOT / "bench" / "baselines" / "bridge.py").exists()


def baseline(broker: str, broker_url: str, window: int, workdir: Path) -> PortFileServer:
    if not baseline_available():
        raise BaselineMissing("bench/baselines/bridge.py does not exist")
    name = f"baseline-{broker}-w{window}"
    argv = [
        PYTHON,
        "-m",
        "bench.baselines.bridge",
        "--broker",
        broker,
        "--broker-url",
        broker_url,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--window",
        str(window),
    ]
    return PortFileServer(name, argv, workdir)


@contextlib.contextmanager
def running(server: Server, timeout: float = 60.0) -> Iterator[Any]:
    server.start()
    try:
        server.wait_ready(timeout)  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mediation-bench-") as path:
        yield Path(path)


# -- load generators ---------------------------------------------------------------------------


class Load:
    """``python -m bench.load SPEC``: events and the result come on stdout (see bench.load)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.stderr: list[bytes] = []
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.load", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_raise_fd_limit,
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("event "):
                self.events.put(("event", line[6:]))
            elif line.startswith("result "):
                self.events.put(("result", json.loads(line[7:])))
        self.events.put(("exit", None))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw)
            del self.stderr[:-40]

    def _failure(self, what: str) -> RunFailed:
        err = b"".join(self.stderr).decode(errors="replace")[-3000:]
        return RunFailed(f"load {self.spec['kind']}: {what}\n{err}")

    def _next(self, timeout: float) -> tuple[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise self._failure(f"nothing after {timeout:.0f} s") from None

    def wait_event(self, name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            kind, value = self._next(max(0.1, deadline - time.monotonic()))
            if kind == "event" and value == name:
                return
            if kind == "exit":
                raise self._failure(f"exited before '{name}'")
            if kind == "result":
                raise self._failure(f"finished before '{name}': {value}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def result(self, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            kind, value = self._next(max(0.1, deadline - time.monotonic()))
            if kind == "result":
                return dict(value)
            if kind == "exit":
                raise self._failure("exited without a result")

    def stop(self) -> None:
        _stop(self.proc, timeout=5)

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
