"""The shared Kafka design's fetch and sessions on the Trio side (``mediation/endpoints/
_kafka_shared.py``: ``SharedFetch``, ``SharedSession``), with no broker.

The fetch's thread is not started: the tests call what it hands to Trio (``_assigned``,
``_fan_out``) in the order the thread and the endpoint would, and the position writes are
answered at once by a stand-in for ``GroupOffsets``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import trio
import trio.testing

from mediation.endpoints._handoff import ToTrio
from mediation.endpoints._kafka_shared import (
    Committer,
    GroupOffsets,
    Record,
    SharedFetch,
    SharedSession,
)
from mediation.errors import BrokerUnavailable
from mediation.events import Delivery, Event

TOPIC = "t"


class _Offsets:
    """``GroupOffsets.write_nowait``, answered at once; what was written is kept."""

    def __init__(self) -> None:
        self.written: list[dict[int, int]] = []

    def write_nowait(
        self,
        group: str,
        topic: str,
        offsets: dict[int, int],
        done: Callable[[BrokerUnavailable | None], None],
    ) -> None:
        self.written.append(dict(offsets))
        done(None)


def _unconvertible(message: Any) -> Event:  # pragma: no cover - records come converted here
    raise AssertionError("no message is converted in these tests")


def shared(credit: int = 1) -> tuple[SharedFetch, SharedSession, _Offsets]:
    """A fetch (thread not started) and one session of it, registered as the endpoint does."""
    to_trio = ToTrio("test")
    fetch = SharedFetch({}, TOPIC, to_trio, _unconvertible)
    offsets = _Offsets()
    session = SharedSession(
        fetch,
        cast(GroupOffsets, cast(Any, offsets)),
        trio.CapacityLimiter(1),
        {},
        committer=Committer(refresh_interval=3600.0),  # not running: a mark writes at once
        group="mediation-k-client",
        credit=credit,
        window=credit + 4,
        sync_commits=False,
        undeliverable=lambda reason: None,
        convert=_unconvertible,
        to_trio=to_trio,
    )
    fetch.sessions.add(session)  # the endpoint, before it waits for fetch.started
    return fetch, session, offsets


def records(partition: int, *offsets: int) -> list[Record]:
    return [
        (partition, o, Event(payload=b"%d" % o, id=f"{TOPIC}:{partition}:{o}")) for o in offsets
    ]


def fan_out(fetch: SharedFetch, batch: list[Record]) -> None:
    """What the fetch's thread does with a batch: take a place for it, hand it to Trio."""
    assert fetch._room.acquire(blocking=False)
    fetch._fan_out(batch)


async def take(session: SharedSession) -> Delivery:
    with trio.fail_after(5):  # the autojump clock: a session that is stuck fails at once
        return await session.next_delivery()


async def test_the_first_session_of_a_fetch_begins_at_its_groups_positions_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first session of a fetch waits for the fetch's assignment, then reads its group's
    stored position (2 here) while the fetch already fans records out. It must begin once, at
    2: begun at the partition's start by the assignment as well, it took records 0 and 1,
    handed out record 0 (before its stored position), ignored that record's ack (not its
    positions' any more) and never got its credit back: a bridge moved one event, then none."""
    fetch, session, offsets = shared(credit=1)
    fetch._assigned({0: (0, 0)})  # the thread: partition 0 assigned at 0, the topic held nothing
    fan_out(fetch, records(0, 0, 1))  # fetched while the endpoint reads the stored position
    session.begin({0: 2})  # the endpoint: the group's stored position
    fan_out(fetch, records(0, 2, 3))
    got = []
    for _ in range(2):
        delivery = await take(session)
        got.append(delivery.event.id)
        await delivery.ack()
    assert got == [f"{TOPIC}:0:2", f"{TOPIC}:0:3"]
    assert offsets.written[-1] == {0: 4}


async def test_a_session_that_waited_for_the_topic_begins_at_its_beginning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A session that joined while the topic did not exist is begun by the assignment at each
    partition's beginning (everything in the topic is new to it), and reads from the tail."""
    fetch, session, _ = shared(credit=2)
    fetch._topic_missing()
    assert fetch.waiting_for_topic
    fetch.awaiting_topic.add(session)  # the endpoint: the topic does not exist yet
    fetch._assigned({0: (0, 0), 1: (0, 0)})
    assert {p: positions.position for p, positions in session.positions.items()} == {0: 0, 1: 0}
    assert session in fetch.tail and not fetch.awaiting_topic
    fan_out(fetch, records(1, 0) + records(0, 0))
    assert [(await take(session)).event.id for _ in range(2)] == [f"{TOPIC}:1:0", f"{TOPIC}:0:0"]


async def test_a_session_that_left_while_waiting_for_the_topic_is_not_begun(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fetch, session, _ = shared()
    fetch._topic_missing()
    fetch.awaiting_topic.add(session)
    await session.close()
    assert not fetch.sessions and not fetch.awaiting_topic
    fetch._assigned({0: (0, 0)})
    fan_out(fetch, records(0, 0))
    assert not session.positions and session not in fetch.tail
