"""The findings of the hardened-edge issue (#12), each from its payload, on real sockets: a bad
request gets its 4xx (or a close) and ends nothing else; the engine answers /healthz after it and
bystander clients keep receiving. (Finding 6, event ids, is tests/test_event_ids.py; finding 11,
readiness, tests/test_readiness.py.)"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psutil
import pytest
import trio
import trio.testing

from mediation.engine import MediationEngine

from .conftest import CLIENT_WAIT, EngineFactory, clients_gone, envelope, open_ws, url
from .test_engine import ROUTES  # a route from the webhook to every downstream client
from .test_limits import ACCEPTED, KINDS, Raw, all_entrypoints, raw, request_head


@asynccontextmanager
async def bystanders(engine: MediationEngine) -> AsyncIterator[Any]:
    """A WebSocket and an SSE client on the webhook's topic; ``await check()`` posts a fresh
    event and asserts both receive it and that /healthz answers within 1 s."""
    async with httpx.AsyncClient() as http:
        async with open_ws(url(engine, "ws", scheme="ws")) as ws:
            async with raw(engine, "sse") as sse:
                await sse.stream.send_all(request_head("sse"))
                assert (await sse.response_head())[0] == 200
                await sse.read_until(b"event: session")
                counter = 0

                async def check() -> None:
                    nonlocal counter
                    counter += 1
                    marker = f"bystander-{counter}"
                    with trio.fail_after(1):
                        health = await http.get(url(engine, "health", "/healthz"))
                    assert health.status_code == 200
                    posted = await http.post(url(engine, "post"), content=marker)
                    assert posted.status_code == 202
                    with trio.fail_after(CLIENT_WAIT):
                        while (message := await ws.get_message()) != marker:
                            pass
                        await sse.read_until(f"data: {marker}\n".encode())
                    assert message == marker

                await check()
                yield check


async def refused(engine: MediationEngine, kind: str, request: bytes) -> int:
    """The status ``request`` gets on entrypoint ``kind``, whose connection is then closed."""
    async with raw(engine, kind) as client:
        await client.stream.send_all(request)
        status, _ = await client.response_head()
        with trio.fail_after(CLIENT_WAIT):
            assert await client.closed_by_peer()
    return status


def ws_head(*extra: bytes, target: bytes = b"/", version: bytes = b"1.1") -> bytes:
    lines = [
        b"GET " + target + b" HTTP/" + version,
        b"Host: x",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: 13",
        *extra,
    ]
    if not any(line.lower().startswith(b"sec-websocket-key") for line in extra):
        lines.append(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


# -- 1, 2, 10: the WebSocket handshake ---------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        # 1: a byte >= 0x80 in a header wsproto splits (it raised UnicodeDecodeError before).
        ws_head(b"Sec-WebSocket-Protocol: \xe4"),
        ws_head(b"Sec-WebSocket-Extensions: \xe4"),
        ws_head().replace(b"Host: x", b"Host: \xe4"),
        ws_head().replace(b"Connection: Upgrade", b"Connection: Upgrade, \xe4"),
        # 2: a target urlsplit cannot take.
        ws_head(target=b"//[x/"),
        # 10: keys that are not base64 of 16 bytes, another version, HTTP/1.0, obs-fold, bare LF.
        ws_head(b"Sec-WebSocket-Key: "),
        ws_head(b"Sec-WebSocket-Key: a"),
        ws_head(b"Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!=="),
        ws_head(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"),
        ws_head().replace(b"Version: 13", b"Version: 8"),
        ws_head(version=b"1.0"),
        ws_head(b"X-Folded: a\r\n b"),
        ws_head().replace(b"\r\n", b"\n"),
        ws_head().replace(b"GET", b"POST"),
    ],
)
async def test_a_malformed_handshake_is_400_and_ends_nothing_else(
    engine_with: EngineFactory, request_bytes: bytes
) -> None:
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        async with bystanders(engine) as check:
            assert await refused(engine, "ws", request_bytes) == 400
            await check()
        assert engine._context.telemetry.connection_errors.labels("ws")._value.get() == 0


async def test_a_frame_sent_with_the_handshake_is_processed_first() -> None:
    """Finding 10: the frame that came in the same write as the handshake was lost."""
    from .conftest import make_config

    config = make_config(
        entrypoints={"ws": "websocket"},
        routes=[{"source": "ws", "target": "mem"}, {"source": "mem", "target": "ws"}],
    )
    from mediation.engine import open_mediation_engine

    async with open_mediation_engine(config) as engine:
        async with raw(engine, "ws") as client:
            await client.stream.send_all(ws_head() + masked_text(b"first") + masked_text(b"second"))
            assert (await client.response_head())[0] == 101
            with trio.fail_after(CLIENT_WAIT):
                assert await client.frame() == (0x1, b"first")
                assert await client.frame() == (0x1, b"second")


def masked_text(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


async def test_a_request_that_is_not_an_upgrade_gets_426_on_the_websocket_port(
    engine_with: EngineFactory,
) -> None:
    async with engine_with(entrypoints={"ws": "websocket"}, routes=ROUTES[:1]) as engine:
        async with raw(engine, "ws") as client:
            await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers = await client.response_head()
            assert (status, headers["upgrade"]) == (426, "websocket")


# -- 3: a text entrypoint and an event that is not UTF-8 ---------------------------------------


async def test_a_non_utf8_event_on_a_text_entrypoint_goes_out_with_replacement_marks(
    engine_with: EngineFactory,
) -> None:
    entrypoints = {**all_entrypoints(), "text": {"type": "websocket", "frame_type": "text"}}
    routes = [*ROUTES, {"source": "mem", "target": "text"}]
    async with engine_with(entrypoints=entrypoints, routes=routes) as engine:
        async with bystanders(engine) as check:
            async with open_ws(url(engine, "text", scheme="ws")) as text:
                async with httpx.AsyncClient() as http:
                    await http.post(url(engine, "post"), content=b"\xff\xfe")
                with trio.fail_after(CLIENT_WAIT):
                    assert await text.get_message() == "\ufffd\ufffd"
                await check()


# -- 4, 5: trailers ----------------------------------------------------------------------------


def chunked_post(*trailers: bytes, head_extra: bytes = b"") -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + head_extra
        + b"\r\n5\r\nhello\r\n0\r\n"
        + b"".join(t + b"\r\n" for t in trailers)
        + b"\r\n"
    )


@pytest.mark.parametrize("kind", ["post", "sse"])
async def test_endless_trailers_are_refused_at_max_header_bytes(
    engine_with: EngineFactory, kind: str, report_figures: Callable[..., None]
) -> None:
    """Finding 4: trailer lines without end grew the engine by 1.7 GiB in 8 s."""
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        rss_before = psutil.Process().memory_info().rss
        async with bystanders(engine) as check:
            async with raw(engine, kind) as client:
                head = chunked_post().replace(b"POST", b"GET" if kind == "sse" else b"POST")
                await client.stream.send_all(head[: -len(b"\r\n")])  # the trailers never end
                line = b"X-Trailer: " + b"t" * 1000 + b"\r\n"
                status = None
                sent = 0
                with trio.fail_after(CLIENT_WAIT):
                    try:
                        for _ in range(10_000):  # 100 MB, if nobody stopped us
                            await client.stream.send_all(line * 10)
                            sent += len(line) * 10
                    except trio.BrokenResourceError:
                        pass
                    status, _ = await client.response_head()
                    if kind == "sse":
                        # The stream started before its body was read; the body (trailers
                        # and all) is refused as it comes: the stream ends.
                        assert status == 200
                        assert await client.closed_by_peer()
                    else:
                        assert status == 431
            await check()
        growth = psutil.Process().memory_info().rss - rss_before
        report_figures(trailer_bytes_sent=sent, rss_growth_mib=round(growth / 2**20, 1))
        assert growth < 64 * 1024 * 1024


async def test_one_endless_trailer_value_is_refused_too(engine_with: EngineFactory) -> None:
    """Finding 4: one long trailer value cost quadratic time (/healthz took 2.4 s)."""
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        async with bystanders(engine) as check:
            async with raw(engine, "post") as client:
                await client.stream.send_all(chunked_post()[: -len(b"\r\n")] + b"X-Long: ")
                with trio.fail_after(CLIENT_WAIT):
                    try:
                        for _ in range(10_000):
                            await client.stream.send_all(b"v" * 1000)
                    except trio.BrokenResourceError:
                        pass
                    status, _ = await client.response_head()
                assert status == 431
            await check()


async def test_trailers_never_become_request_headers(engine_with: EngineFactory) -> None:
    """Finding 5: identity and metadata were taken from trailers read with the head."""
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        async with open_ws(url(engine, "ws", scheme="ws"), subprotocols=["mediation.v1"]) as ws:
            request = chunked_post(
                b"X-Client-ID: mallory", b"X-Injected: yes", b"Content-Type: text/evil"
            )
            async with raw(engine, "post") as client:
                await client.stream.send_all(request)
                status, _ = await client.response_head()
                assert status == 202
            event = await envelope(ws)
            assert event["payload"] == "hello"
            assert event["metadata"] == {}


async def test_a_token_only_in_the_trailers_is_no_token(engine_with: EngineFactory) -> None:
    entrypoints = {"post": {"type": "http_post", "auth": "bearer", "jwt_secret": "s" * 32}}
    async with engine_with(entrypoints=entrypoints, routes=ROUTES[1:2]) as engine:
        from .test_auth import token

        request = chunked_post(f"Authorization: Bearer {token(sub='bob')}".encode())
        async with raw(engine, "post") as client:
            await client.stream.send_all(request)
            assert (await client.response_head())[0] == 401


# -- 7: repeated headers -----------------------------------------------------------------------

SINGLE = ["Host", "X-Client-ID", "Authorization", "Origin", "Content-Length", "Sec-WebSocket-Key"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", SINGLE)
async def test_a_repeated_identity_header_is_400_on_every_entrypoint(
    engine_with: EngineFactory, kind: str, name: str
) -> None:
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        value = {"Content-Length": "0", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}.get(
            name, "a"
        )
        header = f"{name}: {value}".encode()
        lines = [
            line
            for line in request_head(kind).split(b"\r\n")
            if line and not line.lower().startswith(name.lower().encode() + b":")
        ]
        twice = b"\r\n".join([*lines, header, header]) + b"\r\n\r\n"
        assert await refused(engine, kind, twice) == 400
        if kind == "ws" and name == "Content-Length":
            return  # a handshake with a body is a 400 anyway
        once = b"\r\n".join([*lines, header]) + b"\r\n\r\n"
        async with raw(engine, kind) as client:
            await client.stream.send_all(once)
            assert (await client.response_head())[0] == ACCEPTED[kind]


# -- 8: body_timeout ---------------------------------------------------------------------------


async def test_a_body_trickled_past_body_timeout_is_408_and_frees_its_place(
    engine_with: EngineFactory, autojump_clock: trio.testing.MockClock
) -> None:
    """Finding 8: one byte a second held a request (and a max_sessions place) forever."""
    entrypoints = {"post": {"type": "http_post", "max_sessions": 1, "body_timeout": 5}}
    async with engine_with(entrypoints=entrypoints, routes=ROUTES[1:2]) as engine:
        async with raw(engine, "post") as slow:
            await slow.stream.send_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n"
            )
            start = trio.current_time()

            async def trickle() -> None:
                for _ in range(4000):
                    await slow.stream.send_all(b"x")
                    await trio.sleep(1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                status, _ = await slow.response_head()
                nursery.cancel_scope.cancel()
            assert status == 408
            assert trio.current_time() - start == pytest.approx(5, abs=1)
        await clients_gone(engine)
        async with httpx.AsyncClient() as http:
            assert (await http.post(url(engine, "post"), content=b"next")).status_code == 202


# -- 9: the head counted as received -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_whitespace_padding_counts_toward_max_header_bytes(
    engine_with: EngineFactory, kind: str
) -> None:
    """Finding 9: 60,000 bytes of padding in one header value passed a 16 KiB limit."""
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        for padding in (b" " * 60_000, b"\t" * 60_000):
            request = request_head(kind, end=False) + b"X-Pad:" + padding + b"v\r\n\r\n"
            status = await refused(engine, kind, request)
            assert status == 431


async def test_trailing_whitespace_counts_too(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        request = request_head("post", end=False) + b"X-Pad: v" + b" " * 20_000 + b"\r\n\r\n"
        assert await refused(engine, "post", request) == 431


# -- containment: an unexpected failure ends one connection --------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_an_unexpected_error_in_a_handler_ends_that_connection_only(
    engine_with: EngineFactory, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The barrier: a handler that raises (a bug, or input nothing foresaw) answers 500 (1011
    once upgraded), is counted in mediation_connection_errors_total, and ends nothing else."""
    from mediation import identity

    real_admit = identity.admit_client

    def admit(headers: Any, *args: Any, **kwargs: Any) -> identity.Client:
        if headers.get("x-fault") == "raise":
            raise RuntimeError("injected fault")
        return real_admit(headers, *args, **kwargs)

    for module in ("websocket", "sse", "http_post", "http_get"):
        monkeypatch.setattr(f"mediation.entrypoints.{module}.admit_client", admit)
    name = {"ws": "ws", "sse": "sse", "post": "post", "poll": "poll"}[kind]
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        async with bystanders(engine) as check:
            request = request_head(kind, end=False) + b"X-Fault: raise\r\n\r\n"
            assert await refused(engine, kind, request) == 500
            await check()
            counter = engine._context.telemetry.connection_errors.labels(name)
            assert counter._value.get() == 1
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(url(engine, "health", "/metrics"))).text
        assert f'mediation_connection_errors_total{{entrypoint="{name}"}} 1.0' in metrics


async def test_an_unexpected_error_after_the_upgrade_is_1011(
    engine_with: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mediation.entrypoints import websocket

    real = websocket._handle_message

    async def handle_message(ws: Any, session: Any, enveloped: bool, message: Any) -> bool:
        if message == "raise":
            raise RuntimeError("injected fault")
        return await real(ws, session, enveloped, message)

    monkeypatch.setattr(websocket, "_handle_message", handle_message)
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        async with bystanders(engine) as check:
            async with raw(engine, "ws") as client:
                await client.stream.send_all(ws_head())
                assert (await client.response_head())[0] == 101
                await client.send_frame(0x1, b"raise")
                with trio.fail_after(CLIENT_WAIT):
                    code, _ = await client.close_frame()
                assert code == 1011
                await client.send_frame(0x8, struct.pack("!H", 1011))
            await check()
            assert engine._context.telemetry.connection_errors.labels("ws")._value.get() == 1


async def test_health_answers_json_errors_for_bad_requests(engine_with: EngineFactory) -> None:
    async with engine_with(entrypoints=all_entrypoints(), routes=ROUTES) as engine:
        async with raw(engine, "health") as client:
            await client.stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: \xe4\r\n\r\n")
            status, _, body = await Raw.response(client)
            assert status == 400
            assert "ASCII" in json.loads(body)["error"]
