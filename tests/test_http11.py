"""The HTTP/1.1 server under the HTTP entrypoints (:mod:`mediation.http.server`), on its
own: a small test app behind :func:`serve_http` on a loopback port, clients speaking HTTP/1.1 by
hand over plain TCP (keep-alive, pipelining, 100-continue, oversized and malformed heads, slow
heads on Trio's autojump clock, clients that leave mid-stream, bodies nobody reads).

How many sends a response takes is counted over an in-memory stream (:func:`serve_connection`).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from mediation.errors import ListenError
from mediation.http.server import (
    DRAIN_LIMIT,
    YIELD_EVERY,
    Receive,
    Scope,
    Send,
    _SocketStream,
    serve_connection,
    serve_http,
)

from .rawhttp import StreamReader

HEADER_TIMEOUT = 5.0
MAX_HEADER_BYTES = 1024
WAIT = 10.0  # generous: the machine is shared


class Recorder:
    """What the test app saw, for the tests to look at."""

    def __init__(self) -> None:
        self.disconnected = trio.Event()
        self.send_failed: type[BaseException] | None = None
        self.stream_over = trio.Event()
        self.chunks_sent = 0


async def respond(send: Send, status: int, body: bytes, *, more: bool = False) -> None:
    headers = [(b"content-type", b"text/plain")]
    if not more:
        headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": more})


async def read_body(receive: Receive) -> bytes | None:
    body: bytes = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message["body"]
        if not message.get("more_body", False):
            return body


def make_app(recorder: Recorder) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/echo":
            body = await read_body(receive)
            if body is None:
                return  # the client left, or its body was malformed: nothing to answer
            target = scope["raw_path"] + b"?" + scope["query_string"]
            await respond(send, 200, scope["method"].encode() + b" " + target + b" " + body)
        elif path == "/ignore":  # answers without reading the body
            await respond(send, 200, b"ignored")
        elif path == "/fail-before":
            raise RuntimeError("before the response")
        elif path == "/fail-after":
            await respond(send, 200, b"partial", more=True)
            raise RuntimeError("during the response")
        elif path == "/stream":
            await stream(send, receive, recorder)
        elif path == "/start-then-read":  # the response start is held until the body is read
            await send({"type": "http.response.start", "status": 200, "headers": []})
            body = await read_body(receive)
            await send({"type": "http.response.body", "body": body or b""})
        elif path == "/headers":  # the request's headers, one per line, as the app got them
            lines = b"".join(b"%s=[%s]\n" % (name, value) for name, value in scope["headers"])
            await respond(send, 200, lines)
        elif path == "/inject":  # a header value that would split the head
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"x-a", b"1\r\nx-b: 2")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
        else:
            await respond(send, 404, b"not found")

    return app


async def stream(send: Send, receive: Receive, recorder: Recorder) -> None:
    """Like the SSE entrypoint: write until a write fails, waiting for the disconnect meanwhile."""
    await send({"type": "http.response.start", "status": 200, "headers": []})

    async def write() -> None:
        try:
            while True:
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                recorder.chunks_sent += 1
                await recorder.disconnected.wait()
                await trio.sleep(0.01)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            recorder.send_failed = type(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        while (await receive())["type"] != "http.disconnect":
            pass
        recorder.disconnected.set()
    recorder.stream_over.set()


@asynccontextmanager
async def running_server(recorder: Recorder) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_http(
                make_app(recorder),
                "127.0.0.1",
                0,
                max_header_bytes=MAX_HEADER_BYTES,
                header_timeout=HEADER_TIMEOUT,
                task_status=task_status,
            )
        )
        yield port
        nursery.cancel_scope.cancel()


class Client(StreamReader):
    """A plain TCP client: bytes out, responses parsed by hand."""

    async def closed_by_peer(self) -> bool:
        """Read until the server closes the connection (True); False if it sent more first."""
        with trio.fail_after(WAIT):
            while True:
                try:
                    data = await self.stream.receive_some()
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return not self.buffer
                self.buffer += data


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        yield Client(stream)


def request(
    method: str, target: str, body: bytes = b"", *, version: str = "1.1", headers: str = ""
) -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    head = f"{method} {target} HTTP/{version}\r\nHost: test\r\n{length}{headers}\r\n"
    return head.encode() + body


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, Recorder]]:
    recorder = Recorder()
    async with running_server(recorder) as port:
        yield port, recorder


# -- connections carry many requests -------------------------------------------------------------


async def test_keep_alive_serves_requests_one_after_another(server: tuple[int, Recorder]) -> None:
    port, _ = server
    async with connect(port) as client:
        for n in range(3):
            await client.stream.send_all(request("POST", f"/echo?n={n}", b"body %d" % n))
            status, headers, body = await client.response()
            assert (status, body) == (200, b"POST /echo?n=%d body %d" % (n, n))
            assert "date" in headers
            assert "connection" not in headers


async def test_pipelined_requests_are_answered_in_order(server: tuple[int, Recorder]) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(
            request("GET", "/echo?n=1")
            + request("POST", "/echo?n=2", b"two")
            + request("GET", "/echo?n=3")
        )
        bodies = [(await client.response())[2] for _ in range(3)]
        assert bodies == [b"GET /echo?n=1 ", b"POST /echo?n=2 two", b"GET /echo?n=3 "]


@pytest.mark.parametrize(("version", "headers"), [("1.0", ""), ("1.1", "Connection: close\r\n")])
async def test_http_1_0_and_connection_close_end_the_connection_after_the_response(
    server: tuple[int, Recorder], version: str, headers: str
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(request("GET", "/echo", version=version, headers=headers))
        status, response_headers, body = await client.response()
        assert (status, body) == (200, b"GET /echo? ")
        assert response_headers["connection"] == "close"
        assert await client.closed_by_peer()


async def test_head_gets_the_head_without_the_body(server: tuple[int, Recorder]) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(request("HEAD", "/echo") + request("GET", "/echo"))
        status, headers, _ = await client.response(head_only=True)
        assert (status, headers["content-length"]) == (200, str(len(b"HEAD /echo? ")))
        # No body came: the next bytes are the second response.
        assert (await client.response())[::2] == (200, b"GET /echo? ")


async def test_header_names_come_lower_cased_and_values_without_surrounding_whitespace(
    server: tuple[int, Recorder],
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(
            request("GET", "/headers", headers="X-Client-ID: \t abc \t \r\nX-Empty:\r\n")
        )
        status, _, body = await client.response()
        assert status == 200
        assert body.splitlines() == [b"host=[test]", b"x-client-id=[abc]", b"x-empty=[]"]


# -- request bodies -------------------------------------------------------------------------------


async def test_100_continue_is_sent_when_the_app_reads_the_body(
    server: tuple[int, Recorder],
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert (await client.response_head())[0] == 100
        await client.stream.send_all(b"hello")
        assert (await client.response())[::2] == (200, b"POST /echo? hello")
        # And the connection goes on.
        await client.stream.send_all(request("GET", "/echo"))
        assert (await client.response())[0] == 200


async def test_100_continue_is_sent_when_the_app_reads_after_starting_its_response(
    server: tuple[int, Recorder],
) -> None:
    """A held response start is not an answer yet: the client still gets its 100."""
    port, _ = server
    with trio.fail_after(WAIT):
        async with connect(port) as client:
            await client.stream.send_all(
                b"POST /start-then-read HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            assert (await client.response_head())[0] == 100
            await client.stream.send_all(b"hello")
            status, headers = await client.response_head()
            assert (status, headers["transfer-encoding"]) == (200, "chunked")
            assert await client.read_until(b"0\r\n\r\n") == b"5\r\nhello\r\n0\r\n\r\n"


async def test_an_answer_before_a_100_continue_body_closes_the_connection(
    server: tuple[int, Recorder],
) -> None:
    """The client may send the body or not: the connection cannot carry another request."""
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(
            b"POST /ignore HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        status, headers, body = await client.response()
        assert (status, headers["connection"], body) == (200, "close", b"ignored")
        await client.stream.send_all(b"hello")  # sent anyway: read and dropped by the server
        assert await client.closed_by_peer()


async def test_an_unread_body_does_not_break_the_next_request(
    server: tuple[int, Recorder],
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(request("POST", "/ignore", b"x" * 10_000))
        assert (await client.response())[::2] == (200, b"ignored")
        await client.stream.send_all(request("POST", "/echo", b"next"))
        assert (await client.response())[::2] == (200, b"POST /echo? next")


async def test_an_unread_body_past_the_drain_limit_closes_after_a_whole_answer(
    server: tuple[int, Recorder],
) -> None:
    """The client still sending its body gets the answer, then the end, not a reset."""
    port, _ = server
    size = 4 * DRAIN_LIMIT
    async with connect(port) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.stream.send_all, request("POST", "/ignore", b"x" * size))
            assert (await client.response())[::2] == (200, b"ignored")
            assert await client.closed_by_peer()


async def test_a_chunked_body_is_read_in_pieces(
    server: tuple[int, Recorder], autojump_clock: trio.abc.Clock
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        await trio.sleep(1)  # virtual time: the server reads the first piece alone
        await client.stream.send_all(b"2\r\nde\r\n0\r\n\r\n")
        assert (await client.response())[::2] == (200, b"POST /echo? abcde")


# -- refused requests -----------------------------------------------------------------------------


async def test_a_head_over_max_header_bytes_is_431_then_closed(
    server: tuple[int, Recorder],
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(b"GET /echo HTTP/1.1\r\nX-Padding: " + b"p" * 2000)
        status, headers, body = await client.response()
        assert (status, headers["connection"]) == (431, "close")
        assert b"error" in body
        assert await client.closed_by_peer()


@pytest.mark.parametrize(
    "data",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: test\r\nbad header line\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunking
        b"GET /echo HTTP/1.1\r\n\r\n",  # no Host (HTTP/1.1)
        b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
    ],
)
async def test_a_malformed_request_is_400_then_closed(
    server: tuple[int, Recorder], data: bytes
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(data)
        assert (await client.response())[0] == 400
        assert await client.closed_by_peer()


async def test_a_websocket_upgrade_is_400_another_upgrade_is_ignored(
    server: tuple[int, Recorder],
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(
            request("GET", "/echo", headers="Connection: Upgrade\r\nUpgrade: h2c\r\n")
        )
        assert (await client.response())[::2] == (200, b"GET /echo? ")
        await client.stream.send_all(
            request(
                "GET",
                "/echo",
                headers="Connection: Upgrade\r\nUpgrade: websocket\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            )
        )
        assert (await client.response())[0] == 400
        assert await client.closed_by_peer()


async def test_an_ignored_upgrade_with_a_body_is_served_and_the_connection_goes_on(
    server: tuple[int, Recorder],
) -> None:
    """The parser stops at an Upgrade head; the body and what follows are still HTTP."""
    port, _ = server
    async with connect(port) as client:
        upgrade = "Connection: Upgrade\r\nUpgrade: h2c\r\n"
        await client.stream.send_all(
            request("POST", "/echo?n=1", b"abc", headers=upgrade) + request("GET", "/echo?n=2")
        )
        assert (await client.response())[::2] == (200, b"POST /echo?n=1 abc")
        assert (await client.response())[::2] == (200, b"GET /echo?n=2 ")
        # The body split across reads.
        await client.stream.send_all(request("POST", "/echo?n=3", b"abcdef", headers=upgrade)[:-4])
        await client.stream.send_all(b"cdef")
        assert (await client.response())[::2] == (200, b"POST /echo?n=3 abcdef")


async def test_many_pipelined_requests_in_one_read_are_not_one_oversized_head(
    server: tuple[int, Recorder],
) -> None:
    """Heads are counted one by one, however many arrive in one read."""
    port, _ = server
    count = 4 * MAX_HEADER_BYTES // len(request("POST", "/echo", b"x"))
    async with connect(port) as client:
        await client.stream.send_all(
            b"".join(request("POST", "/echo", b"%d" % n) for n in range(count))
        )
        bodies = [(await client.response())[2] for _ in range(count)]
        assert bodies == [b"POST /echo? %d" % n for n in range(count)]


async def test_a_whole_head_over_max_header_bytes_in_one_read_is_431(
    server: tuple[int, Recorder],
) -> None:
    port, _ = server
    async with connect(port) as client:
        padding = "X-Padding: " + "p" * MAX_HEADER_BYTES + "\r\n"
        await client.stream.send_all(request("GET", "/echo", headers=padding))
        status, headers, _ = await client.response()
        assert (status, headers["connection"]) == (431, "close")
        assert await client.closed_by_peer()


async def test_a_response_header_with_a_line_break_is_a_500_not_an_injection(
    server: tuple[int, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(request("GET", "/inject"))
        status, headers, _ = await client.response()
        assert (status, headers["connection"]) == (500, "close")
        assert "x-b" not in headers
    assert any(r.name == "mediation.http" and r.exc_info for r in caplog.records)


# -- header_timeout -------------------------------------------------------------------------------


async def test_a_client_trickling_its_head_is_dropped_after_header_timeout(
    server: tuple[int, Recorder], autojump_clock: trio.abc.Clock
) -> None:
    port, _ = server
    async with connect(port) as client, trio.open_nursery() as nursery:

        async def trickle() -> None:
            for byte in request("GET", "/echo")[:-2]:  # never finished
                await client.stream.send_all(bytes([byte]))
                await trio.sleep(0.5)

        start = trio.current_time()
        nursery.start_soon(trickle)
        assert await client.closed_by_peer()
        assert HEADER_TIMEOUT <= trio.current_time() - start < HEADER_TIMEOUT + 0.5
        nursery.cancel_scope.cancel()


async def test_header_timeout_runs_again_from_the_end_of_each_response(
    server: tuple[int, Recorder], autojump_clock: trio.abc.Clock
) -> None:
    port, _ = server
    async with connect(port) as client:
        for _ in range(3):  # each request well within its own header_timeout, not theirs together
            await trio.sleep(HEADER_TIMEOUT * 0.8)
            await client.stream.send_all(request("GET", "/echo"))
            assert (await client.response())[0] == 200
        answered = trio.current_time()
        assert await client.closed_by_peer()  # idle: dropped header_timeout after the last answer
        assert HEADER_TIMEOUT <= trio.current_time() - answered < HEADER_TIMEOUT + 0.5


async def test_header_timeout_does_not_limit_a_response(
    server: tuple[int, Recorder], autojump_clock: trio.abc.Clock
) -> None:
    port, recorder = server
    async with connect(port) as client:
        await client.stream.send_all(request("GET", "/stream"))
        assert (await client.response_head())[0] == 200
        await trio.sleep(HEADER_TIMEOUT * 3)
        assert not recorder.disconnected.is_set()
        assert await client.read_until(b"tick\n")


# -- responses and how they end ------------------------------------------------------------------


async def test_a_client_leaving_mid_stream_is_seen_by_receive_and_send(
    server: tuple[int, Recorder],
) -> None:
    port, recorder = server
    async with connect(port) as client:
        await client.stream.send_all(request("GET", "/stream"))
        status, headers = await client.response_head()
        assert (status, headers["transfer-encoding"]) == (200, "chunked")
        assert await client.read_until(b"tick\n")
    with trio.fail_after(WAIT):
        await recorder.disconnected.wait()
        await recorder.stream_over.wait()
    # Writes after the client left fail (soon: the first may still reach the kernel).
    assert recorder.send_failed in (trio.BrokenResourceError, trio.ClosedResourceError)


async def test_an_app_failing_before_its_response_gets_500_and_a_close(
    server: tuple[int, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(request("GET", "/fail-before"))
        status, headers, _ = await client.response()
        assert (status, headers["connection"]) == (500, "close")
        assert await client.closed_by_peer()
    assert any(r.name == "mediation.http" and r.exc_info for r in caplog.records)


async def test_an_app_failing_during_its_response_has_the_connection_cut(
    server: tuple[int, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    """No final chunk: the client can tell the response is incomplete."""
    port, _ = server
    async with connect(port) as client:
        await client.stream.send_all(request("GET", "/fail-after"))
        assert (await client.response_head())[0] == 200
        assert await client.read_until(b"partial\r\n")
        assert await client.closed_by_peer()
    assert any(r.name == "mediation.http" and r.exc_info for r in caplog.records)


async def test_a_failing_client_connection_leaves_the_server_serving(
    server: tuple[int, Recorder],
) -> None:
    port, _ = server
    with trio.socket.socket() as sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(request("POST", "/echo", b"x" * 10)[:-5])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # ...reset mid-body; the next client is served.
    async with connect(port) as client:
        await client.stream.send_all(request("GET", "/echo"))
        assert (await client.response())[0] == 200


async def test_a_plain_response_is_one_send_a_streamed_one_one_send_per_message() -> None:
    sends = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/plain":
            await respond(send, 200, b"plain")
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in (b"one", b"two", b""):
            await send({"type": "http.response.body", "body": chunk, "more_body": bool(chunk)})

    client_end, server_end = trio.testing.memory_stream_pair()
    pump = server_end.send_stream.send_all_hook
    assert pump is not None

    async def counting_pump() -> None:
        nonlocal sends
        sends += 1
        await pump()

    server_end.send_stream.send_all_hook = counting_pump
    client = Client(client_end)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_connection(
                server_end, app, max_header_bytes=MAX_HEADER_BYTES, header_timeout=WAIT
            )
        )
        await client_end.send_all(request("GET", "/plain"))
        assert (await client.response())[::2] == (200, b"plain")
        assert sends == 1
        await client_end.send_all(request("GET", "/streamed"))
        assert (await client.response_head())[0] == 200
        assert await client.read_until(b"0\r\n\r\n") == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
        assert sends == 1 + 3  # head with the first chunk, the second, the end
        nursery.cancel_scope.cancel()


# -- the listening socket -------------------------------------------------------------------------


async def test_a_port_in_use_is_a_listen_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1"):
            await serve_http(
                make_app(Recorder()),
                "127.0.0.1",
                taken.getsockname()[1],
                max_header_bytes=MAX_HEADER_BYTES,
                header_timeout=HEADER_TIMEOUT,
            )


async def test_many_connections_at_once_are_all_served(server: tuple[int, Recorder]) -> None:
    port, _ = server
    answers: list[int] = []

    async def one(n: int) -> None:
        async with connect(port) as client:
            for _ in range(5):
                await client.stream.send_all(request("POST", "/echo", b"%d" % n))
                status, _, body = await client.response()
                assert body.endswith(b" %d" % n)
                answers.append(status)

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(one, n)
    assert answers == [200] * 250


# -- the socket stream under the server ----------------------------------------------------------


async def test_reads_that_never_wait_still_let_other_tasks_run() -> None:
    """A client whose bytes are always there (pipelining) cannot hold the scheduler."""
    left, right = socket.socketpair()
    left.setblocking(False)
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    with right:
        right.sendall(b"x" * (YIELD_EVERY * 4))
        async with _SocketStream(left) as stream, trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()  # other runs once
            before = turns
            for _ in range(YIELD_EVERY * 4):
                assert await stream.receive_some(1) == b"x"
            assert turns - before >= 3
            nursery.cancel_scope.cancel()


async def test_a_write_larger_than_the_socket_buffer_waits_for_the_reader() -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    data = bytes(range(256)) * 20_000  # 5 MB: far more than the kernel buffers
    received = bytearray()
    async with _SocketStream(left) as stream, _SocketStream(right) as reader:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                while len(received) < len(data):
                    received.extend(await reader.receive_some(65536))

            nursery.start_soon(read)
            await stream.send_all(data)
        assert received == data
        await stream.send_eof()
        assert await reader.receive_some() == b""


async def test_a_reset_connection_is_broken_a_closed_one_closed() -> None:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.close()
    async with _SocketStream(left) as stream:
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):  # the first writes may still reach the kernel
                await stream.send_all(b"x" * 65536)
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
