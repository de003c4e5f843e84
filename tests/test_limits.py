"""Limits on every input (issue 5): header size (431), slowloris (header_timeout), WebSocket idle
timeout, permessage-deflate off and 1009 for every kind of message, max_sessions (503),
allowed_origins (403) and client metadata, over real sockets.

Where a test needs bytes no polite client sends (a head that never ends, a frame with RSV1, a
client that never answers a ping), it speaks HTTP/1.1 and RFC 6455 framing by hand over a plain
TCP socket. Timers run on Trio's autojump clock.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from mediation.endpoints import Outbound
from mediation.engine import MediationEngine
from mediation.envelope import SUBPROTOCOL
from mediation.events import Event

from .conftest import CLIENT_WAIT, EngineFactory, clients_gone, envelope, open_ws, url
from .rawhttp import StreamReader
from .test_engine import ROUTES

KINDS = ["ws", "sse", "post", "poll"]


def all_entrypoints(**settings: Any) -> dict[str, str | dict[str, Any]]:
    """One entrypoint of every type, each with ``settings``."""
    types = {"ws": "websocket", "sse": "sse", "post": "http_post", "poll": "http_get"}
    return {name: {"type": kind, **settings} for name, kind in types.items()}


# What each entrypoint answers a good request with.
ACCEPTED = {"ws": 101, "sse": 200, "post": 202, "poll": 201}


def request_head(kind: str, size: int | None = None, *, end: bool = True) -> bytes:
    """A valid request head for entrypoint ``kind``, padded (X-Padding) to exactly ``size``
    bytes including its blank line; ``end=False`` leaves the blank line out."""
    lines = {
        "ws": [
            "GET / HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        "sse": ["GET / HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"],
        "post": ["POST / HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 0"],
        "poll": [
            "POST /subscribe HTTP/1.1",
            "Host: 127.0.0.1",
            "X-Client-ID: limits",
            "Content-Length: 0",
        ],
    }[kind]
    head = "".join(line + "\r\n" for line in lines)
    if size is not None:
        padding = size - len(head) - len("X-Padding: \r\n") - 2
        assert padding >= 0
        head += f"X-Padding: {'a' * padding}\r\n"
    data = (head + ("\r\n" if end else "")).encode()
    assert size is None or not end or len(data) == size
    return data


class Raw(StreamReader):
    """A plain TCP client: bytes out, a status line or WebSocket frames in."""

    async def closed_by_peer(self) -> bool:
        """Read until the server closes the connection (True) or resets it (True too)."""
        try:
            while await self._fill():
                pass
        except trio.BrokenResourceError:
            pass
        return True

    # -- RFC 6455 frames (client frames masked, server frames not) --------------------------

    async def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False
    ) -> None:
        first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", first, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, size)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.stream.send_all(header + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        first, second = await self.read_exactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.read_exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.read_exactly(8))
        return first & 0x0F, await self.read_exactly(size)

    async def close_frame(self) -> tuple[int, str]:
        """Frames until the close frame: its code and reason."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode()


@asynccontextmanager
async def raw(engine: MediationEngine, name: str) -> AsyncIterator[Raw]:
    stream = await trio.open_tcp_stream("127.0.0.1", engine.ports[name])
    async with stream:
        yield Raw(stream)


@asynccontextmanager
async def raw_websocket(engine: MediationEngine, *extra: str) -> AsyncIterator[Raw]:
    """A WebSocket connection past its 101, driven by hand."""
    async with raw(engine, "ws") as client:
        head = request_head("ws", end=False) + "".join(f"{h}\r\n" for h in extra).encode()
        await client.stream.send_all(head + b"\r\n")
        status, _ = await client.response_head()
        assert status == 101
        yield client


# -- header size: 431 --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_head_of_exactly_max_header_bytes_passes_one_more_is_431(
    engine_with: EngineFactory, kind: str
) -> None:
    async with engine_with(entrypoints=all_entrypoints(max_header_bytes=2048), routes=ROUTES) as e:
        async with raw(e, kind) as client:
            await client.stream.send_all(request_head(kind, 2048))
            assert (await client.response_head())[0] == ACCEPTED[kind]
            admitted = {s.id for s in e.sessions}
            assert len(admitted) == (0 if kind == "post" else 1)
            async with raw(e, kind) as refused:
                await refused.stream.send_all(request_head(kind, 2049))
                assert (await refused.response_head())[0] == 431
                with trio.fail_after(CLIENT_WAIT):  # and the connection is closed at once
                    assert await refused.closed_by_peer()
            assert {s.id for s in e.sessions} == admitted


@pytest.mark.parametrize("kind", KINDS)
async def test_a_head_that_never_ends_is_431_at_the_limit(
    engine_with: EngineFactory, kind: str
) -> None:
    """The server stops buffering at the limit; it does not wait for the end of the head."""
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        async with raw(engine, kind) as client:
            await client.stream.send_all(request_head(kind, end=False))
            for _ in range(64):  # 64 KiB of one endless header, in 1 KiB lines
                try:
                    await client.stream.send_all(b"X-More: " + b"b" * 1014 + b"\r\n")
                except trio.BrokenResourceError:
                    break  # the server closed the connection: its answer is waiting
            assert (await client.response_head())[0] == 431
        await clients_gone(engine)
        assert engine.sessions == []


@pytest.mark.parametrize("kind", KINDS)
async def test_default_limit_is_16_kib_with_a_real_client(
    engine_with: EngineFactory, kind: str
) -> None:
    async with (
        engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine,
        httpx.AsyncClient() as client,
    ):
        method, path = {"post": ("POST", "/"), "poll": ("POST", "/subscribe")}.get(
            kind, ("GET", "/")
        )
        headers = {"X-Client-ID": "big", "X-Padding": "p" * 17_000}
        if kind == "ws":
            headers.update(
                {
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                }
            )
        response = await client.request(method, url(engine, kind, path), headers=headers)
        assert response.status_code == 431


@pytest.mark.parametrize("kind", KINDS)
async def test_a_larger_max_header_bytes_admits_a_40_kib_head(
    engine_with: EngineFactory, kind: str
) -> None:
    """Above the 16 KiB default of our HTTP/1.1 server and of wsproto (trio-websocket)."""
    entrypoints = all_entrypoints(max_header_bytes=64 * 1024)
    async with engine_with(entrypoints=entrypoints, routes=ROUTES) as engine:
        async with raw(engine, kind) as client:
            head = request_head(kind, 40 * 1024)
            for start in range(0, len(head), 1000):  # in pieces: the server sees it incomplete
                await client.stream.send_all(head[start : start + 1000])
            assert (await client.response_head())[0] == ACCEPTED[kind]


# -- slowloris: header_timeout -----------------------------------------------------------------


async def trickle(engine: MediationEngine, kind: str, interval: float) -> tuple[float, int]:
    """Send a request head one byte per ``interval`` seconds, never finishing it; the time the
    server took to drop the connection, and the bytes sent by then."""
    head = request_head(kind, end=False)
    sent = 0
    async with raw(engine, kind) as client, trio.open_nursery() as nursery:

        async def send_slowly() -> None:
            nonlocal sent
            try:
                for byte in head:
                    await client.stream.send_all(bytes([byte]))
                    sent += 1
                    await trio.sleep(interval)
            except trio.BrokenResourceError:
                pass
            await trio.sleep_forever()

        start = trio.current_time()
        nursery.start_soon(send_slowly)
        with trio.fail_after(1000):
            await client.closed_by_peer()
        nursery.cancel_scope.cancel()
        return trio.current_time() - start, sent


@pytest.mark.parametrize("kind", KINDS)
async def test_a_client_trickling_its_headers_is_dropped_after_header_timeout(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock, kind: str
) -> None:
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        elapsed, sent = await trickle(engine, kind, interval=1.0)
        assert 10.0 <= elapsed < 11.0  # the default header_timeout
        assert sent <= 11
        await clients_gone(engine)
        assert engine.sessions == []


@pytest.mark.parametrize("kind", KINDS)
async def test_header_timeout_is_configurable(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock, kind: str
) -> None:
    async with engine_with(entrypoints=all_entrypoints(header_timeout=3), routes=ROUTES) as e:
        elapsed, _ = await trickle(e, kind, interval=0.5)
        assert 3.0 <= elapsed < 3.5


@pytest.mark.parametrize("kind", KINDS)
async def test_a_slow_head_that_completes_in_time_is_served(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock, kind: str
) -> None:
    async with (
        engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine,
        raw(engine, kind) as client,
    ):
        head = request_head(kind)
        await client.stream.send_all(head[:20])
        await trio.sleep(9)
        await client.stream.send_all(head[20:])
        assert (await client.response_head())[0] == ACCEPTED[kind]


# -- WebSocket idle_timeout --------------------------------------------------------------------


async def test_a_websocket_client_that_never_answers_is_closed_1001_idle(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock
) -> None:
    entrypoints = {"ws": {"type": "websocket", "idle_timeout": 20}}
    async with engine_with(entrypoints=entrypoints, routes=ROUTES[:1] + ROUTES[2:3]) as engine:
        async with raw_websocket(engine) as client:
            start = trio.current_time()
            opcode, _ = await client.frame()
            assert opcode == 0x9  # a ping, half way
            assert trio.current_time() - start == pytest.approx(10, abs=0.5)
            assert await client.close_frame() == (1001, "idle")
            assert trio.current_time() - start == pytest.approx(20, abs=0.5)
            await client.send_frame(0x8, struct.pack("!H", 1001))
        await clients_gone(engine)
        assert engine.sessions == []


async def test_a_listening_client_that_answers_pings_is_not_idle(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock
) -> None:
    entrypoints = {"ws": {"type": "websocket", "idle_timeout": 20}}
    async with engine_with(entrypoints=entrypoints, routes=ROUTES[:1] + ROUTES[2:3]) as engine:
        async with open_ws(url(engine, "ws", scheme="ws")) as ws:
            [session] = engine.sessions
            await trio.sleep(100)  # five idle timeouts; trio-websocket answers each ping itself
            assert [s.id for s in engine.sessions] == [session.id]
            await ws.send_message("still here")
            assert await ws.get_message() == "still here"


async def test_messages_keep_a_client_that_ignores_pings_alive(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock
) -> None:
    entrypoints = {"ws": {"type": "websocket", "idle_timeout": 20}}
    async with engine_with(entrypoints=entrypoints, routes=ROUTES[:1] + ROUTES[2:3]) as engine:
        async with raw_websocket(engine) as client:
            for n in range(6):  # a message every 15 s for 90 s, never a pong
                await trio.sleep(15)
                await client.send_frame(0x1, b"%d" % n)
            assert len(engine.sessions) == 1
            assert await client.close_frame() == (1001, "idle")


async def test_a_client_that_stops_reading_is_idle_too(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock
) -> None:
    """Writes that cannot complete are no sign of life: the session ends at idle_timeout even
    while its writer waits on a full TCP window (instead of holding its consumer forever)."""
    entrypoints = {"ws": {"type": "websocket", "idle_timeout": 20}}
    async with engine_with(entrypoints=entrypoints, routes=ROUTES[:1] + ROUTES[2:3]) as engine:
        async with raw_websocket(engine):
            route = next(r for r in engine.config.routes if r.name == "ws->mem")
            start = trio.current_time()
            published_at: list[float] = []
            async with trio.open_nursery() as nursery:

                async def flood() -> None:
                    # 32 MiB: more than the socket buffers hold. (Once the session is gone
                    # nothing subscribes; a publish then need not wait, so the loop is bounded.)
                    for _ in range(512):
                        event = Event(b"f" * 65536)
                        outbound = Outbound(event=event, route=route, client_id="p", entrypoint="t")
                        await engine.endpoints["mem"].publish(outbound, confirm=True)
                        published_at.append(trio.current_time())
                        await trio.lowlevel.checkpoint()

                nursery.start_soon(flood)
                with trio.fail_after(CLIENT_WAIT + 20):
                    await clients_gone(engine)
                nursery.cancel_scope.cancel()
            assert 20 <= trio.current_time() - start < 20 + CLIENT_WAIT
            assert engine.sessions == []
            # The flood was held up by the full window until the session ended.
            stalled = [t for t in published_at if t - start < 20]
            assert 0 < len(stalled) < 512


async def test_idle_timeout_0_never_pings(
    engine_with: EngineFactory, autojump_clock: trio.abc.Clock
) -> None:
    entrypoints = {"ws": {"type": "websocket", "idle_timeout": 0}}
    async with engine_with(entrypoints=entrypoints, routes=ROUTES[:1] + ROUTES[2:3]) as engine:
        async with raw_websocket(engine) as client:
            with trio.move_on_after(3600):
                await client.frame()
                pytest.fail("the engine sent a frame to a silent client")
            assert len(engine.sessions) == 1


# -- permessage-deflate and 1009 ---------------------------------------------------------------


async def test_permessage_deflate_is_never_negotiated(engine_with: EngineFactory) -> None:
    async with (
        engine_with(entrypoints={"ws": "websocket"}, routes=ROUTES[:1] + ROUTES[2:3]) as engine,
        raw(engine, "ws") as client,
    ):
        offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        await client.stream.send_all(request_head("ws", end=False) + offer + b"\r\n")
        status, headers = await client.response_head()
        assert status == 101
        assert "sec-websocket-extensions" not in headers


async def test_a_compressed_frame_fails_the_connection(engine_with: EngineFactory) -> None:
    """Without the extension, RSV1 set fails the connection (RFC 6455 5.2): the socket is closed
    (wsproto's 1002 is not sent), nothing is inflated, nothing published or echoed."""
    async with (
        engine_with(entrypoints={"ws": "websocket"}, routes=ROUTES[:1] + ROUTES[2:3]) as engine,
        raw_websocket(engine) as client,
    ):
        # A deflated "hello" (RFC 7692 7.2.3.1), as a client that assumed compression sends it.
        await client.send_frame(0x1, bytes.fromhex("f248cdc9c90700"), rsv1=True)
        frames = []
        with trio.fail_after(CLIENT_WAIT):
            try:
                while True:
                    frames.append(await client.frame())
            except (EOFError, trio.BrokenResourceError):
                pass
        assert all(opcode == 0x8 for opcode, _ in frames)
    await clients_gone(engine)
    assert engine.endpoints["mem"].stats["published"] == 0
    assert engine.sessions == []


@pytest.mark.parametrize("opcode", [0x1, 0x2], ids=["text", "binary"])
async def test_a_message_over_max_message_bytes_closes_1009(
    engine_with: EngineFactory, opcode: int
) -> None:
    entrypoints = {"ws": {"type": "websocket", "max_message_bytes": 1000}}
    async with (
        engine_with(entrypoints=entrypoints, routes=ROUTES[:1] + ROUTES[2:3]) as engine,
        raw_websocket(engine) as client,
    ):
        # Not UTF-8 for binary: frame_type "auto" echoes valid UTF-8 as text.
        unit = b"x" if opcode == 0x1 else b"\xff"
        await client.send_frame(opcode, unit * 1000)
        assert await client.frame() == (opcode, unit * 1000)  # inclusive: echoed
        await client.send_frame(opcode, unit * 1001)
        assert (await client.close_frame())[0] == 1009
    assert engine.endpoints["mem"].stats["published"] == 1


async def test_a_fragmented_message_over_max_message_bytes_closes_1009(
    engine_with: EngineFactory,
) -> None:
    """Each fragment is small; their sum is what counts."""
    entrypoints = {"ws": {"type": "websocket", "max_message_bytes": 1000}}
    async with (
        engine_with(entrypoints=entrypoints, routes=ROUTES[:1] + ROUTES[2:3]) as engine,
        raw_websocket(engine) as client,
    ):
        await client.send_frame(0x2, b"\xff" * 400, fin=False)
        await client.send_frame(0x0, b"\xff" * 400, fin=False)
        await client.send_frame(0x0, b"\xff" * 200)  # 1000 in all: accepted
        assert await client.frame() == (0x2, b"\xff" * 1000)
        await client.send_frame(0x2, b"z" * 400, fin=False)
        await client.send_frame(0x0, b"z" * 400, fin=False)
        await client.send_frame(0x0, b"z" * 201)
        assert (await client.close_frame())[0] == 1009
    assert engine.endpoints["mem"].stats["published"] == 1


# -- max_sessions and allowed_origins ----------------------------------------------------------


async def test_http_post_max_sessions_bounds_requests_in_flight(
    engine_with: EngineFactory,
) -> None:
    entrypoints: dict[str, str | dict[str, Any]] = {
        "post": {"type": "http_post", "max_sessions": 1}
    }
    async with (
        engine_with(entrypoints=entrypoints, routes=ROUTES[1:2]) as engine,
        httpx.AsyncClient() as http,
        raw(engine, "post") as slow,
    ):
        # A request whose body has not arrived yet is being handled.
        await slow.stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        with trio.fail_after(CLIENT_WAIT):
            await engine._context.connections.wait_value(1)
        refused = await http.post(url(engine, "post"), content=b"second")
        assert refused.status_code == 503
        assert "max_sessions" in refused.json()["error"]
        await slow.stream.send_all(b"first")
        assert (await slow.response_head())[0] == 202
        await clients_gone(engine)  # the handler ends just after its answer
        assert (await http.post(url(engine, "post"), content=b"third")).status_code == 202


async def test_polling_checks_allowed_origins(engine_with: EngineFactory) -> None:
    entrypoints = all_entrypoints(allowed_origins=["https://good.example"])
    async with (
        engine_with(entrypoints=entrypoints, routes=ROUTES) as engine,
        httpx.AsyncClient() as http,
    ):
        subscribe = url(engine, "poll", "/subscribe")
        evil = {"X-Client-ID": "c", "Origin": "https://evil.example"}
        assert (await http.post(subscribe, headers=evil)).status_code == 403
        assert engine.sessions == []
        good = {"X-Client-ID": "c", "Origin": "https://good.example"}
        assert (await http.post(subscribe, headers=good)).status_code == 201


@pytest.mark.parametrize("kind", ["ws", "sse", "poll"])
async def test_max_sessions_is_503_before_any_session(
    engine_with: EngineFactory, kind: str
) -> None:
    async with engine_with(entrypoints=all_entrypoints(max_sessions=1), routes=ROUTES) as engine:
        async with raw(engine, kind) as first:
            await first.stream.send_all(request_head(kind))
            assert (await first.response_head())[0] == ACCEPTED[kind]
            async with raw(engine, kind) as second:
                head = request_head(kind).replace(b"X-Client-ID: limits", b"X-Client-ID: other")
                await second.stream.send_all(head)
                assert (await second.response_head())[0] == 503
            assert len(engine.sessions) == 1


# -- client metadata ---------------------------------------------------------------------------


POLL_READER = {"X-Client-ID": "reader"}


@asynccontextmanager
async def post_and_poll(
    engine_with: EngineFactory,
) -> AsyncIterator[tuple[MediationEngine, httpx.AsyncClient]]:
    """An engine with a POST entrypoint and a polling one, both on ``mem``, and an HTTP client
    whose poller (client ``reader``) has subscribed."""
    entrypoints: dict[str, str | dict[str, Any]] = {
        "post": "http_post",
        "poll": {"type": "http_get", "poll_timeout": 5},
    }
    async with (
        engine_with(entrypoints=entrypoints, routes=[ROUTES[1], ROUTES[4]]) as engine,
        httpx.AsyncClient() as http,
    ):
        subscribed = await http.post(url(engine, "poll", "/subscribe"), headers=POLL_READER)
        assert subscribed.status_code == 201
        yield engine, http


async def poll_once(engine: MediationEngine, http: httpx.AsyncClient) -> httpx.Response:
    polled = await http.get(url(engine, "poll", "/poll"), headers=POLL_READER)
    assert polled.status_code == 200
    return polled


def polled_metadata(polled: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in polled.headers.items() if k.startswith("x-meta-")}


async def test_envelope_metadata_is_allow_listed_and_sanitised(engine_with: EngineFactory) -> None:
    async with (
        engine_with(entrypoints={"ws": "websocket"}, routes=ROUTES[:1] + ROUTES[2:3]) as engine,
        open_ws(url(engine, "ws", scheme="ws"), subprotocols=[SUBPROTOCOL]) as ws,
    ):
        metadata = {
            "x-ok": "kept",
            "client_id": "mallory",
            "session_id": "forged",
            "topic": "elsewhere",
            "offset": "0",
            "x-crlf": "a\r\nInjected: yes",
            "bad name": "v",
            "x-long": "l" * 1025,
        }
        await ws.send_message(json.dumps({"id": "m1", "payload": "p", "metadata": metadata}))
        replies = [await envelope(ws) for _ in range(2)]
        echo = next(r for r in replies if "payload" in r)
        assert echo["metadata"] == {"x-ok": "kept"}
        [session] = engine.sessions
        assert session.client_id != "mallory"


async def test_post_headers_are_allow_listed(engine_with: EngineFactory) -> None:
    async with post_and_poll(engine_with) as (engine, http):
        headers = {
            "Content-Type": "text/plain",
            "X-Ok": "kept",
            "X-Client-ID": "writer",
            "Authorization": "Bearer secret",
            "Cookie": "session=secret",
            "X-Long": "l" * 1025,
        }
        accepted = await http.post(url(engine, "post"), content=b"body", headers=headers)
        assert accepted.status_code == 202
        polled = await poll_once(engine, http)
        assert polled_metadata(polled) == {"x-meta-x-ok": "kept"}
        assert polled.headers["content-type"] == "text/plain"


async def test_broker_metadata_that_cannot_be_a_header_is_not_polled(
    engine_with: EngineFactory,
) -> None:
    async with post_and_poll(engine_with) as (engine, http):
        route = next(r for r in engine.config.routes if r.name == "post->mem")
        metadata = {
            "x-ok": "kept",
            "content-type": "text/plain",
            "bad name": "v",
            "x-crlf": "a\r\nInjected: yes",
            "x-wide": "日本",
            "x-colon:": "v",
        }
        await engine.endpoints["mem"].publish(
            Outbound(
                event=Event(b"e", metadata=metadata), route=route, client_id="p", entrypoint="t"
            ),
            confirm=True,
        )
        polled = await poll_once(engine, http)
        assert polled_metadata(polled) == {"x-meta-x-ok": "kept"}
        assert "injected" not in polled.headers
        assert polled.headers["content-type"] == "text/plain"
