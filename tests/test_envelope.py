"""The envelope's fast paths decide exactly what the general JSON path decides."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mediation.envelope import Confirmation, decode_client_message, encode_event
from mediation.errors import BadRequest


def fast(text: str | bytes) -> Confirmation | object:
    """What the envelope makes of a client message (BadRequest as a value)."""
    try:
        return decode_client_message(text)
    except BadRequest:
        return BadRequest


def general(text: str) -> Confirmation | object:
    """What json.loads makes of ``text``: bytes skip the fast path."""
    return fast(text.encode("utf-8", "surrogatepass"))


@given(st.sampled_from(["ack", "nack"]), st.text(), st.sampled_from([": ", ":"]))
@example("ack", 'a"b', ": ")
@example("ack", "a\\b", ": ")
@example("nack", "tab\there", ":")
def test_confirmations_as_clients_write_them(verdict: str, event_id: str, colon: str) -> None:
    written = json.dumps({verdict: event_id}, ensure_ascii=False).replace('": ', '"' + colon)
    assert fast(written) == general(written) == Confirmation(event_id, verdict == "ack")


@given(st.text(alphabet='{}"ackn: \\\x00\x1fu0123x\ud800', max_size=24))
def test_any_text_decides_as_json_loads_does(text: str) -> None:
    if "\ud800" in text:
        assert fast(text) is BadRequest
    else:
        assert fast(text) == general(text)


@pytest.mark.parametrize(
    "text",
    ['{"ack": "\\ud800"}', '{"ack":"x" }', '{ "ack":"x"}', '{"ack": "x", "y": 1}', '{"ack": 5}'],
)
def test_other_spellings_take_the_general_path(text: str) -> None:
    assert fast(text) == general(text)


@given(
    st.text(),
    st.binary(max_size=64),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
)
def test_encode_event_is_compact_json(
    event_id: str, payload: bytes, metadata: dict[str, str]
) -> None:
    try:
        text = payload.decode("utf-8")
        document = {"id": event_id, "payload": text, "metadata": metadata}
    except UnicodeDecodeError:
        document = json.loads(encode_event(event_id, payload, metadata))
        assert document["encoding"] == "base64"
    assert encode_event(event_id, payload, metadata) == json.dumps(
        document, separators=(",", ":"), ensure_ascii=False
    )
