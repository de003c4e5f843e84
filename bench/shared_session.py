"""A Kafka shared session's own cost per event, without I/O (``python -m bench.shared_session``).

One :class:`~mediation.endpoints._kafka_shared.SharedSession` behind the tail, fed by its
catch-up reader's batches (a stand-in that only counts the credit it is granted), its events taken
with ``next_delivery`` and acked at once, as an ``auto`` session's consumer does: what the Trio
thread spends per event on the session's bookkeeping (positions, credit, commit marks), apart from
the broker, the client and the scheduler. Prints microseconds per event, the best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, cast

import trio

from mediation.endpoints._handoff import ToTrio
from mediation.endpoints._kafka_shared import (
    Committer,
    GroupOffsets,
    Record,
    SharedFetch,
    SharedSession,
)
from mediation.endpoints.kafka import SHARED_READ_AHEAD
from mediation.events import Event

TOPIC = "bench"


class _Offsets:
    """Position writes answered at once."""

    def write_nowait(
        self, group: str, topic: str, offsets: dict[int, int], done: Callable[[Any], None]
    ) -> None:
        done(None)


class _Reader:
    """The catch-up reader's side of the protocol, without a thread."""

    generation = 0

    def reposition(self, starts: dict[int, int]) -> None:
        self.generation += 1

    def grant(self, credit: int) -> None:
        pass

    def start(self, to_trio: Any, done: Any) -> None:
        pass

    def stop(self) -> None:
        pass


async def per_event(events: int, credit: int, window: int, batch: int) -> float:
    fetch = SharedFetch({}, TOPIC, ToTrio("bench"), cast(Any, None), cast(Any, None))
    committer = Committer(refresh_interval=3600.0)
    committer.running = True  # marks wait for a round that never comes, as between two rounds
    session = SharedSession(
        fetch,
        cast(GroupOffsets, cast(Any, _Offsets())),
        trio.CapacityLimiter(1),
        {},
        committer=committer,
        group="mediation-bench-client",
        credit=credit,
        window=window,
        sync_commits=False,
        undeliverable=lambda reason: None,
        convert=cast(Any, None),
        to_trio=fetch._to_trio,
    )
    fetch.sessions.add(session)
    fetch._assigned({0: (0, events + 1)})  # the tail is past every record: the session is behind
    session.begin({0: 0})
    reader = _Reader()
    session._readers.acquire_on_behalf_of_nowait(reader)
    session._run_reader(cast(Any, reader))
    records: list[Record] = [
        (0, o, Event(payload=b"x", id=f"{TOPIC}:0:{o}")) for o in range(events)
    ]
    started = time.perf_counter()
    for first in range(0, events, batch):
        handed = records[first : first + batch]
        session.caught(cast(Any, reader), reader.generation, handed, len(handed))
        for _ in handed:
            delivery = await session.next_delivery()
            await delivery.ack()
    return (time.perf_counter() - started) / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=128_000)
    parser.add_argument("--credit", type=int, default=64, help="the route's channel_size")
    parser.add_argument("--batch", type=int, default=64, help="records per reader batch")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    window = args.credit + SHARED_READ_AHEAD  # as the endpoint makes it
    best = min(
        trio.run(per_event, args.events, args.credit, window, args.batch)
        for _ in range(args.rounds)
    )
    print(f"shared session, next_delivery + ack + batches: {best * 1e6:.2f} us per event")


if __name__ == "__main__":
    main()
