"""Hostile inputs for the entrypoints, made from valid requests. Pure: no I/O, no clock.

::

    inputs = Mutations(seed=1234)
    first = inputs.make(0)      # a FuzzInput: target entrypoint, bytes, mutations applied
    again = Mutations(seed=1234).make(0)
    assert first == again       # input i depends on (seed, i) only: reproducible alone

Each input starts as a valid request for one entrypoint (an SSE ``GET``, a webhook ``POST`` with
``Content-Length`` or a chunked body with trailers, a pipelined polling cycle
``/subscribe``-``/poll``-``/ack``-``/unsubscribe``, a WebSocket handshake with its first frames,
enveloped or not), then goes through up to a few mutations: structural ones (duplicated, dropped
and reordered header lines, another method, version, target, client id or framing, bad chunk
sizes and trailers, bad WebSocket frames and envelopes) and byte ones (flips, inserted
NUL/CR/LF/0x80-0xff, truncations, deletions, duplications). About one in eight is sent as made.

The parameterised entrypoints (issue 14) get valid requests of their own (``/t/ROOM?symbol=A``,
repeated symbols, ``filter.NAME=``; WebSocket handshakes followed by ``{"subscribe"}`` and
``{"unsubscribe"}`` envelopes), then hostile parameter values (wildcards and separators in
every spelling, look-alikes, 10 KiB, template syntax), more subscriptions than allowed, bad
filters, and mutated subscription changes.

The envelope's ``{"resume": id}`` (issue 16): WebSocket handshakes to ``ws-k``, whose route
reads a Kafka topic (event ids are positions, so its sessions have a resume gate,
mediation/resume_gate.py), followed by a ``{"resume"}`` as the first message or a later one, and
a ``{"resume"}`` inserted anywhere in any WebSocket input. The cursors: valid ones (signed with
the driver's ``cursor_secret``, :data:`CURSOR_SECRET`) for positions the topic holds, positions
past its end, other partitions and topics, offsets beyond 64 bits, malformed positions;
tampered ones (a changed character of the position or the mac, another secret's mac, a mac cut
short), unsigned ids; values that are not strings (numbers, ``null``, arrays, objects, numbers
of 5,000 digits, ``1e999``); huge and odd strings (near ``max_message_bytes``, lone surrogates,
NUL). Sometimes the handshake gives ``?last_event_id=`` too (a resume message is then refused).

The targets are entrypoint names of the driver's configuration (:data:`TARGETS`).
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from mediation.cursors import Cursors

# Entrypoint name -> its type, as the driver configures them.
TARGETS: dict[str, str] = {
    "ws": "websocket",  # frame_type auto, routes auto
    "ws-text": "websocket",  # frame_type text, routes at_least_once
    "sse": "sse",
    "hook": "http_post",  # auto
    "hook-ack": "http_post",  # at_least_once
    "poll": "http_get",  # at_least_once
    # Parameterised (issue 14): PARAMS_PATH, PARAMS, MAX_SUBSCRIPTIONS and FILTER_FIELDS below.
    "ws-p": "websocket",
    "sse-p": "sse",
    "hook-p": "http_post",
    "poll-p": "http_get",
    # Resume (issue 16): routes from a Kafka topic (ids are positions: a resume gate), at least once.
    "ws-k": "websocket",
}
PARAM_TARGETS = frozenset({"ws-p", "sse-p", "hook-p", "poll-p"})

# The Kafka topic ws-k reads (RESUME_TOPIC, one partition), the driver's cursor_secret, and how
# many records the driver puts in the topic before the first input: a cursor for an offset
# below FILLED names an event the topic holds.
RESUME_TOPIC = "fuzz.resume"
CURSOR_SECRET = "the fuzz driver's cursor secret: 32 bytes or more"
FILLED = 20

# The parameterised entrypoints' template and patterns, as the driver configures them: a path
# parameter and a query parameter that may repeat (one subscription per value), on routes that
# allow filters on two fields.
PARAMS_PREFIX = "/t/"
PARAMS_PATH = PARAMS_PREFIX + "{room}"
PARAMS = {"room": "[a-z0-9]{1,16}", "symbol": "[A-Z]{1,8}"}
MAX_SUBSCRIPTIONS = 4
FILTER_FIELDS = ("type", "key")

# What the driver configures, and what the inputs aim just past.
MAX_HEADER_BYTES = 4096
MAX_MESSAGE_BYTES = 8192
MAX_BODY = 8192

CRLF = b"\r\n"


@dataclass(frozen=True)
class FuzzInput:
    """One hostile connection: ``data`` sent to the entrypoint ``target`` at once."""

    seed: int
    index: int
    target: str
    kind: str  # the valid request it was made from
    data: bytes
    mutations: tuple[str, ...]
    # Shut the sending side down after ``data`` (the server sees EOF), or leave it open (the
    # server's own timeouts must end the connection).
    half_close: bool
    # The WebSocket handshake's key, to check Sec-WebSocket-Accept; None for plain HTTP.
    websocket_key: str | None = None

    @property
    def mutated(self) -> bool:
        return bool(self.mutations)

    def describe(self, limit: int = 400) -> str:
        """The input for a report: everything but the bytes past ``limit`` (``make(index)``
        gives them all again)."""
        data = repr(self.data[:limit])
        if len(self.data) > limit:
            data += f" ... ({len(self.data)} bytes)"
        return (
            f"seed={self.seed} index={self.index} target={self.target} kind={self.kind} "
            f"half_close={self.half_close} mutations={list(self.mutations)}\n"
            f"    data={data}"
        )


# -- valid requests -----------------------------------------------------------------------------


@dataclass
class Request:
    """One HTTP/1.1 request, kept in pieces so that mutations can work on lines and framing."""

    method: bytes
    target: bytes
    version: bytes = b"HTTP/1.1"
    headers: list[bytes] = field(default_factory=list)  # whole lines, without CRLF
    body: bytes = b""
    # A chunked body: (size line, data) per chunk, then the trailer lines. None: ``body``.
    chunks: list[tuple[bytes, bytes]] | None = None
    trailers: list[bytes] = field(default_factory=list)
    line_end: bytes = CRLF

    def header_index(self, name: bytes) -> int | None:
        for i, line in enumerate(self.headers):
            if line.split(b":", 1)[0].strip().lower() == name.lower():
                return i
        return None

    def set_header(self, name: bytes, value: bytes) -> None:
        i = self.header_index(name)
        if i is None:
            self.headers.append(name + b": " + value)
        else:
            self.headers[i] = name + b": " + value

    def encode(self) -> bytes:
        end = self.line_end
        head = b" ".join(p for p in (self.method, self.target, self.version) if p is not None)
        out = bytearray(head + end)
        for line in self.headers:
            out += line + end
        out += end
        if self.chunks is None:
            out += self.body
        else:
            for size, data in self.chunks:
                out += size + CRLF + data + CRLF
            out += b"0" + CRLF
            for line in self.trailers:
                out += line + CRLF
            out += CRLF
        return bytes(out)


@dataclass
class Frame:
    """One WebSocket frame from the client (masked unless told otherwise)."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0  # the three RSV bits, 0-7
    masked: bool = True
    mask_key: bytes = b"\x12\x34\x56\x78"
    length: int | None = None  # a length field that lies about the payload

    def encode(self) -> bytes:
        first = (0x80 if self.fin else 0) | (self.rsv & 7) << 4 | (self.opcode & 0x0F)
        length = len(self.payload) if self.length is None else self.length
        mask_bit = 0x80 if self.masked else 0
        if length < 126:
            head = bytes([first, mask_bit | length])
        elif length < 1 << 16:
            head = bytes([first, mask_bit | 126]) + length.to_bytes(2, "big")
        else:
            head = bytes([first, mask_bit | 127]) + (length % (1 << 64)).to_bytes(8, "big")
        if not self.masked:
            return head + self.payload
        key = self.mask_key
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(self.payload))


@dataclass
class Seed:
    target: str
    kind: str
    requests: list[Request]
    frames: list[Frame] = field(default_factory=list)
    websocket_key: str | None = None

    def encode(self) -> bytes:
        return b"".join(r.encode() for r in self.requests) + b"".join(
            f.encode() for f in self.frames
        )


def _client_id(rng: random.Random) -> bytes:
    # Never the bystanders' ids (the driver's start with "bystander-").
    return f"fz-{rng.randrange(10**6)}".encode()


def _payload(rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return b""
    if choice == 1:
        return b"hello fuzz"
    if choice == 2:
        return json.dumps({"type": "order", "n": rng.randrange(1000)}).encode()
    if choice == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if choice == 4:
        return "line one\nline two\r\nthree\u00e9\u2603".encode()
    return b"x" * rng.choice([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 300])


def _host(rng: random.Random) -> bytes:
    return rng.choice([b"Host: 127.0.0.1", b"Host: localhost:8080", b"host: example.com"])


def sse_seed(rng: random.Random) -> Seed:
    headers = [_host(rng), b"Accept: text/event-stream"]
    target = b"/"
    if rng.random() < 0.5:
        headers.append(b"X-Client-ID: " + _client_id(rng))
    elif rng.random() < 0.5:
        target = b"/?client_id=" + _client_id(rng)
    if rng.random() < 0.3:
        headers.append(b"Last-Event-ID: " + rng.choice([b"42", b"abc", b"0.deadbeef"]))
    if rng.random() < 0.3:
        headers.append(b"Cache-Control: no-cache")
    if rng.random() < 0.3:
        headers.append(b"Origin: http://example.com")
    rng.shuffle(headers)
    return Seed("sse", "sse-get", [Request(b"GET", target, headers=headers)])


def post_seed(rng: random.Random) -> Seed:
    target = rng.choice(["hook", "hook-ack"])
    body = _payload(rng)
    headers = [_host(rng)]
    if rng.random() < 0.7:
        headers.append(
            b"Content-Type: "
            + rng.choice([b"application/json", b"text/plain; charset=utf-8", b"application/x"])
        )
    if rng.random() < 0.5:
        headers.append(b"X-Client-ID: " + _client_id(rng))
    if rng.random() < 0.5:
        headers.append(b"X-Trace: " + str(rng.randrange(10**9)).encode())
    framing = rng.choice(["length", "length", "chunked", "chunked-trailers", "expect", "http10"])
    request = Request(b"POST", b"/", headers=headers)
    if framing == "chunked" or framing == "chunked-trailers":
        request.headers.append(b"Transfer-Encoding: chunked")
        chunks = []
        rest = body
        while rest:
            n = rng.randrange(1, 40)
            size = format(len(rest[:n]), "x").encode()
            if rng.random() < 0.2:
                size += b";ext=" + rng.choice([b"1", b'"q"', b"a"])
            chunks.append((size, rest[:n]))
            rest = rest[n:]
        request.chunks = chunks
        if framing == "chunked-trailers":
            request.headers.append(b"Trailer: X-Checksum")
            request.trailers = [b"X-Checksum: " + str(len(body)).encode()]
    else:
        request.headers.append(b"Content-Length: " + str(len(body)).encode())
        request.body = body
        if framing == "expect":
            request.headers.append(b"Expect: 100-continue")
        if framing == "http10":
            request.version = b"HTTP/1.0"
    if rng.random() < 0.2:
        request.headers.append(b"Connection: close")
    return Seed(target, f"post-{framing}", [request])


def poll_seed(rng: random.Random) -> Seed:
    client = b"X-Client-ID: " + _client_id(rng)
    host = _host(rng)

    def request(method: bytes, path: bytes, *extra: bytes) -> Request:
        return Request(method, path, headers=[host, client, *extra])

    subscribe = request(b"POST", b"/subscribe", b"Content-Length: 0")
    poll = request(b"GET", b"/poll")
    ack = request(
        b"POST",
        b"/ack",
        b"X-Event-ID: " + rng.choice([b"1", b"unknown", b"mem-1", b"-"]),
        b"Content-Length: 0",
    )
    unsubscribe = request(b"DELETE", b"/unsubscribe")
    shape = rng.randrange(4)
    if shape == 0:
        requests = [subscribe, poll, ack, unsubscribe]
    elif shape == 1:
        requests = [subscribe, unsubscribe]
    elif shape == 2:
        requests = [poll]  # not subscribed: 404
    else:
        requests = [subscribe, poll]
    return Seed("poll", "poll-" + "-".join(r.target[1:].decode() for r in requests), requests)


def _websocket_key(rng: random.Random) -> str:
    return base64.b64encode(bytes(rng.randrange(256) for _ in range(16))).decode()


def _envelope(rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return json.dumps({"id": f"u{rng.randrange(100)}", "payload": "hi"}).encode()
    if choice == 1:
        return json.dumps(
            {"id": "b1", "payload": base64.b64encode(b"\xff\x00").decode(), "encoding": "base64"}
        ).encode()
    if choice == 2:
        return json.dumps({"ack": f"mem-{rng.randrange(100)}"}).encode()
    if choice == 3:
        return json.dumps({"nack": "nobody"}).encode()
    return json.dumps({"id": "m1", "payload": "x", "metadata": {"k": "v"}}).encode()


def websocket_seed(rng: random.Random) -> Seed:
    target = rng.choice(["ws", "ws-text"])
    key = _websocket_key(rng)
    headers = _handshake(rng, key, subprotocol=0.5)
    enveloped = b"Sec-WebSocket-Protocol: mediation.v1" in headers
    if rng.random() < 0.2:
        headers.append(b"Origin: http://example.com")
    frames = []
    for _ in range(rng.randrange(4)):
        kind = rng.randrange(6)
        key4 = bytes(rng.randrange(256) for _ in range(4))
        if kind <= 1:
            payload = _envelope(rng) if enveloped else _payload(rng)[:200]
            frames.append(Frame(0x1, payload if _is_utf8(payload) else b"text", mask_key=key4))
        elif kind == 2:
            frames.append(Frame(0x2, _payload(rng)[:200], mask_key=key4))
        elif kind == 3:
            frames.append(Frame(0x9, b"ping", mask_key=key4))
        elif kind == 4:  # a fragmented text message
            frames.append(Frame(0x1, b"frag", fin=False, mask_key=key4))
            frames.append(Frame(0x0, b"ment", mask_key=key4))
        else:
            frames.append(Frame(0x8, (1000).to_bytes(2, "big") + b"bye", mask_key=key4))
    name = "ws-envelope" if enveloped else "ws-plain"
    return Seed(target, name, [Request(b"GET", b"/", headers=headers)], frames, key)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- valid requests to the parameterised entrypoints --------------------------------------------

SYMBOLS = ["A", "B", "C", "XYZ", "QQQQQQQQ"]


def _room(rng: random.Random) -> bytes:
    # Never "by": the driver's bystander listens on /t/by.
    return rng.choice([b"r1", b"room", b"42", b"abc123", b"z"])


def _params_query(rng: random.Random, *, repeat: bool, filters: bool) -> bytes:
    """``symbol=...`` (repeated up to MAX_SUBSCRIPTIONS values when ``repeat``), maybe filters."""
    count = rng.randint(1, MAX_SUBSCRIPTIONS) if repeat and rng.random() < 0.5 else 1
    parts = [b"symbol=" + s.encode() for s in rng.sample(SYMBOLS, count)]
    if filters and rng.random() < 0.4:
        for name in rng.sample(FILTER_FIELDS, rng.randint(1, 2)):
            values = rng.sample([b"order.created", b"order.paid", b"acme", b"a%2Eb"], 2)
            parts += [b"filter." + name.encode() + b"=" + v for v in values[: rng.randint(1, 2)]]
    rng.shuffle(parts)
    return b"&".join(parts)


def sse_params_seed(rng: random.Random) -> Seed:
    headers = [_host(rng), b"Accept: text/event-stream"]
    if rng.random() < 0.5:
        headers.append(b"X-Client-ID: " + _client_id(rng))
    query = _params_query(rng, repeat=True, filters=True)
    target = PARAMS_PREFIX.encode() + _room(rng) + b"?" + query
    return Seed("sse-p", "sse-params", [Request(b"GET", target, headers=headers)])


def post_params_seed(rng: random.Random) -> Seed:
    body = _payload(rng)[:300]
    headers = [_host(rng), b"Content-Length: " + str(len(body)).encode()]
    if rng.random() < 0.5:
        headers.append(b"X-Client-ID: " + _client_id(rng))
    query = _params_query(rng, repeat=False, filters=False)
    target = PARAMS_PREFIX.encode() + _room(rng) + b"?" + query
    return Seed("hook-p", "post-params", [Request(b"POST", target, headers=headers, body=body)])


def poll_params_seed(rng: random.Random) -> Seed:
    client = b"X-Client-ID: " + _client_id(rng)
    host = _host(rng)
    base = PARAMS_PREFIX.encode() + _room(rng)

    def request(method: bytes, path: bytes, *extra: bytes) -> Request:
        return Request(method, base + path, headers=[host, client, *extra])

    query = _params_query(rng, repeat=True, filters=True)
    requests = [request(b"POST", b"/subscribe?" + query, b"Content-Length: 0")]
    if rng.random() < 0.7:
        requests.append(request(b"GET", b"/poll"))
    if rng.random() < 0.5:
        requests.append(request(b"DELETE", b"/unsubscribe"))
    return Seed("poll-p", "poll-params", requests)


def _subscription_change(rng: random.Random) -> bytes:
    """A valid ``{"subscribe"}`` or ``{"unsubscribe"}`` of the parameterised entrypoints."""
    which = rng.choice(["subscribe", "subscribe", "unsubscribe"])
    params = {"symbol": rng.choice(SYMBOLS)}
    if rng.random() < 0.2:
        params["room"] = _room(rng).decode()
    return json.dumps({which: params}).encode()


def websocket_params_seed(rng: random.Random) -> Seed:
    key = _websocket_key(rng)
    headers = [
        _host(rng),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key.encode(),
        b"Sec-WebSocket-Version: 13",
    ]
    if rng.random() < 0.85:
        headers.append(b"Sec-WebSocket-Protocol: mediation.v1")
    if rng.random() < 0.5:
        headers.append(b"X-Client-ID: " + _client_id(rng))
    query = _params_query(rng, repeat=True, filters=True)
    target = PARAMS_PREFIX.encode() + _room(rng) + b"?" + query
    frames = []
    for _ in range(rng.randrange(1, 6)):
        key4 = bytes(rng.randrange(256) for _ in range(4))
        payload = _subscription_change(rng) if rng.random() < 0.7 else _envelope(rng)
        frames.append(Frame(0x1, payload, mask_key=key4))
    return Seed("ws-p", "ws-params", [Request(b"GET", target, headers=headers)], frames, key)


# -- valid requests that resume (issue 16) ------------------------------------------------------

_SIGNED = Cursors(CURSOR_SECRET)
_OTHER_FLEET = Cursors("another fleet's cursor secret, also 32 bytes or more")


def _resume_position(rng: random.Random) -> str:
    """A position to sign: mostly one the topic holds, else one that is not there or odd."""
    how = rng.randrange(8)
    if how < 4:  # held: the session resumes right after it
        return f"{RESUME_TOPIC}:0:{rng.choice([0, 1, FILLED // 2, FILLED - 1])}"
    if how == 4:  # past the end (a reset), or beyond what Kafka's 64-bit offsets hold
        offset = rng.choice([FILLED + 10**6, 2**31, 2**63 - 2, 2**63 - 1, 2**63, 2**64, 10**30])
        return f"{RESUME_TOPIC}:0:{offset}"
    if how == 5:  # a partition the topic does not have, or no partition at all
        return f"{RESUME_TOPIC}:{rng.choice([1, 7, 2**31 - 1, 2**31, 2**63, -1])}:0"
    if how == 6:  # another topic
        topic = rng.choice(
            ["fuzz.other", "", RESUME_TOPIC + "x", "t" * 300, "fuzz/resume", "\u00e9"]
        )
        return f"{topic}:0:1"
    return rng.choice(  # not a position of the form topic:partition:offset
        [
            "",
            ":",
            "::",
            "a:b:c",
            f"{RESUME_TOPIC}:0:",
            f"{RESUME_TOPIC}:0:-1",
            f"{RESUME_TOPIC}:0:1e3",
            f"{RESUME_TOPIC}:0:\u0663",  # ARABIC-INDIC DIGIT THREE: int() takes it
            f"{RESUME_TOPIC}:0:1_0",
            f"{RESUME_TOPIC}: 0:+3",
            f"{RESUME_TOPIC}:0:" + "9" * 5000,
            f"{RESUME_TOPIC}:0:0:0",
            f"{RESUME_TOPIC}:0:1\x00",
            f"{RESUME_TOPIC}:0:1.abc",
        ]
    )


def _cursor(rng: random.Random) -> tuple[str, str]:
    """A cursor string, and what it is (for the report): valid, tampered or unsigned."""
    position = _resume_position(rng)
    valid = _SIGNED.sign(position)
    how = rng.randrange(10)
    if how < 5:
        return valid, "valid"
    if how == 5:  # one character of the position or the mac changed
        at = rng.randrange(len(valid))
        changed = "A" if valid[at] != "A" else "B"
        return valid[:at] + changed + valid[at + 1 :], "tampered"
    if how == 6:
        return _OTHER_FLEET.sign(position), "another secret"
    if how == 7:  # the mac cut short, one too long, or made of something else
        return rng.choice([valid[:-1], valid + "A", position + "." + "A" * 22]), "bad mac"
    if how == 8:  # no mac: another broker's id, or a position as before fleets
        return rng.choice([position, "mem-1", "k:0:1", "x" * 200]), "unsigned"
    return rng.choice(["." + valid[-22:], valid[-23:], valid + valid]), "mac only"


def _resume_message(rng: random.Random) -> tuple[bytes, str]:
    """A ``{"resume": ...}`` message (JSON text, maybe not valid JSON), and what it holds."""
    how = rng.randrange(12)
    if how < 7:
        cursor, what = _cursor(rng)
        return json.dumps({"resume": cursor}).encode(), f"resume {what}"
    if how == 7:  # not a string
        value = rng.choice(["5", "-1", "1.5", "null", "true", "[]", "{}", "1e999", "-0"])
        return b'{"resume": ' + value.encode() + b"}", f"resume {value}"
    if how == 8:  # a valid cursor inside something else
        cursor = _SIGNED.sign(f"{RESUME_TOPIC}:0:1")
        wrapped: object = rng.choice([[cursor], {"cursor": cursor}, {"resume": cursor}])
        return json.dumps({"resume": wrapped}).encode(), "resume wrapped"
    if how == 9:  # huge: a 5,000-digit number (beyond Python's int parsing), a long string
        value = rng.choice(["9" * 5000, json.dumps("c" * (MAX_MESSAGE_BYTES - 20))])
        return b'{"resume": ' + value.encode() + b"}", f"resume huge {value[:8]}"
    if how == 10:  # odd strings: lone surrogates, NUL, escapes
        value = rng.choice(['"\\ud800"', '"\\u0000"', '"\\udfff.AAAAAAAAAAAAAAAAAAAAAA"', '"."'])
        return b'{"resume": ' + value.encode() + b"}", f"resume odd {value}"
    # With other keys: the first that the envelope knows decides.
    cursor = _SIGNED.sign(f"{RESUME_TOPIC}:0:2")
    document = rng.choice(
        [
            {"resume": cursor, "ack": "x"},
            {"resume": cursor, "id": "e1", "payload": "p"},
            {"resume": cursor, "subscribe": {"symbol": "A"}},
        ]
    )
    return json.dumps(document).encode(), "resume with others"


def _handshake(rng: random.Random, key: str, *, subprotocol: float) -> list[bytes]:
    headers = [
        _host(rng),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key.encode(),
        b"Sec-WebSocket-Version: 13",
    ]
    if rng.random() < subprotocol:
        headers.append(b"Sec-WebSocket-Protocol: mediation.v1")
    if rng.random() < 0.5:
        headers.append(b"X-Client-ID: " + _client_id(rng))
    return headers


def websocket_resume_seed(rng: random.Random) -> Seed:
    """A ``mediation.v1`` session on ``ws-k`` whose first message is mostly ``{"resume"}``,
    then acks, envelopes and maybe another resume (refused: only the first may be one)."""
    key = _websocket_key(rng)
    headers = _handshake(rng, key, subprotocol=0.9)
    target = b"/"
    if rng.random() < 0.15:
        cursor, _ = _cursor(rng)
        target = b"/?last_event_id=" + quote(cursor[:300], safe=":.").encode()
    frames = []
    if rng.random() < 0.75:
        message, _ = _resume_message(rng)
        frames.append(Frame(0x1, message, mask_key=bytes(rng.randrange(256) for _ in range(4))))
    for _ in range(rng.randrange(3)):
        key4 = bytes(rng.randrange(256) for _ in range(4))
        choice = rng.randrange(3)
        if choice == 0:
            payload, _ = _resume_message(rng)
        elif choice == 1:
            cursor, _ = _cursor(rng)
            payload = json.dumps({rng.choice(["ack", "nack"]): cursor}).encode()
        else:
            payload = _envelope(rng)
        frames.append(Frame(0x1, payload, mask_key=key4))
    request = Request(b"GET", target, headers=headers)
    return Seed("ws-k", "ws-resume", [request], frames, key)


SEEDS: list[Callable[[random.Random], Seed]] = [
    sse_seed,
    post_seed,
    poll_seed,
    websocket_seed,
    sse_params_seed,
    post_params_seed,
    poll_params_seed,
    websocket_params_seed,
    websocket_resume_seed,
]


# -- structural mutations -----------------------------------------------------------------------
# Each takes the seed and the generator, changes the seed in place and returns a short name for
# the report, or None when it does not apply to this seed.


def _pick(rng: random.Random, seed: Seed) -> Request:
    return rng.choice(seed.requests)


def duplicate_header(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    if not request.headers:
        return None
    i = rng.randrange(len(request.headers))
    request.headers.insert(rng.randrange(len(request.headers) + 1), request.headers[i])
    return f"duplicate-header {request.headers[i][:30]!r}"


def reorder_headers(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    rng.shuffle(request.headers)
    return "reorder-headers"


def drop_header(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    if not request.headers:
        return None
    line = request.headers.pop(rng.randrange(len(request.headers)))
    return f"drop-header {line[:30]!r}"


def mangle_header_line(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    if not request.headers:
        return None
    i = rng.randrange(len(request.headers))
    name, _, value = request.headers[i].partition(b":")
    how = rng.randrange(8)
    if how == 0:
        request.headers[i] = name + b" :" + value  # whitespace before the colon: 400 (RFC 9112)
    elif how == 1:
        request.headers[i] = name.swapcase() + b":" + value
    elif how == 2:
        request.headers[i] = name + b":" + value + CRLF + b" folded"  # obs-fold
    elif how == 3:
        request.headers[i] = name + value  # no colon
    elif how == 4:
        request.headers[i] = b" " + request.headers[i]  # leading whitespace
    elif how == 5:
        request.headers[i] = name + b":" + value + rng.choice([b"\x00", b"\x7f", b"\xff", b"\t"])
    elif how == 6:
        request.headers[i] = name + b"\x80\xfe:" + value
    else:
        request.headers[i] = b":" + value  # empty name
    return f"mangle-header {request.headers[i][:40]!r}"


def long_header(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    size = rng.choice([MAX_HEADER_BYTES - 200, MAX_HEADER_BYTES, MAX_HEADER_BYTES + 1, 70_000])
    request.headers.insert(rng.randrange(len(request.headers) + 1), b"X-Long: " + b"a" * size)
    return f"long-header {size}"


def many_headers(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    n = rng.choice([50, 300, 2000])
    request.headers.extend(b"X-H%d: v" % i for i in range(n))
    return f"many-headers {n}"


def bare_line_ends(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    request.line_end = rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"])
    return f"line-end {request.line_end!r}"


METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT"]


def change_method(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    request.method = rng.choice(
        [*METHODS, b"get", b"PRI", b"G ET", b"", b"XYZZY", b"GET\x00", b"P\xd3ST", b"M" * 300]
    )
    return f"method {request.method[:20]!r}"


def change_version(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    request.version = rng.choice(
        [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"http/1.1", b"HTTP/11", b"", b"HTTP/"]
    )
    return f"version {request.version!r}"


def change_target(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    request.target = rng.choice(
        [
            b"*",
            b"//",
            b"/%00",
            b"/%",
            b"/../../etc/passwd",
            b"http://127.0.0.1/",
            b"/?client_id=%ff%fe",
            b"/?client_id=" + b"a" * 200,
            b"/?client_id=a%20b",
            b"/?client_id=&client_id=x",
            b"/" + b"a" * 5000,
            b"",
            b"/poll?x=1#frag",
            b"/subscribe",
            b"/\xff\xfe",
            request.target + b"?" + b"&" * 100,
        ]
    )
    return f"target {request.target[:40]!r}"


def bad_client_id(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    value = rng.choice([b"", b"a b", b"x" * 129, b"\xc3\xa9", b"a/b", b"<script>", b"a\tb", b"%41"])
    request.set_header(b"X-Client-ID", value)
    return f"client-id {value[:20]!r}"


def content_length(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    n = len(request.body)
    value = rng.choice(
        [
            b"-1",
            b"1e3",
            b"99999999999999999999999",
            b"0x10",
            b" 5",
            str(n).encode() + b", " + str(n).encode(),
            str(n).encode() + b"," + str(n + 1).encode(),
            b"",
            str(n + rng.randrange(1, 100)).encode(),  # more than is sent: a truncated body
            str(max(0, n - 1)).encode(),  # less: the rest is a second, broken request
            str(MAX_BODY + 1).encode(),
        ]
    )
    if rng.random() < 0.3:
        request.headers.append(b"Content-Length: " + value)
        return f"second-content-length {value!r}"
    request.set_header(b"Content-Length", value)
    return f"content-length {value!r}"


def transfer_encoding(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    value = rng.choice(
        [
            b"chunked, gzip",
            b"gzip",
            b"gzip, chunked",
            b"identity",
            b"Chunked",
            b"chunked\x00",
            b"chunked;q=1",
            b" chunked",
            b"xchunked",
        ]
    )
    if rng.random() < 0.3:
        request.headers.append(b"Transfer-Encoding: " + value)
        return f"second-transfer-encoding {value!r}"
    request.set_header(b"Transfer-Encoding", value)
    return f"transfer-encoding {value!r}"


def chunking(seed: Seed, rng: random.Random) -> str | None:
    request = _pick(rng, seed)
    if request.chunks is None:
        # Make it chunked, keeping a Content-Length if there is one (both: 400 or TE wins).
        request.chunks = [(format(len(request.body), "x").encode(), request.body)]
        request.body = b""
        request.headers.append(b"Transfer-Encoding: chunked")
        return "to-chunked"
    how = rng.randrange(7)
    chunks = request.chunks
    if how == 0 or not chunks:
        chunks.append((rng.choice([b"fffffffffffffffffff", b"-1", b"0x5", b"", b"g", b" 5"]), b"x"))
    elif how == 1:
        i = rng.randrange(len(chunks))
        data = chunks[i][1]
        chunks[i] = (format(len(data) + rng.choice([-1, 1, 100]), "x").encode(), data)
    elif how == 2:
        i = rng.randrange(len(chunks))
        chunks[i] = (
            chunks[i][0] + b";" + rng.choice([b"", b"=", b"a=\x00", b"a" * 5000]),
            chunks[i][1],
        )
    elif how == 3:
        request.trailers.append(
            rng.choice(
                [
                    b"Content-Length: 5",
                    b"X-T: \x00",
                    b"bad trailer",
                    b"X-T : v",
                    b"X-" * 3000 + b": v",
                ]
            )
        )
    elif how == 4:
        request.trailers = [b"X-T%d: v" % i for i in range(500)]
    elif how == 5:
        chunks.extend([(b"1", b"y")] * 2000)  # many tiny chunks
    else:
        chunks.insert(0, (b"0", b""))  # an early last chunk: the rest is garbage
    return f"chunking {how}"


def _frames(seed: Seed) -> list[Frame] | None:
    return seed.frames if seed.websocket_key is not None else None


def websocket_frames(seed: Seed, rng: random.Random) -> str | None:
    frames = _frames(seed)
    if frames is None:
        return None
    key4 = bytes(rng.randrange(256) for _ in range(4))
    how = rng.randrange(13)
    if how == 0:
        frames.insert(0, Frame(0x1, b"unmasked", masked=False))
    elif how == 1:
        frames.insert(0, Frame(0x1, b"rsv", rsv=rng.randrange(1, 8), mask_key=key4))
    elif how == 2:
        frames.insert(0, Frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xF]), b"op", mask_key=key4))
    elif how == 3:
        frames.insert(0, Frame(0x2, b"huge", length=rng.choice([1 << 63, (1 << 64) - 1, 1 << 40])))
    elif how == 4:
        frames.insert(0, Frame(0x2, b"short", length=rng.choice([200, 70_000, 3])))
    elif how == 5:
        frames.insert(0, Frame(0x9, b"p" * 126, mask_key=key4))  # control frame > 125
    elif how == 6:
        frames.insert(0, Frame(0x9, b"frag-ping", fin=False, mask_key=key4))
    elif how == 7:
        frames.insert(0, Frame(0x0, b"continuation first", mask_key=key4))
    elif how == 8:
        code = rng.choice([0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535])
        payload = code.to_bytes(2, "big") + rng.choice([b"", b"\xff\xfe"])
        frames.insert(0, Frame(0x8, rng.choice([payload, b"\x03"]), mask_key=key4))
    elif how == 9:
        frames.insert(
            0, Frame(0x1, rng.choice([b"\xff\xfe", b"\xed\xa0\x80", b"ok\xc3"]), mask_key=key4)
        )
    elif how == 10:
        size = rng.choice([MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1, 70_000])
        frames.insert(0, Frame(0x2, b"b" * size, mask_key=key4))
    elif how == 11:  # a message over the limit in fragments
        frames[:0] = [Frame(0x2, b"f" * 4000, fin=False, mask_key=key4)] + [
            Frame(0x0, b"f" * 4000, fin=False, mask_key=key4) for _ in range(3)
        ]
    else:  # a text message interleaved into an unfinished one
        frames[:0] = [Frame(0x1, b"a", fin=False, mask_key=key4), Frame(0x1, b"b", mask_key=key4)]
    return f"frame {how}"


ENVELOPES = [
    b"[" * 100_000,
    b'{"id": 1, "payload": "x"}',
    b'{"id": "x", "payload": 5}',
    b'{"id": "x", "payload": "!!!", "encoding": "base64"}',
    b'{"id": "x", "payload": "x", "encoding": "rot13"}',
    b'{"id": "x", "payload": "x", "metadata": {"k": [1]}}',
    b'{"id": "x", "payload": "x", "metadata": "m"}',
    b'{"id": "' + b"i" * 5000 + b'", "payload": "x"}',
    b'{"id": "\\ud800", "payload": "\\udfff"}',
    b'{"ack": null}',
    b'{"ack": "a", "nack": "b"}',
    b'{"subscribe": {"symbol": "C"}}',
    b'{"resume": "1.abc"}',
    b"[]",
    b"null",
    b'{"id": "x"',
    b'{"id": 1e999999, "payload": "x"}',
    b'{"id": "x", "payload": "' + b"\\u0000" * 1000 + b'"}',
    b'{"ack": "\\u0000"}',
    b'{"id": "dup", "id": "dup2", "payload": "x"}',
]


def envelope(seed: Seed, rng: random.Random) -> str | None:
    frames = _frames(seed)
    if frames is None:
        return None
    payload = rng.choice(ENVELOPES)
    opcode = 0x1 if _is_utf8(payload) and rng.random() < 0.8 else 0x2
    frames.insert(rng.randrange(len(frames) + 1), Frame(opcode, payload))
    return f"envelope {payload[:30]!r}"


def websocket_handshake(seed: Seed, rng: random.Random) -> str | None:
    if seed.websocket_key is None:
        return None
    request = seed.requests[0]
    name, value = rng.choice(
        [
            (b"Sec-WebSocket-Version", rng.choice([b"8", b"", b"13, 13", b"99"])),
            (b"Sec-WebSocket-Key", rng.choice([b"", b"short", b"!!!!", b"a" * 200])),
            (b"Upgrade", rng.choice([b"websocket2", b"", b"h2c", b"WebSocket"])),
            (b"Connection", rng.choice([b"keep-alive", b"upgrade, close", b"", b"UPGRADE"])),
            (
                b"Sec-WebSocket-Protocol",
                rng.choice([b"mediation.v2", b"mediation.v1, mediation.v1", b",,,", b"\xff"]),
            ),
            (b"Sec-WebSocket-Extensions", rng.choice([b"permessage-deflate", b"x; y=\x01"])),
        ]
    )
    request.set_header(name, value)
    return f"handshake {name.decode()}: {value[:20]!r}"


# Parameter values a client may send: wildcards and separators of every broker, in every
# spelling, look-alikes, overlong, empty, template syntax.
INJECTIONS = [
    b"+",
    b"#",
    b"*",
    b">",
    b"/",
    b".",
    b"..",
    b"%2F",
    b"%2f",
    b"A%2FB",
    b"%00",
    b"A%00",
    b"%2B",
    b"%23",
    b"%2A",
    b"A.B",
    b"A+B",
    b"%EF%BC%A1",  # fullwidth A
    b"\xef\xbc\xa1",  # the same, raw bytes in the request line
    b"%C3%84",
    b"%2541",  # "%41" after one decoding
    b"%",
    b"%G1",
    b"A" * 10240,
    b"",
    b"{symbol}",
    b"%7Bsymbol%7D",
    b"{claims.sub}",
    b"AAAAAAAAA",  # one over the pattern's 8
    b"a",
    b"A%20",
    b"%41",  # "A": valid once decoded
]


def _split_target(request: Request) -> tuple[bytes, list[bytes]]:
    path, _, query = request.target.partition(b"?")
    return path, [part for part in query.split(b"&") if part]


def _join_target(request: Request, path: bytes, parts: list[bytes]) -> None:
    request.target = path + (b"?" + b"&".join(parts) if parts else b"")


def param_value(seed: Seed, rng: random.Random) -> str | None:
    """A hostile parameter, repeated parameter or filter in the first request's target."""
    if seed.target not in PARAM_TARGETS:
        return None
    request = seed.requests[0]
    path, parts = _split_target(request)
    value = rng.choice(INJECTIONS)
    how = rng.randrange(9)
    if how == 0:  # the path parameter
        segments = path.split(b"/")
        segments[2] = value
        path = b"/".join(segments)
    elif how == 1:  # a query parameter's value
        symbols = [i for i, part in enumerate(parts) if part.startswith(b"symbol=")]
        i = rng.choice(symbols) if symbols else len(parts)
        parts[i : i + 1] = [b"symbol=" + value]
    elif how == 2:  # more subscriptions than max_subscriptions
        n = rng.choice([MAX_SUBSCRIPTIONS + 1, 50, 2000])
        parts += [b"symbol=" + _letters(i).encode() for i in range(n)]
    elif how == 3:  # the same value again (taken once), or spelled another way
        parts += [rng.choice([b"symbol=A", b"symbol=%41", b"symbol=A", b"symbol=a"])] * 2
    elif how == 4:  # a filter on a field the routes do not allow, or a bad field name
        name = rng.choice([b"type", b"key", b"bogus", b"TYPE", b"a" * 65, b"", b"type%00", b"t.y"])
        parts.append(b"filter." + name + b"=" + value[:2000])
    elif how == 5:  # too many filter values or fields
        if rng.random() < 0.5:
            parts += [b"filter.type=v%d" % i for i in range(rng.choice([64, 65, 500]))]
        else:
            parts += [b"filter.f%d=v" % i for i in range(17)]
    elif how == 6:  # the parameter missing, or under another spelling of its name
        parts = [part for part in parts if not part.startswith(b"symbol=")]
        parts.append(rng.choice([b"sym%62ol=A", b"SYMBOL=A", b"symbol[]=A", b"symbol", b"=A"]))
    elif how == 7:  # a value of a claim or another parameter given in the query
        parts.append(rng.choice([b"room=x", b"claims.sub=x", b"client_id=" + value[:200]]))
    else:  # a separator where a value ends
        parts.append(rng.choice([b";symbol=B", b"symbol=A;B", b"&&&", b"symbol=A#frag"]))
    _join_target(request, path, parts)
    return f"param {how} {value[:20]!r}"


def _letters(i: int) -> str:
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def subscription_envelope(seed: Seed, rng: random.Random) -> str | None:
    """A mutation of a valid ``{"subscribe": {...}}`` / ``{"unsubscribe": {...}}``, or many of
    them (also sent to the entrypoints without parameters, which must refuse them)."""
    frames = _frames(seed)
    if frames is None:
        return None
    which = rng.choice(["subscribe", "unsubscribe"])
    how = rng.randrange(10)
    value: object
    if how == 0:
        value = {
            "symbol": rng.choice(["+", "#", "A/B", "A.B", "\uff21", "", "\u0000", "A" * 10240])
        }
    elif how == 1:
        value = {"symbol": rng.choice([1, None, [], {}, True, ["A"], 1e308])}
    elif how == 2:
        value = rng.choice(["B", [], None, 5, [{"symbol": "B"}], {}])
    elif how == 3:
        value = {rng.choice(["nope", "client_id", "claims.sub", "", "symbol "]): "A"}
    elif how == 4:
        value = {f"k{i}": "A" for i in range(1000)}
    elif how == 5:
        value = {"room": rng.choice(["other", "..", "R!", "a" * 17]), "symbol": "B"}
    else:
        value = {"symbol": rng.choice(SYMBOLS)}
    if how == 6:
        document: object = {"subscribe": value, "unsubscribe": value}
    elif how == 7:
        document = {which: value, "id": "x", "payload": "y"}
    else:
        document = {which: value}
    if how == 8:  # many changes: past max_subscriptions, then back
        payloads = [
            json.dumps({w: {"symbol": _letters(i)}}).encode()
            for w in ("subscribe", "unsubscribe")
            for i in range(MAX_SUBSCRIPTIONS + 3)
        ]
    elif how == 9:  # the same change twice, or nested deep
        payloads = [json.dumps(document).encode()] * 2
        payloads.append(b'{"subscribe": ' * 500 + b"{}" + b"}" * 500)
    else:
        payloads = [json.dumps(document).encode()]
    at = rng.randrange(len(frames) + 1)
    frames[at:at] = [
        Frame(0x1, p, mask_key=bytes(rng.randrange(256) for _ in range(4))) for p in payloads
    ]
    return f"subscription {how} {payloads[0][:40]!r}"


def resume_envelope(seed: Seed, rng: random.Random) -> str | None:
    """A ``{"resume": ...}`` (valid, tampered, of the wrong type, huge) as the first message of
    any WebSocket input, or a later one, or several."""
    frames = _frames(seed)
    if frames is None:
        return None
    message, what = _resume_message(rng)
    key4 = bytes(rng.randrange(256) for _ in range(4))
    where = rng.randrange(3)
    if where == 0 or not frames:
        frames.insert(0, Frame(0x1, message, mask_key=key4))
    elif where == 1:
        frames.insert(rng.randrange(1, len(frames) + 1), Frame(0x1, message, mask_key=key4))
    else:  # the same resume again and again
        frames[:0] = [Frame(0x1, message, mask_key=key4)] * rng.choice([2, 50])
    return f"{what} at {['first', 'later', 'repeated'][where]}"


STRUCTURAL: list[Callable[[Seed, random.Random], str | None]] = [
    duplicate_header,
    reorder_headers,
    drop_header,
    mangle_header_line,
    long_header,
    many_headers,
    bare_line_ends,
    change_method,
    change_version,
    change_target,
    bad_client_id,
    content_length,
    transfer_encoding,
    chunking,
    websocket_frames,
    websocket_frames,
    envelope,
    envelope,
    websocket_handshake,
    param_value,
    param_value,
    param_value,
    subscription_envelope,
    subscription_envelope,
    resume_envelope,
    resume_envelope,
]


# -- byte mutations -----------------------------------------------------------------------------

SPECIAL = [0x00, 0x0D, 0x0A, 0x20, 0x3A, 0x09, 0x7F]


def _position(rng: random.Random, data: bytes) -> int:
    # Half of them in the first head, where the parser's decisions are, half after it (bodies,
    # pipelined requests, WebSocket frames: reached only past a head that still parses).
    head = data.find(b"\r\n\r\n")
    if head < 0 or head + 4 >= len(data):
        return rng.randrange(len(data) + 1)
    if rng.random() < 0.5:
        return rng.randrange(head + 4)
    return rng.randrange(head + 4, len(data) + 1)


def byte_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return b"\x00", "insert 0x00 at 0"
    how = rng.randrange(6)
    at = min(_position(rng, data), len(data) - 1)
    if how == 0:
        bit = 1 << rng.randrange(8)
        return data[:at] + bytes([data[at] ^ bit]) + data[at + 1 :], f"flip 0x{bit:02x} at {at}"
    if how == 1:
        byte = rng.choice(SPECIAL) if rng.random() < 0.6 else rng.randrange(0x80, 0x100)
        return data[:at] + bytes([byte]) + data[at:], f"insert 0x{byte:02x} at {at}"
    if how == 2:
        return data[:at], f"truncate at {at}"
    if how == 3:
        n = rng.randrange(1, 16)
        return data[:at] + data[at + n :], f"delete {n} at {at}"
    if how == 4:
        n = rng.randrange(1, 64)
        return data[:at] + data[at : at + n] * 2 + data[at + n :], f"duplicate {n} at {at}"
    byte = rng.randrange(256)
    return data[:at] + bytes([byte]) + data[at + 1 :], f"set 0x{byte:02x} at {at}"


# -- the generator ------------------------------------------------------------------------------


class Mutations:
    """The inputs of one seed; :meth:`make` depends only on ``(seed, index)``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def make(self, index: int) -> FuzzInput:
        rng = random.Random(f"{self.seed}:{index}")
        seed = rng.choice(SEEDS)(rng)
        names: list[str] = []
        if rng.random() >= 0.125:
            for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
                if rng.random() < 0.55:
                    name = rng.choice(STRUCTURAL)(seed, rng)
                    if name is not None:
                        names.append(name)
        data = seed.encode()
        if rng.random() >= 0.125 and (not names or rng.random() < 0.3):
            for _ in range(rng.choice([1, 1, 2, 3])):
                data, name = byte_mutation(data, rng)
                names.append(name)
        return FuzzInput(
            seed=self.seed,
            index=index,
            target=seed.target,
            kind=seed.kind,
            data=data,
            mutations=tuple(names),
            half_close=rng.random() < 0.5,
            websocket_key=seed.websocket_key,
        )
