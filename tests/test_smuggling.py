"""Request smuggling: every port frames pipelined requests as a strict RFC 9112 reader would.

The probes are smuggler's Transfer-Encoding mutations (:mod:`tests.data.smuggler_gadgets`, from
defparam/smuggler), each sent three ways, as smuggler's CL.TE and TE.CL checks do, plus TE alone:

- ``cl.te``: the gadget and ``Content-Length`` over the whole body ``0\\r\\n\\r\\n`` + a smuggled
  request: a reader that takes the gadget for chunked sees the smuggled request next.
- ``te.cl``: the gadget and a ``Content-Length`` that covers only the first chunk-size line of a
  chunked body whose one chunk is the smuggled request: a reader that goes by the length sees it.
- ``te``: the gadget alone, the same chunked body.

Each probe is request 1 (``POST``, the gadget, the body) then request 2 (a request whose answer is
recognisable on that port), on one connection; the client reads the answers the splitter says
are due, then half-closes and reads until the server closes. :func:`split`, a strict reader of RFC 9112 written here (pure
Python), says where each request ends, or that the bytes must be rejected; the server must agree
(:func:`judge`): its answers are to the requests the splitter finds, in order (request 2's answer
where request 2 is, the smuggled request's where that is), or it refuses (an error status with
``connection: close``) and answers nothing more; it may refuse more than the splitter does, never
answer a request the splitter says is not one (bytes of a body), nor stay silent about one it
should answer.

The WebSocket entrypoint gets the same pipelined probes (it answers every plain request with an
error, so only the number of answers tells there), and each probe as a WebSocket handshake
(``GET`` with the handshake headers, the gadget, the body): ``101`` is only right when the
splitter finds no body, since the bytes after a ``101`` are WebSocket frames.

Accepted besides agreement: "refused" (a 4xx with ``connection: close``, nothing after it),
"stopped" (the server closed by itself before requests the splitter still had) and "answered,
then closed" (it answered a request the splitter rejects, then closed without reading on; a gap
of its own, :func:`test_an_invalid_transfer_encoding_is_refused`). In none of them does the
server take bytes the strict reading puts in one request as (part of) another; a server that
waits for more bytes than the strict reading needs is reported, after :data:`PROBE_TIMEOUT`.

One engine serves every probe; a few dozen connections run at once.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import trio

from .conftest import EngineFactory
from .data.smuggler_gadgets import CONFIGS
from .test_engine import ENTRYPOINTS, ROUTES

# -- a strict RFC 9112 message splitter (pure) -------------------------------------------------

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(%b) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])" % _TOKEN)
_FIELD_LINE = re.compile(rb"(%b):[ \t]*(.*?)[ \t]*" % _TOKEN, re.DOTALL)
# field-value: VCHAR, obs-text, and SP / HTAB between them (RFC 9110 section 5.5); any other
# control character (NUL, CR, LF, VT, ...) is invalid, and rejected here.
_FIELD_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff]([\x21-\x7e\x80-\xff \t]*[\x21-\x7e\x80-\xff])?|")
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*%b(?:[ \t]*=[ \t]*(?:%b|%b))?)*)" % (_TOKEN, _TOKEN, _QUOTED)
)


class Invalid(Exception):
    """The bytes cannot be a request (RFC 9112 says reject them, or we choose to)."""


class Incomplete(Exception):
    """The bytes end before the request does."""


@dataclass(frozen=True)
class Split:
    """How a strict reader splits a connection's bytes into requests."""

    # Each complete request, as (start, end of head, end); in order, back to back (empty lines
    # before a request line are skipped, RFC 9112 section 2.2).
    requests: tuple[tuple[int, int, int], ...]
    # What comes after the last one: "end" (nothing), "reject" (bytes that are not a request),
    # "incomplete" (a request cut short), "close" (the last request must be the last answered:
    # Transfer-Encoding with Content-Length, RFC 9112 section 6.1).
    after: str
    reason: str = ""


def _line(data: bytes, pos: int) -> tuple[bytes, int]:
    """The line at ``pos`` without its CRLF, and where the next begins. CRLF only: a bare LF
    (RFC 9112 section 2.2 lets a recipient accept it) or a bare CR (it says reject, or read as SP)
    are rejected."""
    end = data.find(b"\n", pos)
    if end < 0:
        if data.find(b"\r", pos, len(data) - 1) >= 0:  # a CR that no LF can follow
            raise Invalid("bare CR")
        raise Incomplete
    if end == pos or data[end - 1] != 0x0D:
        raise Invalid("bare LF")
    line = data[pos : end - 1]
    if b"\r" in line:
        raise Invalid("bare CR")
    return line, end + 1


def _fields(data: bytes, pos: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """Field lines up to the empty line; (lower-case name, value) each, and where they end."""
    fields = []
    while True:
        line, pos = _line(data, pos)
        if not line:
            return fields, pos
        if line[:1] in (b" ", b"\t"):
            # obs-fold, or whitespace before the first field: RFC 9112 sections 5.2 and 2.2
            # let a server reject it (or fold it, or drop the line): rejected.
            raise Invalid("a line that begins with whitespace")
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            raise Invalid(f"not a field line: {line[:40]!r}")
        name, value = match.groups()
        if _FIELD_VALUE.fullmatch(value) is None:
            raise Invalid(f"a control character in {name!r}")
        fields.append((name.lower(), value))


def _request(data: bytes, start: int) -> tuple[int, int, bool]:
    """The request at ``start``: (end of head, end, whether the connection must close after)."""
    line, pos = _line(data, start)
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise Invalid(f"not a request line: {line[:40]!r}")
    version = match.group(3, 4)
    if version not in ((b"1", b"1"), (b"1", b"0")):
        raise Invalid("HTTP version")
    fields, head_end = _fields(data, pos)
    names = [name for name, _ in fields]
    if version == (b"1", b"1") and names.count(b"host") != 1:
        raise Invalid("Host missing or repeated")  # RFC 9112 section 3.2
    close = any(
        b"close" in (option.strip(b" \t").lower() for option in value.split(b","))
        for name, value in fields
        if name == b"connection"
    )
    codings = b",".join(value for name, value in fields if name == b"transfer-encoding")
    lengths = [value for name, value in fields if name == b"content-length"]
    if b"transfer-encoding" in names:
        if version == (b"1", b"0"):
            raise Invalid("Transfer-Encoding in HTTP/1.0")  # faulty framing (section 6.1)
        listed = [c.strip(b" \t").lower() for c in codings.split(b",") if c.strip(b" \t")]
        # chunked last: the body is chunked (section 6.3, item 4), whatever comes before it
        # (a coding the server does not know SHOULD be answered 501, section 6.1: not a
        # question of framing). chunked not last is 400, chunked twice is not allowed, and a
        # value that is not a list of tokens is no coding at all.
        if (
            not listed
            or listed[-1] != b"chunked"
            or listed.count(b"chunked") > 1
            or not all(re.fullmatch(_TOKEN, coding) for coding in listed)
        ):
            raise Invalid(f"transfer codings {codings!r}")
        # With Content-Length too: framed by Transfer-Encoding, then the connection closes
        # (section 6.1; rejecting it is allowed as well).
        return head_end, _chunked(data, head_end), close or bool(lengths)
    if lengths:
        if len(lengths) > 1 or not lengths[0].isdigit():
            raise Invalid(f"Content-Length {lengths!r}")  # section 6.3, item 5
        end = head_end + int(lengths[0])
        if end > len(data):
            raise Incomplete
        return head_end, end, close
    return head_end, head_end, close


def _chunked(data: bytes, pos: int) -> int:
    while True:
        line, pos = _line(data, pos)
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise Invalid(f"not a chunk-size line: {line[:40]!r}")
        size = int(match.group(1), 16)
        if size == 0:
            _trailers, pos = _fields(data, pos)
            return pos
        if pos + size + 2 > len(data):
            raise Incomplete
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise Invalid("chunk data not followed by CRLF")
        pos += size + 2


def split(data: bytes) -> Split:
    """Split a connection's bytes into requests, as a strict RFC 9112 server would."""
    requests: list[tuple[int, int, int]] = []
    pos = 0
    while True:
        while data.startswith(b"\r\n", pos):  # section 2.2: ignore empty lines before a request
            pos += 2
        if pos == len(data):
            return Split(tuple(requests), "end")
        try:
            head_end, end, close = _request(data, pos)
        except Invalid as error:
            return Split(tuple(requests), "reject", str(error))
        except Incomplete:
            return Split(tuple(requests), "incomplete")
        requests.append((pos, head_end, end))
        if close:
            return Split(tuple(requests), "close")
        pos = end


# -- the probes --------------------------------------------------------------------------------

HOST = b"127.0.0.1"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n"
CHUNK_SIZE_LINE = b"%x\r\n" % len(SMUGGLED)
CHUNKED_BODY = CHUNK_SIZE_LINE + SMUGGLED + b"\r\n0\r\n\r\n"
CONTENT_TYPE = b"Content-type: application/x-www-form-urlencoded; charset=UTF-8\r\n"
MODES = ("cl.te", "te.cl", "te")


def gadget_bytes() -> dict[bytes, str]:
    """Every distinct gadget as bytes (Latin-1, and UTF-8 as smuggler sends it) -> a name."""
    gadgets: dict[bytes, str] = {}
    for config, mutations in CONFIGS.items():
        for name, gadget in mutations.items():
            gadgets.setdefault(gadget.encode("latin-1"), f"{config}:{name}")
            gadgets.setdefault(gadget.encode("utf-8"), f"{config}:{name}:utf-8")
    return gadgets


def request_1(head: bytes, gadget: bytes, mode: str) -> tuple[bytes, int]:
    """Request 1 (``head``: its request line and any fields before the gadget), and where the
    smuggled request starts in it."""
    if mode == "cl.te":
        body = b"0\r\n\r\n" + SMUGGLED
        length = b"Content-Length: %d\r\n" % len(body)
        smuggled_at = len(body) - len(SMUGGLED)
    else:
        body = CHUNKED_BODY
        length = b"Content-Length: %d\r\n" % len(CHUNK_SIZE_LINE) if mode == "te.cl" else b""
        smuggled_at = len(CHUNK_SIZE_LINE)
    head += gadget + b"\r\nHost: " + HOST + b"\r\n" + CONTENT_TYPE + length + b"\r\n"
    return head + body, len(head) + smuggled_at


@dataclass(frozen=True)
class Port:
    """What each HTTP port gets as request 1's line, and request 2 with how its answer looks."""

    request_1: bytes
    request_2: bytes
    # Whether a response (status, body) is request 2's; None: the port answers every probe
    # alike, so only the number of answers tells.
    answer_2: Callable[[int, bytes], bool] | None


PORTS = {
    "health": Port(
        b"POST /readyz HTTP/1.1\r\n",  # 405, the body left unread (drained by the server)
        b"GET /healthz HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        lambda status, body: status == 200 and b'"status":"ok"' in body,
    ),
    "sse": Port(
        b"POST / HTTP/1.1\r\n",  # 405
        b"GET /request-2 HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        lambda status, body: status == 404 and b"/request-2" in body,
    ),
    "post": Port(
        b"POST / HTTP/1.1\r\n",  # 202: the body read and published
        b"GET /request-2 HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        lambda status, body: status == 404 and b"/request-2" in body,
    ),
    "poll": Port(
        b"POST /request-1 HTTP/1.1\r\n",  # 404
        b"GET /poll HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        lambda status, body: status == 400 and b"X-Client-ID header required" in body,
    ),
    # Every plain HTTP request is refused (426, or 400 and closed before the WebSocket
    # entrypoint was served by mediation.http.server).
    "ws": Port(
        b"POST / HTTP/1.1\r\n",
        b"GET /request-2 HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n",
        None,
    ),
}
WS_UPGRADE = (
    b"GET /?client_id=probe HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def refusal(self) -> bool:
        """An error after which the server closes: nothing after it is read as a request."""
        return self.status >= 400 and b"close" in self.headers.get(b"connection", b"").lower()

    def __repr__(self) -> str:
        return f"{self.status} {self.body[:60]!r}"


def parse_responses(data: bytes) -> list[Response]:
    """The responses in what the server sent before it closed (bodies framed by length or
    chunks, or to the end)."""
    responses = []
    pos = 0
    while pos < len(data):
        head_end = data.index(b"\r\n\r\n", pos) + 4
        status_line, *lines = data[pos : head_end - 4].split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if b"content-length" in headers:
            pos = head_end + int(headers[b"content-length"])
            if pos > len(data):
                raise ValueError("a response not complete yet")
            body = data[head_end:pos]
        elif headers.get(b"transfer-encoding") == b"chunked":
            body, pos = b"", head_end
            while True:
                size_end = data.index(b"\r\n", pos)
                size = int(data[pos:size_end].split(b";")[0], 16)
                body += data[size_end + 2 : size_end + 2 + size]
                pos = size_end + 2 + size + 2
                if pos > len(data):
                    raise ValueError("a response not complete yet")
                if size == 0:  # (no trailers are sent)
                    break
        elif status == 101:
            body, pos = b"", len(data)  # WebSocket frames follow
        else:
            body, pos = data[head_end:], len(data)
        responses.append(Response(status, headers, body))
    return responses


def judge(split_: Split, kinds: list[str], exchanged: Exchange, port: Port) -> str:
    """What the server did against what the splitter says: "agree"; "refused" (an error status
    with ``connection: close``, then nothing, where the splitter still had requests); "stopped"
    (it closed by itself, before the requests the splitter still had: it read nothing as a
    request); or, for anything else, what differs.

    ``kinds`` names the splitter's requests: "request 1", "request 2", "smuggled" or "other".
    """
    responses = parse_responses(exchanged.received)

    def answers(kind: str, response: Response) -> bool:
        if kind == "request 1" or port.answer_2 is None:
            return True  # any answer (a port whose answers all look alike: counted only)
        looks_like_2 = port.answer_2(response.status, response.body)
        if kind == "request 2":
            return looks_like_2
        if kind == "smuggled":
            return response.status == 404 and not looks_like_2
        return not looks_like_2

    for i, response in enumerate(responses):
        last = i == len(responses) - 1
        if i < len(kinds) and answers(kinds[i], response):
            if response.refusal and not last:
                return f"answered again after refusing: {responses}"
            continue
        if response.refusal and last:
            return "agree" if i >= len(kinds) else "refused"
        if last and i == len(kinds) and split_.after == "reject" and not exchanged.waited:
            # It answered the request the splitter rejects, then closed by itself without
            # reading on: no bytes taken as another request, but no 400 either (see
            # test_an_invalid_transfer_encoding_is_refused).
            return "answered, then closed"
        expected = kinds[i] if i < len(kinds) else f"nothing ({split_.after}: {split_.reason})"
        return f"answer {i + 1} {response!r} where the splitter has {expected}; all: {responses}"
    if exchanged.waited:
        # Bytes the strict reading has as whole requests, taken as the start of something longer
        # (a body, a head): the server waits for the rest.
        return f"waited for more bytes after answering {responses}; the splitter has {kinds}"
    if len(responses) == len(kinds):
        return "agree"
    if responses and responses[-1].refusal:
        return "refused"
    return "stopped"


# -- the test ------------------------------------------------------------------------------------

CONNECTIONS = 48
# How long a probe waits for answers the splitter says are due (only a server that waits for
# bytes the strict reading does not expect takes that long: it is then reported).
PROBE_TIMEOUT = 3.0


@dataclass
class Exchange:
    received: bytes
    waited: bool  # the server neither answered as many as expected nor closed, in time


async def exchange(port: int, data: bytes, expected: int) -> Exchange:
    """Send ``data``; read until ``expected`` answers are in (or the server closes), then
    half-close and read until the server closes. A WebSocket ``101`` ends the reading."""
    received = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(data)  # (refused and closed before it read everything)
        with trio.move_on_after(PROBE_TIMEOUT) as waiting:
            with contextlib.suppress(trio.BrokenResourceError):  # reset after the answers
                eof_sent = False
                while True:
                    if not eof_sent and _answers(received) >= expected:
                        with contextlib.suppress(trio.BrokenResourceError):
                            await stream.send_eof()
                        eof_sent = True
                    chunk = await stream.receive_some()
                    if not chunk:
                        break
                    received += chunk
                    if received.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in received:
                        break
    return Exchange(bytes(received), waiting.cancelled_caught)


def _answers(received: bytes) -> int:
    try:
        return len(parse_responses(bytes(received)))
    except (ValueError, IndexError):
        return 0  # one not complete yet


@dataclass(frozen=True)
class Probe:
    port: str
    gadget: str
    mode: str
    data: bytes
    split: Split
    kinds: tuple[str, ...]  # of the splitter's requests (see judge)
    upgrade: bool = False  # request 1 is a WebSocket handshake


def probe(port: str, name: str, gadget: bytes, mode: str, head: bytes, request_2: bytes) -> Probe:
    first, smuggled_at = request_1(head, gadget, mode)
    data = first + request_2
    split_ = split(data)
    starts = {0: "request 1", smuggled_at: "smuggled"}
    if request_2:
        starts[len(first)] = "request 2"
    kinds = tuple(starts.get(start, "other") for start, _, _ in split_.requests)
    return Probe(port, name, mode, data, split_, kinds, upgrade=head == WS_UPGRADE)


def probes(gadgets: dict[bytes, str]) -> Iterator[Probe]:
    for gadget, name in gadgets.items():
        for mode in MODES:
            for port_name, port in PORTS.items():
                yield probe(port_name, name, gadget, mode, port.request_1, port.request_2)
            yield probe("ws", name, gadget, mode, WS_UPGRADE, b"")


def judge_upgrade(probe: Probe, exchanged: Exchange) -> str:
    """A handshake with the gadget and a body: ``101`` only if the splitter finds no body (the
    bytes after the head are WebSocket frames then, for both); else as :func:`judge`."""
    responses = parse_responses(exchanged.received)
    if responses and responses[0].status == 101:
        requests = probe.split.requests
        if not requests or requests[0][1] != requests[0][2]:
            # The bytes after the head are the request's body, or the request must be refused,
            # yet the server switched protocols right after the head: they would be frames.
            return f"101, though the splitter has {requests[:1]} ({probe.split.after})"
        return "agree"
    return judge(probe.split, list(probe.kinds), exchanged, PORTS["ws"])


ACCEPTED = ("agree", "refused", "stopped", "answered, then closed")


async def test_every_port_frames_smuggler_gadgets_as_a_strict_reader(
    engine_with: EngineFactory,
) -> None:
    gadgets = gadget_bytes()
    outcomes: dict[str, int] = {}
    differences: list[str] = []
    examples: dict[str, str] = {}
    work = probes(gadgets)

    async def worker(ports: dict[str, int]) -> None:
        for probe in work:  # shared: each worker takes the next probe
            expected = len(probe.kinds)
            exchanged = await exchange(ports[probe.port], probe.data, expected)
            try:
                if probe.upgrade:
                    verdict = judge_upgrade(probe, exchanged)
                else:
                    verdict = judge(probe.split, list(probe.kinds), exchanged, PORTS[probe.port])
            except (ValueError, IndexError):
                verdict = f"unparseable answers: {exchanged.received[:300]!r}"
            key = verdict if verdict in ACCEPTED else "differ"
            outcomes[key] = outcomes.get(key, 0) + 1
            examples.setdefault(key, f"{probe.port} {probe.mode} {probe.gadget}")
            if key == "differ":
                where = f"{probe.port}{' upgrade' if probe.upgrade else ''} {probe.mode}"
                differences.append(f"{where} {probe.gadget}: {verdict}\n    sent {probe.data!r}")

    with trio.fail_after(120):
        async with engine_with(entrypoints=ENTRYPOINTS, routes=ROUTES) as engine:
            async with trio.open_nursery() as nursery:
                for _ in range(CONNECTIONS):
                    nursery.start_soon(worker, engine.ports)
    print(f"{len(gadgets)} gadgets: {outcomes}")
    for verdict, example in sorted(examples.items()):
        print(f"  e.g. {verdict}: {example}")
    assert not differences, f"{len(differences)} differ:\n" + "\n".join(sorted(differences)[:60])
    assert outcomes["agree"] > 0


# The gadgets whose Transfer-Encoding llhttp finds invalid only once the head is complete: the
# server once answered the request (an app that does not read the body acted on it), then closed
# without the 400 that RFC 9112 section 6.3 asks for. Now the head is refused when it ends.
INVALID_CODINGS = [
    b"Transfer-Encoding: chunked\tX: X",
    b"Transfer-Encoding: chunked X: X",
    b"Transfer-Encoding: 'chunked'",
    b'Transfer-Encoding: "chunked"',
    b"Transfer-Encoding: chunk",
    b"Transfer-Encoding: cow chunked bar",
]


@pytest.mark.parametrize("gadget", INVALID_CODINGS)
async def test_an_invalid_transfer_encoding_is_refused(
    gadget: bytes, engine_with: EngineFactory
) -> None:
    first, _ = request_1(PORTS["health"].request_1, gadget, "te")
    assert split(first).after == "reject"
    async with engine_with(entrypoints={}, routes=[]) as engine:
        exchanged = await exchange(engine.ports["health"], first, 1)
    [answer] = parse_responses(exchanged.received)
    assert (answer.status, answer.refusal) == (400, True)


# -- the splitter itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", ((0, 27, 27),)),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            ((0, 47, 49), (49, 76, 76)),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            ((0, 56, 68),),
        ),
    ],
)
def test_split_frames_valid_requests(
    data: bytes, expected: tuple[tuple[int, int, int], ...]
) -> None:
    assert split(data) == Split(expected, "end")


@pytest.mark.parametrize(
    ("field", "after"),
    [
        (b"Transfer-Encoding: chunked\r\nContent-Length: 3", "close"),  # TE wins, then close
        (b"Transfer-Encoding : chunked", "reject"),  # whitespace before the colon
        (b"Transfer-Encoding: chunked, cow", "reject"),  # chunked not last
        (b"Transfer-Encoding: chunked, chunked", "reject"),  # chunked twice
        (b'Transfer-Encoding: "chunked"', "reject"),  # not a token
        (b"Transfer-Encoding: chunked\r\n Transfer-Encoding: chunked", "reject"),  # obs-fold
        (b"X: a\rTransfer-Encoding: chunked", "reject"),  # bare CR
        (b"X: a\nTransfer-Encoding: chunked", "reject"),  # bare LF
        (b"Transfer-Encoding:\x0bchunked", "reject"),  # a control character
        (b"Content-Length: 3\r\nContent-Length: 3", "reject"),
        (b"Transfer_Encoding: chunked", "end"),  # another field: no body
    ],
)
def test_split_decides_like_rfc_9112(field: bytes, after: str) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\n" + field + b"\r\n\r\n0\r\n\r\n"
    if after == "end":
        # Without a body, "0" is the next request line: rejected.
        assert split(data).after == "reject" and len(split(data).requests) == 1
    else:
        assert split(data).after == after
