"""The shared Kafka design's committer (mediation/endpoints/_kafka_shared.py, ``Committer``).

No broker: the sessions are stand-ins whose position writes are answered when the test says
so, the way ``GroupOffsets`` answers through the endpoint's hand-off to Trio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import trio
import trio.testing

from mediation.endpoints._kafka_shared import (
    COMMIT_INTERVAL,
    WRITES_IN_FLIGHT,
    Committer,
    SharedSession,
)


class _Session:
    """What the committer asks of a ``SharedSession``: ``write_due`` (one write in flight)."""

    def __init__(self, committer: Committer, answers: list[Callable[[], None]]) -> None:
        self.stored_at = -math.inf
        self.writes = 0
        self._committer = committer
        self._answers = answers

    def write_due(self) -> None:
        self.writes += 1
        self._committer.issued()
        self._answers.append(self._committer.answered)

    async def refresh(self) -> None:  # pragma: no cover - the refresh interval never passes
        raise AssertionError("not refreshed in this test")


async def test_a_round_is_issued_writes_in_flight_at_a_time_and_others_run_between(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1,000 sessions marked at once (one event fanned out to them all): the committer issues
    ``WRITES_IN_FLIGHT``, waits for answers, issues more; a task that wants the Trio thread
    meanwhile (a fan-out) runs before the round is over; every session is written once."""
    committer = Committer(refresh_interval=3600.0)
    answers: list[Callable[[], None]] = []
    sessions = [_Session(committer, answers) for _ in range(1000)]
    most = 0
    ran_during_round = False

    async def answer_them() -> None:  # the broker: answers what was issued, a batch a tick
        nonlocal most, ran_during_round
        while sum(s.writes for s in sessions) < len(sessions) or answers:
            most = max(most, committer.in_flight)
            if answers and sum(s.writes for s in sessions) < len(sessions):
                ran_during_round = True
            batch, answers[:] = list(answers), []
            for answered in batch:
                answered()
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run)
        await trio.testing.wait_all_tasks_blocked()  # the committer runs and waits for marks
        assert committer.running
        for session in sessions:
            committer.mark(cast(SharedSession, cast(Any, session)))
        await trio.sleep(COMMIT_INTERVAL)
        await answer_them()
        nursery.cancel_scope.cancel()

    assert [s.writes for s in sessions] == [1] * len(sessions)
    assert most == WRITES_IN_FLIGHT
    assert ran_during_round
    assert committer.in_flight == 0


async def test_what_is_left_of_a_round_is_issued_when_the_committer_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled in the middle of a round (the endpoint ends): the rest is issued, not lost
    (the sessions' close() waits for their own writes)."""
    committer = Committer(refresh_interval=3600.0)
    answers: list[Callable[[], None]] = []
    sessions = [_Session(committer, answers) for _ in range(3 * WRITES_IN_FLIGHT)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run)
        await trio.testing.wait_all_tasks_blocked()  # the committer runs and waits for marks
        assert committer.running
        for session in sessions:
            committer.mark(cast(SharedSession, cast(Any, session)))
        await trio.sleep(COMMIT_INTERVAL * 2)
        assert committer.in_flight == WRITES_IN_FLIGHT  # nobody answers: the round waits
        nursery.cancel_scope.cancel()
    assert [s.writes for s in sessions] == [1] * len(sessions)
