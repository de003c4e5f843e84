"""The Kafka endpoint (confluent-kafka): sessions' consumers, one shared idempotent producer.

Consuming
---------
With ``fetch = "shared"`` (the default) and a ``group_id`` holding ``{client_id}``, sessions
read from one fetch per topic and keep their positions in their groups through the admin API
(``_kafka_shared``; the admin requests in a child process, ``_kafka_admin_process``). Otherwise
(``fetch = "per_session"``, or one group shared by sessions as competing consumers), what
follows: every session gets its own ``Consumer`` in the group ``group_id`` (default
``mediation-{endpoint}-{client_id}``: a client that reconnects resumes where its last session's
commits left it). Entering :meth:`KafkaEndpoint.consume` returns once the group assigned this
consumer its partitions and the start offset of each is fixed (right after ``Last-Event-ID``
when given; else the committed offset; else the watermark ``auto_offset_reset`` names, which is
then committed so that the group has a resume point from the first session on), so anything
published afterwards is received.

- Event id ``"{topic}:{partition}:{offset}"``; a session given one as ``resume_after`` (SSE
  ``Last-Event-ID``) starts that partition right after it, or, when the broker no longer holds
  that offset (``_kafka_positions.resume_gone``: below the low watermark, above the high one),
  at the oldest offset there is, having told ``subscription.position_gone`` why. Metadata:
  the Kafka headers (UTF-8), then ``topic``, ``partition``, ``offset``, ``key``, ``timestamp``
  (ms since the epoch).
- ``ack`` commits (``enable.auto.commit=false``): the committed offset of a partition is the lowest
  offset this consumer handed out and still has unsettled, or the next one to hand out, so a commit
  never passes an unconfirmed event even when a client confirms out of order. Commits are
  asynchronous and coalesced; on ``at_most_once`` routes the ack waits for the broker's answer
  (the writer must not write an event whose commit could be lost).
- ``nack`` commits nothing and seeks the partition back to the event: it is delivered again in
  this session (with the events after it), and if the session ends first, the group resumes there.
  Whatever a session leaves unsettled is therefore what the client's next session starts with.
- Backpressure: the consumer hands the session at most ``subscription.credit`` (the route's
  ``channel_size``) unsettled events. The poller thread keeps up to ``READ_AHEAD`` more events
  fetched (taken from librdkafka's queue, which holds them anyway) on the Trio side: after a
  settle the session's next event is handed out at once, without a round trip through the
  thread; they count as unsettled for the commit point, and nothing is handed out while a nack
  waits for its seek. librdkafka prefetches on its own; its queue is capped small
  (``queued.min.messages`` = credit, ``queued.max.messages.kbytes`` = 64, 64 KiB fetches) so a
  session that keeps up costs at most that, and once a session has been full for
  ``STALL_PAUSE`` seconds its partitions are paused, which drops librdkafka's prefetch too: a
  stalled client then holds nothing beyond its own session channel.
- A record that cannot be converted into an event (header values that are not UTF-8 are not
  such: they are decoded with replacement characters; but confluent-kafka fails on a header
  name that is not UTF-8, and any error converting a record counts) is skipped, whatever the
  route's guarantee: Kafka has no reject, and handing it out again would fail again, so the
  consumer's position passes it and the next commit covers it (at-most-once routes: the next
  ack's commit). It is logged and counted (``subscription.undeliverable``); the session goes on.
- A topic that does not exist yet is a normal state, not a failure: librdkafka reports it
  (``UNKNOWN_TOPIC_OR_PART``, "Subscribed topic not available") and never assigns anything, so
  the session starts at once, without partitions, and waits. The group picks the topic up on a
  metadata refresh once it exists (``topic.metadata.refresh.interval.ms``, 3 s by default here),
  and a partition without a committed offset then starts at its beginning whatever
  ``auto_offset_reset`` says: all of it was written after the session started, and the produce
  that created the topic (tansu creates one on first use) is in it.
  Partitions added to a topic while a session reads it come the same way: the group rebalances
  at a metadata refresh, and a new partition without a committed offset starts where
  ``auto_offset_reset`` says (librdkafka's rule; ``fetch = "shared"`` starts it at its
  beginning instead, see ``_kafka_shared``).
  Topics come from the operator, from the cluster on first produce, or from the endpoint itself
  when it starts (``create_topics = true``: topic_in and topic_out, unless they hold a
  ``{placeholder}``, through the admin API; one that exists already is left as it is).
- Failures: a fatal error, or an ``_ALL_BROKERS_DOWN`` (librdkafka reports it within ~1 s of
  losing the broker) confirmed by a metadata request that gets no answer within
  ``PROBE_TIMEOUT``, ends the consumer with :class:`BrokerUnavailable`.
  Leaving the block, by any path, closes the consumer (leaves the group) within
  ``CLOSE_TIMEOUT``.

Threads: one poller thread per consumer
---------------------------------------
confluent-kafka serialises every call on a ``Consumer`` (a per-consumer gate): a ``commit``,
``seek`` or ``pause`` from another thread waits until a running ``poll`` returns. So the consumer
is owned by one thread for its whole life (create, subscribe, poll, commit, seek, pause, close),
and the Trio side never calls it: deliveries come to Trio through a lock-protected deque plus a
wake-up through the endpoint's :class:`._handoff.ToTrio` (never blocking the thread on the
session; a callable that raises is logged, never ends the Trio run), settles go to the
thread through a deque plus a ``threading.Event`` that wakes it when it is waiting for credit.
The thread polls with ``POLL_INTERVAL`` while the session has credit and otherwise waits for that
event, polling every ``STALL_PAUSE`` only to serve group callbacks and errors. Each side wakes
the other only when it sleeps, and the thread only once settles free a quarter of the window
(credit + read-ahead): a busy session costs about one thread wake-up and one Trio wake-up per
batch, not per event. A stalled session costs nothing once its partitions are paused.

Why a poller thread rather than ``trio.to_thread.run_sync(consumer.poll, ...)`` per event under a
per-endpoint ``CapacityLimiter``: ``to_thread`` holds a worker and the consumer's gate for the
whole poll, so every settle waits for a poll to end, an idle session needs a limiter token to
notice anything, and a limiter smaller than the number of sessions delays everybody; it saves one
thread per session and nothing else. The poller thread also keeps serving the group (rebalances,
``max.poll.interval.ms``, errors) while a client is slow. A consumer's memory and threads are
librdkafka's own and did not move with its buffer settings, so they are not tuned here. The
measurements behind these choices: docs/performance.md, "The Kafka endpoint".

Producing
---------
One ``Producer`` per endpoint (``enable.idempotence=true``), owned by :meth:`KafkaEndpoint.run`,
which polls it for delivery reports from a thread and hands them to Trio in batches through the
endpoint's :class:`._handoff.ToTrio`. ``publish(confirm=True)`` waits for the report (a
failure, or the broker going down meanwhile, raises :class:`BrokerUnavailable`);
``confirm=False`` returns once ``produce`` took it (a full queue waits for delivery reports, it
does not spin). Key: ``message.key``; headers: the
event metadata. State: ``connecting`` until the producer got cluster metadata, ``up``, ``down``
from an ``_ALL_BROKERS_DOWN`` that a metadata request confirms, until metadata can be fetched
again (librdkafka reconnects by itself, with its own jittered ``reconnect.backoff.ms``; the
endpoint probes with jittered backoff from ``RETRY_MIN`` to ``RETRY_MAX`` and follows).
Publishing is refused while the endpoint is not ``up``, and confirmed publishes still waiting
fail when it goes ``down``. Each outage ends with a new producer (see ``_run_producer``).

Configuration: ``[endpoints.config.librdkafka]`` passes any librdkafka key; it overrides this
module's tuning defaults (queue sizes, ``message.timeout.ms``, ...) and is overridden by what the
endpoint's semantics need (``group.id``, ``enable.auto.commit``, ``enable.idempotence``, the
``KafkaConfig`` fields, the callbacks).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import outcome
import trio
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from trio_util import AsyncValue

from ..client_state import ClientLedger, Sweep, name_pattern
from ..config import KafkaConfig
from ..errors import BrokerUnavailable, TargetNotFound
from ..events import Delivery, Event, broker_event
from ._backoff import Backoff
from ._handoff import ToTrio
from ._kafka_admin_process import AdminProcess
from ._kafka_positions import PartitionPositions, resume_gone
from ._kafka_shared import (
    TAIL_FETCH_WAIT_MS,
    Committer,
    GroupOffsets,
    Partitions,
    SharedFetch,
    SharedSession,
    read_partitions,
)
from ._kafka_sweep import KafkaGroups, ask_from_thread
from ._sweep import run_sweep
from .base import CONVERSION_ERROR, Deliveries, EndpointState, Outbound, Subscription

log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

# Longest single poll() of a consumer: how long a settle, a seek or the end of the session may
# wait for the poller thread while the session has credit and the topic is idle.
POLL_INTERVAL = 0.1
# A session that took no event for this long gets its partitions paused (prefetch dropped); while
# paused (or full), the poller thread still polls this often to serve group callbacks and errors.
STALL_PAUSE = 0.5
# Events the poller thread keeps fetched beyond the session's credit, so that the session's next
# event after a settle is taken on the Trio side without waking the thread (see module doc).
READ_AHEAD = 32
# The same for ``fetch = "shared"``, where the events read ahead are references to the shared
# fetch's at the tail, and a catch-up reader's credit behind it (also held to
# ``_kafka_shared.CATCH_UP_READY_BYTES``): the reader fetches while the session applies what it
# handed over, and the hand-over between two threads takes about a millisecond, so the window
# must hold more than that for a session to read as fast as its client (docs/performance.md,
# "S1 and S3 at 4 KiB").
SHARED_READ_AHEAD = 256
# Bounds on what the broker may take: closing a consumer (leave group), the committed offsets and
# watermarks read on assignment, the producer's metadata probe, the final flush.
CLOSE_TIMEOUT = 5.0
ASSIGN_TIMEOUT = 10.0
# fetch = "shared": resumes that read a partition's watermarks at once (a consumer each, for the
# time of a ListOffsets request); more wait.
WATERMARK_READS = 4
PROBE_TIMEOUT = 2.0
FLUSH_TIMEOUT = 5.0
# Reconnect probing after the broker went away: from RETRY_MIN, doubling up to RETRY_MAX, each
# wait jittered (between half and all of it).
RETRY_MIN = 0.5
RETRY_MAX = 5.0

# Tuning defaults, under the user's librdkafka table.
_CONSUMER_DEFAULTS: dict[str, Any] = {
    "queued.max.messages.kbytes": 64,
    "fetch.message.max.bytes": 64 * 1024,
    # With queues this small librdkafka's default (1000 ms) stalls every fetch once the queue
    # is "full" (docs/performance.md, "The Kafka endpoint"); 1 ms would cost ten times the
    # wake-ups of a slow session's fetcher.
    "fetch.queue.backoff.ms": 10,
    # How soon a session waiting for a topic that does not exist yet sees it appear (librdkafka's
    # default, 5 minutes, is what a consumer got on tansu once the cluster held other topics). It
    # costs one metadata request per session every 3 s.
    "topic.metadata.refresh.interval.ms": 3000,
    "log.connection.close": False,
}
# fetch = "shared": the fetch and the catch-up readers. A fetch request the broker holds while
# it has nothing returns after this long at most (librdkafka: 500 ms); tansu answered a held
# fetch only then (a record took 60-135 ms to reach an idle consumer, 0-1 ms with 100 ms). A
# real Kafka broker answers as soon as a record comes: this costs only empty fetches, ten a
# second per reader, never one per session. The shared fetch itself waits less
# (``_kafka_shared.TAIL_FETCH_WAIT_MS``): it is on every tail session's path.
_SHARED_DEFAULTS: dict[str, Any] = {"fetch.wait.max.ms": 100}
# A catch-up reader's prefetch: bounded by bytes (4 MiB; the pool of 32 holds 128 MiB at most),
# not by the session's window in records: with the window, and still with 1 MiB, a reader of
# 4 KiB records waited for the broker between fetches (docs/performance.md, "S1 and S3 at 4 KiB").
_CATCH_UP_PREFETCH: dict[str, Any] = {
    "queued.min.messages": 1_000_000,
    "queued.max.messages.kbytes": 4096,
}
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    # How long a confirmed publish may wait for its delivery report (503 after that).
    "message.timeout.ms": 15_000,
    "log.connection.close": False,
}

# What poll() says while the subscribed topic does not exist: a waiting state (see module doc).
_MISSING_TOPIC = frozenset({KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART})

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _broker_gone(error: KafkaError) -> bool:
    return error.code() == KafkaError._ALL_BROKERS_DOWN or error.fatal()


def event_from_message(message: Message) -> Event:
    """The event a consumed Kafka message is: its id encodes its position (see module doc).

    The consumer's hot path: one call per event, so no work that most messages do not need
    (headers are usually absent; the offset is formatted once, for the id and the metadata).
    """
    topic, partition = str(message.topic()), str(message.partition())
    offset = str(message.offset())
    headers = message.headers()
    if headers:
        metadata = _header_metadata(headers)
        metadata.update(topic=topic, partition=partition, offset=offset)
    else:
        metadata = {"topic": topic, "partition": partition, "offset": offset}
    key = message.key()
    if key is not None:
        metadata["key"] = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    kind, millis = message.timestamp()
    if kind != TIMESTAMP_NOT_AVAILABLE:
        metadata["timestamp"] = str(millis)
        timestamp = millis / 1000
    else:
        timestamp = time.time()
    value = message.value()
    return broker_event(
        value if isinstance(value, bytes) else (value or "").encode(),
        f"{topic}:{partition}:{offset}",
        metadata,
        timestamp,
    )


def _header_metadata(
    headers: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]],
) -> dict[str, str]:
    """Kafka headers as metadata: UTF-8 text, without control characters (not header-safe)."""
    metadata: dict[str, str] = {}
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
        if not _CONTROL.search(name) and not _CONTROL.search(text):
            metadata[name] = text
    return metadata


# (low, high) of a partition, asked of the broker through a consumer, in the thread that owns
# the consumer: low is the oldest offset the broker holds, high the next it will write.
Watermarks = Callable[[Consumer, TopicPartition], tuple[int, int]]


def read_watermarks(consumer: Consumer, partition: TopicPartition) -> tuple[int, int]:
    """:data:`Watermarks` from the broker (a ListOffsets request, at most ``ASSIGN_TIMEOUT``)."""
    low, high = consumer.get_watermark_offsets(partition, timeout=ASSIGN_TIMEOUT)
    return low, high


def resume_position(event_id: str | None, topic: str) -> tuple[int, int] | None:
    """``(partition, offset to start at)`` for an event id of ours on ``topic``, else None."""
    if not event_id:
        return None
    parts = event_id.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != topic:
        return None
    try:
        partition, offset = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if partition < 0 or offset < 0:
        return None
    return partition, offset + 1


# -- consuming ---------------------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: one per event, and frozen __init__ costs a setattr per field
class _Item:
    event: Event
    partition: int
    offset: int
    epoch: int  # the partition's epoch when fetched: a seek or an assignment starts a new one


class _CommitWaiter:
    """An ack that returns only once its commit was answered (``at_most_once``)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BrokerUnavailable | None = None


@dataclass(slots=True)  # not frozen: one per settle (see _Item)
class _Settle:
    item: _Item
    accepted: bool
    waiter: _CommitWaiter | None


class _SessionConsumer:
    """One session's consumer: a poller thread that owns the ``Consumer``, and its Trio side.

    The two sides share ``_ready`` (fetched events for the session), ``_settles`` (acks and nacks
    for the thread) and the flags, under ``_lock``, which is never held across a librdkafka call
    or an await. Everything else belongs to one side: the offsets bookkeeping to the thread.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        *,
        credit: int,
        latest: bool,
        sync_commits: bool,
        resume: tuple[int, int] | None,
        to_trio: ToTrio,
        undeliverable: Callable[[str], None],
        watermarks: Watermarks,
    ) -> None:
        self._config = config
        self._topic = topic
        self._undeliverable = undeliverable  # called on the poller thread (see _accept)
        self._credit = max(1, credit)
        self._latest = latest
        self._sync_commits = sync_commits
        self._resume = resume
        self._watermarks = watermarks
        self._to_trio = to_trio
        # Fetched and unsettled events at most: the credit plus the read-ahead.
        self._window = self._credit + READ_AHEAD
        # Shared, under _lock.
        self._lock = threading.Lock()
        self._ready: deque[_Item] = deque()  # fetched, not yet handed to the session
        self._out = 0  # handed to the session and not settled by it: never above the credit
        self._settles: list[_Settle] = []
        self._rewinding = 0  # nacks the thread has not applied yet: nothing is handed meanwhile
        self._failure: BrokerUnavailable | None = None
        # Why the resume position could not be used (resume_gone), set before _subscribed.
        self.gone: str | None = None
        self._subscribed = False
        self._stopping = False
        self._finished = False
        self._thread_waits = False  # the thread sleeps on _wake until it may fetch again
        self._trio_waits = False  # next_delivery is parked until the thread delivers
        self._wake = threading.Event()  # the thread waits on it for credit, settles or stop
        # Trio side.
        self._changed = trio.lowlevel.ParkingLot()
        # Thread side: per assigned partition.
        self._partitions: dict[int, PartitionPositions] = {}  # the assigned ones
        self._epochs: dict[int, int] = {}  # kept across assignments, so old epochs stay old
        # Events in _ready, handed out, or settled but not yet applied here: at most _window.
        self._held = 0
        # Fetch again once this much of the window is free (or the session took everything
        # ready): one batch per refill instead of one round trip per settle.
        self._refill = max(1, self._window // 4)
        self._rebalances = 0  # assignments and revocations served, to spot one inside a batch
        self._commits_in_flight = 0  # asynchronous commits not yet answered
        self._dirty: set[int] = set()  # partitions settled since their last commit was issued
        self._paused = False
        self._suspect: str | None = None  # an _ALL_BROKERS_DOWN not yet checked
        self._waiting_for_topic = False  # subscribed to a topic that does not exist yet

    # -- Trio side -----------------------------------------------------------------------------

    async def subscribed(self) -> None:
        while True:
            with self._lock:
                failure, subscribed, finished = self._failure, self._subscribed, self._finished
            if failure is not None:
                raise failure
            if subscribed:
                return
            if finished:
                raise BrokerUnavailable("kafka consumer ended before it was subscribed")
            await self._changed.park()

    async def next_delivery(self) -> Delivery:
        while True:
            with self._lock:
                failure, finished = self._failure, self._finished
                item = None
                wake = False
                if failure is None and self._ready and self._out < self._credit:
                    if not self._rewinding:
                        item = self._ready.popleft()
                        self._out += 1
                        wake = self._thread_may_fetch()
                elif failure is None:
                    self._trio_waits = True  # for _deliver: wake us when events come
            if failure is not None:
                raise failure
            if item is not None:
                if wake:
                    self._wake.set()
                return Delivery(item.event, partial(self._settle, item))
            if finished:
                raise BrokerUnavailable("kafka consumer closed")
            # Woken by _deliver, by a settle that freed credit, or once a nack was applied.
            await self._changed.park()

    async def _settle(self, item: _Item, accepted: bool) -> None:
        waiter = _CommitWaiter() if accepted and self._sync_commits else None
        with self._lock:
            finished = self._finished
            credit_freed = self._out == self._credit
            self._out -= 1
            if not finished:
                self._settles.append(_Settle(item, accepted, waiter))
                if not accepted:
                    self._rewinding += 1
            # The thread needs this settle now if it waits for its commit or rewinds; an ack
            # wakes it only once it frees room for a batch (or nothing is left ready).
            wake = waiter is not None or not accepted or self._thread_may_fetch()
        if credit_freed:
            self._changed.unpark_all()  # a next_delivery waiting for credit
        if finished:
            if waiter is not None:
                raise BrokerUnavailable("kafka consumer closed before the ack was committed")
            return
        if wake:
            self._wake.set()
        if waiter is not None:
            await waiter.done.wait()
            if waiter.error is not None:
                raise waiter.error

    def _thread_may_fetch(self) -> bool:
        """Under ``_lock``: whether the sleeping thread would fetch once it applied the settles.

        The thread's ``_held`` is then what is ready plus what is out (see ``_may_fetch``).
        Clears ``_thread_waits``: one wake-up per sleep.
        """
        if not self._thread_waits:
            return False
        free = self._window - len(self._ready) - self._out
        if free >= self._refill or (free > 0 and not self._ready):
            self._thread_waits = False
            return True
        return False

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wake.set()

    async def finished(self) -> None:
        while True:
            with self._lock:
                if self._finished:
                    return
            await self._changed.park()

    def _wake_trio(self) -> None:
        self._to_trio.call_soon(self._changed.unpark_all)

    def _resolve(self, waiters: list[_CommitWaiter], error: BrokerUnavailable | None) -> None:
        def resolve() -> None:
            for waiter in waiters:
                waiter.error = error
                waiter.done.set()

        if waiters:
            self._to_trio.call_soon(resolve)

    # -- the poller thread ---------------------------------------------------------------------

    def run(self) -> None:
        consumer: Consumer | None = None
        try:
            consumer = Consumer(
                {
                    **self._config,
                    "error_cb": self._on_error,
                    "on_commit": self._on_commit,
                }
            )
            consumer.subscribe(
                [self._topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._poll_until_stopped(consumer)
        except Exception as error:  # a thread: everything ends up as the session's failure
            self._fail(f"kafka consumer failed: {error}")
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except Exception as error:
                    log.warning("kafka consumer close failed", extra={"error": str(error)})
            self._finish()

    def _poll_until_stopped(self, consumer: Consumer) -> None:
        full_since: float | None = None
        while True:
            self._wake.clear()
            with self._lock:
                stopping, failed = self._stopping, self._failure is not None
            if failed:
                return
            if self._apply_settles(consumer):
                full_since = None  # the session took something: not stalled
            if stopping:
                self._flush_commits(consumer, force=True)  # close() waits for its answer
                return
            if self._suspect is not None:
                self._check_broker(consumer)
                continue
            if self._may_fetch():
                full_since = None
                if self._paused:
                    consumer.resume(consumer.assignment())
                    self._paused = False
                self._fetch(consumer)
                self._flush_commits(consumer)
                continue
            self._flush_commits(consumer)
            now = time.monotonic()
            full_since = now if full_since is None else full_since
            if not self._paused and now - full_since < STALL_PAUSE:
                self._sleep(STALL_PAUSE - (now - full_since))
                continue
            self._pause(consumer)
            # Group callbacks and errors; paused partitions are quiet.
            self._deliver(consumer.consume(1, 0))
            self._sleep(STALL_PAUSE)

    def _sleep(self, timeout: float) -> None:
        """Wait for the settles that let the thread fetch again (or stop, or a commit waiter).

        Settles that do not free room for a batch do not wake it (``_thread_may_fetch``); they
        are applied, and committed, when it wakes.
        """
        with self._lock:
            if self._settles:
                return  # came after this round applied the others: apply them first
            self._thread_waits = True
        self._wake.wait(timeout)
        with self._lock:
            self._thread_waits = False

    def _check_broker(self, consumer: Consumer) -> None:
        """After an ``_ALL_BROKERS_DOWN``: fail unless the cluster answers within PROBE_TIMEOUT."""
        reason, self._suspect = self._suspect, None
        try:
            consumer.list_topics(self._topic, timeout=PROBE_TIMEOUT)
        except KafkaException:
            self._fail(f"kafka broker unavailable: {reason}")

    def _pause(self, consumer: Consumer) -> None:
        if not self._paused:
            consumer.pause(consumer.assignment())
            self._paused = True

    def _may_fetch(self) -> bool:
        free = self._window - self._held
        if free >= self._refill:
            return True
        if free <= 0:
            return False
        with self._lock:
            return not self._ready

    def _fetch(self, consumer: Consumer) -> None:
        """Up to the free credit: wait for the first event, then take whatever else is ready.

        ``consume(n, timeout)`` alone would wait until it has ``n`` events or the timeout passed
        (a trickle would wait a whole ``POLL_INTERVAL``); so one event is waited for, and the
        rest is what librdkafka already holds (``timeout=0``).
        """
        messages = consumer.consume(1, POLL_INTERVAL)
        room = self._window - self._held - len(messages)
        if messages and room > 0:
            rebalances = self._rebalances
            more = consumer.consume(room, 0)
            if self._rebalances != rebalances:
                # A group callback ran inside the batch: events before it belong to the old
                # assignment. Deliver none of these; fetch the partitions again from where
                # the new assignment starts them.
                self._refetch(consumer, {m.partition() for m in more} - {None})
                more = []
            messages += more
        self._deliver(messages)

    def _refetch(self, consumer: Consumer, partitions: set[int | None]) -> None:
        for partition in partitions:
            if partition is None:
                continue
            positions = self._partitions.get(partition)
            if positions is not None:
                consumer.seek(TopicPartition(self._topic, partition, positions.refetch()))

    def _deliver(self, messages: list[Message]) -> None:
        """Hand fetched events to the session: one lock per batch, and a Trio wake-up only if
        the session waits for them (a busy session finds them itself)."""
        items = [item for item in map(self._accept, messages) if item is not None]
        if items:
            with self._lock:
                self._ready.extend(items)
                waiting, self._trio_waits = self._trio_waits, False
            if waiting:
                self._wake_trio()

    def _accept(self, message: Message) -> _Item | None:
        error = message.error()
        if error is not None:
            if error.code() in _MISSING_TOPIC:
                self._topic_missing(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                self._fail(f"kafka consumer: {error.str()}")
            return None
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            return None
        positions = self._partitions.get(partition)
        if positions is None:
            return None  # from a partition this consumer no longer has
        try:
            event = event_from_message(message)
        except Exception as failure:  # one record, never the session (see the module doc)
            self._skip(positions, partition, offset, failure)
            return None
        self._held += 1
        return _Item(event, partition, offset, positions.fetched(offset))

    def _topic_missing(self, error: KafkaError) -> None:
        """The topic does not exist (yet): the session starts without partitions and waits."""
        if not self._waiting_for_topic:
            log.info(
                "kafka topic does not exist yet; the session waits for it",
                extra={"topic": self._topic, "error": error.str()},
            )
        self._waiting_for_topic = True
        gone = None
        if self._resume is not None:
            # The client names a position of a topic that does not exist: deleted since.
            gone = f"position in {self._topic} is gone: the topic does not exist"
            self._resume = None
        with self._lock:
            if gone is not None and not self._subscribed:
                self.gone = gone
            subscribed, self._subscribed = self._subscribed, True
        if not subscribed:
            self._wake_trio()

    def _skip(
        self, positions: PartitionPositions, partition: int, offset: int, error: Exception
    ) -> None:
        """A record that cannot become an event: passed over as if acked, logged, counted."""
        log.warning(
            "kafka record skipped: it cannot be converted into an event",
            extra={
                "topic": self._topic,
                "partition": partition,
                "offset": offset,
                "reason": CONVERSION_ERROR,
                "error": str(error) or type(error).__name__,
            },
        )
        positions.skipped(offset)
        self._dirty.add(partition)  # committed with the next commit
        self._undeliverable(CONVERSION_ERROR)

    def _apply_settles(self, consumer: Consumer) -> bool:
        """Apply the session's acks and nacks; whether there were any."""
        with self._lock:
            settles, self._settles = self._settles, []
        if not settles:
            return False
        nacks = 0  # each counted in _rewinding, revoked partition or not
        touched: set[int] = set()
        waiters: list[_CommitWaiter] = []
        for settle in settles:
            item = settle.item
            if not settle.accepted:
                nacks += 1
            positions = self._partitions.get(item.partition)
            if positions is None or not positions.holds(item.offset, item.epoch):
                # Its partition was revoked meanwhile: another member will deliver it again.
                if settle.waiter is not None:
                    self._resolve(
                        [settle.waiter],
                        BrokerUnavailable("kafka partition reassigned before the ack"),
                    )
                continue
            if not settle.accepted:
                self._rewind(consumer, positions, item)
            positions.settled(item.offset, item.epoch)
            self._held -= 1
            touched.add(item.partition)
            if settle.waiter is not None:
                waiters.append(settle.waiter)
        self._commit(consumer, touched, waiters)
        if nacks:
            with self._lock:
                self._rewinding -= nacks
            self._wake_trio()  # next_delivery waits while a nack is not applied
        return True

    def _rewind(self, consumer: Consumer, positions: PartitionPositions, item: _Item) -> None:
        """A nack: fetch the partition again from the refused event (unless that happens anyway)."""
        seek = positions.rewind(item.offset, item.epoch)
        if seek is None:
            return
        partition = item.partition
        consumer.seek(TopicPartition(self._topic, partition, seek))
        self._drop_ready(lambda ready: ready.partition == partition)

    def _drop_ready(self, drop: Callable[[_Item], bool]) -> None:
        with self._lock:
            dropped = [item for item in self._ready if drop(item)]
            if dropped:
                self._ready = deque(item for item in self._ready if not drop(item))
        for item in dropped:
            positions = self._partitions.get(item.partition)
            if positions is not None and positions.dropped(item.offset, item.epoch):
                self._held -= 1

    def _commit(
        self,
        consumer: Consumer,
        partitions: set[int],
        waiters: list[_CommitWaiter],
        *,
        force: bool = False,
    ) -> None:
        """Commit how far ``partitions`` got; synchronously when an ack waits for it.

        Asynchronous commits are coalesced: while one is unanswered the partitions are only
        noted, and the next commit (after the answer, see ``_flush_commits``) carries the
        furthest point of each. ``force`` commits now (revocation, the end of the session).
        """
        if not self._sync_commits and not force and self._commits_in_flight > 0:
            self._dirty |= partitions
            self._resolve(waiters, None)
            return
        partitions = partitions | self._dirty
        self._dirty = set()
        offsets = []
        for partition in sorted(partitions):
            positions = self._partitions.get(partition)
            point = positions.to_commit() if positions is not None else None
            if point is not None:
                offsets.append(TopicPartition(self._topic, partition, point))
        if not offsets:
            self._resolve(waiters, None)
        elif not self._sync_commits:
            self._commits_in_flight += 1
            consumer.commit(offsets=offsets, asynchronous=True)
        else:
            # A few ms; with the coordinator gone librdkafka gives up after ~3.5 s (_WAIT_COORD).
            error: BrokerUnavailable | None = None
            try:
                answered = consumer.commit(offsets=offsets, asynchronous=False)
                failed = [tp for tp in answered or () if tp.error is not None]
                if failed:
                    error = BrokerUnavailable(f"kafka commit failed: {failed[0].error}")
            except KafkaException as refused:
                error = BrokerUnavailable(f"kafka commit failed: {refused}")
            if error is not None:
                self._forget_commits(offsets)
            self._resolve(waiters, error)

    def _flush_commits(self, consumer: Consumer, *, force: bool = False) -> None:
        """Commit what was settled while the last commit was unanswered.

        Not on ``at_most_once``: its commits are synchronous, and one that failed is retried
        with the next ack, as a waiting ack needs it.
        """
        if self._sync_commits:
            return
        if self._dirty and (force or self._commits_in_flight == 0):
            self._commit(consumer, set(), [], force=force)

    def _forget_commits(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            positions = self._partitions.get(tp.partition)
            if positions is not None and positions.committed == tp.offset:
                positions.commit_failed(tp.offset)  # committed again with the next flush
                self._dirty.add(tp.partition)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Answer to an asynchronous commit (served by consume, in this thread)."""
        self._commits_in_flight = max(0, self._commits_in_flight - 1)
        failed = [tp for tp in partitions if tp.error is not None]
        if error is None and not failed:
            return
        reason = error.str() if error is not None else str(failed[0].error)
        log.warning("kafka commit failed", extra={"topic": self._topic, "error": reason})
        self._forget_commits(partitions)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=ASSIGN_TIMEOUT) if partitions else []
        starts: list[TopicPartition] = []
        to_commit: list[TopicPartition] = []
        for tp in committed:
            start = tp.offset
            if start < 0:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self._topic, tp.partition), timeout=ASSIGN_TIMEOUT
                )
                # A topic that appeared while the session waited holds only newer events.
                start = high if self._latest and not self._waiting_for_topic else low
            if self._resume is not None and self._resume[0] == tp.partition:
                start = self._resume[1]
                self._resume = None
                low, high = self._watermarks(consumer, TopicPartition(self._topic, tp.partition))
                gone = resume_gone(self._topic, tp.partition, start, low, high)
                if gone is not None:  # from the oldest there is, and the client is told
                    start = low
                    with self._lock:
                        self.gone = gone
            if start != tp.offset:
                to_commit.append(TopicPartition(self._topic, tp.partition, start))
            starts.append(TopicPartition(self._topic, tp.partition, start))
        consumer.assign(starts)
        if self._paused and starts:
            consumer.pause(starts)
        for tp in starts:
            partition = tp.partition
            previous = self._partitions.get(partition)
            epoch = (previous.epoch if previous is not None else self._epochs.get(partition, 0)) + 1
            self._partitions[partition] = PartitionPositions(tp.offset, epoch=epoch)
        self._rebalances += 1
        if starts:
            self._waiting_for_topic = False
        if to_commit:
            # The group's resume point from now on, even if this session never acks anything.
            self._commits_in_flight += 1
            consumer.commit(offsets=to_commit, asynchronous=True)
        log.debug(
            "kafka partitions assigned",
            extra={"topic": self._topic, "offsets": {tp.partition: tp.offset for tp in starts}},
        )
        with self._lock:
            self._subscribed = True
        self._wake_trio()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._commit(consumer, {tp.partition for tp in partitions}, [], force=True)
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        gone = {tp.partition for tp in partitions}
        self._dirty -= gone
        self._drop_ready(lambda item: item.partition in gone)
        for partition in gone:
            positions = self._partitions.pop(partition, None)
            if positions is not None:
                self._held -= positions.unsettled
                self._epochs[partition] = positions.epoch

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fail(f"kafka consumer failed: {error.str()}")
        elif _broker_gone(error):
            # Checked by the poll loop: librdkafka says this for a moment while it moves from
            # the bootstrap connection to the brokers' own too.
            self._suspect = error.str()
        else:
            log.debug("kafka consumer error", extra={"topic": self._topic, "error": error.str()})

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = BrokerUnavailable(reason)
        self._wake_trio()

    def _finish(self) -> None:
        closed = BrokerUnavailable("kafka consumer closed before the ack was committed")
        with self._lock:
            self._finished = True
            left = [s.waiter for s in self._settles if s.waiter is not None]
            self._settles.clear()
        self._resolve(left, closed)
        self._wake_trio()

    def thread_exited(self, result: outcome.Outcome[None]) -> None:
        if isinstance(result, outcome.Error):  # run() catches everything; this is a bug
            log.error("kafka poller thread crashed", exc_info=result.error)


# -- producing ---------------------------------------------------------------------------------


class _Confirmation:
    """A confirmed publish waiting for its delivery report."""

    __slots__ = ("done", "error", "reports")

    def __init__(self, reports: deque[_Confirmation]) -> None:
        self.done = trio.Event()
        self.error: str | None = None
        self.reports = reports

    def report(self, error: KafkaError | None, message: Message) -> None:
        """librdkafka's delivery callback, in whichever thread polled or flushed the producer."""
        self.error = None if error is None else error.str()
        self.reports.append(self)


class KafkaEndpoint:
    ids_are_positions = True

    def __init__(
        self, name: str, config: KafkaConfig, *, clients: ClientLedger | None = None
    ) -> None:
        self.name = name
        self.config = config
        # client_state_ttl and who left when (mediation/client_state.py); made on its own
        # (tests): no expiry.
        self.clients = clients if clients is not None else ClientLedger(ttl=0)
        # How a resume reads the partition's watermarks (resume_gone): the broker's, in the
        # thread that owns the consumer asking. A test may put a broker with retention here.
        self.watermarks: Watermarks = read_watermarks
        # How the shared fetch reads the topic's partitions, when it starts and every
        # topic.metadata.refresh.interval.ms after (partitions added meanwhile): the broker's.
        # A test may put a topic that grows here (tansu has no CreatePartitions).
        self.partitions: Partitions = read_partitions
        # fetch = "shared" resumes asking the broker for watermarks at once (_resumable).
        self._watermark_reads = trio.CapacityLimiter(WATERMARK_READS)
        self.state = AsyncValue(EndpointState.CONNECTING)
        self._producer: Producer | None = None  # set while up
        # Producer poll threads (the current one and any still draining), probe, flush.
        self._blocking = trio.CapacityLimiter(8)
        self._reports: deque[_Confirmation] = deque()  # appended by librdkafka's callbacks
        self._pending: set[_Confirmation] = set()
        self._space = trio.lowlevel.ParkingLot()  # publishers waiting for room in the queue
        self._lost = trio.Event()
        self._generation = 0  # of the current producer: errors of retired ones are ignored
        self._fatal = False  # the current producer had a fatal error: it must be replaced
        self._up_since = 0.0
        self._to_trio: ToTrio | None = None  # made in Trio, by run() or the first consume()
        # fetch = "shared" (see _kafka_shared): a fetch per topic, the positions, the pool.
        self._fetches: dict[str, SharedFetch] = {}
        # The admin clients' configuration: the child's (its logger stays here) and metadata's.
        self._admin_config: dict[str, Any] = {
            **config.librdkafka,
            "bootstrap.servers": config.brokers,
            "logger": librdkafka_log,
        }
        self._shared = config.fetch == "shared" and "{client_id}" in config.group_id
        self._admin_process = AdminProcess(self._admin_config, librdkafka_log)
        self._offsets = GroupOffsets(self._admin_process)
        self._metadata: AdminClient | None = None  # the shared fetches' (no group requests)
        self._readers = trio.CapacityLimiter(config.catch_up_readers)
        self._committer = Committer(config.position_refresh_interval)

    # -- connection ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.state.value = EndpointState.CONNECTING
        task_status.started()
        to_trio = self._to_trio = ToTrio(self.name)
        try:
            async with trio.open_nursery() as nursery:
                if self._start_sweep(nursery) or self._shared:
                    nursery.start_soon(self._admin_process.run)
                nursery.start_soon(self._committer.run)
                while True:
                    await self._run_producer(nursery, to_trio)
        finally:
            self.state.value = EndpointState.DOWN

    def _start_sweep(self, nursery: trio.Nursery) -> bool:
        """With a ttl and a per-client ``group_id``: delete the groups of departed clients
        (``_kafka_sweep``, through the admin child process); whether it runs."""
        pattern = name_pattern(self.config.group_id, self.name)
        if pattern is None or self.clients.ttl <= 0:
            return False
        groups = KafkaGroups(ask_from_thread(self._admin_process.request))
        nursery.start_soon(
            run_sweep, self.name, Sweep(pattern, self.clients), groups, self._blocking
        )
        return True

    def _producer_config(self, to_trio: ToTrio, generation: int) -> dict[str, Any]:
        return {
            **_PRODUCER_DEFAULTS,
            **self.config.librdkafka,
            "bootstrap.servers": self.config.brokers,
            "enable.idempotence": True,
            "error_cb": partial(self._on_producer_error, to_trio, generation),
            "logger": librdkafka_log,
        }

    async def _run_producer(self, nursery: trio.Nursery, to_trio: ToTrio) -> None:
        """One producer, from connecting until the broker went away (or the endpoint stops).

        Every outage ends with a new producer: an idempotent producer's id and sequence numbers
        mean nothing to a broker that lost its state (a restarted in-memory cluster refuses them
        until the messages time out). The old one is drained in the background meanwhile.
        """
        self._generation += 1
        self._fatal = False
        config = self._producer_config(to_trio, self._generation)
        producer = Producer(config)
        stop = threading.Event()
        nursery.start_soon(
            partial(
                trio.to_thread.run_sync,
                self._poll_producer,
                producer,
                stop,
                to_trio,
                self._generation,
                abandon_on_cancel=True,
                limiter=self._blocking,
            )
        )
        lost = False
        try:
            await self._until_lost(producer)
            lost = True
        finally:
            self._producer = None
            self._fail_pending("kafka broker unavailable")
            self._space.unpark_all()
            if lost:
                # Until the last of its messages timed out, at the latest.
                timeout = config.get("delivery.timeout.ms", config.get("message.timeout.ms"))

                async def drain_in_background() -> None:
                    with trio.move_on_after(int(timeout or 300_000) / 1000):
                        await self._drain(producer, stop)

                nursery.start_soon(drain_in_background)
            else:
                with trio.move_on_after(FLUSH_TIMEOUT, shield=True):
                    await self._drain(producer, stop)

    async def _until_lost(self, producer: Producer) -> None:
        """Probe until the cluster answers, be ``up`` until it goes away, then ``down``."""
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        self._lost = trio.Event()
        while not await self._answers(producer):
            await trio.sleep(backoff.next())
            self._lost = trio.Event()  # what happened before this attempt is old news
        if self.config.create_topics:
            await self._create_topics()
        self._up_since = time.monotonic()
        self._producer = producer
        if self._shared:  # back after an outage: see GroupOffsets.renew
            self._offsets.renew()
        self.state.value = EndpointState.UP
        log.info("kafka connected", extra={"endpoint": self.name})
        while True:
            await self._lost.wait()
            self._lost = trio.Event()
            # librdkafka also says "all brokers down" for a moment while it moves from the
            # bootstrap connection to the brokers' own: down only if the cluster is silent.
            # A fatal error is final for this producer, whatever the cluster says.
            if self._fatal or not await self._answers(producer):
                break
        self.state.value = EndpointState.DOWN
        for fetch in list(self._fetches.values()):  # their sessions end now, joining or not
            fetch.fail("kafka broker unavailable")

    async def _create_topics(self) -> None:
        """``create_topics``: topic_in and topic_out, where missing (a failure is only logged:
        sessions on a missing topic wait for it, and the producer's cluster may create it)."""
        names = {self.config.topic_in, self.config.topic_out} - {None}
        topics = sorted(name for name in names if name is not None and "{" not in name)
        if not topics:
            return

        def create() -> list[tuple[str, KafkaError | None]]:
            config: dict[str, Any] = {
                **self.config.librdkafka,
                "bootstrap.servers": self.config.brokers,
                "logger": librdkafka_log,
            }
            admin = AdminClient(config)
            new = [
                NewTopic(topic, self.config.partitions, self.config.replication_factor)
                for topic in topics
            ]
            answers: list[tuple[str, KafkaError | None]] = []
            for topic, future in admin.create_topics(new, request_timeout=PROBE_TIMEOUT).items():
                try:
                    future.result(PROBE_TIMEOUT)
                    answers.append((topic, None))
                except KafkaException as error:
                    answers.append((topic, error.args[0]))
            return answers

        try:
            answers = await trio.to_thread.run_sync(
                create, abandon_on_cancel=True, limiter=self._blocking
            )
        except Exception as failure:  # a timeout, a bad admin config: the endpoint goes on
            log.warning(
                "kafka topics not created", extra={"endpoint": self.name, "error": str(failure)}
            )
            return
        for topic, error in answers:
            if error is None:
                log.info("kafka topic created", extra={"endpoint": self.name, "topic": topic})
            elif error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                log.warning(
                    "kafka topic not created",
                    extra={"endpoint": self.name, "topic": topic, "error": error.str()},
                )

    async def _answers(self, producer: Producer) -> bool:
        try:
            await trio.to_thread.run_sync(
                partial(producer.list_topics, timeout=PROBE_TIMEOUT),
                abandon_on_cancel=True,
                limiter=self._blocking,
            )
        except KafkaException as error:
            log.info("kafka not reachable", extra={"endpoint": self.name, "error": str(error)})
            return False
        return True

    async def _drain(self, producer: Producer, stop: threading.Event) -> None:
        """Deliver what a retired producer still holds (flushing in slices: cancellable)."""
        try:
            while await trio.to_thread.run_sync(producer.flush, 0.5, limiter=self._blocking):
                pass
        except KafkaException as error:  # a fatal error: what it still holds is lost
            log.warning(
                "kafka producer not drained", extra={"endpoint": self.name, "error": str(error)}
            )
        finally:
            stop.set()
            self._deliver_reports()

    def _poll_producer(
        self,
        producer: Producer,
        stop: threading.Event,
        to_trio: ToTrio,
        generation: int,
    ) -> None:
        """The producer's thread: serve delivery reports, hand them to Trio in batches."""
        while not stop.is_set():
            try:
                served = producer.poll(POLL_INTERVAL)
            except KafkaException as error:
                # A fatal error (an idempotent producer out of sequence with a broker that lost
                # its state, as a restarted tansu does): this producer is done, not the engine.
                lost = partial(self._connection_lost, generation, time.monotonic(), str(error))
                to_trio.call_soon(partial(lost, fatal=True))
                return
            if served:
                to_trio.call_soon(self._deliver_reports)

    def _on_producer_error(self, to_trio: ToTrio, generation: int, error: KafkaError) -> None:
        """librdkafka's error callback (poll thread): the connection state goes to Trio."""
        if _broker_gone(error):
            lost = partial(self._connection_lost, generation, time.monotonic(), error.str())
            to_trio.call_soon(partial(lost, fatal=error.fatal()))
        else:
            log.debug("kafka producer error", extra={"endpoint": self.name, "error": error.str()})

    def _connection_lost(self, generation: int, at: float, reason: str, *, fatal: bool) -> None:
        if generation != self._generation:
            return  # from a retired producer
        if fatal:
            self._fatal = True
        elif at < self._up_since:
            return  # older than the probe that found the broker up
        log.warning("kafka broker unavailable", extra={"endpoint": self.name, "error": reason})
        self._lost.set()

    def _deliver_reports(self) -> None:
        while self._reports:
            self._reports.popleft().done.set()
        self._space.unpark_all()

    def _fail_pending(self, reason: str) -> None:
        for confirmation in self._pending:
            if not confirmation.done.is_set():
                confirmation.error = reason
                confirmation.done.set()
        self._pending.clear()

    # -- the endpoint interface ----------------------------------------------------------------

    def _handoff(self) -> ToTrio:
        if self._to_trio is None:
            self._to_trio = ToTrio(self.name)
        return self._to_trio

    @asynccontextmanager
    async def consume(self, subscription: Subscription) -> AsyncIterator[AsyncIterator[Delivery]]:
        if self.config.topic_in is None:
            raise TargetNotFound(f"endpoint {self.name} has no topic_in to consume from")
        if self.state.value is EndpointState.DOWN:
            raise BrokerUnavailable(f"endpoint {self.name} is down")
        topic = subscription.fill(self.config.topic_in)
        group = subscription.fill(self.config.group_id.replace("{endpoint}", self.name))
        if self._shared:
            async with self._consume_shared(subscription, topic, group) as deliveries:
                yield deliveries
            return
        credit = subscription.credit
        consumer = _SessionConsumer(
            {
                **_CONSUMER_DEFAULTS,
                "queued.min.messages": max(1, credit),
                **self.config.librdkafka,
                "bootstrap.servers": self.config.brokers,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                "auto.offset.reset": self.config.auto_offset_reset,
                "session.timeout.ms": self.config.session_timeout_ms,
                "heartbeat.interval.ms": self.config.heartbeat_interval_ms,
                "logger": librdkafka_log,
            },
            topic,
            credit=credit,
            latest=self.config.auto_offset_reset == "latest",
            sync_commits=subscription.route.ack_plan.ack_awaits_broker,
            resume=resume_position(subscription.resume_after, topic),
            to_trio=self._handoff(),
            undeliverable=subscription.undeliverable,
            watermarks=self.watermarks,
        )
        trio.lowlevel.start_thread_soon(
            consumer.run, consumer.thread_exited, name=f"kafka consumer {group}"
        )
        try:
            await consumer.subscribed()
            if consumer.gone is not None:
                subscription.position_gone(consumer.gone)
            yield Deliveries(consumer.next_delivery)
        finally:
            consumer.stop()
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as closing:
                await consumer.finished()
            if closing.cancelled_caught:
                log.warning(
                    "kafka consumer did not close in time; left to finish on its own",
                    extra={"endpoint": self.name, "group": group},
                )

    def _reader_config(self, group: str, **tuning: Any) -> dict[str, Any]:
        """A consumer that is assigned partitions, never a group member, never commits."""
        return {
            **_CONSUMER_DEFAULTS,
            **tuning,
            **self.config.librdkafka,
            "bootstrap.servers": self.config.brokers,
            "group.id": group,  # never joined: required by the client, unused
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "logger": librdkafka_log,
        }

    @asynccontextmanager
    async def _consume_shared(
        self, subscription: Subscription, topic: str, group: str
    ) -> AsyncIterator[Deliveries]:
        """``fetch = "shared"``: the session reads from the topic's shared fetch (module doc of
        ``_kafka_shared``); its positions are its group's, written through the admin API."""
        to_trio = self._handoff()
        if self._metadata is None:
            self._metadata = AdminClient(self._admin_config)
        fetch = self._fetches.get(topic)
        if fetch is None or fetch.failure is not None:
            fetch = SharedFetch(
                self._reader_config(
                    f"mediation-{self.name}-fetch",
                    **{
                        "queued.max.messages.kbytes": self.config.fetch_prefetch_kbytes,
                        "fetch.message.max.bytes": 1024 * 1024,
                        **_SHARED_DEFAULTS,
                        "fetch.wait.max.ms": TAIL_FETCH_WAIT_MS,
                    },
                ),
                topic,
                to_trio,
                event_from_message,
                self._metadata,
                self.partitions,
            )
            self._fetches[topic] = fetch
            fetch.start(f"kafka fetch {self.name} {topic}")
        credit = max(1, subscription.credit)
        window = credit + SHARED_READ_AHEAD
        session = SharedSession(
            fetch,
            self._offsets,
            self._readers,
            self._reader_config(
                f"mediation-{self.name}-reader",
                **{**_CATCH_UP_PREFETCH, **_SHARED_DEFAULTS},
            ),
            committer=self._committer,
            group=group,
            credit=credit,
            window=window,
            sync_commits=subscription.route.ack_plan.ack_awaits_broker,
            undeliverable=subscription.undeliverable,
            convert=event_from_message,
            to_trio=to_trio,
        )
        fetch.sessions.add(session)
        try:
            with fetch.joining():
                await self._join_shared(subscription, fetch, session, group)
            yield Deliveries(session.next_delivery)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as closing:
                try:
                    await session.close()
                except BrokerUnavailable as error:
                    log.warning(
                        "kafka position not stored at the end of the session",
                        extra={"endpoint": self.name, "group": group, "error": str(error)},
                    )
                if not fetch.sessions:
                    if self._fetches.get(topic) is fetch:
                        del self._fetches[topic]
                    fetch.stop()  # a failed fetch, replaced in _fetches, stopped already
                    await fetch.finished.wait()
            if closing.cancelled_caught:
                log.warning(
                    "kafka shared session did not close in time",
                    extra={"endpoint": self.name, "group": group},
                )

    async def _join_shared(
        self,
        subscription: Subscription,
        fetch: SharedFetch,
        session: SharedSession,
        group: str,
    ) -> None:
        """Begin ``session`` at its group's stored positions (or the resume, or where
        ``auto_offset_reset`` says), writing them when they differ; or, while the topic does
        not exist, leave it to the fetch's assignment."""
        topic = fetch.topic
        await fetch.started.wait()
        if fetch.failure is not None:
            return  # raised by joining()
        resume = resume_position(subscription.resume_after, topic)
        if fetch.waiting_for_topic:
            fetch.awaiting_topic.add(session)  # begun when the topic appears
            if resume is not None:
                subscription.position_gone(f"position in {topic} is gone: the topic does not exist")
            return
        partitions = sorted(fetch.next)
        stored = await self._offsets.read(group, topic, partitions)
        if resume is not None:
            resume = await self._resumable(subscription, topic, partitions, resume)
        starts: dict[int, int] = {}
        to_write: dict[int, int] = {}
        for partition in partitions:
            start = stored.get(partition, -1)
            if start < 0:
                start = (
                    fetch.low[partition]
                    if self.config.auto_offset_reset == "earliest"
                    else fetch.next[partition]
                )
            if resume is not None and resume[0] == partition:
                start = resume[1]
            if start != stored.get(partition, -1):
                to_write[partition] = start
            starts[partition] = start
        if to_write:
            # The group's resume point from now on, even if this session never acks.
            await self._offsets.write(group, topic, to_write)
        if fetch.failure is None:
            session.begin(starts)

    async def _resumable(
        self,
        subscription: Subscription,
        topic: str,
        partitions: list[int],
        resume: tuple[int, int],
    ) -> tuple[int, int]:
        """Where a ``fetch = "shared"`` session resumes: ``resume``, or the partition's oldest
        offset when the broker no longer holds it (``subscription.position_gone`` told).

        The shared fetch's watermarks are its own reading's (its low from when it started, its
        next behind the broker's whenever it lags), so the broker is asked, by a consumer of
        the resume's own that joins no group, in a worker thread."""
        partition, start = resume
        if partition not in partitions:
            subscription.position_gone(
                f"position {topic}:{partition}:{start - 1} is gone: the topic has no partition "
                f"{partition}"
            )
            return partition, start  # matches no partition: the stored positions apply
        config = self._reader_config(f"mediation-{self.name}-watermarks")
        watermarks = self.watermarks

        def read() -> tuple[int, int]:
            consumer = Consumer(config)
            try:
                return watermarks(consumer, TopicPartition(topic, partition))
            finally:
                consumer.close()

        try:
            low, high = await trio.to_thread.run_sync(
                read, abandon_on_cancel=True, limiter=self._watermark_reads
            )
        except KafkaException as error:
            raise BrokerUnavailable(f"kafka watermarks of {topic}:{partition}: {error}") from error
        gone = resume_gone(topic, partition, start, low, high)
        if gone is None:
            return resume
        subscription.position_gone(gone)
        return partition, low

    async def publish(self, message: Outbound, *, confirm: bool) -> None:
        if self.config.topic_out is None:
            raise TargetNotFound(f"endpoint {self.name} has no topic_out to publish to")
        topic = message.fill(self.config.topic_out)
        event = message.event
        headers: list[tuple[str, str | bytes | None]] = [
            (name, value.encode()) for name, value in event.metadata.items()
        ]
        confirmation = _Confirmation(self._reports) if confirm else None
        while True:
            producer = self._producer
            if producer is None or self.state.value is not EndpointState.UP:
                raise BrokerUnavailable(f"endpoint {self.name} is {self.state.value}")
            try:
                producer.produce(
                    topic,
                    value=event.payload,
                    key=message.key.encode(),
                    headers=headers,
                    on_delivery=(
                        confirmation.report if confirmation is not None else self._unconfirmed
                    ),
                )
            except BufferError:
                await self._space.park()  # until delivery reports made room (or we went down)
                continue
            except KafkaException as error:
                raise BrokerUnavailable(f"kafka refused the event for {topic}: {error}") from None
            break
        if confirmation is None:
            await trio.lowlevel.checkpoint()
            return
        self._pending.add(confirmation)
        try:
            await confirmation.done.wait()
        finally:
            self._pending.discard(confirmation)
        if confirmation.error is not None:
            # Names the topic: "Unknown topic or partition" alone does not say which is missing.
            raise BrokerUnavailable(
                f"kafka did not confirm the event for {topic}: {confirmation.error}"
            )

    def _unconfirmed(self, error: KafkaError | None, message: Message) -> None:
        """Delivery callback of unconfirmed publishes (poll thread): failures are only logged."""
        if error is not None:
            log.warning(
                "kafka delivery failed",
                extra={"endpoint": self.name, "topic": message.topic(), "error": error.str()},
            )
