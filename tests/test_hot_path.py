"""The pure parts of the per-message hot path: RabbitMQ ack coalescing, MQTT ack packets and
property decoding, event ids, WebSocket frames. (The paths themselves are covered end to end by the broker and
conformance suites against real brokers.)"""

from __future__ import annotations

import random
import socket
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from mediation.endpoints._mqtt_wire import READ_AHEAD, QuickProperties, _ReadAhead, ack_packets
from mediation.endpoints.rabbitmq import AckRanges
from mediation.events import new_event_id
from mediation.http.wsframes import BINARY, TEXT, server_frames


def broker_after(frames: list[tuple[str, int, bool]], unacked: set[int]) -> tuple[set, set]:
    """What a broker does with the frames: (acked tags, requeued tags); a frame naming a tag
    that is not unacked is a channel error (PRECONDITION_FAILED), so it fails the test."""
    acked: set[int] = set()
    requeued: set[int] = set()
    for verdict, tag, multiple in frames:
        assert tag in unacked, f"{verdict} of tag {tag}, which is not unacked"
        if verdict == "nack":
            assert not multiple
            unacked.discard(tag)
            requeued.add(tag)
        elif multiple:
            covered = {t for t in unacked if t <= tag}
            acked |= covered
            unacked -= covered
        else:
            unacked.discard(tag)
            acked.add(tag)
    return acked, requeued


def test_a_burst_of_acks_in_order_is_one_multiple_ack() -> None:
    ranges = AckRanges()
    assert ranges.plan([(t, True) for t in range(1, 65)]) == [("ack", 64, True)]
    assert ranges.plan([(65, True)]) == [("ack", 65, False)]
    assert ranges.floor == 65 and not ranges.above


def test_acks_above_a_gap_stay_single_until_the_gap_closes() -> None:
    ranges = AckRanges()
    assert ranges.plan([(2, True), (3, True)]) == [("ack", 2, False), ("ack", 3, False)]
    # Tag 1 closes the gap: one ack for it alone (2 and 3 were said already).
    assert ranges.plan([(1, True), (4, True), (5, True)]) == [("ack", 5, True)]
    assert ranges.floor == 5


def test_nacks_go_first_and_are_never_covered_by_a_multiple_ack() -> None:
    ranges = AckRanges()
    frames = ranges.plan([(1, True), (2, False), (3, True)])
    assert frames == [("nack", 2, False), ("ack", 3, True)]
    acked, requeued = broker_after(frames, {1, 2, 3})
    assert acked == {1, 3} and requeued == {2}


def test_a_tag_settled_twice_is_said_once() -> None:
    ranges = AckRanges()
    assert ranges.plan([(1, True), (1, True)]) == [("ack", 1, False)]
    assert ranges.plan([(1, False)]) == []


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.randoms(), st.integers(1, 8))
def test_the_broker_ends_up_with_exactly_the_verdicts_given(
    verdicts: list[bool], rnd: random.Random, batches: int
) -> None:
    """Delivery tags 1..n settled in any order, in any batches: each tag acked or requeued as
    its session said, and no frame ever names a tag the broker does not hold unacked."""
    settles = list(enumerate(verdicts, start=1))
    rnd.shuffle(settles)
    cuts = sorted(rnd.randrange(len(settles) + 1) for _ in range(batches - 1))
    ranges = AckRanges()
    unacked = {tag for tag, _ in settles}
    acked: set[int] = set()
    requeued: set[int] = set()
    for start, end in zip([0, *cuts], [*cuts, len(settles)], strict=True):
        a, r = broker_after(ranges.plan(settles[start:end]), unacked)
        acked |= a
        requeued |= r
    assert acked == {tag for tag, ok in settles if ok}
    assert requeued == {tag for tag, ok in settles if not ok}
    assert ranges.floor == len(settles) and not ranges.above


def test_ack_packets_are_pubacks_and_pubcomps_as_paho_makes_them() -> None:
    assert ack_packets([(1, 1), (0x1234, 2)]) == b"\x40\x02\x00\x01" + b"\x70\x02\x12\x34"
    assert ack_packets([]) == b""


def test_quick_properties_decode_and_clear_as_paho_does() -> None:
    sent = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    sent.UserProperty = [("event_id", "e1"), ("k", "v")]
    sent.ContentType = "text/plain"
    packed = sent.pack()  # type: ignore[no-untyped-call]
    paho = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    paho.unpack(packed)  # type: ignore[no-untyped-call]
    for _ in range(2):  # the first instance builds the shared tables, the second uses them
        quick = QuickProperties(PacketTypes.PUBLISH)
        quick.unpack(packed)  # type: ignore[no-untyped-call]
        assert quick.json() == paho.json()  # type: ignore[no-untyped-call]
        assert quick.UserProperty == [("event_id", "e1"), ("k", "v")]
        quick.clear()
        assert quick.isEmpty()  # type: ignore[no-untyped-call]
    # The shared tables were not changed by any of it.
    assert QuickProperties(PacketTypes.CONNECT).names == paho.names


def test_event_ids_are_version_4_uuids_and_unique() -> None:
    ids = [new_event_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:1000]:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def _open_server_connection() -> WSConnection:
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="localhost", target="/")))
    list(server.events())
    server.send(AcceptConnection())
    return server


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_server_frames_are_byte_for_byte_what_wsproto_makes(size: int) -> None:
    server = _open_server_connection()
    text = "é" * (size // 2) + "x" * (size % 2)
    assert server_frames([(TEXT, text.encode())]) == server.send(TextMessage(data=text))
    data = bytes(range(256)) * (size // 256) + b"\xff" * (size % 256)
    assert server_frames([(BINARY, data)]) == server.send(BytesMessage(data=data))


def test_a_batch_of_server_frames_is_wsprotos_frames_one_after_the_other() -> None:
    server = _open_server_connection()
    sizes = [0, 125, 126, 4096, 65535, 65536, 3]
    messages = [(TEXT if n % 2 else BINARY, bytes([65 + i]) * n) for i, n in enumerate(sizes)]
    expected = b"".join(
        server.send(TextMessage(data=data.decode()) if opcode == TEXT else BytesMessage(data=data))
        for opcode, data in messages
    )
    assert server_frames(messages) == expected
    assert server_frames([]) == b""


def test_read_ahead_serves_small_reads_from_one_recv_and_passes_eof_and_blocking_on() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        reader = _ReadAhead(right)
        with pytest.raises(BlockingIOError):
            reader.recv(1)
        left.sendall(b"\x30\x05hello" + b"\x30\x02hi")
        assert [reader.recv(1), reader.recv(1), reader.recv(5)] == [b"\x30", b"\x05", b"hello"]
        assert reader.pending
        assert reader.recv(1) + reader.recv(1) + reader.recv(10) == b"\x30\x02hi"
        assert not reader.pending
        left.sendall(b"x" * (READ_AHEAD + 10))
        got = b""
        while len(got) < READ_AHEAD + 10:
            try:
                got += reader.recv(7)
            except BlockingIOError:
                continue
        assert got == b"x" * (READ_AHEAD + 10) and not reader.pending
        left.shutdown(socket.SHUT_WR)
        assert reader.recv(1) == b""
