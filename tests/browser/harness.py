"""Clients written by others, for tests/test_sse_parsers.py and tests/test_browser.py.

- :func:`ensure_node_modules`: ``npm ci`` into ``tests/browser/node_modules`` when it is missing or
  older than ``package-lock.json`` (a failure raises: the suites are errors, never skips).
- :func:`run_reporter`: a node script (``sse_client.mjs``, ``chromium.mjs``) started in a nursery;
  it prints one JSON report per line, read with :class:`Reports`.
- :func:`serve_pages`: a loopback HTTP server for the pages, which also relays ``/events`` to the
  engine's SSE entrypoint byte for byte. The relay makes a page's ``EventSource`` same-origin (the
  engine sends no CORS headers), records every relayed stream, and can cut a stream in the middle
  of an event, which is how the tests force reconnects with ``Last-Event-ID``.

Every wait here is bounded by the caller (``trio.fail_after``) or by the client's own end.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

BROWSER_DIR = Path(__file__).resolve().parent
NODE_MODULES = BROWSER_DIR / "node_modules"
CHROMIUM = "/usr/bin/chromium"
_STAMP = NODE_MODULES / ".mediation-lock-sha256"

# The relayed prefix: the engine's SSE entrypoint is configured with this path.
EVENTS_PATH = "/events"
# What the page server may serve from tests/browser (nothing else, not node_modules).
_PAGES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
_MAX_HEAD = 64 * 1024


# -- npm -----------------------------------------------------------------------------------------


def ensure_node_modules() -> Path:
    """``npm ci`` unless node_modules matches package-lock.json; the node_modules path.

    Several test runs may share the tree: an exclusive lock on a file beside package.json makes
    the second one wait and then find the stamp current.
    """
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (Debian: apt-get install nodejs npm)")
    lock = BROWSER_DIR / "package-lock.json"
    wanted = hashlib.sha256(lock.read_bytes()).hexdigest()
    with open(BROWSER_DIR / ".npm-ci.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if _STAMP.is_file() and _STAMP.read_text() == wanted:
            return NODE_MODULES
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=BROWSER_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"npm ci failed ({done.returncode}) in {BROWSER_DIR}:\n{done.stderr}"
            )
        _STAMP.write_text(wanted)
    return NODE_MODULES


# -- node scripts that report --------------------------------------------------------------------


class Reports:
    """The reports of one client (a dict each, in order), as they come.

    A node script's are its JSON output lines (:func:`run_reporter`); an in-process client
    calls :meth:`add`. A ``{"kind": "fatal"}`` report, or the script ending before what is
    waited for, fails the wait.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, Any]] = []
        self.exit_code: int | None = None
        self.ended = trio.Event()
        self._changed = trio.Event()

    def add(self, report: dict[str, Any]) -> None:
        self.seen.append(report)
        self._changed.set()
        self._changed = trio.Event()

    def count(self, kind: str) -> int:
        return sum(1 for report in self.seen if report["kind"] == kind)

    async def wait_for(self, kind: str, count: int = 1) -> None:
        """Return once ``count`` reports of ``kind`` have come."""
        await self.wait_until(lambda _: self.count(kind) >= count, f"{count} {kind}")

    async def wait_until(
        self, condition: Callable[[list[dict[str, Any]]], bool], what: str = "a condition"
    ) -> None:
        """Return once ``condition(seen)`` holds (checked after every report)."""
        while not condition(self.seen):
            fatal = [r for r in self.seen if r["kind"] == "fatal"]
            if fatal or self.ended.is_set():
                raise AssertionError(
                    f"{self.name} ended (exit {self.exit_code}) waiting for {what}: "
                    f"{fatal or self.seen[-3:]}"
                )
            await self._changed.wait()

    async def exited(self) -> None:
        """The script has ended, with status 0."""
        await self.ended.wait()
        assert self.exit_code == 0, f"{self.name} exited {self.exit_code}: {self.seen[-3:]}"

    async def _read(self, process: trio.Process) -> None:
        assert process.stdout is not None
        buffer = b""
        while chunk := await process.stdout.receive_some(65536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.add(json.loads(line))
        self.exit_code = await process.wait()
        self.ended.set()
        self._changed.set()


async def run_reporter(nursery: trio.Nursery, name: str, script: str, *args: str) -> Reports:
    """Start ``node script args`` in tests/browser, its reports read in ``nursery``.

    Cancelling the nursery kills the script (and a browser with it: playwright closes the
    browser it launched when its node process is terminated).
    """
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            ["node", script, *args],
            cwd=BROWSER_DIR,
            stdout=subprocess.PIPE,
            check=False,
            env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"},
        )
    )
    reports = Reports(name)
    nursery.start_soon(reports._read, process)
    return reports


def events_of(reports: Reports) -> list[tuple[str, str, str]]:
    """``(type, last event id, data)`` of every event the client dispatched, in order."""
    return [(r["type"], r["id"], r["data"]) for r in reports.seen if r["kind"] == "event"]


# -- the page server and SSE relay ---------------------------------------------------------------


def _peer_gone() -> suppress:
    """A peer that hangs up or resets is the end of a relayed stream, not an error."""
    return suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@dataclass
class Relayed:
    """One relayed SSE request: who asked, what it sent, what the engine answered."""

    client: str  # the ``client`` query parameter
    head: dict[str, str]  # request headers, lower-case names
    raw: bytearray = field(default_factory=bytearray)  # engine -> client bytes, as relayed
    cut: bool = False  # the relay ended it in the middle of an event


class PageServer:
    """See :func:`serve_pages`. ``sse_port`` is set once the engine is up."""

    def __init__(
        self,
        cuts: dict[str, list[bytes]],
        before_cut: Callable[[Relayed, bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.port = 0
        self.sse_port = 0
        self.relayed: list[Relayed] = []
        self._cuts = cuts
        # Awaited with the stream and its marker once the bytes up to the marker are sent, before
        # the hang-up: a client may drop what came in the same read as the end of the connection
        # (Chromium's loader can fail the stream before the page has read the last bytes), so a
        # test that counts on every whole event before the cut waits here for the client to
        # have dispatched them.
        self._before_cut = before_cut
        self._changed = trio.Event()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def streams(self, client: str) -> list[Relayed]:
        return [r for r in self.relayed if r.client == client]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; it is checked after every relayed chunk."""
        while not condition():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk or len(head) > _MAX_HEAD:
                    return
                head += chunk
            request_line, *header_lines = (
                head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            )
            target = urlsplit(request_line.split(" ")[1])
            if target.path == EVENTS_PATH:
                headers = {}
                for line in header_lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                client = parse_qs(target.query).get("client", ["?"])[0]
                await self._relay(stream, head, Relayed(client, headers))
            else:
                await self._page(stream, target.path)

    async def _page(self, stream: trio.SocketStream, path: str) -> None:
        file = BROWSER_DIR / path.lstrip("/")
        kind = _PAGES.get(file.suffix)
        if kind is None or file.parent != BROWSER_DIR or not file.is_file():
            await stream.send_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            return
        body = file.read_bytes()
        await stream.send_all(
            f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n"
            "cache-control: no-store\r\nconnection: close\r\n\r\n".encode()
            + body
        )

    async def _relay(self, client: trio.SocketStream, head: bytes, relayed: Relayed) -> None:
        plan = self._cuts.get(relayed.client, [])
        earlier = len(self.streams(relayed.client))
        marker = plan[earlier] if earlier < len(plan) else None
        self.relayed.append(relayed)
        self._notify()
        async with await trio.open_tcp_stream("127.0.0.1", self.sse_port) as engine:
            await engine.send_all(head)

            async def upstream() -> None:
                # The client sends nothing after a GET: its EOF (or reset) means it left.
                with _peer_gone():
                    while await client.receive_some(4096):
                        pass
                nursery.cancel_scope.cancel()

            async def downstream() -> None:
                with _peer_gone():
                    while chunk := await engine.receive_some(65536):
                        if marker is not None and marker in relayed.raw + chunk:
                            # Forward up to the end of the marker (inside an event), then hang up.
                            end = (relayed.raw + chunk).index(marker) + len(marker)
                            chunk = chunk[: end - len(relayed.raw)]
                            await client.send_all(chunk)
                            relayed.raw += chunk
                            if self._before_cut is not None:
                                await self._before_cut(relayed, marker)
                            relayed.cut = True
                            break
                        await client.send_all(chunk)
                        relayed.raw += chunk
                        self._notify()
                self._notify()
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upstream)
                nursery.start_soon(downstream)


async def serve_pages(
    server: PageServer,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``server`` on 127.0.0.1 (port from the OS, on ``server.port``) until cancelled."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server.port = listeners[0].socket.getsockname()[1]
    await trio.serve_listeners(server.handle, listeners, task_status=task_status)
