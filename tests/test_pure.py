"""The pure modules: SSE framing, envelope codec, routing, identity (ack policy: test_ack_policy)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediation.config import RouteConfig
from mediation.envelope import (
    Confirmation,
    Publication,
    decode_client_message,
    encode_event,
    encode_reply,
)
from mediation.errors import BadRequest, OriginNotAllowed
from mediation.identity import check_origin, client_identity
from mediation.routing import RouteTable
from mediation.sse import frame_comment, frame_event


def parse_sse(stream: bytes) -> list[dict[str, str]]:
    """A minimal reading of the WHATWG algorithm, enough to check framing round-trips."""
    events, fields, data = [], {}, []
    for line in stream.decode().split("\n"):
        if line == "":
            if data or fields:
                events.append({**fields, "data": "\n".join(data)})
            fields, data = {}, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
    return events


@given(st.text())
def test_any_payload_survives_sse_framing_with_line_breaks_normalised(payload: str) -> None:
    [event] = parse_sse(frame_event(payload, event_id="42"))
    expected = payload.replace("\r\n", "\n").replace("\r", "\n")
    assert event == {"id": "42", "data": expected}


def test_sse_frames_use_only_newline_line_endings() -> None:
    assert (
        frame_event("a\r\nb\rc", event_id="1", event="x")
        == b"event: x\nid: 1\ndata: a\ndata: b\ndata: c\n\n"
    )
    assert frame_comment("keepalive") == b": keepalive\n"


def test_sse_id_with_line_break_is_left_out() -> None:
    # Written, it would end the id field early; left out, the client keeps its last id.
    assert frame_event("x", event_id="1\n2") == b"data: x\n\n"


def test_envelope_text_and_binary_payloads() -> None:
    assert json.loads(encode_event("1", b"hi", {"k": "v"})) == {
        "id": "1",
        "payload": "hi",
        "metadata": {"k": "v"},
    }
    binary = json.loads(encode_event("2", b"\xff\x00", {}))
    assert binary["encoding"] == "base64" and base64.b64decode(binary["payload"]) == b"\xff\x00"


def test_envelope_client_messages() -> None:
    assert decode_client_message('{"ack": "7"}') == Confirmation("7", True)
    assert decode_client_message('{"nack": "7"}') == Confirmation("7", False)
    assert decode_client_message(
        '{"id": "a", "payload": "x", "metadata": {"k": "v"}}'
    ) == Publication("a", b"x", {"k": "v"})
    encoded = base64.b64encode(b"\x00\xff").decode()
    assert decode_client_message(
        f'{{"id": "b", "payload": "{encoded}", "encoding": "base64"}}'
    ) == Publication("b", b"\x00\xff", {})
    assert json.loads(encode_reply("a")) == {"ack": "a"}
    assert json.loads(encode_reply("a", error="down")) == {"nack": "a", "error": "down"}


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[]",
        '{"ack": 1}',
        '{"payload": "x"}',
        '{"id": "a"}',
        '{"id": "a", "payload": "%%", "encoding": "base64"}',
        '{"id": "a", "payload": "x", "metadata": {"k": 1}}',
        '{"id": "a", "payload": "x", "encoding": "hex"}',
    ],
)
def test_malformed_envelopes_are_bad_requests(message: str) -> None:
    with pytest.raises(BadRequest):
        decode_client_message(message)


def route(source: str, target: str, direction: str) -> RouteConfig:
    return RouteConfig(source=source, target=target, direction=direction)  # type: ignore[arg-type]


def test_route_table_resolves_both_directions_per_entrypoint() -> None:
    table = RouteTable(
        [
            route("ws", "kafka", "upstream"),
            route("kafka", "ws", "downstream"),
            route("kafka", "sse", "downstream"),
            route("mqtt", "solace", "bridge"),
        ]
    )
    assert table.for_entrypoint("ws").names == ("ws->kafka", "kafka->ws")
    assert table.for_entrypoint("sse").names == ("kafka->sse",)
    assert not table.for_entrypoint("post")
    assert [r.name for r in table.bridges] == ["mqtt->solace"]


def test_client_identity_order_and_shape() -> None:
    assert client_identity({"x-client-id": "a"}, "b") == "a"
    assert client_identity({}, "user@example.com:1") == "user@example.com:1"
    assert len(client_identity({}, None)) == 36
    for bad in ("has space", "x" * 129, "", "a/b", "é"):
        with pytest.raises(BadRequest):
            client_identity({"x-client-id": bad}, None)


def test_origin_check() -> None:
    check_origin((), "https://anything")
    check_origin(("https://a",), "https://a")
    check_origin(("https://a",), None)  # not a browser: nothing to check
    with pytest.raises(OriginNotAllowed):
        check_origin(("https://a",), "https://b")


def test_client_metadata_is_allow_listed_and_sanitised() -> None:
    from mediation.metadata import MAX_ENTRIES, client_metadata

    headers = [
        ("Content-Type", "text/plain"),
        ("X-Trace-Id", "t-1"),
        ("X-Client-ID", "someone-else"),  # identity, not data
        ("Authorization", "Bearer secret"),  # not x-*: stays out
        ("X-Evil", "a\r\nInjected: yes"),  # would split a header downstream
        ("X-Long", "v" * 2000),
        ("client_id", "spoofed"),
    ]
    assert client_metadata(headers, header_names=True) == {
        "content-type": "text/plain",
        "x-trace-id": "t-1",
    }
    envelope = [("topic", "spoofed"), ("offset", "0"), ("order", "42"), ("bad name", "x")]
    assert client_metadata(envelope, header_names=False) == {"order": "42"}
    many = [(f"x-{n}", "v") for n in range(100)]
    assert len(client_metadata(many, header_names=True)) == MAX_ENTRIES
