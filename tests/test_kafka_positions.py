"""The Kafka offset bookkeeping (mediation/endpoints/_kafka_positions.py), as a model.

A partition log of records, a reader that fetches at its position (what librdkafka's consumer
does after a seek), a session with a credit and a read-ahead, and a client that acks and nacks
what it holds in any order, with commits that may fail. Hypothesis drives them; the invariants:

- the commit point never passes a record that is read ahead, handed out, or refused and not yet
  fetched again;
- at most once: every offset below a committed point was acked (written) at least once: nothing
  the client never got is ever committed past, with any read-ahead (the at_most_once loss that
  once switched Kafka's read-ahead off would have broken this; it was a position write cut by
  the fault, which at_most_once allows: README, the fault tests' figures);
- the bookkeeping's position is always where the reader reads;
- once the client stops refusing and settles everything, the whole log comes through.
"""

from __future__ import annotations

from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mediation.endpoints._kafka_positions import PartitionPositions, resume_gone

LOG = 40


class Session(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.credit = 1
        self.read_ahead = 0
        self.start = 0
        self.positions = PartitionPositions(0)
        self.reader = 0  # where the broker consumer fetches next
        self.ready: deque[tuple[int, int]] = deque()  # read ahead, not handed out
        self.out: list[tuple[int, int]] = []  # handed out, unsettled
        self.acked: set[int] = set()
        self.committed = 0  # what the broker holds
        self.in_flight: list[int] = []  # commits sent, not answered

    @rule(credit=st.integers(1, 4), read_ahead=st.sampled_from([0, 1, 3, 32]))
    @precondition(lambda self: not self.positions.unsettled and self.reader == 0)
    def configure(self, credit: int, read_ahead: int) -> None:
        self.credit, self.read_ahead = credit, read_ahead

    @rule()
    @precondition(lambda self: self.reader < LOG)
    def fetch(self) -> None:
        if len(self.ready) + len(self.out) >= self.credit + self.read_ahead:
            return
        offset = self.reader
        self.reader += 1
        epoch = self.positions.fetched(offset)
        self.ready.append((offset, epoch))

    @rule()
    def take(self) -> None:
        if self.ready and len(self.out) < self.credit:
            self.out.append(self.ready.popleft())

    @rule(data=st.data())
    @precondition(lambda self: self.out)
    def ack(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.out) - 1))
        offset, epoch = self.out.pop(index)
        assert self.positions.settled(offset, epoch)
        self.acked.add(offset)  # at most once: acked just before it is written

    @rule(data=st.data())
    @precondition(lambda self: self.out)
    def nack(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.out) - 1))
        offset, epoch = self.out.pop(index)
        seek = self.positions.rewind(offset, epoch)
        assert self.positions.settled(offset, epoch)
        if seek is not None:
            self.reader = seek
            for item in self.ready:
                assert self.positions.dropped(*item)
            self.ready.clear()

    @rule()
    def commit(self) -> None:
        point = self.positions.to_commit()
        if point is not None:
            self.in_flight.append(point)

    @rule(ok=st.booleans())
    @precondition(lambda self: self.in_flight)
    def answer(self, ok: bool) -> None:
        point = self.in_flight.pop(0)
        if ok:
            self.committed = max(self.committed, point)  # coalesced commits only move forward
        else:
            self.positions.commit_failed(point)

    @invariant()
    def commit_point_never_passes_an_unsettled_record(self) -> None:
        point = self.positions.commit_point()
        for offset, _ in [*self.ready, *self.out]:
            assert point <= offset

    @invariant()
    def nothing_committed_past_a_record_the_client_never_got(self) -> None:
        for offset in range(self.start, self.committed):
            assert offset in self.acked, (offset, self.committed, sorted(self.acked))

    @invariant()
    def the_bookkeeping_reads_where_the_reader_reads(self) -> None:
        assert self.positions.position == self.reader
        assert self.positions.unsettled == len(self.ready) + len(self.out)

    def teardown(self) -> None:
        # The client stops refusing: settle and drain; the whole log arrives and is committed.
        for _ in range(4 * LOG):
            while self.out:
                offset, epoch = self.out.pop()
                self.positions.settled(offset, epoch)
                self.acked.add(offset)
            while self.reader < LOG and len(self.ready) < self.credit + self.read_ahead:
                self.fetch()
            self.take()
            if not self.ready and not self.out and self.reader == LOG:
                break
        assert self.acked == set(range(LOG))
        point = self.positions.to_commit()
        assert (point or self.positions.committed) == LOG or self.in_flight


Session.TestCase.settings = settings(max_examples=400, stateful_step_count=60, deadline=None)
TestPositions = Session.TestCase


def test_the_synopsis() -> None:
    positions = PartitionPositions(start=40, epoch=1)
    epoch = positions.fetched(40)
    positions.fetched(41)
    assert positions.settled(40, epoch)
    assert positions.to_commit() == 41
    assert positions.to_commit() is None
    assert positions.rewind(41, epoch) == 41
    assert positions.settled(41, epoch)
    assert positions.commit_point() == 41
    assert positions.epoch == 2


def test_a_nack_covered_by_an_earlier_rewind_needs_no_seek() -> None:
    positions = PartitionPositions(0)
    epoch = positions.fetched(0)
    positions.fetched(1)
    positions.fetched(2)
    assert positions.rewind(0, epoch) == 0
    assert positions.rewind(2, epoch) is None  # 0.. is fetched again anyway
    assert positions.rewind(1, epoch) is None


def test_a_record_from_before_the_assignment_is_not_rewound() -> None:
    positions = PartitionPositions(10, epoch=5)
    assert positions.rewind(3, 4) is None
    assert not positions.settled(3, 4)


def test_a_failed_commit_is_carried_by_the_next() -> None:
    positions = PartitionPositions(0)
    positions.settled(0, positions.fetched(0))
    assert positions.to_commit() == 1
    positions.commit_failed(1)
    assert positions.to_commit() == 1


def test_a_resume_is_possible_between_the_watermarks_only() -> None:
    assert resume_gone("t", 0, 6, 6, 10) is None  # right after the last offset retention took
    assert resume_gone("t", 0, 10, 6, 10) is None  # right after the last record: the end
    assert "t:0:4 is gone" in (resume_gone("t", 0, 5, 6, 10) or "")
    assert "next offset is 10" in (resume_gone("t", 0, 11, 6, 10) or "")
