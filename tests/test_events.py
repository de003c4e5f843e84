"""Events made on a broker's hot path: the same as the dataclass makes them."""

from __future__ import annotations

import dataclasses
import time

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message

from mediation.endpoints.kafka import event_from_message
from mediation.events import Event, broker_event


def test_broker_event_sets_every_field_event_has() -> None:
    # A field added to Event fails here until broker_event sets it.
    assert [field.name for field in dataclasses.fields(Event)] == [
        "payload",
        "id",
        "metadata",
        "client_id",
        "timestamp",
    ]
    made = broker_event(b"x", "t:0:1", {"topic": "t"}, 12.5)
    assert made == Event(b"x", "t:0:1", {"topic": "t"}, None, 12.5)
    assert type(made) is Event
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.id = "t:0:2"  # type: ignore[misc]
    assert dataclasses.replace(made, id="t:0:2").id == "t:0:2"


def test_a_kafka_record_becomes_an_event_with_its_position_and_headers() -> None:
    message = Message(
        topic="orders",
        partition=3,
        offset=41,
        key=b"k\xff",
        value=b"payload",
        headers=[("topic", b"from a header"), ("trace", b"t-1"), ("bad", b"a\nb")],
        timestamp=(TIMESTAMP_CREATE_TIME, 1733390000123),
    )
    assert event_from_message(message) == Event(
        payload=b"payload",
        id="orders:3:41",
        metadata={
            # The record's own position wins over a header of the same name; a header with
            # a control character is left out (it could not be sent as an HTTP header).
            "topic": "orders",
            "trace": "t-1",
            "partition": "3",
            "offset": "41",
            "key": "k\ufffd",
            "timestamp": "1733390000123",
        },
        timestamp=1733390000.123,
    )


def test_a_kafka_record_without_value_or_timestamp_is_an_empty_event_of_now() -> None:
    before = time.time()
    event = event_from_message(
        Message(topic="t", partition=0, offset=0, timestamp=(TIMESTAMP_NOT_AVAILABLE, 0))
    )
    assert (event.payload, event.id, event.metadata) == (
        b"",
        "t:0:0",
        {"topic": "t", "partition": "0", "offset": "0"},
    )
    assert before <= event.timestamp <= time.time()
