"""Runs the fuzz: an engine process, bystander clients, hostile connections, and the oracle.

::

    result = await run_fuzz(seed=1234, seconds=50, workdir=tmp_path)
    assert not result.failures, result.report()

The engine runs as ``python -m mediation run`` in its own process (so "the engine is alive" is
a real question), with one entrypoint of each type (:data:`.mutations.TARGETS`) on the memory
endpoint, short timeouts, and routes that bring what is POSTed to the webhook to every client.
Two bystanders connect first: a WebSocket client and an SSE client, and a third, an SSE client of the parameterised entrypoint
(``/t/by?symbol=M``). The parameterised entrypoints (``ws-p``, ``sse-p``, ``hook-p``, ``poll-p``:
:data:`.mutations.PARAMS_PATH` and :data:`.mutations.PARAMS`, ``max_subscriptions`` 4, routes
with ``filter_fields``) share a second memory endpoint whose topics are filled from them.

The inputs go in batches, the connections of a batch at once, one connection per input: send the
bytes (then, for half of them, shut the sending side down), read what comes back. Each hostile
connection must get answers the input deserves, or a close, within :attr:`Limits.connection`:

- never a ``500``, nor another ``5xx`` than ``501`` (an unknown transfer coding) and ``505``
  (an unknown HTTP version): in this configuration every entrypoint has its routes and the memory
  endpoint is always up, so the ``502`` (no route) and ``503`` (broker down, capacity) that are
  legitimate elsewhere cannot be;
- a ``101`` only for a handshake that is one (RFC 6455 4.2.1), with the right
  ``Sec-WebSocket-Accept``; once upgraded, a close code ``1011`` (internal error) is a failure,
  and frames that break RFC 6455 must end in a close;
- a ``2xx`` not for a request head RFC 9112 says must be refused (:func:`must_refuse`), nor for
  a webhook body that is incomplete or over ``max_body``;
- a ``2xx`` or ``101`` not for parameters that must be refused (:func:`params_refusal`: a value
  that does not match its pattern once decoded, a missing one, more subscriptions than allowed,
  a filter on a field the routes do not allow);
- and the connection closes within its time (an answered HTTP connection after
  ``header_timeout`` of keep-alive; an SSE stream or an upgraded WebSocket that is fine may stay).

With ``tls=True`` every entrypoint serves TLS (a certificate from a test CA made for the run),
the bystanders, the oracle's requests and most hostile connections go over TLS with the same
judgement, and some inputs attack the TLS layer itself (:func:`tls_mode`): the input's bytes
sent in the clear to the TLS port, a ClientHello cut short and then silence (which must be
dropped within ``header_timeout``), or a whole ClientHello followed by the input's bytes as
garbage records. Those must end only their own connection, with no answer.

After each batch the oracle: the process is alive, ``/healthz`` answers ``200`` within 1 s, and a
fresh marker POSTed to the webhook (and to the parameterised one, on the third bystander's
stream) reaches every bystander. A failure names the seed and the
input (its index and bytes), which ``scripts/fuzz.py --seed S --index I`` sends again alone.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import trio
from httpx_sse import aconnect_sse
from trio_websocket import ConnectionClosed, open_websocket_url

from .mutations import (
    CURSOR_SECRET,
    FILLED,
    FILTER_FIELDS,
    MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_SUBSCRIPTIONS,
    PARAM_TARGETS,
    PARAMS,
    PARAMS_PATH,
    PARAMS_PREFIX,
    RESUME_TOPIC,
    TARGETS,
    FuzzInput,
    Mutations,
)

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 60  # a loaded machine imports the whole engine first
HEALTH_TIMEOUT = 1.0
MARKER_TIMEOUT = 5.0
SLACK = 2.0  # on top of the engine's own timeouts, for a loaded machine


@dataclass(frozen=True)
class Limits:
    """The engine's timeouts as configured, and what a hostile connection may take from them."""

    header_timeout: float = 1.0
    body_timeout: float | None = 1.0  # None: the engine has no such key (yet)
    poll_timeout: float = 1.0
    idle_timeout: float = 2.0  # WebSocket
    session_idle_timeout: float = 1.5  # polling

    @property
    def connection(self) -> float:
        """How long a hostile connection may stay open: a head, a body, two polls (pipelined
        requests), then the keep-alive wait for the next head; or a WebSocket's idle time."""
        body = self.header_timeout if self.body_timeout is None else self.body_timeout
        http = 2 * self.header_timeout + body + 2 * self.poll_timeout
        return max(http, self.header_timeout + self.idle_timeout) + SLACK


def engine_has_body_timeout() -> bool:
    from mediation.config import HTTPPostEntrypoint

    return "body_timeout" in HTTPPostEntrypoint.model_fields


@dataclass(frozen=True)
class TLSFiles:
    """A server certificate from a test CA made for the run, and a client context trusting it."""

    cert_file: Path
    key_file: Path
    client: ssl.SSLContext

    @classmethod
    def make(cls, workdir: Path) -> TLSFiles:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert(HOST, "localhost")
        cert_file, key_file = workdir / "server.pem", workdir / "server.key"
        cert_file.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_file))
        client = ssl.create_default_context()
        ca.configure_trust(client)
        return cls(cert_file, key_file, client)

    def client_hello(self) -> bytes:
        """What a client sends first: a whole ClientHello record (fresh randomness each time)."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.client.wrap_bio(incoming, outgoing, server_hostname=HOST)
        with suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        return outgoing.read()


def config_text(limits: Limits, kafka: str, tls: TLSFiles | None = None) -> str:
    """The engine's configuration: every entrypoint type, the memory endpoint, short timeouts;
    ``ws-k`` on a Kafka topic (``kafka``: its bootstrap servers) with signed cursors."""
    common = (
        f"port = 0\nheader_timeout = {limits.header_timeout}\n"
        f"max_header_bytes = {MAX_HEADER_BYTES}\nmax_message_bytes = {MAX_MESSAGE_BYTES}\n"
    )
    if tls is not None:
        common += f'tls_cert_file = "{tls.cert_file}"\ntls_key_file = "{tls.key_file}"\n'
    body = "" if limits.body_timeout is None else f"body_timeout = {limits.body_timeout}\n"
    extra = {
        "ws": f'frame_type = "auto"\nidle_timeout = {limits.idle_timeout}\n',
        "ws-text": f'frame_type = "text"\nidle_timeout = {limits.idle_timeout}\n',
        "sse": "heartbeat_interval = 1.0\n",
        "hook": f"max_body = {MAX_BODY}\n{body}",
        "hook-ack": f"max_body = {MAX_BODY}\n{body}",
        "poll": (
            f"poll_timeout = {limits.poll_timeout}\n"
            f"session_idle_timeout = {limits.session_idle_timeout}\n{body}"
        ),
    }
    params = f'path = "{PARAMS_PATH}"\nmax_subscriptions = {MAX_SUBSCRIPTIONS}\n' + "".join(
        f"params.{name} = {json.dumps(pattern)}\n" for name, pattern in PARAMS.items()
    )
    extra |= {
        "ws-p": extra["ws"] + params,
        "sse-p": extra["sse"] + params,
        "hook-p": extra["hook"] + params,
        "poll-p": extra["poll"] + params,
        "ws-k": extra["ws"],
    }
    text = [
        "[engine]",
        f'host = "{HOST}"',
        "health_port = 0",
        'log_level = "info"',
        "packet_log = false",
        "reload_interval = 0",
        "shutdown_timeout = 5",
        f'cursor_secret = "{CURSOR_SECRET}"',
        "",
    ]
    for name, kind in TARGETS.items():
        text += ["[[entrypoints]]", f'name = "{name}"', f'type = "{kind}"', common + extra[name]]
    # The oracle's own way into the Kafka topic (not a target): its markers, and the records a
    # valid cursor names (FILLED of them first).
    text += ["[[entrypoints]]", 'name = "hook-k"', 'type = "http_post"', common]
    # A large buffer per subscriber: hostile sessions that never read (polling sessions until
    # they expire) must not hold the publishers up in the meantime.
    text += ["[[endpoints]]", 'name = "mem"', 'type = "memory"', "[endpoints.config]"]
    text += ["capacity = 4096", ""]
    text += ["[[endpoints]]", 'name = "mem-p"', 'type = "memory"', "[endpoints.config]"]
    text += ['topic_in = "p.{room}.{symbol}"', 'topic_out = "p.{room}.{symbol}"']
    text += ["capacity = 4096", ""]
    # Positions as event ids: ws-k's enveloped sessions get a resume gate. The shared fetch:
    # a session (and a resume) costs a position read, not a group join.
    text += ["[[endpoints]]", 'name = "kafka"', 'type = "kafka"', "[endpoints.config]"]
    text += [
        f'brokers = "{kafka}"',
        f'topic_in = "{RESUME_TOPIC}"',
        f'topic_out = "{RESUME_TOPIC}"',
    ]
    text += ['fetch = "shared"', "create_topics = true", ""]
    routes = [
        ("ws", "mem", "auto"),
        ("mem", "ws", "auto"),
        ("ws-text", "mem", "at_least_once"),
        ("mem", "ws-text", "at_least_once"),
        ("mem", "sse", "auto"),
        ("hook", "mem", "auto"),
        ("hook-ack", "mem", "at_least_once"),
        ("mem", "poll", "at_least_once"),
        ("ws-p", "mem-p", "auto"),
        ("mem-p", "ws-p", "at_least_once"),
        ("mem-p", "sse-p", "auto"),
        ("hook-p", "mem-p", "auto"),
        ("mem-p", "poll-p", "at_least_once"),
        ("kafka", "ws-k", "at_least_once"),
        ("hook-k", "kafka", "at_least_once"),
    ]
    for source, target, guarantee in routes:
        text += [
            "[[routes]]",
            f'source = "{source}"',
            f'target = "{target}"',
            f'delivery_guarantee = "{guarantee}"',
        ]
        if source == "mem-p":
            text.append(f"filter_fields = {json.dumps(list(FILTER_FIELDS))}")
        text.append("")
    return "\n".join(text)


# -- the engine process -------------------------------------------------------------------------


class EngineProcess:
    """``mediation run`` in a subprocess; its stdout (JSON lines) and stderr are read all along
    (a full pipe would stall the engine), errors kept for the report."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.ports: dict[str, int] = {}
        self.scheme = "http"  # of the entrypoints ("https" with TLS; the health port is plain)
        self.error_records: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self._listening = trio.Event()

    def alive(self) -> bool:
        return self.process.poll() is None

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while chunk := await self.process.stdout.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    self.error_records.append({"level": "?", "msg": line.decode("latin-1")})
                    continue
                if record.get("msg") == "listening" and not self._listening.is_set():
                    self.ports = record["ports"]
                    self._listening.set()
                elif record.get("level") in ("error", "critical"):
                    self.error_records.append(record)

    async def _watch(self) -> None:
        await self.process.wait()
        self._listening.set()  # wakes up whoever waits for the start: it is not coming

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some():
            self.stderr += chunk

    def stderr_tail(self, n: int = 2000) -> str:
        return self.stderr[-n:].decode("utf-8", "replace")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@asynccontextmanager
async def open_engine_process(config: Path) -> AsyncIterator[EngineProcess]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "mediation", "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(REPO),
        env=_env(),
    )
    engine = EngineProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine._read_stdout)
            nursery.start_soon(engine._read_stderr)
            nursery.start_soon(engine._watch)
            with trio.fail_after(STARTUP_TIMEOUT):
                await engine._listening.wait()
            if not engine.ports:
                raise RuntimeError(
                    f"the engine exited ({process.returncode}) before listening: "
                    f"{engine.stderr_tail()}"
                )
            yield engine
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()


# -- bystanders ---------------------------------------------------------------------------------


class Bystander:
    """A client that must keep working: what it received, and whether it is still connected."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: set[str] = set()
        self.ended: str | None = None
        self._changed = trio.Event()

    def got(self, text: str) -> None:
        self.seen.add(text)
        self._changed.set()
        self._changed = trio.Event()

    def end(self, why: str) -> None:
        self.ended = why
        self._changed.set()

    async def wait_for(self, text: str) -> None:
        while text not in self.seen:
            if self.ended is not None:
                raise ConnectionError(f"{self.name} ended: {self.ended}")
            await self._changed.wait()


async def websocket_bystander(
    port: int,
    me: Bystander,
    tls: ssl.SSLContext | None,
    client_id: str = "bystander-ws",
    *,
    task_status: Any,
) -> None:
    url = f"{'wss' if tls else 'ws'}://{HOST}:{port}/?client_id={client_id}"
    try:
        async with open_websocket_url(url, ssl_context=tls) as ws:
            task_status.started()
            while True:
                message = await ws.get_message()
                me.got(message if isinstance(message, str) else message.decode("latin-1"))
    except ConnectionClosed as error:
        me.end(f"closed {error.reason}")
    except OSError as error:
        me.end(repr(error))


# Where the parameterised bystander listens, and where its markers are POSTed (hook-p).
BYSTANDER_PARAMS = PARAMS_PREFIX + "by?symbol=M"


async def sse_bystander(
    port: int, me: Bystander, tls: ssl.SSLContext | None, target: str = "/", *, task_status: Any
) -> None:
    headers = {"X-Client-ID": "bystander-" + me.name.split()[0]}
    url = f"{'https' if tls else 'http'}://{HOST}:{port}{target}"
    try:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(5, read=None), verify=tls or True
        ) as client:
            async with aconnect_sse(client, "GET", url, headers=headers) as s:
                events = s.aiter_sse()
                async for event in events:
                    if event.event == "session":
                        task_status.started()
                    elif event.event == "message":
                        me.got(event.data)
                    elif event.event == "error":
                        me.end(f"event: error {event.data}")
                        return
                me.end("the stream ended")
    except httpx.HTTPError as error:
        me.end(repr(error))


# -- one hostile connection ---------------------------------------------------------------------


@dataclass
class Outcome:
    statuses: list[int] = field(default_factory=list)
    close_codes: list[int] = field(default_factory=list)
    closed: bool = False  # the server closed (or reset) the connection
    stopped: str = ""  # why the driver stopped reading, when not closed
    elapsed: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        ends = "closed" if self.closed else self.stopped or "open"
        codes = f" close codes {self.close_codes}" if self.close_codes else ""
        return f"statuses {self.statuses}{codes}, {ends} after {self.elapsed:.2f} s"


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?")
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _Reader:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    async def fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # reset by the server: a close too
            chunk = b""
        if not chunk:
            self.eof = True
        self.buffer += chunk
        return bool(chunk)

    async def need(self, n: int) -> bool:
        while len(self.buffer) < n:
            if not await self.fill():
                return False
        return True

    async def until(self, marker: bytes) -> bytes | None:
        while (at := self.buffer.find(marker)) < 0:
            if not await self.fill():
                return None
        data = bytes(self.buffer[: at + len(marker)])
        del self.buffer[: at + len(marker)]
        return data

    def take(self, n: int) -> bytes:
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


def tls_mode(item: FuzzInput) -> str:
    """How input ``item`` meets a TLS port: most go "over TLS" (a good handshake, then the
    input, judged as on a plain port); the rest attack the TLS layer: "clear" (the input's bytes
    as they are: not TLS at all), "stalled" (a ClientHello cut short, then silence), "garbage"
    (a whole ClientHello, then the input's bytes as if they were the rest of the handshake)."""
    return {0: "clear", 1: "stalled", 2: "garbage"}.get(item.index % 8, "over TLS")


async def attack(
    port: int, item: FuzzInput, limits: Limits, tls: TLSFiles | None = None
) -> Outcome:
    """One connection: send ``item``, read and judge what comes back."""
    outcome = Outcome()
    start = trio.current_time()
    tcp = await trio.open_tcp_stream(HOST, port)
    stream: trio.abc.Stream = tcp
    mode = "plain" if tls is None else tls_mode(item)
    data = item.data
    if mode == "over TLS":
        assert tls is not None
        stream = trio.SSLStream(tcp, tls.client, server_hostname=HOST, https_compatible=True)
        item = dataclasses.replace(item, half_close=False)  # TLS cannot shut one side down
    elif mode == "stalled":
        assert tls is not None
        hello = tls.client_hello()
        data = hello[: 1 + item.index % (len(hello) - 1)]
    elif mode == "garbage":
        assert tls is not None
        data = tls.client_hello() + item.data
    try:
        if isinstance(stream, trio.SSLStream):
            try:
                with trio.fail_after(limits.connection):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError) as error:
                outcome.problems.append(f"the TLS handshake of a good client failed: {error!r}")
                return outcome
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                try:
                    await stream.send_all(data)
                    if item.half_close and mode != "stalled":
                        await tcp.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the server closed first: it answered, or gave up on us

            nursery.start_soon(send)
            with trio.move_on_after(limits.connection) as timer:
                if mode in ("clear", "stalled", "garbage"):
                    # What comes back is TLS (a ServerHello, an alert) or nothing, to the close.
                    reader = _Reader(stream)
                    while await reader.fill():
                        if reader.buffer.startswith(b"HTTP/"):
                            outcome.statuses.append(0)  # an HTTP answer: judged below
                        reader.buffer.clear()
                    outcome.closed = True
                else:
                    await _read_responses(_Reader(stream), item, outcome)
            if timer.cancelled_caught:
                outcome.stopped = f"timed out ({limits.connection:.1f} s)"
                outcome.problems.append(
                    f"neither answered nor closed within {limits.connection:.1f} s"
                    if not outcome.statuses
                    else f"still open {limits.connection:.1f} s after connecting (keep-alive "
                    f"beyond header_timeout, or a request that never ends)"
                )
            nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()
    outcome.elapsed = trio.current_time() - start
    if mode in ("clear", "stalled", "garbage"):
        _judge_tls_attack(mode, outcome, limits)
    else:
        _judge(item, outcome)
    return outcome


def _judge_tls_attack(mode: str, outcome: Outcome, limits: Limits) -> None:
    """What a TLS port must do with a client that does not speak TLS, or stops mid-handshake:
    answer nothing, close; a stalled handshake within ``header_timeout``."""
    if outcome.statuses:
        outcome.problems.append(f"an HTTP answer to a connection that never finished TLS ({mode})")
    if mode == "stalled" and outcome.closed and outcome.elapsed > limits.header_timeout + SLACK:
        outcome.problems.append(
            f"a stalled handshake closed after {outcome.elapsed:.2f} s, "
            f"header_timeout is {limits.header_timeout} s"
        )


async def _read_responses(reader: _Reader, item: FuzzInput, outcome: Outcome) -> None:
    while True:
        head = await reader.until(b"\r\n\r\n")
        if head is None:
            if reader.buffer:
                outcome.problems.append(f"an incomplete response: {bytes(reader.buffer[:200])!r}")
            outcome.closed = True
            return
        status_line, _, header_block = head[:-4].partition(b"\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            outcome.problems.append(f"a garbled response head: {head[:200]!r}")
            outcome.closed = await _drain(reader)
            return
        status = int(match[1])
        outcome.statuses.append(status)
        headers: dict[bytes, bytes] = {}
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status == 101:
            _check_accept(item, headers, outcome)
            await _read_websocket(reader, item, outcome)
            return
        if 100 <= status < 200 or status in (204, 304):
            continue
        if status == 200 and headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            outcome.stopped = "an SSE stream"
            return
        if b"HEAD " in item.data:
            # The answer to a HEAD has no body whatever its Content-Length says, and which of
            # the pipelined requests are HEADs is not known here: after this answer (which may
            # be one), read to the close.
            outcome.closed = await _drain(reader)
            return
        if b"content-length" in headers:
            if not await reader.need(int(headers[b"content-length"])):
                outcome.closed = True  # a HEAD response, or cut short
                return
            reader.take(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size_line = await reader.until(b"\r\n")
                if size_line is None:
                    outcome.closed = True
                    return
                size = int(size_line.split(b";")[0], 16)
                if not await reader.need(size + 2):
                    outcome.closed = True
                    return
                reader.take(size + 2)
                if size == 0:
                    break
        else:
            outcome.closed = await _drain(reader)  # the body runs to the close
            return


async def _drain(reader: _Reader) -> bool:
    while await reader.fill():
        reader.buffer.clear()
    return True


async def _read_websocket(reader: _Reader, item: FuzzInput, outcome: Outcome) -> None:
    """After a 101: server frames until a close. A connection whose frames were fine and that
    stays open is a session like any other; one that broke the protocol (or shut its side) must
    be closed."""
    must_close = item.half_close or bool(websocket_violations(item))
    while True:
        if not must_close and not reader.buffer and not reader.eof:
            outcome.stopped = "an open WebSocket session"
            return
        if not await reader.need(2):
            outcome.closed = True
            return
        opcode, length = reader.buffer[0] & 0x0F, reader.buffer[1] & 0x7F
        header = 2 + {126: 2, 127: 8}.get(length, 0)
        if not await reader.need(header):
            outcome.closed = True
            return
        if length >= 126:
            length = int.from_bytes(reader.buffer[2:header], "big")
        if not await reader.need(header + length):
            outcome.closed = True
            return
        payload = reader.take(header + length)[header:]
        if opcode == 0x8:
            if len(payload) >= 2:
                outcome.close_codes.append(int.from_bytes(payload[:2], "big"))
            outcome.closed = True  # the close handshake is the close
            return


def _check_accept(item: FuzzInput, headers: dict[bytes, bytes], outcome: Outcome) -> None:
    key = _header_values(item.data, b"sec-websocket-key")
    expected = (
        base64.b64encode(hashlib.sha1(key[0].strip() + WEBSOCKET_GUID).digest())
        if len(key) == 1
        else None
    )
    if headers.get(b"sec-websocket-accept") != expected:
        outcome.problems.append(
            f"101 with Sec-WebSocket-Accept {headers.get(b'sec-websocket-accept')!r}, "
            f"expected {expected!r}"
        )


def _judge(item: FuzzInput, outcome: Outcome) -> None:
    for status in outcome.statuses:
        if status == 500:
            outcome.problems.append("500 (the engine failed on this input)")
        elif status >= 500 and status not in (501, 505):
            outcome.problems.append(f"{status}: not a legitimate answer in this configuration")
    if not outcome.statuses:
        return
    first = outcome.statuses[0]
    if first == 101:
        if TARGETS[item.target] != "websocket":
            outcome.problems.append("101 from an entrypoint that is not a WebSocket one")
        refused = handshake_problems(item.data)
        if refused:
            outcome.problems.append(f"101 for a handshake that is not one: {refused}")
    elif 200 <= first < 300:
        refused = must_refuse(item)
        if refused:
            outcome.problems.append(f"{first} for a request that must be refused: {refused}")
    if first == 101 or 200 <= first < 300:
        refused = params_refusal(item)
        if refused:
            outcome.problems.append(f"{first} for parameters that must be refused: {refused}")
    if 1011 in outcome.close_codes:
        outcome.problems.append("WebSocket close 1011 (internal error)")


# -- what RFC 9112 and RFC 6455 say must be refused ---------------------------------------------

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass
class _Head:
    method: bytes
    target: bytes
    version: bytes
    fields: list[tuple[bytes, bytes]]  # (lower-case name, value without surrounding whitespace)
    rest: bytes  # what follows the head


def _parse_head(data: bytes) -> tuple[_Head | None, list[str]]:
    """The first request's head, and what in it RFC 9112 says a server must refuse. (None, [])
    when the head is incomplete or has bare CR/LF, which a server may read differently."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None, []
    head, rest = data[:end], data[end + 4 :]
    if b"\n" in head.replace(b"\r\n", b"") or b"\r" in head.replace(b"\r\n", b""):
        return None, []
    lines = head.split(b"\r\n")
    problems = []
    # Single spaces, or any run of whitespace: RFC 9112 3 lets a server accept both.
    parts = re.split(rb"[ \t\x0b\x0c]+", lines[0].strip(b" \t\x0b\x0c"))
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        problems.append(f"request line {lines[0][:60]!r}")
        parts = [b"", b"", b""]
    if parts[2] not in (b"HTTP/1.0", b"HTTP/1.1", b""):
        problems.append(f"version {parts[2]!r}")
    fields = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            continue  # obs-fold: refuse or replace with SP, both allowed
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            problems.append(f"header line {line[:60]!r}")  # incl. whitespace before the colon
            continue
        fields.append((name.lower(), value.strip(b" \t")))
    parsed = _Head(parts[0], parts[1], parts[2], fields, rest)
    hosts = [v for n, v in fields if n == b"host"]
    if parsed.version == b"HTTP/1.1" and len(hosts) != 1:
        problems.append(f"{len(hosts)} Host headers")
    lengths = {x.strip() for n, v in fields if n == b"content-length" for x in v.split(b",")}
    if lengths and (len(lengths) > 1 or not all(x.isdigit() for x in lengths)):
        problems.append(f"Content-Length {sorted(lengths)}")
    codings = [  # the coding names, without parameters
        x.split(b";")[0].strip(b" \t").lower()
        for n, v in fields
        if n == b"transfer-encoding"
        for x in v.split(b",")
    ]
    if codings and codings[-1] != b"chunked":
        problems.append(f"Transfer-Encoding {codings} (chunked not last)")
    return parsed, problems


def _header_values(data: bytes, name: bytes) -> list[bytes]:
    head, _ = _parse_head(data)
    return [] if head is None else [v for n, v in head.fields if n == name]


def _chunked_body(body: bytes) -> tuple[bytes, str | None]:
    """The decoded body, and what is wrong with its framing (None: complete and well-formed)."""
    out = bytearray()
    while True:
        end = body.find(b"\r\n")
        if end < 0:
            return bytes(out), "incomplete chunked body"
        size_text = body[:end].split(b";")[0].strip(b" \t")
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            return bytes(out), f"chunk size {body[:end][:30]!r}"
        size = int(size_text, 16)
        body = body[end + 2 :]
        if size == 0:
            return bytes(out), None  # trailers: not checked
        if len(body) < size + 2:
            return bytes(out), "incomplete chunked body"
        if body[size : size + 2] != b"\r\n":
            return bytes(out), "chunk data not followed by CRLF"
        out += body[:size]
        body = body[size + 2 :]


def must_refuse(item: FuzzInput) -> str:
    """Why a 2xx for the first request of ``item`` would be wrong ('' when it could be right)."""
    head, problems = _parse_head(item.data)
    if head is None:
        return ""
    if TARGETS[item.target] == "http_post" and head.method == b"POST":
        codings = [v.lower() for n, v in head.fields if n == b"transfer-encoding"]
        lengths = [v for n, v in head.fields if n == b"content-length"]
        if codings and codings[-1].split(b",")[-1].split(b";")[0].strip() == b"chunked":
            body, problem = _chunked_body(head.rest)
            if problem:
                problems.append(problem)
        elif lengths and lengths[0].isdigit():
            n = int(lengths[0])
            if len(head.rest) < n:
                problems.append(f"body of {len(head.rest)} bytes, Content-Length {n}")
            body = head.rest[:n]
        else:
            body = b""
        if len(body) > MAX_BODY:
            problems.append(f"body of {len(body)} bytes over max_body {MAX_BODY}")
    return "; ".join(problems)


_POLL_PATHS = ("/subscribe",)


def params_refusal(item: FuzzInput) -> str:
    """Why a 2xx or 101 for the first request to a parameterised entrypoint would be wrong ('' when
    it could be right, or when the request is too odd to say): a path or query value that does
    not match its pattern once percent-decoded, ``symbol`` missing, more values than
    ``max_subscriptions``, a filter on a field the routes do not allow."""
    if item.target not in PARAM_TARGETS:
        return ""
    head, _ = _parse_head(item.data)
    if head is None or not head.target.startswith(b"/") or b"#" in head.target:
        return ""
    try:
        raw_path, _, raw_query = head.target.decode("ascii").partition("?")
    except UnicodeDecodeError:
        return ""  # bytes the engine may refuse as a whole, or not: not judged here
    segments = raw_path.split("/")
    suffix = "/" + "/".join(segments[3:]) if len(segments) > 3 else ""
    if segments[:2] != ["", PARAMS_PREFIX.strip("/")] or len(segments) < 3:
        return ""
    if TARGETS[item.target] == "http_get":
        if suffix not in _POLL_PATHS:
            return ""
    elif suffix:
        return ""
    problems = []
    room = unquote(segments[2], errors="replace")
    if not re.fullmatch(PARAMS["room"], room, re.ASCII):
        problems.append(f"room {room[:20]!r}")
    # As the engine reads a query (mediation.http.asgi): a parameter with an empty value is
    # not given at all (``?filter.BAD=`` filters on nothing; ``?symbol=`` is a missing symbol).
    query = parse_qs(raw_query)
    symbols = list(dict.fromkeys(query.get("symbol", [])))
    if not symbols:
        problems.append("symbol missing")
    elif TARGETS[item.target] == "http_post" and len(symbols) > 1:
        problems.append("symbol given more than once on a POST")
    elif len(symbols) > MAX_SUBSCRIPTIONS:
        problems.append(f"{len(symbols)} subscriptions")
    bad = [s for s in symbols if not re.fullmatch(PARAMS["symbol"], s, re.ASCII)]
    if bad:
        problems.append(f"symbol {bad[0][:20]!r}")
    if TARGETS[item.target] != "http_post":
        fields = [k.removeprefix("filter.") for k in query if k.startswith("filter.")]
        if any(f not in FILTER_FIELDS for f in fields):
            problems.append(f"filter fields {fields}")
    return "; ".join(problems)


def handshake_problems(data: bytes) -> str:
    """Why ``data`` does not open with a WebSocket handshake a server may accept (RFC 6455
    4.2.1; '' when it does)."""
    head, problems = _parse_head(data)
    if head is None:
        return "no complete head (or bare CR/LF in it)"

    def values(name: bytes) -> list[bytes]:
        return [v for n, v in head.fields if n == name]

    def tokens(name: bytes) -> set[bytes]:
        return {t.strip().lower() for v in values(name) for t in v.split(b",")}

    if head.method != b"GET":
        problems.append(f"method {head.method!r}")
    if head.version != b"HTTP/1.1":
        problems.append(f"version {head.version!r}")
    if b"websocket" not in tokens(b"upgrade"):
        problems.append(f"Upgrade {values(b'upgrade')}")
    if b"upgrade" not in tokens(b"connection"):
        problems.append(f"Connection {values(b'connection')}")
    if values(b"sec-websocket-version") != [b"13"]:
        problems.append(f"Sec-WebSocket-Version {values(b'sec-websocket-version')}")
    keys = values(b"sec-websocket-key")
    try:
        valid_key = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        problems.append(f"Sec-WebSocket-Key {keys}")
    return "; ".join(problems)


def websocket_violations(item: FuzzInput) -> str:
    """What in the frames after the handshake breaks RFC 6455 (or max_message_bytes): the
    server must close. '' for frames that are fine, or cut short (the server waits for more)."""
    head, _ = _parse_head(item.data)
    if head is None:
        return ""
    data = head.rest
    message: bytearray | None = None  # a fragmented message in progress
    message_opcode = 0
    while len(data) >= 2:
        fin, rsv, opcode = data[0] & 0x80, data[0] & 0x70, data[0] & 0x0F
        masked, length = data[1] & 0x80, data[1] & 0x7F
        at = 2
        if length == 126:
            length, at = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, at = int.from_bytes(data[2:10], "big"), 10
        if len(data) < at:
            return ""
        if rsv:
            return "RSV bits set"
        if opcode not in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA):
            return f"reserved opcode {opcode:#x}"
        if not masked:
            return "unmasked frame"
        if opcode >= 0x8 and (length > 125 or not fin):
            return "control frame too long or fragmented"
        if length > MAX_MESSAGE_BYTES:
            return f"frame of {length} bytes over max_message_bytes"
        if len(data) < at + 4 + length:
            return ""  # cut short: the server waits for the rest
        key = data[at : at + 4]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[at + 4 : at + 4 + length]))
        data = data[at + 4 + length :]
        if opcode == 0x8:
            if len(payload) == 1:
                return "close frame of one byte"
            if len(payload) >= 2:
                code = int.from_bytes(payload[:2], "big")
                if code < 1000 or code in (1004, 1005, 1006, 1015) or 1015 < code < 3000:
                    return f"close code {code}"
                try:
                    payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    return "close reason not UTF-8"
            return ""  # nothing after a close counts
        if opcode >= 0x8:
            continue
        if opcode == 0x0:
            if message is None:
                return "continuation without a message"
            message += payload
        else:
            if message is not None:
                return "new message inside a fragmented one"
            message, message_opcode = bytearray(payload), opcode
        if len(message) > MAX_MESSAGE_BYTES:
            return f"message over max_message_bytes ({len(message)} bytes)"
        if fin:
            if message_opcode == 0x1:
                try:
                    bytes(message).decode("utf-8")
                except UnicodeDecodeError:
                    return "text message not UTF-8"
            message = None
    return ""


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Failure:
    batch: int
    what: str
    item: FuzzInput | None = None

    def describe(self) -> str:
        where = f"batch {self.batch}"
        if self.item is None:
            return f"{where}: {self.what}"
        return f"{where}: {self.what}\n  {self.item.describe()}"


@dataclass
class FuzzResult:
    seed: int
    inputs: int = 0
    batches: int = 0
    elapsed: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # mediation_connection_errors_total at the end, all entrypoints (None: not read).
    connection_errors: float | None = None
    tls: bool = False

    def report(self, limit: int = 40) -> str:
        lines = [
            f"fuzz seed {self.seed}: {self.inputs} inputs in {self.batches} batches, "
            f"{self.elapsed:.1f} s, {len(self.failures)} failures, "
            f"connection errors counted {self.connection_errors}"
        ]
        lines += [f"note: {note}" for note in self.notes]
        lines += [failure.describe() for failure in self.failures[:limit]]
        if len(self.failures) > limit:
            lines.append(f"... and {len(self.failures) - limit} more")
        if self.failures:
            lines.append(
                f"reproduce one: python scripts/fuzz.py --seed {self.seed} --index <index>"
                + (" --tls" if self.tls else "")
            )
        return "\n".join(lines)


async def check_oracle(
    engine: EngineProcess, bystanders: list[Bystander], client: httpx.AsyncClient, marker: str
) -> list[str]:
    """What is wrong after a batch: [] when the engine, /healthz and the bystanders are fine."""
    problems = await _check_clients(engine, bystanders, client, marker)
    if problems:
        with trio.move_on_after(HEALTH_TIMEOUT):  # is it on its way out?
            await engine.process.wait()
    if not engine.alive():
        return [
            f"the engine process exited ({engine.process.returncode}); stderr: "
            f"{engine.stderr_tail()}"
        ]
    return problems


async def _check_clients(
    engine: EngineProcess, bystanders: list[Bystander], client: httpx.AsyncClient, marker: str
) -> list[str]:
    problems = []
    try:
        with trio.fail_after(HEALTH_TIMEOUT):
            health = await client.get(f"http://{HOST}:{engine.ports['health']}/healthz")
        if health.status_code != 200:
            problems.append(f"/healthz answered {health.status_code}: {health.text[:200]}")
    except (trio.TooSlowError, httpx.HTTPError) as error:
        problems.append(f"/healthz did not answer within {HEALTH_TIMEOUT} s: {error!r}")
    try:
        with trio.fail_after(MARKER_TIMEOUT):
            base = f"{engine.scheme}://{HOST}"
            posted = [
                await client.post(f"{base}:{engine.ports['hook']}/", content=marker),
                await client.post(
                    f"{base}:{engine.ports['hook-p']}{BYSTANDER_PARAMS}", content=marker
                ),
                await client.post(f"{base}:{engine.ports['hook-k']}/", content=marker),
            ]
            for answer in posted:
                if answer.status_code != 202:
                    problems.append(f"the marker POST answered {answer.status_code}: {answer.text}")
            if not problems:
                for bystander in bystanders:
                    await bystander.wait_for(marker)
    except trio.TooSlowError:
        missing = [b.name for b in bystanders if marker not in b.seen]
        problems.append(f"marker {marker} not received within {MARKER_TIMEOUT} s by {missing}")
    except (httpx.HTTPError, ConnectionError) as error:
        problems.append(f"marker {marker}: {error!r}")
    return problems


async def run_fuzz(
    seed: int,
    *,
    kafka: str,
    workdir: Path,
    seconds: float,
    max_inputs: int | None = None,
    indices: Iterable[int] | None = None,
    batch_size: int = 50,
    limits: Limits | None = None,
    out: Callable[[str], None] = print,
    verbose: bool = False,
    tls: bool = False,
) -> FuzzResult:
    """Fuzz a fresh engine with the inputs of ``seed`` (or only ``indices``) until ``seconds``
    are up or ``max_inputs`` were tried; stops early if the engine or a bystander is gone.
    ``kafka``: the bootstrap servers of a Kafka broker for ``ws-k`` (its topic is made if
    missing, and kept). ``tls``: every entrypoint on TLS, and some inputs aimed at the TLS layer
    (:func:`tls_mode`)."""
    if limits is None:
        limits = Limits(body_timeout=1.0 if engine_has_body_timeout() else None)
    result = FuzzResult(seed, tls=tls)
    if limits.body_timeout is None:
        result.notes.append("the engine has no body_timeout key: left out of the configuration")
    config = workdir / "fuzz.toml"
    files = TLSFiles.make(workdir) if tls else None
    config.write_text(config_text(limits, kafka, files))
    mutations = Mutations(seed)
    chosen = iter(indices) if indices is not None else None
    out(
        f"fuzz: seed {seed}{' over TLS' if tls else ''}, up to {seconds:g} s, "
        f"connection limit {limits.connection:.1f} s"
    )
    start = trio.current_time()
    async with open_engine_process(config) as engine:
        bystanders = [
            Bystander("websocket bystander"),
            Bystander("SSE bystander"),
            Bystander("parameterised-SSE bystander"),
            Bystander("Kafka websocket bystander"),
        ]
        async with trio.open_nursery() as nursery:
            client_tls = None if files is None else files.client
            engine.scheme = "http" if files is None else "https"
            async with httpx.AsyncClient(
                timeout=MARKER_TIMEOUT, verify=client_tls or True
            ) as client:
                await _until_ready(engine, client)
                await _fill(engine, client)
                ports = engine.ports
                await nursery.start(websocket_bystander, ports["ws"], bystanders[0], client_tls)
                await nursery.start(sse_bystander, ports["sse"], bystanders[1], client_tls)
                await nursery.start(
                    sse_bystander, ports["sse-p"], bystanders[2], client_tls, BYSTANDER_PARAMS
                )
                # A client id of its own per run: the topic and its groups outlive a run.
                kafka_id = f"bystander-wsk-{os.urandom(4).hex()}"
                await nursery.start(
                    websocket_bystander, ports["ws-k"], bystanders[3], client_tls, kafka_id
                )
                problems = await check_oracle(engine, bystanders, client, f"marker-{seed}-start")
                result.failures += [Failure(0, p) for p in problems]
                next_index = 0
                while not result.failures or all(f.item is not None for f in result.failures):
                    if trio.current_time() - start >= seconds:
                        break
                    if max_inputs is not None and result.inputs >= max_inputs:
                        break
                    if chosen is not None:
                        batch = [mutations.make(i) for i in _take(chosen, batch_size)]
                    else:
                        count = batch_size
                        if max_inputs is not None:
                            count = min(count, max_inputs - result.inputs)
                        batch = [mutations.make(next_index + i) for i in range(count)]
                        next_index += count
                    if not batch:
                        break
                    result.batches += 1
                    await _run_batch(engine, batch, limits, result, out if verbose else None, files)
                    marker = f"marker-{seed}-{result.batches}"
                    problems = await check_oracle(engine, bystanders, client, marker)
                    for problem in problems:
                        # The oracle failed after this batch: one of its inputs did it.
                        first, last = batch[0].index, batch[-1].index
                        result.failures.append(
                            Failure(result.batches, f"{problem} (after inputs {first}-{last})")
                        )
                    if problems:
                        out(f"fuzz: oracle failed after batch {result.batches}: {problems}")
                        if not engine.alive():
                            await _blame(config, batch, limits, result, out, files)
                if engine.alive():
                    result.connection_errors = await connection_errors(engine, client)
            nursery.cancel_scope.cancel()
        result.notes += summarize_errors(engine.error_records)
        if engine.stderr:
            result.notes.append(f"engine stderr: {engine.stderr_tail()}")
    result.elapsed = trio.current_time() - start
    out(result.report())
    return result


async def _until_ready(engine: EngineProcess, client: httpx.AsyncClient) -> None:
    """``/readyz`` is 200: the Kafka endpoint is up (a ``503`` on ws-k would be a failure)."""
    with trio.fail_after(STARTUP_TIMEOUT):
        while True:  # polling a server that has no way to notify us
            with suppress(httpx.HTTPError):
                ready = await client.get(f"http://{HOST}:{engine.ports['health']}/readyz")
                if ready.status_code == 200:
                    return
            await trio.sleep(0.1)


async def _fill(engine: EngineProcess, client: httpx.AsyncClient) -> None:
    """At least FILLED records in the Kafka topic, so that a valid cursor for an offset below
    FILLED names one it holds (the topic outlives a run: it may have them already)."""
    for i in range(FILLED):
        answer = await client.post(
            f"{engine.scheme}://{HOST}:{engine.ports['hook-k']}/", content=f"fill-{i}"
        )
        assert answer.status_code == 202, (answer.status_code, answer.text)


async def connection_errors(engine: EngineProcess, client: httpx.AsyncClient) -> float | None:
    """The engine's count of connections an unexpected error ended (contained, but each one a
    bug to look at), from /metrics."""
    try:
        metrics = await client.get(f"http://{HOST}:{engine.ports['health']}/metrics")
    except httpx.HTTPError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.text.splitlines()
        if line.startswith("mediation_connection_errors_total{")
    )


def summarize_errors(records: list[dict[str, Any]]) -> list[str]:
    """The engine's error lines, one per kind (message and exception) with a count: the
    engine contained them, but a traceback on a connection is a bug to look at."""
    kinds: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], str] = {}
    for record in records:
        trace = str(record.get("exc_info", "")).strip().splitlines()
        kind = (str(record.get("msg")), trace[-1] if trace else "")
        kinds[kind] = kinds.get(kind, 0) + 1
        frames = [line.strip() for line in trace if line.strip().startswith("File ")]
        where[kind] = frames[-1] if frames else ""
    return [
        f"engine logged {count} x {msg!r}: {exception} ({where[msg, exception]})"
        for (msg, exception), count in kinds.items()
    ]


def _take(iterator: Iterable[int], n: int) -> list[int]:
    taken = []
    for value in iterator:
        taken.append(value)
        if len(taken) == n:
            break
    return taken


async def _run_batch(
    engine: EngineProcess,
    batch: list[FuzzInput],
    limits: Limits,
    result: FuzzResult,
    out: Callable[[str], None] | None = None,
    tls: TLSFiles | None = None,
) -> None:
    async def one(item: FuzzInput) -> None:
        try:
            outcome = await attack(engine.ports[item.target], item, limits, tls)
        except OSError as error:
            result.failures.append(Failure(result.batches, f"cannot connect: {error!r}", item))
            return
        if out is not None:
            how = "" if tls is None else f" [{tls_mode(item)}]"
            out(f"{item.describe()}{how}\n    -> {outcome.summary()} {outcome.problems or ''}")
        if outcome.problems:
            what = "; ".join(outcome.problems) + f" ({outcome.summary()})"
            result.failures.append(Failure(result.batches, what, item))

    async with trio.open_nursery() as nursery:
        for item in batch:
            nursery.start_soon(one, item)
    result.inputs += len(batch)


# -- which input killed the engine --------------------------------------------------------------

BLAME_ROUNDS = 8  # engine starts spent looking for the input that killed the engine


async def _kills(
    config: Path, group: list[FuzzInput], limits: Limits, tls: TLSFiles | None
) -> bool:
    """Whether ``group``, sent at once to a fresh engine, ends its process."""
    async with open_engine_process(config) as engine:
        async with trio.open_nursery() as nursery:
            for item in group:
                nursery.start_soon(_attack_quietly, engine.ports[item.target], item, limits, tls)
        # Every connection is over: a crash it caused has happened. /healthz makes sure the
        # engine got to run since; a refused connection, or no answer, means it is going.
        async with httpx.AsyncClient() as client:
            with trio.move_on_after(HEALTH_TIMEOUT), suppress(httpx.HTTPError):
                await client.get(f"http://{HOST}:{engine.ports['health']}/healthz")
        with trio.move_on_after(HEALTH_TIMEOUT):
            await engine.process.wait()
        return not engine.alive()


async def _attack_quietly(port: int, item: FuzzInput, limits: Limits, tls: TLSFiles | None) -> None:
    with suppress(OSError):  # the engine is gone already
        await attack(port, item, limits, tls)


async def _blame(
    config: Path,
    batch: list[FuzzInput],
    limits: Limits,
    result: FuzzResult,
    out: Callable[[str], None],
    tls: TLSFiles | None = None,
) -> None:
    """Bisect ``batch`` on fresh engines for the input that ends the process by itself."""
    candidates = batch
    rounds = 0
    verified = False
    while rounds < BLAME_ROUNDS and (len(candidates) > 1 or not verified):
        halves = (
            [candidates]
            if len(candidates) == 1
            else [candidates[: len(candidates) // 2], candidates[len(candidates) // 2 :]]
        )
        for half in halves:
            rounds += 1
            if await _kills(config, half, limits, tls):
                candidates, verified = half, True
                break
        else:
            out(f"fuzz: no part of batch {result.batches} alone kills the engine")
            return
    if len(candidates) == 1 and verified:
        result.failures.append(
            Failure(result.batches, "the engine process died on this input alone", candidates[0])
        )
    else:
        first, last = candidates[0].index, candidates[-1].index
        out(f"fuzz: one of inputs {first}-{last} kills the engine (out of rounds)")
