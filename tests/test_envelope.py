"""The envelope's fast paths decide exactly what the general JSON path decides."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mediation.envelope import (
    Confirmation,
    Publication,
    Resume,
    decode_client_message,
    encode_event,
    encode_reply,
)
from mediation.errors import BadRequest, InvalidEventId
from mediation.events import MAX_EVENT_ID, valid_event_id


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
    # ASCII payloads with controls, quotes and backslashes to escape, text, and bytes.
    st.binary(max_size=64)
    | st.text(st.characters(max_codepoint=127)).map(str.encode)
    | st.text().map(str.encode),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
    st.none() | st.text(max_size=8),
)
@example("1", b'"\\\x00\x1f\x7f\xe2\x80\xa8\xf0\x9f\x98\x80', {"k\n": "\u2029"}, None)
def test_encode_event_is_compact_json(
    event_id: str, payload: bytes, metadata: dict[str, str], subscription: str | None
) -> None:
    head: dict[str, object] = {"id": event_id}
    if subscription is not None:
        head["subscription"] = subscription
    try:
        text = payload.decode("utf-8")
        document = {**head, "payload": text, "metadata": metadata}
    except UnicodeDecodeError:
        document = json.loads(encode_event(event_id, payload, metadata, subscription))
        assert document["encoding"] == "base64"
    assert encode_event(event_id, payload, metadata, subscription) == json.dumps(
        document, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


@pytest.mark.parametrize(
    "event_id, metadata",
    [("\ud800", {}), ("1", {"note": "a\udfffb"}), ("1", {"\udbff": "v"})],
)
def test_an_event_with_a_lone_surrogate_is_still_utf8_json(
    event_id: str, metadata: dict[str, str]
) -> None:
    """UTF-8 cannot carry a lone surrogate (orjson refuses it): JSON's escape for it instead,
    which decodes back to the same string."""
    encoded = encode_event(event_id, b"payload", metadata)
    assert encoded.isascii()
    assert json.loads(encoded) == {"id": event_id, "payload": "payload", "metadata": metadata}


# -- event ids: a publication's must obey the rule, a confirmation's is taken as it is ----------

BROKEN_IDS = [
    "",
    " ",
    "a b",
    "tab\there",
    "evil\nid: x\ndata: injected",
    "nul\x00id",
    "vt\x0bid",
    "del\x7f",
    "caf\u00e9",
    "\ud800",
    "x" * (MAX_EVENT_ID + 1),
]


@pytest.mark.parametrize("event_id", BROKEN_IDS)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_publication_whose_id_breaks_the_rule_is_refused_naming_it(
    event_id: str, as_bytes: bool
) -> None:
    text = json.dumps({"id": event_id, "payload": "hi"})
    with pytest.raises(InvalidEventId) as refused:
        decode_client_message(text.encode() if as_bytes else text)
    assert refused.value.event_id == event_id
    assert isinstance(refused.value, BadRequest)  # a client error, 400 / 1008 where it ends one
    # The nack that names it is valid JSON, whatever the id holds (a lone surrogate too).
    assert json.loads(encode_reply(event_id, error=str(refused.value)))["nack"] == event_id


def test_the_id_is_checked_before_the_rest_of_the_envelope() -> None:
    with pytest.raises(InvalidEventId):
        decode_client_message(json.dumps({"id": "a b", "payload": 5}))
    with pytest.raises(BadRequest) as refused:
        decode_client_message(json.dumps({"id": 5, "payload": "hi"}))
    assert not isinstance(refused.value, InvalidEventId)  # no string to name


@pytest.mark.parametrize("event_id", ["!", "~" * MAX_EVENT_ID, "orders:3:1234", "a/b?c=d&e#f"])
def test_a_publication_whose_id_obeys_the_rule_is_taken(event_id: str) -> None:
    text = json.dumps({"id": event_id, "payload": "hi"})
    assert decode_client_message(text) == Publication(event_id, b"hi", {})


@given(st.text(max_size=MAX_EVENT_ID + 4))
def test_a_publication_is_taken_exactly_when_its_id_is_valid(event_id: str) -> None:
    text = json.dumps({"id": event_id, "payload": "hi"})
    try:
        decode_client_message(text)
    except InvalidEventId as refused:
        assert not valid_event_id(event_id) and refused.event_id == event_id
    else:
        assert valid_event_id(event_id)


@pytest.mark.parametrize("event_id", [i for i in BROKEN_IDS if i != "\ud800"])
@pytest.mark.parametrize("verdict", ["ack", "nack"])
def test_a_confirmation_with_a_broken_id_decodes_on_both_paths(event_id: str, verdict: str) -> None:
    """It matches no event (the session ignores it); decoding it must not fail either way."""
    for written in (
        json.dumps({verdict: event_id}),
        json.dumps({verdict: event_id}, ensure_ascii=False),
    ):
        assert fast(written) == general(written) == Confirmation(event_id, verdict == "ack")


def test_a_resume_carries_its_cursor_as_given() -> None:
    assert decode_client_message('{"resume": "t:0:4.abc"}') == Resume("t:0:4.abc")
    for bad in ('{"resume": 4}', '{"resume": null}', '{"resume": "\\ud800"}'):
        assert fast(bad) is BadRequest
