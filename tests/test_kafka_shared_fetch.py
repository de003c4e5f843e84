"""The shared Kafka design's fetch and sessions on the Trio side (``mediation/endpoints/
_kafka_shared.py``: ``SharedFetch``, ``SharedSession``), with no broker.

The fetch's thread is not started: the tests call what it hands to Trio (``_assigned``,
``_fan_out``) in the order the thread and the endpoint would, and the position writes are
answered at once by a stand-in for ``GroupOffsets``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.endpoints._handoff import ToTrio
from mediation.endpoints._kafka_admin_process import AdminProcess
from mediation.endpoints._kafka_shared import (
    CATCH_UP_READY_BYTES,
    READS_IN_FLIGHT,
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
    """``GroupOffsets``: ``write_nowait`` answered at once (what was written is kept);
    ``read_soon`` answered when the test says (:meth:`answer`)."""

    def __init__(self) -> None:
        self.written: list[dict[int, int]] = []
        self.reads: list[tuple[list[int], Callable[[dict[int, int] | BrokerUnavailable], None]]]
        self.reads = []

    def read_soon(
        self,
        group: str,
        topic: str,
        partitions: Iterable[int],
        done: Callable[[dict[int, int] | BrokerUnavailable], None],
    ) -> None:
        self.reads.append((list(partitions), done))

    def answer(self, stored: dict[int, int] | BrokerUnavailable) -> list[int]:
        """Answer the oldest read; the partitions it asked for."""
        partitions, done = self.reads.pop(0)
        done(stored)
        return partitions

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
    # The thread is not started: nothing reads metadata.
    fetch = SharedFetch({}, TOPIC, to_trio, _unconvertible, cast(Any, None))
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


# -- partitions added while the fetch runs ---------------------------------------------------------

NONE = -1001  # what the admin API answers for a partition the group has no offset of


def positions_of(session: SharedSession) -> dict[int, int]:
    return {p: positions.position for p, positions in session.positions.items()}


async def test_partitions_added_start_at_the_stored_position_else_at_their_beginning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The fetch found partitions 1 and 2 (assigned at their beginnings, 0): a session at the
    tail reads its group's positions there. Partition 1 is new to the client: it starts at 0,
    and that start is written at once (a client that never acks there resumes at 0, not at
    the end). The client read partition 2 up to 3 on an instance that found it earlier: it
    starts at 3. Answered before any of their records came, it stays at the tail."""
    fetch, session, offsets = shared(credit=4)
    fetch._assigned({0: (0, 0)})
    session.begin({0: 0})
    fetch._grown({1: 0, 2: 0})
    assert offsets.answer({1: NONE, 2: 3}) == [1, 2]
    assert positions_of(session) == {0: 0, 1: 0, 2: 3}
    assert offsets.written == [{1: 0}]
    assert session in fetch.tail
    fan_out(fetch, records(1, 0, 1) + records(2, 2, 3) + records(0, 0))
    got = [(await take(session)).event.id for _ in range(4)]
    assert got == [f"{TOPIC}:1:0", f"{TOPIC}:1:1", f"{TOPIC}:2:3", f"{TOPIC}:0:0"]


async def test_a_record_of_a_partition_whose_start_is_not_known_yet_sends_the_session_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A record of a new partition fanned out before the group answered is not skipped: the
    session leaves the tail (a catch-up reader reads it from the start the group gives)."""
    fetch, session, offsets = shared(credit=4)
    fetch._assigned({0: (0, 0)})
    session.begin({0: 0})
    fetch._grown({1: 0})
    fan_out(fetch, records(0, 0) + records(1, 0))
    assert session not in fetch.tail and session.behind
    assert (await take(session)).event.id == f"{TOPIC}:0:0"  # taken before it left
    offsets.answer({1: NONE})
    assert positions_of(session) == {0: 1, 1: 0}  # 1:0 is behind the fetch (next: 1)
    assert fetch.next == {0: 1, 1: 1} and not fetch.at_tail(session.positions)


async def test_a_session_that_begins_after_the_fetch_grew_reads_the_new_partitions_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The endpoint read the group's positions of the partitions it knew (0); the fetch found
    partition 1 meanwhile: the session asks its group for that one too, at the tail."""
    fetch, session, offsets = shared()
    fetch._assigned({0: (0, 0)})
    fetch._grown({1: 0})
    session.begin({0: 0})
    assert session in fetch.tail
    assert offsets.answer({1: NONE}) == [1]
    assert positions_of(session) == {0: 0, 1: 0}
    fan_out(fetch, records(1, 0))
    assert (await take(session)).event.id == f"{TOPIC}:1:0"


async def test_a_group_that_cannot_be_read_for_a_new_partition_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fetch, session, offsets = shared()
    fetch._assigned({0: (0, 0)})
    session.begin({0: 0})
    fetch._grown({1: 0})
    offsets.answer(BrokerUnavailable("no answer"))
    with pytest.raises(BrokerUnavailable):
        await take(session)


async def test_a_closed_session_ignores_its_groups_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fetch, session, offsets = shared()
    fetch._assigned({0: (0, 0)})
    session.begin({0: 0})
    fetch._grown({1: 0})
    await session.close()
    offsets.answer({1: NONE})
    assert positions_of(session) == {0: 0}


# -- position reads, bounded ---------------------------------------------------------------------


class _AdminProcess:
    """``AdminProcess``: requests kept until the test answers them."""

    def __init__(self) -> None:
        self.pending: list[tuple[dict[str, Any], Callable[[Any], None]]] = []

    def request(self, request: dict[str, Any], done: Callable[[Any], None]) -> None:
        self.pending.append((request, done))


async def test_reads_for_new_partitions_are_issued_reads_in_flight_at_a_time() -> None:
    """A topic that grows under 200 sessions: 200 reads, ``READS_IN_FLIGHT`` issued at once,
    the next ones as answers come back; each answered once, with its group's offsets."""
    process = _AdminProcess()
    offsets = GroupOffsets(cast(AdminProcess, process))
    answers: dict[str, dict[int, int] | BrokerUnavailable] = {}
    for n in range(200):
        group = f"g{n}"
        offsets.read_soon(group, TOPIC, [1, 2], partial(answers.__setitem__, group))
    most = 0
    while process.pending:
        most = max(most, len(process.pending))
        issued, process.pending = process.pending, []
        for n, (request, done) in enumerate(issued):
            done({"partitions": [[p, n, None, None] for p in request["partitions"]]})
    assert most == READS_IN_FLIGHT
    assert sorted(answers) == sorted(f"g{n}" for n in range(200))
    assert all(isinstance(a, dict) and set(a) == {1, 2} for a in answers.values())


# -- a catch-up reader's credit -------------------------------------------------------------------


class _Reader:
    """What a session asks of its ``CatchUpReader`` (no thread): the credit it was granted."""

    def __init__(self) -> None:
        self.generation = 0
        self.grants: list[int] = []

    def reposition(self, starts: dict[int, int]) -> None:
        self.generation += 1

    def grant(self, credit: int) -> None:
        self.grants.append(credit)

    def start(self, to_trio: Any, done: Any) -> None:
        pass

    def stop(self) -> None:
        pass


def caught(
    session: SharedSession, reader: _Reader, batch: list[Record], generation: int = -1
) -> None:
    """``reader`` hands ``batch`` over, fetched at ``generation`` (default: its current one)."""
    at = reader.generation if generation < 0 else generation
    session.caught(cast(Any, reader), at, batch, len(batch))


async def test_a_reader_is_granted_credit_a_quarter_of_the_window_at_a_time_never_beyond_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A session behind the tail (credit 4, window 8) with its reader: credit for 8, a batch
    of 8, then none until a quarter of the window is free of ready, delivered and lent
    records: 2 at the second ack, 2 more at the fourth (the first 2 are still lent). What the
    reader hands over never takes the session beyond its window."""
    fetch, session, _ = shared(credit=4)
    fetch._assigned({0: (0, 100)})  # the tail is at 100
    session.begin({0: 0})  # the client's position: behind
    reader = _Reader()
    session._readers.acquire_on_behalf_of_nowait(reader)
    session._run_reader(cast(Any, reader))
    caught(session, reader, records(0, *range(8)))
    assert reader.grants == [8]
    deliveries = [await take(session) for _ in range(4)]
    for delivery in deliveries:
        await delivery.ack()
    assert reader.grants == [8, 2, 2]
    caught(session, reader, records(0, *range(8, 12)))
    assert len(session._ready) + session._out == 8
    assert session._lent == 0


async def test_what_a_reader_fetched_before_a_rewind_is_dropped_and_its_credit_granted_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A nack while the reader's batch is on its way: the batch (fetched at the old positions)
    is not applied, and the credit it used is granted again for the reads from the rewound
    position."""
    fetch, session, _ = shared(credit=4)
    fetch._assigned({0: (0, 100)})
    session.begin({0: 0})
    reader = _Reader()
    session._readers.acquire_on_behalf_of_nowait(reader)
    session._run_reader(cast(Any, reader))
    caught(session, reader, records(0, 0, 1))
    first = await take(session)
    await first.nack()  # rewinds to 0: the reader is repositioned
    stale = reader.generation - 1
    caught(session, reader, records(0, *range(2, 8)), generation=stale)
    assert [item.offset for item in session._ready] == []
    assert session._lent == 8
    assert reader.grants == [8, 2, 6]  # at the nack, then what the stale batch used
    caught(session, reader, records(0, 0, 1))
    assert [item.offset for item in session._ready] == [0, 1]
    assert session._lent == 6


async def test_a_readers_room_holds_large_records_to_about_catch_up_ready_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A window of 100 records, but records of a quarter of ``CATCH_UP_READY_BYTES``: after a
    batch of them the reader is given room for 4 records at most (the window in bytes), not for
    the 100 the window counts (the rest is taken back); once they are taken and settled, credit
    for 4 again."""
    fetch, session, _ = shared(credit=96)  # window 100
    fetch._assigned({0: (0, 1000)})
    session.begin({0: 0})
    reader = _Reader()
    session._readers.acquire_on_behalf_of_nowait(reader)
    session._run_reader(cast(Any, reader))
    assert reader.grants == [100]  # nothing known of the records' size yet
    large = CATCH_UP_READY_BYTES // 4
    batch: list[Record] = [
        (0, o, Event(payload=b"x" * large, id=f"{TOPIC}:0:{o}")) for o in range(2)
    ]
    caught(session, reader, batch)
    assert reader.grants == [100, -96]  # 4 such records fit: 2 are ready, 2 stay lent
    for _ in range(2):
        await (await take(session)).ack()
    caught(session, reader, [])
    assert reader.grants == [100, -96, 1, 1]  # a quarter of the window (1) at each ack
    assert session._lent == 4


# -- the reader's credit under any order of events (Hypothesis) ------------------------------------


class _ModelReader(_Reader):
    """A reader that fetches as the real one does, from offsets 0.. of one partition: up to its
    credit, from its position, the batch handed over later (:meth:`hand_over`)."""

    def __init__(self) -> None:
        super().__init__()
        self.credit = 0
        self.position = 0
        self.size = 1
        self.in_flight: list[tuple[int, list[Record]]] = []

    def reposition(self, starts: dict[int, int]) -> None:
        super().reposition(starts)
        self.position = starts[0]

    def grant(self, credit: int) -> None:
        super().grant(credit)
        self.credit += credit

    def fetch(self, most: int) -> None:
        n = min(most, self.credit)
        if n <= 0:
            return
        batch: list[Record] = [
            (0, o, Event(payload=b"x" * self.size, id=f"{TOPIC}:0:{o}"))
            for o in range(self.position, self.position + n)
        ]
        self.position += n
        self.credit -= n
        self.in_flight.append((self.generation, batch))

    def hand_over(self, session: SharedSession) -> None:
        generation, batch = self.in_flight.pop(0)
        session.caught(cast(Any, self), generation, batch, len(batch))


def _now(step: Any) -> Any:
    """Run a session coroutine that must not wait (``next_delivery`` with a record ready, a
    settle without a synchronous commit) to its end, outside the scheduler."""
    try:
        step.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the session waited")


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("fetch"), st.integers(1, 80)),
        st.tuples(st.just("hand_over"), st.just(0)),
        st.tuples(st.just("take"), st.integers(1, 20)),
        st.tuples(st.just("ack"), st.integers(0, 30)),
        st.tuples(st.just("nack"), st.integers(0, 30)),
        st.tuples(st.just("size"), st.sampled_from([1, 1000, CATCH_UP_READY_BYTES // 8])),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS, credit=st.integers(1, 16))
def test_a_readers_credit_never_takes_its_session_beyond_its_window_nor_loses_a_record(
    steps: list[tuple[str, int]], credit: int
) -> None:
    """A session behind the tail and its reader, in any order of fetches, hand-overs, takes,
    acks, nacks and changes of record size: what the session lent is the reader's credit and
    its batches on their way, and never more than its window's room (in records, and in bytes
    at the size of the last batch's records); its ready and delivered records never exceed its
    window; it hands
    out records in order (from a nacked one again after a nack, as ``PartitionPositions.rewind``
    says); it never leaves its reader without credit while it has room; and, drained at the end,
    every record was acked."""

    async def run() -> None:
        fetch, session, _ = shared(credit=credit)
        fetch._assigned({0: (0, 10**9)})  # the tail is far ahead
        session.begin({0: 0})
        reader = _ModelReader()
        session._readers.acquire_on_behalf_of_nowait(reader)
        session._run_reader(cast(Any, reader))
        # Handed out and not settled: (offset, the rewinds before it was taken, delivery).
        out: list[tuple[int, int, Delivery]] = []
        expected = 0  # the offset the session must hand out next
        rewinds = 0
        rewound_to = 0
        acked: set[int] = set()

        def take() -> None:
            nonlocal expected
            delivery = _now(session.next_delivery())
            offset = int(delivery.event.id.rsplit(":", 1)[1])
            assert offset == expected
            expected += 1
            out.append((offset, rewinds, delivery))

        def settle(index: int, accepted: bool) -> None:
            nonlocal expected, rewinds, rewound_to
            offset, taken_after, delivery = out.pop(index % len(out))
            _now(delivery.ack() if accepted else delivery.nack())
            if accepted:
                acked.add(offset)
            elif taken_after == rewinds or offset < rewound_to:
                # Read again from the nacked record (a record handed out before an earlier
                # rewind, at or after its point, is being read again already).
                expected = rewound_to = offset
                rewinds += 1

        def check() -> None:
            in_flight = sum(len(batch) for _, batch in reader.in_flight)
            assert session._lent == reader.credit + in_flight
            assert len(session._ready) + session._out <= session._window
            # Never lent beyond the room its window has, held to CATCH_UP_READY_BYTES of records
            # the size of the last batch's (a batch on its way overshoots it, once).
            room = session._reader_window - len(session._ready) - session._out
            assert session._lent <= max(0, room)

        for step, n in steps:
            if step == "fetch":
                reader.fetch(n)
            elif step == "hand_over" and reader.in_flight:
                reader.hand_over(session)
            elif step == "take":
                for _ in range(n):
                    if not (session._ready and session._out < session._credit):
                        break
                    take()
            elif step in ("ack", "nack") and out:
                settle(n, step == "ack")
            elif step == "size":
                reader.size = n
            check()
        for _ in range(100_000):  # drain: everything fetched and acked, up to a last offset
            if expected >= 300 and not out and not reader.in_flight:
                break
            if out:
                settle(0, True)
            elif session._ready and session._out < session._credit:
                take()
            elif reader.in_flight:
                reader.hand_over(session)
            else:
                assert reader.credit > 0, "the session granted the reader nothing"
                reader.fetch(80)
            check()
        assert acked >= set(range(expected))

    trio.run(run)
