"""The command line, as an operator uses it: ``python -m mediation`` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

REPO = Path(__file__).resolve().parent.parent
# Generous: a subprocess on a loaded CI machine imports the whole engine before it listens.
STARTUP_TIMEOUT = 60
SHUTDOWN_TIMEOUT = 30

PORT0_CONFIG = """
[engine]
host = "127.0.0.1"
health_port = 0
reload_interval = 0
shutdown_timeout = 5

[[entrypoints]]
name = "hook"
type = "http_post"
port = 0

[[entrypoints]]
name = "feed"
type = "sse"
port = 0

[[endpoints]]
name = "bus"
type = "memory"

[[routes]]
source = "hook"
target = "bus"

[[routes]]
source = "bus"
target = "feed"
"""


def _env() -> dict[str, str]:
    # The package is installed (editable) by `just test`; the path makes the tests independent
    # of that. No colour, no buffering: lines arrive as they are logged.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mediation(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mediation", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=STARTUP_TIMEOUT,
        check=False,
    )


def write(tmp_path: Path, text: str, name: str = "gw.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, line: str) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""


# -- mediation check --------------------------------------------------------------------------


def test_check_prints_a_summary(tmp_path: Path) -> None:
    path = write(tmp_path, PORT0_CONFIG)
    result = mediation("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: OK"
    text = result.stdout
    assert "entrypoints (2):" in text
    assert any(line.split() == ["hook", "http_post", "127.0.0.1:0/"] for line in lines)
    assert any(line.split() == ["bus", "memory"] for line in lines)
    assert any(line.split() == ["hook", "->", "bus", "upstream", "auto"] for line in lines)
    assert any(line.split() == ["bus", "->", "feed", "downstream", "auto"] for line in lines)


def test_check_defaults_to_mediation_toml_in_the_working_directory() -> None:
    result = mediation("check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mediation.toml: OK\n")
    for name, kind in [
        ("ws-inbound", "websocket"),
        ("sse-feed", "sse"),
        ("webhook-receiver", "http_post"),
        ("polling-api", "http_get"),
    ]:
        assert f"  {name} " in result.stdout and f" {kind} " in result.stdout


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            PORT0_CONFIG.replace('target = "feed"', 'target = "x"'),
            'routes[1].target: no entrypoint or endpoint named "x"',
        ),
        ("[engine]\nhost =\n", "Invalid value (at line 2, column 7)"),
        (
            "[engine]\nhealth_port = -1\n",
            "engine.health_port: input should be greater than or equal to 0",
        ),
        ("a = " + "[" * 5000, "nested too deeply to be a configuration"),
        # Issue 14: what `run` would fail on with "Address already in use" is refused here.
        (
            PORT0_CONFIG.replace("\nport = 0", "\nport = 8077").replace(
                'type = "sse"', 'type = "http_post"'
            ),
            'entrypoints[1].path: / overlaps / of entrypoint "hook" on port 8077 (a request path '
            "could be either's; entrypoints sharing a port need paths no request can confuse)",
        ),
        (
            PORT0_CONFIG.replace("health_port = 0", "health_port = 8077").replace(
                'type = "sse"\nport = 0', 'type = "sse"\nport = 8077'
            ),
            "entrypoints[1].port: 8077 is also [engine] health_port (the health server)",
        ),
    ],
    ids=[
        "bad-reference",
        "toml-syntax",
        "bad-value",
        "deep-nesting",
        "port-path-twice",
        "health-port-clash",
    ],
)
def test_check_invalid_config_is_one_line_and_status_2(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    assert_one_line_error(mediation("check", "--config", str(path)), 2, f"{path}: {problem}")


def test_check_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    result = mediation("check", "--config", str(path))
    assert_one_line_error(result, 2, f"{path}: cannot read: No such file or directory")


def test_run_invalid_config_is_one_line_and_status_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[engine]\nbogus = true\n")
    assert_one_line_error(
        mediation("run", "--config", str(path)), 2, f"{path}: engine.bogus: unknown key"
    )


def test_usage_errors() -> None:
    result = mediation()
    assert result.returncode == 2
    assert "usage: mediation" in result.stderr
    result = mediation("--help")
    assert result.returncode == 0
    assert "run" in result.stdout and "check" in result.stdout


# -- mediation run ----------------------------------------------------------------------------


class Output:
    """The JSON lines a running ``mediation`` prints on stdout, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.records: list[dict[str, Any]] = []

    async def next_record(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some()
            if not chunk:
                raise AssertionError(f"stdout ended; records so far: {self.records}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        record: dict[str, Any] = json.loads(line)  # every line is JSON, or this fails
        self.records.append(record)
        return record

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The next record that matches (records already read are not looked at)."""
        while True:
            record = await self.next_record()
            if predicate(record):
                return record

    async def first(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first record that matches, read already or still to come: for what the process
        may log before the record a wait began after (an endpoint connected before
        :func:`running` saw "listening", say)."""
        for record in self.records:
            if predicate(record):
                return record
        return await self.wait_for(predicate)

    async def rest(self) -> list[dict[str, Any]]:
        """Every record up to the end of the output (the process has exited)."""
        while True:
            chunk = await self._stream.receive_some()
            if not chunk:
                break
            self._buffer += chunk
        for line in self._buffer.splitlines():
            self.records.append(json.loads(line))
        self._buffer = b""
        return self.records


@asynccontextmanager
async def running(config: Path) -> AsyncIterator[tuple[trio.Process, Output, dict[str, int]]]:
    """``mediation run`` in a subprocess, once it logged "listening" (with its ports)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "mediation", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(REPO),
        env=_env(),
    )
    assert process.stdout is not None
    try:
        output = Output(process.stdout)
        with trio.fail_after(STARTUP_TIMEOUT):
            listening = await output.wait_for(lambda r: r.get("msg") == "listening")
        yield process, output, listening["ports"]
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def stderr_of(process: trio.Process) -> str:
    assert process.stderr is not None
    chunks = []
    while chunk := await process.stderr.receive_some():
        chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_run_until_signal_then_exit_0(tmp_path: Path, signum: signal.Signals) -> None:
    async with running(write(tmp_path, PORT0_CONFIG)) as (process, output, ports):
        assert set(ports) == {"health", "hook", "feed"}
        assert all(port > 0 for port in ports.values())
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{ports['health']}/healthz")
        assert health.status_code == 200
        process.send_signal(signum)
        with trio.fail_after(SHUTDOWN_TIMEOUT):
            assert await process.wait() == 0
            records = await output.rest()
            assert await stderr_of(process) == ""
    messages = [r["msg"] for r in records]
    assert "shutting down" in messages
    assert messages[-1] == "stopped"
    for record in records:
        assert {"level", "msg", "time"} <= set(record)


async def test_run_port_in_use_is_one_line_and_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write(tmp_path, PORT0_CONFIG.replace("health_port = 0", f"health_port = {port}"))
        result = await trio.to_thread.run_sync(lambda: mediation("run", "--config", str(path)))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("mediation: ")
    assert "in use" in line


async def test_shipped_config_moves_a_post_to_pollers_with_a_packet_log(tmp_path: Path) -> None:
    # mediation.toml as shipped, on free loopback ports: what is POSTed reaches a polling client,
    # and each hop is one packet line on stdout.
    text = (REPO / "mediation.toml").read_text()
    for port in ("8066", "8067", "8068", "8069"):
        text = text.replace(f"port = {port}", "port = 0")
    text = text.replace("health_port = 9091", "health_port = 0").replace("0.0.0.0", "127.0.0.1")
    async with running(write(tmp_path, text, "mediation.toml")) as (process, output, ports):
        base = "http://127.0.0.1:{}".format
        headers = {"X-Client-ID": "poller-1"}
        async with httpx.AsyncClient(timeout=STARTUP_TIMEOUT) as client:
            subscribed = await client.post(
                base(ports["polling-api"]) + "/subscribe", headers=headers
            )
            assert subscribed.status_code == 201, subscribed.text
            posted = await client.post(base(ports["webhook-receiver"]) + "/", content=b"hello")
            assert posted.status_code == 202, posted.text
            polled = await client.get(base(ports["polling-api"]) + "/poll", headers=headers)
            assert polled.status_code == 200
            assert polled.content == b"hello"
        with trio.fail_after(SHUTDOWN_TIMEOUT):
            upstream = await output.wait_for(lambda r: r.get("direction") == "upstream")
            downstream = await output.wait_for(lambda r: r.get("direction") == "downstream")
        fields = {
            "event_id",
            "source_id",
            "client_id",
            "session_id",
            "route",
            "direction",
            "payload_bytes",
            "timestamp",
        }
        for record in (upstream, downstream):
            assert fields <= set(record), record
            assert record["payload_bytes"] == 5
            assert "hello" not in json.dumps(record)  # never the payload
        assert upstream["route"] == "webhook-receiver->embedded"
        assert upstream["source_id"] == "webhook-receiver"
        assert downstream["route"] == "embedded->polling-api"
        assert downstream["source_id"] == "embedded"
        assert downstream["client_id"] == "poller-1"
        assert downstream["event_id"] == upstream["event_id"] == polled.headers["X-Event-ID"]
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_TIMEOUT):
            assert await process.wait() == 0
        packets = [r for r in await output.rest() if r.get("msg") == "packet"]
        assert len(packets) == 2  # exactly one line per packet
