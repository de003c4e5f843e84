"""The WebSocket entrypoint's fast parser of small client frames: what wsproto makes of any byte
stream, in any chunking, with and without it."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, TextMessage

from mediation.entrypoints.websocket import _fast_frames, client_frame


def frame(
    first: int, payload: bytes, *, masked: bool = True, key: bytes = b"\x01\x02\x03\x04"
) -> bytes:
    """A client frame made by hand: first byte (FIN, RSV, opcode) as given, length < 126."""
    if not masked:
        return bytes([first, len(payload)]) + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([first, 0x80 | len(payload)]) + key + body


def client_bytes(event: Event) -> bytes:
    return Connection(ConnectionType.CLIENT).send(event)


# Frames of every kind a client may send, well-formed or not.
frames = st.one_of(
    st.text(max_size=140).map(lambda t: client_bytes(TextMessage(t))),
    st.binary(max_size=300).map(lambda b: client_bytes(BytesMessage(b))),
    st.tuples(st.text(max_size=20), st.booleans()).map(
        lambda p: client_bytes(TextMessage(p[0], message_finished=p[1]))
    ),
    st.binary(max_size=20).map(lambda b: client_bytes(Ping(b))),
    st.binary(max_size=125).map(lambda b: frame(0x81, b)),  # text that may not be UTF-8
    st.binary(max_size=125).map(lambda b: frame(0x82, b, masked=False)),  # unmasked: refused
    st.sampled_from([0x01, 0x80, 0x00, 0xC1, 0x83, 0x8A]).map(lambda f: frame(f, b"x")),
    st.just(client_bytes(CloseConnection(1000, "bye"))),
)


def events_of(chunks: list[bytes], *, fast: bool) -> list[Event]:
    connection = Connection(ConnectionType.SERVER)
    if fast:
        proto = connection._proto
        proto._parse_more = _fast_frames(proto, proto._parse_more)
    events: list[Event] = []
    for chunk in chunks:
        connection.receive_data(chunk)
        events.extend(connection.events())
    return events


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400 if os.environ.get("CI") else 200, deadline=None)
@given(st.lists(frames, max_size=12), st.lists(st.integers(min_value=0), max_size=8))
def test_fast_frames_see_what_wsproto_sees(stream: list[bytes], cuts: list[int]) -> None:
    chunks = chunked(b"".join(stream), cuts)
    assert events_of(chunks, fast=True) == events_of(chunks, fast=False)


def test_client_frame_takes_only_small_whole_masked_data_frames() -> None:
    ack = b'{"ack": "t:0:1"}'
    assert client_frame(bytearray(frame(0x81, ack) + b"rest")) == (0x1, ack, 6 + len(ack))
    assert client_frame(bytearray(frame(0x82, b""))) == (0x2, b"", 6)
    assert client_frame(bytearray(frame(0x81, ack)[:-1])) is None  # not whole yet
    assert client_frame(bytearray(frame(0x81, ack, masked=False))) is None
    assert client_frame(bytearray(frame(0x01, ack))) is None  # a first fragment
    assert client_frame(bytearray(frame(0x89, b"p"))) is None  # a ping
    assert client_frame(bytearray(frame(0xC1, ack))) is None  # RSV1
    big = client_bytes(TextMessage("x" * 126))
    assert client_frame(bytearray(big)) is None


def test_fast_frames_refuse_invalid_utf8_as_wsproto_does() -> None:
    chunks = [frame(0x81, b"ok"), frame(0x81, b"\xff"), frame(0x81, b"after")]
    events = events_of(chunks, fast=True)
    assert events == events_of(chunks, fast=False)
    assert events[0] == TextMessage("ok")
    assert isinstance(events[1], CloseConnection) and events[1].code == 1007
    assert len(events) == 2


def test_fast_frames_parse_nothing_after_a_close() -> None:
    chunks = [frame(0x81, b"a") + client_bytes(CloseConnection(1000)) + frame(0x81, b"b")]
    events = events_of(chunks, fast=True)
    assert events == events_of(chunks, fast=False)
    assert [type(e) for e in events] == [TextMessage, CloseConnection]
    assert all(not isinstance(e, Message) or e.data == "a" for e in events)
