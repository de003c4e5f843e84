"""Kafka ``fetch = "shared"``: a fetch per topic for the sessions at its tail, positions per client.

The per-client contract (each client its own position, credit and guarantee; a slow client slows
only itself; a reconnecting client resumes after its last ack, on any instance) needs a position
per client, not a broker consumer per client. So, for an endpoint with ``fetch = "shared"`` and
a ``group_id`` holding ``{client_id}``:

- :class:`SharedFetch`: one ``Consumer`` per endpoint and topic, ``assign()``ed to every
  partition (no group membership, no rebalance), with a bounded prefetch
  (``fetch_prefetch_kbytes``) and at most ``TAIL_BATCHES`` batches handed to Trio and not yet
  fanned out. Each record is converted once; the sessions at the tail get references to the
  same :class:`Event`. The fetch never waits for a session: one whose window (credit plus the
  endpoint's ``SHARED_READ_AHEAD``) is full, or that refused a record, leaves the tail. Every
  ``topic.metadata.refresh.interval.ms`` it looks for partitions added to the topic and reads
  them from their beginnings; each session starts those at its client's stored position, else
  at their beginnings (:meth:`SharedSession.add_partitions`; docs/design.md, "Endpoint
  semantics").
- :class:`SharedSession`: one session's reading, on the Trio thread only: a
  :class:`PartitionPositions` per partition, its credit, its read-ahead buffer. A record is
  taken only at the session's position (an older one is a duplicate and ignored; a newer one
  means a gap: the session leaves the tail). A nack rewinds that session alone.
- :class:`CatchUpReader`: a session behind the tail (a resume, ``earliest``, a nack, a client
  that fell behind) reads with a consumer of its own, assigned at its positions with a bounded
  prefetch, as far as the credit its session grants it (a quarter of the window or more at a
  time, held to about ``CATCH_UP_READY_BYTES`` of payload), until its positions reach the
  shared fetch's; then it joins the tail and the reader closes. At most ``catch_up_readers``
  at once per endpoint (a ``trio.CapacityLimiter``); the others wait for a slot (their clients
  see a later first event). A reader whose session stays full for ``STALL_PAUSE`` gives its
  slot back.
- :class:`GroupOffsets`: the positions stay in the broker, in the groups of the per-session
  design (``mediation-{endpoint}-{client_id}``), written with
  ``AdminClient.alter_consumer_group_offsets`` and read with ``list_consumer_group_offsets``,
  by the endpoint's admin child process (``_kafka_admin_process``: librdkafka can abort the
  process that makes these requests when a connection drops; a new child after each outage:
  :meth:`GroupOffsets.renew`; many requests in flight). Stored positions therefore carry
  over between the two designs and between instances. Every partition's error is checked: a
  group with a live member (a per-session consumer of the same client, during an upgrade)
  answers ``UNKNOWN_MEMBER_ID``, which refuses the session. Commits are coalesced per session
  (one write in flight; the next carries everything settled meanwhile), synchronous for
  ``at_most_once`` (the ack waits for it), and one last write when the session ends.

Threads: the shared fetch's consumer (librdkafka's threads plus one poller) per topic, an admin
client's for metadata, and one consumer plus poller per catch-up reader: bounded by a constant
plus the pool, whatever the number of sessions; and one child process per endpoint for the
positions. Every hand-off to Trio goes through the endpoint's :class:`._handoff.ToTrio`; the
threads never wait for a session.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import outcome
import trio
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from ..errors import BrokerUnavailable
from ..events import Delivery, Event
from ._handoff import ToTrio
from ._kafka_admin_process import AdminProcess, refusal
from ._kafka_positions import PartitionPositions
from .base import CONVERSION_ERROR

log = logging.getLogger(__name__)

# Records asked of librdkafka per consume() call of the shared fetch.
FETCH_BATCH = 500
# ``fetch.wait.max.ms`` of the shared fetch (the catch-up readers keep the endpoint's 100). tansu
# answers a held fetch only when this runs out, not when a record comes, so it is how late a
# record reaches the sessions at the tail: publish to fetch p50 15-20 ms, p90 40-44 ms at 100;
# 6-7 and 12-14 ms at 25 (tansu 4 % of a core for an idle fetch instead of 1.6 %). A real
# Kafka broker answers when a record comes: this then costs only empty fetches, 40 a second
# per endpoint and topic.
TAIL_FETCH_WAIT_MS = 25
# Position writes are batched: a settle marks its session, and the sessions marked write what
# moved this long after the first mark (one write in flight per session); an at_most_once ack
# writes at once, as it waits for the answer. So a burst fanned out to many sessions is written
# to their clients before the positions are, and a busy session writes a few times a second,
# not once per ack. A crash loses at most this much of the acks (redelivered, not lost).
COMMIT_INTERVAL = 0.2
# ... or at once, when a session has this many settles not yet written (a busy client's
# position lags at most about two of these: the write in flight and the next). Each write is a
# request to the admin child and a broker request, which a fast client's drain pays for
# (docs/performance.md, "S1 and S3 at 4 KiB" and "The Trio thread's Python per event"). Only a
# client faster than this many a COMMIT_INTERVAL writes by count; at 50 k/s two of these are
# about 40 ms of its stream, less than the interval leaves unwritten for a slower one.
COMMIT_BATCH = 1024
# Position writes an endpoint's committer keeps in flight. A round of marked sessions is issued
# this many at a time, the next ones as answers come back: one event fanned out to 1,000
# sessions marks 1,000 groups (one admin request each: librdkafka takes one group per request),
# and issuing them in one go held the Trio thread 30-100 ms (a shared 2-core machine), so a
# record fetched meanwhile waited that long before it was fanned out (S8, docs/performance.md).
WRITES_IN_FLIGHT = 64
# Position reads an endpoint keeps in flight for partitions found while sessions read (one per
# session of the topic); the others are issued as answers come back, like WRITES_IN_FLIGHT.
READS_IN_FLIGHT = 64
# Idle positions re-written at once (``position_refresh_interval``), each waiting for its answer.
REFRESH_IN_FLIGHT = 64
# Batches the shared fetch may have handed to Trio and not yet fanned out.
TAIL_BATCHES = 4
# How often an idle fetch or reader returns from consume() (to see a stop, and for the reader
# to report that it found nothing: it may be at the tail).
POLL_INTERVAL = 0.1
# A reader whose session took nothing for this long gives its pool slot back.
STALL_PAUSE = 0.5
# What a session lets its catch-up reader fetch ahead, in payload bytes, besides its window in
# records: the records of a batch are counted at the mean size of the last batch's.
CATCH_UP_READY_BYTES = 1024 * 1024
# Broker requests: metadata, watermarks, admin reads and writes; a missing topic is looked for
# this often.
REQUEST_TIMEOUT = 10.0
TOPIC_RETRY = 3.0
# The fetch thread's own metadata requests (is the broker there; has the topic new partitions):
# the tail waits for them.
METADATA_TIMEOUT = 2.0

# A topic's partitions as the broker reports them (empty: no such topic), at most ``timeout``
# seconds (then KafkaException); the endpoint's ``partitions`` (a test may put a topic that grows
# there: tansu has no CreatePartitions).
Partitions = Callable[[Consumer | AdminClient, str, float], list[int]]


def read_partitions(client: Consumer | AdminClient, topic: str, timeout: float) -> list[int]:
    """:data:`Partitions` from the broker (a metadata request)."""
    metadata = client.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return []
    return sorted(metadata.partitions)


# A converted record, or None for one that cannot be converted (skipped by every session).
Record = tuple[int, int, Event | None]
Convert = Callable[[Message], Event]


def _consume(consumer: Consumer, most: int) -> list[Message]:
    """Up to ``most`` records: wait (``POLL_INTERVAL`` at most) for the first, then take what
    librdkafka already holds. ``consume(most, timeout)`` alone would wait until it had ``most``
    records or the timeout passed: a single record would wait the whole interval."""
    messages = consumer.consume(1, POLL_INTERVAL)
    if messages and most > 1:
        messages += consumer.consume(most - 1, 0)
    return messages


def _records(messages: Iterable[Message], convert: Convert) -> tuple[list[Record], str | None]:
    """Messages as records; and the first error that is not an end of partition, if any."""
    records: list[Record] = []
    error: str | None = None
    for message in messages:
        failure = message.error()
        if failure is not None:
            if failure.code() != KafkaError._PARTITION_EOF and error is None:
                error = failure.str()
            continue
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            continue
        try:
            event: Event | None = convert(message)
        except Exception as failure_:  # one record, never the session
            log.warning(
                "kafka record skipped: it cannot be converted into an event",
                extra={
                    "topic": message.topic(),
                    "partition": partition,
                    "offset": offset,
                    "reason": CONVERSION_ERROR,
                    "error": str(failure_) or type(failure_).__name__,
                },
            )
            event = None
        records.append((partition, offset, event))
    return records, error


# -- positions in the broker -------------------------------------------------------------------


class GroupOffsets:
    """Per-client positions in the broker, through the endpoint's :class:`AdminProcess` (see
    module doc): on the Trio thread, answered there."""

    def __init__(self, process: AdminProcess) -> None:
        self._process = process
        self._reads: deque[Callable[[], None]] = deque()  # read_soon()s not issued yet
        self._reading = 0  # read_soon()s issued and not answered
        self._issuing = False

    def renew(self) -> None:
        """The cluster is back after an outage: the next requests go through a new client.

        The old one may have requests left from the outage (a session's last position write)
        that hold later requests for the same group until they time out (``REQUEST_TIMEOUT``
        after the cluster is back: seen on tansu), and the client's next session must not wait
        behind its previous session's write to learn where to start. So the admin process is
        started again (its requests fail, which only means they are made again)."""
        self._process.restart()

    def _request(self, request: dict[str, Any], group: str, done: Callable[[Any], None]) -> None:
        """Issue an admin request; ``done(answer or BrokerUnavailable)`` runs on the Trio thread."""

        def answered(answer: dict[str, Any] | str) -> None:
            reason = refusal(answer)
            if reason is not None:
                done(BrokerUnavailable(f"kafka refused the request for {group}: {reason}"))
            else:
                done(answer)

        self._process.request(request, answered)

    async def _answer(self, request: dict[str, Any], group: str) -> Any:
        done = trio.Event()
        box: list[Any] = []

        def answered(answer: Any) -> None:
            box.append(answer)
            done.set()

        self._request(request, group, answered)
        await done.wait()
        if isinstance(box[0], BrokerUnavailable):
            raise box[0]
        return box[0]

    @staticmethod
    def _list(group: str, topic: str, partitions: Iterable[int]) -> dict[str, Any]:
        return {"op": "list", "group": group, "topic": topic, "partitions": list(partitions)}

    @staticmethod
    def _alter(group: str, topic: str, offsets: dict[int, int]) -> dict[str, Any]:
        return {"op": "alter", "group": group, "topic": topic, "offsets": sorted(offsets.items())}

    async def read(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The group's committed offset of each partition (negative: none)."""
        offsets = _positions(group, await self._answer(self._list(group, topic, partitions), group))
        if isinstance(offsets, BrokerUnavailable):
            raise offsets
        return offsets

    def read_soon(
        self,
        group: str,
        topic: str,
        partitions: Iterable[int],
        done: Callable[[dict[int, int] | BrokerUnavailable], None],
    ) -> None:
        """:meth:`read` without waiting: ``done(offsets or error)`` runs on the Trio thread.

        At most ``READS_IN_FLIGHT`` of these are issued at once, the others as answers come
        back: partitions found while the topic's sessions run need one read per session."""
        self._reads.append(partial(self._read_now, group, topic, list(partitions), done))
        self._issue_reads()

    def _issue_reads(self) -> None:
        if self._issuing:  # an answer that came at once (a local refusal): the loop goes on
            return
        self._issuing = True
        try:
            while self._reads and self._reading < READS_IN_FLIGHT:
                self._reading += 1
                self._reads.popleft()()
        finally:
            self._issuing = False

    def _read_now(
        self,
        group: str,
        topic: str,
        partitions: list[int],
        done: Callable[[dict[int, int] | BrokerUnavailable], None],
    ) -> None:
        def answered(answer: Any) -> None:
            self._reading -= 1
            done(answer if isinstance(answer, BrokerUnavailable) else _positions(group, answer))
            self._issue_reads()

        self._request(self._list(group, topic, partitions), group, answered)

    def write_nowait(
        self,
        group: str,
        topic: str,
        offsets: dict[int, int],
        done: Callable[[BrokerUnavailable | None], None],
    ) -> None:
        """Store ``offsets`` as the group's positions; ``done(error or None)`` runs on Trio."""

        def answered(answer: Any) -> None:
            done(answer if isinstance(answer, BrokerUnavailable) else _refusal(group, answer))

        self._request(self._alter(group, topic, offsets), group, answered)

    async def write(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Store ``offsets`` as the group's positions; a refused partition raises."""
        answer = await self._answer(self._alter(group, topic, offsets), group)
        refused = _refusal(group, answer)
        if refused is not None:
            raise refused


def _partitions(answer: dict[str, Any]) -> list[tuple[int, int, int | None, str]]:
    """The rows of an admin answer: partition, offset, error code (None: no error), reason.
    A row of another shape (the child's output is read as any outside input) is an error."""
    rows = answer.get("partitions")
    parsed: list[tuple[int, int, int | None, str]] = []
    for row in rows if isinstance(rows, list) else [None]:
        match row:
            case [int(partition), int(offset), None, _]:
                parsed.append((partition, offset, None, ""))
            case [int(partition), int(offset), int(code), str(reason)]:
                parsed.append((partition, offset, code, reason))
            case _:
                parsed.append((-1, -1, KafkaError._BAD_MSG, f"an answer not understood: {row!r}"))
    return parsed


def _positions(group: str, answer: dict[str, Any]) -> dict[int, int] | BrokerUnavailable:
    """The offsets of a list answer (negative: none), or its first partition error."""
    offsets: dict[int, int] = {}
    for partition, offset, code, reason in _partitions(answer):
        if code is not None:
            return BrokerUnavailable(f"kafka could not read the position of {group}: {reason}")
        offsets[partition] = offset
    return offsets


def _refusal(group: str, answer: dict[str, Any]) -> BrokerUnavailable | None:
    """The first partition error of an alter answer, as the session's error; None if none."""
    for _, _, code, reason in _partitions(answer):
        if code == KafkaError.UNKNOWN_MEMBER_ID:
            return BrokerUnavailable(
                f"kafka group {group} has a live member (a per-session consumer of the same "
                "client): its position cannot be written"
            )
        if code is not None:
            return BrokerUnavailable(f"kafka could not store the position of {group}: {reason}")
    return None


# -- batched position writes -------------------------------------------------------------------


class Committer:
    """When the shared sessions of an endpoint write their positions (see ``COMMIT_INTERVAL``).

    :meth:`run` is the endpoint's task: it writes the marked sessions' positions
    ``COMMIT_INTERVAL`` after the first mark, at most ``WRITES_IN_FLIGHT`` at a time (the
    rest of the round as answers come back, so that fan-outs run in between), and every
    ``refresh_interval`` writes again the positions of sessions that stored nothing for that
    long (an idle client's group would otherwise lose them after the broker's
    ``offsets.retention.minutes``). Without it running (an endpoint whose ``run`` was not
    started) a mark writes at once.
    """

    def __init__(self, refresh_interval: float) -> None:
        self.refresh_interval = refresh_interval
        self.sessions: set[SharedSession] = set()  # every session that began reading
        self.running = False
        self.in_flight = 0  # position writes issued and not answered, whoever issued them
        self._due: dict[SharedSession, None] = {}  # ordered: the first marked writes first
        self._round: deque[SharedSession] = deque()  # marked before this round began
        self._marked = trio.Event()
        self._answers = trio.lowlevel.ParkingLot()

    def mark(self, session: SharedSession) -> None:
        if not self.running:
            session.write_due()
            return
        self._due[session] = None
        self._marked.set()

    def issued(self) -> None:
        self.in_flight += 1

    def answered(self) -> None:
        self.in_flight -= 1
        self._answers.unpark()

    async def run(self) -> None:
        self.running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._refresh)
                while True:
                    await self._marked.wait()
                    await trio.sleep(COMMIT_INTERVAL)
                    self._marked = trio.Event()
                    self._round.extend(self._due)
                    self._due = {}
                    while self._round:
                        # Answers run on this thread, so this parks after WRITES_IN_FLIGHT
                        # issues at the latest: what was fetched meanwhile is fanned out.
                        while self.in_flight >= WRITES_IN_FLIGHT:
                            await self._answers.park()
                        self._round.popleft().write_due()
        finally:
            self.running = False
            due = [*self._round, *self._due]
            self._round.clear()
            self._due = {}
            for session in due:  # issued, not awaited: the sessions' close() waits for theirs
                session.write_due()

    async def _refresh(self) -> None:
        while True:
            await trio.sleep(self.refresh_interval / 4)
            stale = trio.current_time() - self.refresh_interval
            sessions = [s for s in self.sessions if s.stored_at <= stale]
            for first in range(0, len(sessions), REFRESH_IN_FLIGHT):
                async with trio.open_nursery() as nursery:
                    for session in sessions[first : first + REFRESH_IN_FLIGHT]:
                        nursery.start_soon(session.refresh)


# -- the shared fetch --------------------------------------------------------------------------


class SharedFetch:
    """One topic's tail for every session reading it (see module doc).

    The thread owns the consumer; ``next`` (the offset after the last record fanned out, per
    partition), ``tail`` and the failure belong to the Trio side.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        to_trio: ToTrio,
        convert: Convert,
        metadata: AdminClient,
        partitions: Partitions = read_partitions,
    ) -> None:
        self.topic = topic
        self._config = config
        self._to_trio = to_trio
        self._convert = convert
        self._metadata = metadata
        self._partitions_of = partitions
        # How often the thread looks for partitions added to the topic: librdkafka's metadata
        # refresh of the consumer config, the interval at which a group of the per-session
        # design learns of them too (not positive: never, as librdkafka does).
        refresh = float(config.get("topic.metadata.refresh.interval.ms", 300_000))
        self._look_every = refresh / 1000 if refresh > 0 else math.inf
        # Trio side.
        self.low: dict[int, int] = {}
        self.next: dict[int, int] = {}
        self.tail: set[SharedSession] = set()
        self.sessions: set[SharedSession] = set()  # every session using this fetch
        # Sessions that joined while the topic did not exist: begun by the assignment, at the
        # partitions' beginnings. Only these: the others begin at their group's positions.
        self.awaiting_topic: set[SharedSession] = set()
        self.failure: BrokerUnavailable | None = None
        self._joining: set[trio.CancelScope] = set()
        self.started = trio.Event()  # assigned, or waiting for the topic to appear
        self.finished = trio.Event()
        self.waiting_for_topic = False
        # Thread side.
        self._stop = threading.Event()
        self._room = threading.BoundedSemaphore(TAIL_BATCHES)
        self._suspect: str | None = None
        self._waited = False  # the topic did not exist when the fetch started

    def start(self, name: str) -> None:
        trio.lowlevel.start_thread_soon(self._run, self._thread_exited, name=name)

    def stop(self) -> None:
        self._stop.set()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        consumer: Consumer | None = None
        try:
            consumer = Consumer({**self._config, "error_cb": self._on_error})
            partitions = self._partitions(consumer)
            if partitions is None:
                return
            starts: dict[int, tuple[int, int]] = {}
            for partition in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=REQUEST_TIMEOUT
                )
                # A topic that appeared while sessions waited holds only newer records.
                starts[partition] = (low, low if self._waited else high)
            consumer.assign([TopicPartition(self.topic, p, s) for p, (_, s) in starts.items()])
            self._to_trio.call_soon(self._assigned, starts)
            known = set(partitions)
            look_at = time.monotonic() + self._look_every
            while not self._stop.is_set():
                if self._suspect is not None:
                    reason, self._suspect = self._suspect, None
                    try:
                        consumer.list_topics(self.topic, timeout=METADATA_TIMEOUT)
                    except KafkaException:
                        self._to_trio.call_soon(self.fail, f"kafka broker unavailable: {reason}")
                        return
                if time.monotonic() >= look_at:
                    self._look_for_partitions(consumer, known)
                    look_at = time.monotonic() + self._look_every
                if not self._room.acquire(timeout=POLL_INTERVAL):
                    continue  # Trio has TAIL_BATCHES to fan out
                records, error = _records(_consume(consumer, FETCH_BATCH), self._convert)
                if error is not None:
                    self._room.release()
                    self._to_trio.call_soon(self.fail, f"kafka consumer: {error}")
                    return
                if not records:
                    self._room.release()
                    continue
                self._to_trio.call_soon(self._fan_out, records)
        except Exception as error:  # a thread: everything ends up as the sessions' failure
            self._to_trio.call_soon(self.fail, f"kafka consumer failed: {error}")
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except Exception as error:
                    log.warning("kafka consumer close failed", extra={"error": str(error)})
            self._to_trio.call_soon(self.finished.set)

    def _partitions(self, consumer: Consumer) -> list[int] | None:
        """The topic's partitions; waits (reporting it) while the topic does not exist."""
        while not self._stop.is_set():
            partitions = self._partitions_of(consumer, self.topic, REQUEST_TIMEOUT)
            if partitions:
                return sorted(partitions)
            if not self._waited:
                self._waited = True
                self._to_trio.call_soon(self._topic_missing)
            self._stop.wait(TOPIC_RETRY)
        return None

    def _look_for_partitions(self, consumer: Consumer, known: set[int]) -> None:
        """Partitions added to the topic since the fetch last looked: assigned at their
        beginnings (everything in them is new to the sessions at the tail) and handed to Trio
        (:meth:`_grown`). A broker that does not answer now is asked again next time (an
        outage is the error callback's business)."""
        try:
            listed = self._partitions_of(self._metadata, self.topic, METADATA_TIMEOUT)
            found = sorted(set(listed) - known)
            if not found:
                return
            starts = {
                p: consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=METADATA_TIMEOUT
                )[0]
                for p in found
            }
            consumer.incremental_assign(
                [TopicPartition(self.topic, p, o) for p, o in starts.items()]
            )
        except KafkaException as error:
            log.debug(
                "kafka topic's partitions not read; asked again later",
                extra={"topic": self.topic, "error": str(error)},
            )
            return
        known.update(starts)
        log.info(
            "kafka topic has new partitions: read from their beginnings",
            extra={"topic": self.topic, "offsets": starts},
        )
        self._to_trio.call_soon(self._grown, starts)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._to_trio.call_soon(self.fail, f"kafka consumer failed: {error.str()}")
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._suspect = error.str()

    def _thread_exited(self, result: outcome.Outcome[None]) -> None:
        if isinstance(result, outcome.Error):  # _run catches everything; this is a bug
            log.error("kafka fetch thread crashed", exc_info=result.error)

    # -- Trio side -----------------------------------------------------------------------------

    def _topic_missing(self) -> None:
        log.info(
            "kafka topic does not exist yet; its sessions wait for it", extra={"topic": self.topic}
        )
        self.waiting_for_topic = True
        self.started.set()

    def _assigned(self, starts: dict[int, tuple[int, int]]) -> None:
        for partition, (low, start) in starts.items():
            self.low[partition] = low
            self.next[partition] = start
        self.waiting_for_topic = False
        self.started.set()
        # Not every session without positions: one that came before this assignment (the first
        # of the fetch, a bridge started with its endpoint) is still reading its group's stored
        # positions and begins once it has them. Begun here too, it took records at the wrong
        # positions, then began again: the records it held were not its positions' any more,
        # their settles were ignored and its credit never came back (a bridge moved one event).
        awaiting, self.awaiting_topic = self.awaiting_topic, set()
        for session in awaiting:  # all of the topic is new to them
            session.begin({p: low for p, (low, _) in starts.items()})

    def _grown(self, starts: dict[int, int]) -> None:
        """Partitions added to the topic, assigned at ``starts`` (their beginnings)."""
        for partition, start in starts.items():
            self.low[partition] = start
            self.next[partition] = start
        for session in list(self.sessions):
            if session.positions:  # begun; the others find them in next when they begin
                session.add_partitions(sorted(starts))

    def _fan_out(self, records: list[Record]) -> None:
        self._room.release()
        if self.failure is not None:
            return
        for partition, offset, _ in records:
            self.next[partition] = max(self.next.get(partition, 0), offset + 1)
        for session in list(self.tail):
            if not session.offer(records):
                self.tail.discard(session)

    def fail(self, reason: str) -> None:
        """The fetch is over (its thread found the cluster gone, or the endpoint did): every
        session fails, a session still joining stops waiting (:meth:`joining`), the thread
        stops. The next session of the topic makes a new fetch."""
        if self.failure is None:
            self.failure = BrokerUnavailable(reason)
        self._stop.set()
        self.started.set()
        for scope in self._joining:
            scope.cancel()
        for session in list(self.sessions):
            session.fail(self.failure)

    @contextmanager
    def joining(self) -> Iterator[None]:
        """A session's waits before it begins (its group's positions, the assignment), cut
        short when the fetch fails, whose failure is then raised: a broker request must not
        hold a session past its endpoint's outage."""
        with trio.CancelScope() as scope:
            if self.failure is not None:
                scope.cancel()
            self._joining.add(scope)
            try:
                yield
            finally:
                self._joining.discard(scope)
        if self.failure is not None:
            raise self.failure

    def at_tail(
        self, positions: dict[int, PartitionPositions], pending: Container[int] = ()
    ) -> bool:
        """Whether a session at these positions misses nothing the fetch fans out from now on
        (``pending``: partitions whose start it is reading; a record of one fanned out before
        it knows makes it leave the tail, :meth:`SharedSession.offer`)."""
        return all(
            p in pending or (p in positions and positions[p].position >= n)
            for p, n in self.next.items()
        )


# -- one session -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    event: Event
    partition: int
    offset: int
    epoch: int


class SharedSession:
    """One session's reading from a :class:`SharedFetch` (Trio side only; see module doc)."""

    def __init__(
        self,
        fetch: SharedFetch,
        offsets: GroupOffsets,
        readers: trio.CapacityLimiter,
        reader_config: dict[str, Any],
        *,
        committer: Committer,
        group: str,
        credit: int,
        window: int,
        sync_commits: bool,
        undeliverable: Callable[[str], None],
        convert: Convert,
        to_trio: ToTrio,
    ) -> None:
        self.fetch = fetch
        self.group = group
        self.positions: dict[int, PartitionPositions] = {}
        self._offsets = offsets
        self._committer = committer
        self._readers = readers
        self._reader_config = reader_config
        self._credit = max(1, credit)
        self._window = max(self._credit, window)
        self._sync_commits = sync_commits
        self._undeliverable = undeliverable
        self._convert = convert
        self._to_trio = to_trio
        self._ready: deque[_Item] = deque()
        self._out = 0
        # The reader's window: ``window``, held to ``CATCH_UP_READY_BYTES`` of records the mean
        # size of its last batch's (:meth:`_hold_to_bytes`); credit comes a quarter at a time.
        self._reader_window = self._reader_batch = 0
        self._hold_to_bytes(None)
        # Records the reader may still hand over: granted, and not yet applied (:meth:`caught`);
        # the reader's credit plus what it fetched and has not handed over (negative while a
        # batch fetched before credit was taken back is on its way).
        self._lent = 0
        # Partitions found after the session began, whose start is being read from its group.
        self._pending: set[int] = set()
        self._changed = trio.lowlevel.ParkingLot()
        self._failure: BrokerUnavailable | None = None
        self._reader: CatchUpReader | None = None
        # Readers whose thread has not ended: the current one, and one stopped as the session
        # joined the tail (it may be in a consume() for ``POLL_INTERVAL``), awaited by close().
        self._threads: set[CatchUpReader] = set()
        self._closed = False
        self._dirty: set[int] = set()
        self._unwritten = 0  # settles since the last write was issued
        self._writing = False
        self._written = trio.Event()
        self._written.set()
        # When the positions were last stored (trio.current_time()); -inf: not by this session.
        self.stored_at = -math.inf

    # -- joining -------------------------------------------------------------------------------

    def begin(self, starts: dict[int, int]) -> None:
        """Start reading at ``starts``: at the tail if nothing lies between, else behind it.

        Once per session: either by the endpoint, at its group's positions, or by the fetch's
        assignment for a session in ``awaiting_topic``. Partitions the fetch found since the
        endpoint looked are added as partitions found later are (:meth:`add_partitions`)."""
        self.positions = {p: PartitionPositions(o) for p, o in starts.items()}
        self._committer.sessions.add(self)
        self.add_partitions([p for p in self.fetch.next if p not in starts])
        if self.fetch.at_tail(self.positions, self._pending):
            self.fetch.tail.add(self)
        self._notify()

    def add_partitions(self, partitions: list[int]) -> None:
        """Partitions added to the topic while the session reads: each starts at the client's
        stored position if its group has one (it read there on an instance that found the
        partition earlier), else at the partition's beginning (all of it is new to the
        client), which the next position write stores. Until its group answered, a record of
        such a partition fanned out makes the session leave the tail (read again later by a
        catch-up reader, never skipped)."""
        new = [p for p in partitions if p not in self.positions and p not in self._pending]
        if not new or self._closed:
            return
        self._pending.update(new)
        self._offsets.read_soon(self.group, self.fetch.topic, new, partial(self._added, new))

    def _added(self, partitions: list[int], stored: dict[int, int] | BrokerUnavailable) -> None:
        """The group's answer for partitions added while the session reads."""
        if self._closed:
            return
        if isinstance(stored, BrokerUnavailable):
            self.fail(stored)
            return
        for partition in partitions:
            self._pending.discard(partition)
            start = stored.get(partition, -1)
            if start >= 0:
                positions = PartitionPositions(start)
            else:
                start = self.fetch.low[partition]
                positions = PartitionPositions(start, committed=-1)  # written with the next
                self._dirty.add(partition)
            self.positions[partition] = positions
            if start < self.fetch.next[partition]:
                self.fetch.tail.discard(self)  # behind in it: a catch-up reader reads it
        if self._reader is not None:
            self._reader.reposition(self._starts())
        self._commit_soon()
        self._notify()

    def _notify(self) -> None:
        """Wake :meth:`next_delivery` if it waits: ``unpark_all`` costs a generator and a list
        even with nobody parked, and this is on every settle's path."""
        if self._changed:
            self._changed.unpark_all()

    @property
    def behind(self) -> bool:
        return bool(self.positions) and self not in self.fetch.tail

    # -- the tail ------------------------------------------------------------------------------

    def offer(self, records: list[Record]) -> bool:
        """Records fanned out by the fetch; False: the session leaves the tail."""
        took = False
        for partition, offset, event in records:
            positions = self.positions.get(partition)
            if positions is None:
                if partition in self._pending:  # its start is not known yet: read it later
                    return self._woken(took, stay=False)
                continue  # a partition it does not read
            if offset < positions.position:
                continue  # already taken
            if offset > positions.position:
                return self._woken(took, stay=False)  # a gap: read it with a catch-up reader
            if event is None:
                positions.skipped(offset)
                self._dirty.add(partition)
                self._undeliverable(CONVERSION_ERROR)
                continue
            if len(self._ready) + self._out >= self._window:
                return self._woken(took, stay=False)  # full: the tail does not wait for it
            self._ready.append(_Item(event, partition, offset, positions.fetched(offset)))
            took = True
        return self._woken(took, stay=True)

    def _woken(self, took: bool, *, stay: bool) -> bool:
        if took or not stay:
            self._notify()
        return stay

    def caught(
        self, reader: CatchUpReader, generation: int, records: list[Record], fetched: int
    ) -> None:
        """A batch from this session's catch-up reader (possibly empty: it found nothing);
        ``fetched``: the credit it used (its records and the ends of partitions it met)."""
        if reader is not self._reader or self._closed:
            return
        self._lent -= fetched
        if generation != reader.generation:
            self._grant()  # read at positions a rewind left: dropped, its credit granted again
            return
        took = 0
        payload = 0
        for partition, offset, event in records:
            positions = self.positions.get(partition)
            if positions is None or offset != positions.position:
                continue  # older than a rewind that came meanwhile, or already taken
            if event is None:
                positions.skipped(offset)
                self._dirty.add(partition)
                self._undeliverable(CONVERSION_ERROR)
            else:
                self._ready.append(_Item(event, partition, offset, positions.fetched(offset)))
                took += 1
                payload += len(event.payload)
        if took:
            self._hold_to_bytes(payload // took)
        if self.fetch.failure is None and self.fetch.at_tail(self.positions, self._pending):
            self.fetch.tail.add(self)
            reader.stop()
            self._reader = None
        else:
            self._grant()
        if took:
            self._notify()

    def fail(self, failure: BrokerUnavailable) -> None:
        if self._failure is None:
            self._failure = failure
        self._notify()

    # -- the session's side --------------------------------------------------------------------

    async def next_delivery(self) -> Delivery:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._ready and self._out < self._credit:
                item = self._ready.popleft()
                self._out += 1
                if self._reader is None and self.behind:
                    self._try_start_reader()
                elif not self._ready:
                    # A hand-out frees nothing; with nothing ready, an idle reader gets credit.
                    self._grant()
                return Delivery(item.event, partial(self._settle, item))
            if self._reader is None and self.behind and self._out < self._window:
                reader = self._new_reader()
                await self._readers.acquire_on_behalf_of(reader)
                self._run_reader(reader)
                continue
            await self._changed.park()

    async def _settle(self, item: _Item, accepted: bool) -> None:
        if self._closed:
            if accepted and self._sync_commits:
                raise BrokerUnavailable("kafka session ended before the ack was committed")
            return
        positions = self.positions.get(item.partition)
        if positions is None or not positions.holds(item.offset, item.epoch):
            return
        self._out -= 1
        seek = None if accepted else positions.rewind(item.offset, item.epoch)
        positions.settled(item.offset, item.epoch)
        if seek is not None:
            self._drop_ready(item.partition)
            self.fetch.tail.discard(self)
            if self._reader is not None:
                self._reader.reposition(self._starts())
        self._dirty.add(item.partition)
        self._unwritten += 1
        self._notify()
        self._grant()
        if accepted and self._sync_commits:
            await self._commit_now()
        else:
            self._commit_soon()

    def _grant(self) -> None:
        """Credit for the reader, once a quarter of the window is free of ready, delivered and
        lent records (or nothing is ready or lent), so that it fetches batches, not one record
        per settle. The window, in records, is also held to ``CATCH_UP_READY_BYTES`` of records
        the size of the last batch's: credit beyond it (the records grew) is taken back, so
        the reader overshoots by one batch at most. The reader fetches while it has credit:
        the next batch is read while the session applies this one."""
        reader = self._reader
        if reader is None:
            return
        free = self._reader_window - len(self._ready) - self._out - self._lent
        if free >= self._reader_batch or (free > 0 and not self._ready and self._lent <= 0):
            self._lent += free
            reader.grant(free)
        elif free < 0 < self._lent:
            taken = min(-free, self._lent)
            self._lent -= taken
            reader.grant(-taken)

    def _hold_to_bytes(self, record_bytes: int | None) -> None:
        """The reader's window for records of ``record_bytes`` (its last batch's mean; None
        before its first batch: the session's window)."""
        window = self._window
        if record_bytes is not None:
            window = min(window, max(1, CATCH_UP_READY_BYTES // max(1, record_bytes)))
        self._reader_window = window
        self._reader_batch = max(1, window // 4)

    def _drop_ready(self, partition: int) -> None:
        kept: deque[_Item] = deque()
        for ready in self._ready:
            if ready.partition == partition:
                self.positions[partition].dropped(ready.offset, ready.epoch)
            else:
                kept.append(ready)
        self._ready = kept

    def _starts(self) -> dict[int, int]:
        return {p: positions.position for p, positions in self.positions.items()}

    # -- catch-up readers ----------------------------------------------------------------------

    def _new_reader(self) -> CatchUpReader:
        return CatchUpReader(self._reader_config, self.fetch.topic, self, self._convert)

    def _try_start_reader(self) -> None:
        reader = self._new_reader()
        try:
            self._readers.acquire_on_behalf_of_nowait(reader)
        except trio.WouldBlock:
            return  # the pool is busy: next_delivery waits for a slot once the buffer is empty
        self._run_reader(reader)

    def _run_reader(self, reader: CatchUpReader) -> None:
        """Start ``reader`` (it holds a pool slot), unless it is not needed any more."""
        if self._closed or self._reader is not None or not self.behind:
            self._readers.release_on_behalf_of(reader)
            return
        self._reader = reader
        self._threads.add(reader)
        self._lent = 0
        reader.reposition(self._starts())
        self._grant()
        reader.start(self._to_trio, self._reader_done)

    def _reader_done(self, reader: CatchUpReader, error: str | None) -> None:
        self._readers.release_on_behalf_of(reader)
        self._threads.discard(reader)
        if self._reader is reader:
            self._reader = None
        if error is not None:
            self.fail(BrokerUnavailable(error))
        else:
            self._notify()  # a stalled reader gave its slot back: ask again later

    async def close(self) -> None:
        """Stop reading (shielded by the caller): the reader, then the last position write
        (awaited unless the session failed)."""
        self._closed = True
        self.fetch.tail.discard(self)
        self.fetch.sessions.discard(self)
        self.fetch.awaiting_topic.discard(self)
        self._committer.sessions.discard(self)
        for reader in list(self._threads):
            reader.stop()
            await reader.finished.wait()
        if self._failure is not None:
            # The cluster is gone: the last write is issued, not awaited (it would only wait
            # out its timeout, and a position not stored redelivers, it loses nothing).
            if not self._writing:
                self._write()
            return
        await self._written.wait()
        await self._commit_now()

    # -- positions -----------------------------------------------------------------------------

    def _to_write(self) -> dict[int, int]:
        partitions, self._dirty = self._dirty, set()
        self._unwritten = 0
        offsets: dict[int, int] = {}
        for partition in partitions:
            positions = self.positions.get(partition)
            point = positions.to_commit() if positions is not None else None
            if point is not None:
                offsets[partition] = point
        return offsets

    def _write(self, then: Callable[[BrokerUnavailable | None], None] | None = None) -> bool:
        """Write what moved (one write in flight at a time); False if nothing had to be."""
        offsets = self._to_write()
        if not offsets:
            return False
        self._writing = True
        written = self._written = trio.Event()
        self._committer.issued()

        def done(error: BrokerUnavailable | None) -> None:
            self._committer.answered()
            if error is not None:
                log.warning(
                    "kafka position not stored", extra={"group": self.group, "error": str(error)}
                )
                for partition, point in offsets.items():
                    self.positions[partition].commit_failed(point)
                    self._dirty.add(partition)
            else:
                self.stored_at = trio.current_time()
            self._writing = False
            written.set()
            if then is not None:
                then(error)
            elif not self._closed and not self._sync_commits and self._dirty:
                self._commit_soon()  # what was settled meanwhile, or a retry

        self._offsets.write_nowait(self.group, self.fetch.topic, offsets, done)
        return True

    async def _commit_now(self) -> None:
        """Write now and wait for the answer (at_most_once acks, the end of the session)."""
        while self._writing:
            await self._written.wait()
        box: list[BrokerUnavailable | None] = []
        if self._write(box.append):
            await self._written.wait()
            if box and box[0] is not None:
                raise box[0]

    def _commit_soon(self) -> None:
        """Batched: ``COMMIT_BATCH`` settles, else by the committer after ``COMMIT_INTERVAL``;
        one write in flight (its answer comes back here)."""
        if self._unwritten >= COMMIT_BATCH:
            self.write_due()
        elif self._dirty:
            self._committer.mark(self)

    def write_due(self) -> None:
        """The committer's turn: write what moved, unless a write is in flight (its answer
        marks the session again)."""
        if not self._writing and not self._closed and self._dirty:
            self._write()

    async def refresh(self) -> None:
        """Write the stored positions again, moved or not (``position_refresh_interval``)."""
        if self._closed:
            return
        for partition, positions in self.positions.items():
            if positions.committed >= 0:
                positions.commit_failed(positions.committed)  # the next write carries it
                self._dirty.add(partition)
        try:
            await self._commit_now()
        except BrokerUnavailable as error:
            log.warning(
                "kafka position not refreshed", extra={"group": self.group, "error": str(error)}
            )


# -- catch-up readers --------------------------------------------------------------------------


class CatchUpReader:
    """A temporary consumer reading one session's records behind the tail (see module doc).

    It reads while it has credit, which its session grants as its window empties
    (:meth:`grant`): the next batch is fetched while the session applies the last, not after a
    round trip between the two threads. With no credit for ``STALL_PAUSE`` (the session took
    nothing), it gives its pool slot back.
    """

    def __init__(
        self, config: dict[str, Any], topic: str, session: SharedSession, convert: Convert
    ) -> None:
        self._config = config
        self._topic = topic
        self._session = session
        self._convert = convert
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._starts: dict[int, int] = {}
        self._credit = 0
        self.generation = 0  # Trio side: bumped by each reposition
        self.finished = trio.Event()

    # Trio side.

    def reposition(self, starts: dict[int, int]) -> None:
        with self._lock:
            self.generation += 1
            self._starts = dict(starts)
        self._wake.set()

    def grant(self, credit: int) -> None:
        """More credit, or (negative) some taken back. The thread is woken only if it had none
        (it waits only then): ``threading.Event.set`` with a waiter costs the Trio thread a
        condition's notify, and a session grants at every quarter of its window."""
        with self._lock:
            waits = self._credit <= 0
            self._credit += credit
            wake = waits and self._credit > 0
        if wake:
            self._wake.set()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wake.set()

    def start(self, to_trio: ToTrio, done: Callable[[CatchUpReader, str | None], None]) -> None:
        def exited(result: outcome.Outcome[str | None]) -> None:  # in the thread
            if isinstance(result, outcome.Error):
                reason: str | None = f"kafka catch-up reader failed: {result.error}"
            else:
                reason = result.unwrap()
            to_trio.call_soon(self._exited, done, reason)

        trio.lowlevel.start_thread_soon(
            partial(self._run, to_trio), exited, name=f"kafka catch-up {self._session.group}"
        )

    def _exited(
        self, done: Callable[[CatchUpReader, str | None], None], reason: str | None
    ) -> None:
        self.finished.set()
        done(self, reason)

    # The thread.

    def _run(self, to_trio: ToTrio) -> str | None:
        consumer = Consumer(self._config)
        try:
            assigned = -1
            idle_since = time.monotonic()
            while True:
                with self._lock:
                    stopping, generation, starts = self._stopping, self.generation, self._starts
                    credit = self._credit
                if stopping:
                    return None
                if credit <= 0:
                    if time.monotonic() - idle_since >= STALL_PAUSE:
                        return None  # the session took nothing: give the slot back
                    self._wake.wait(STALL_PAUSE)
                    self._wake.clear()
                    continue
                idle_since = time.monotonic()
                if generation != assigned:
                    consumer.assign(
                        [TopicPartition(self._topic, p, o) for p, o in sorted(starts.items())]
                    )
                    assigned = generation
                messages = _consume(consumer, min(credit, FETCH_BATCH))
                with self._lock:
                    self._credit -= len(messages)
                records, error = _records(messages, self._convert)
                if error is not None:
                    return f"kafka catch-up reader: {error}"
                to_trio.call_soon(self._session.caught, self, generation, records, len(messages))
        finally:
            consumer.close()
