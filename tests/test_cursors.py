"""Signed resume cursors (mediation/cursors.py, pure): plain tests and Hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediation.config import parse_config
from mediation.cursors import MAC_CHARS, BadCursor, Cursors
from mediation.errors import ConfigError, outcome_of
from mediation.events import valid_event_id

SECRET = "a fleet secret of at least 32 bytes, shared"
positions = st.builds(
    lambda topic, partition, offset: f"{topic}:{partition}:{offset}",
    st.from_regex(r"[A-Za-z0-9._-]{1,60}", fullmatch=True),
    st.integers(0, 1000),
    st.integers(0, 2**62),
)


@given(positions)
def test_a_signed_position_is_taken_back_by_any_instance_with_the_secret(position: str) -> None:
    cursor = Cursors(SECRET).sign(position)
    assert cursor.startswith(position + ".") and len(cursor) == len(position) + 1 + MAC_CHARS
    assert valid_event_id(cursor)  # printable, no space: an SSE id, a header, JSON
    assert Cursors(SECRET.encode()).resume_position(cursor) == position


@given(positions, st.data())
def test_any_changed_byte_is_a_bad_cursor(position: str, data: st.DataObject) -> None:
    cursor = Cursors(SECRET).sign(position)
    # Any character but the separator (changing that makes it no cursor at all: below).
    index = data.draw(
        st.integers(0, len(cursor) - 1).filter(lambda i: i != len(cursor) - MAC_CHARS - 1)
    )
    replacement = data.draw(st.characters(min_codepoint=0x21, max_codepoint=0x7E))
    forged = cursor[:index] + replacement + cursor[index + 1 :]
    if forged == cursor:
        return
    with pytest.raises(BadCursor):
        Cursors(SECRET).resume_position(forged)


def test_another_fleets_cursor_is_refused_with_400() -> None:
    cursor = Cursors("another fleet's secret, also 32 bytes+").sign("t:0:5")
    with pytest.raises(BadCursor) as refused:
        Cursors(SECRET).resume_position(cursor)
    assert outcome_of(refused.value).http_status == 400


@pytest.mark.parametrize(
    "unsigned", ["t:0:5", "orders.eu:3:17", "3b241101-e2bb-4255-8caf-4136c566a962", "x" * 30]
)
def test_an_id_never_signed_resumes_nothing(unsigned: str) -> None:
    # Another broker's id (an EventSource sends back whatever it was given last), or a Kafka id
    # from before the secret was set: the broker's own place for the client applies.
    assert Cursors(SECRET).resume_position(unsigned) is None


def test_without_a_secret_positions_go_out_and_come_back_unsigned() -> None:
    cursors = Cursors(None)
    assert not cursors.signing
    assert cursors.sign("t:0:5") == "t:0:5"
    assert cursors.resume_position("t:0:5") == "t:0:5"
    assert cursors.resume_position(None) is None


def test_cursor_secret_config() -> None:
    base = '[engine]\ncursor_secret = "${SECRET}"\n'
    config = parse_config(base, env={"SECRET": SECRET})
    assert config.engine.cursor_secret == SECRET
    with pytest.raises(ConfigError, match=r"engine\.cursor_secret: must be at least 32 bytes"):
        parse_config(base, env={"SECRET": "short"})
    assert parse_config("").engine.cursor_secret is None
