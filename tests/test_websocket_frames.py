"""The WebSocket entrypoint's frame splitter (:class:`ClientFrames`): the messages and events a
server gets from any client byte stream, in any chunking, are what wsproto alone makes of it."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, TextMessage

from mediation.http.wsframes import (
    ClientFrames,
    ForWsproto,
    MessageTooBig,
    Whole,
    client_frame,
)


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


def events_of(chunks: list[bytes], *, fast: bool, limit: int = 1 << 20) -> list[Event]:
    """What a server makes of ``chunks``: wsproto's events, with ``fast`` through ClientFrames
    first (a whole message it takes becomes the event wsproto would have made)."""
    # wsproto.connection.Connection directly: the test compares with wsproto's own frame layer.
    connection = Connection(ConnectionType.SERVER)
    splitter = ClientFrames(limit)
    events: list[Event] = []
    for chunk in chunks:
        if not fast:
            connection.receive_data(chunk)
            events.extend(connection.events())
            continue
        for item in splitter.feed(chunk):
            if isinstance(item, ForWsproto):
                connection.receive_data(item.data)
                events.extend(connection.events())
            elif isinstance(item.message, str):
                events.append(TextMessage(item.message))
            else:
                events.append(BytesMessage(item.message))
    # A close (the client's, or wsproto failing the connection) ends what the server reads.
    closes = [i for i, e in enumerate(events) if isinstance(e, CloseConnection)]
    if closes:
        events = events[: closes[0] + 1]
    return [_whole(e) for e in _joined(events)]


def _joined(events: list[Event]) -> list[Event]:
    """Message parts joined into whole messages (wsproto yields a big frame in parts)."""
    joined: list[Event] = []
    parts: list[Message] = []
    for event in events:
        if isinstance(event, Message):
            parts.append(event)
            if event.message_finished:
                data = parts[0].data[:0].join([p.data for p in parts])  # type: ignore[attr-defined]
                joined.append(type(event)(data=data))
                parts = []
        else:
            joined.append(event)
    return joined


def _whole(event: Event) -> Event:
    if isinstance(event, BytesMessage):
        return BytesMessage(bytes(event.data))
    if isinstance(event, CloseConnection) and event.code == 1007:
        # The reason names a position in the piece wsproto was decoding: it varies with the
        # chunking, with or without the splitter.
        return CloseConnection(event.code)
    return event


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400 if os.environ.get("CI") else 200, deadline=None)
@given(st.lists(frames, max_size=12), st.lists(st.integers(min_value=0), max_size=8))
def test_the_splitter_sees_what_wsproto_sees(stream: list[bytes], cuts: list[int]) -> None:
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


def test_invalid_utf8_is_refused_as_wsproto_does() -> None:
    chunks = [frame(0x81, b"ok"), frame(0x81, b"\xff"), frame(0x81, b"after")]
    events = events_of(chunks, fast=True)
    assert events == events_of(chunks, fast=False)
    assert events[0] == TextMessage("ok")
    assert isinstance(events[1], CloseConnection) and events[1].code == 1007
    assert len(events) == 2


def test_nothing_is_parsed_after_a_close() -> None:
    chunks = [frame(0x81, b"a") + client_bytes(CloseConnection(1000)) + frame(0x81, b"b")]
    events = events_of(chunks, fast=True)
    assert events == events_of(chunks, fast=False)
    assert [type(e) for e in events] == [TextMessage, CloseConnection]
    assert all(not isinstance(e, Message) or e.data == "a" for e in events)


def test_a_message_over_the_limit_is_refused_from_its_frame_header() -> None:
    splitter = ClientFrames(100)
    big = client_bytes(BytesMessage(b"x" * 200))
    with pytest.raises(MessageTooBig):
        list(splitter.feed(big[:8]))  # the header alone says it
    client = Connection(ConnectionType.CLIENT)
    fragments = client.send(TextMessage("x" * 60, message_finished=False)) + client.send(
        TextMessage("y" * 60)
    )
    with pytest.raises(MessageTooBig):
        list(ClientFrames(100).feed(fragments))
    at_the_limit = client_bytes(BytesMessage(b"x" * 100))
    assert list(ClientFrames(100).feed(at_the_limit)) == [Whole(b"x" * 100)]
