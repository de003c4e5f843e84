"""One session's place in one Kafka partition: what it fetched, what is unsettled, what to commit.

Pure: no I/O, no trio, no broker library. The Kafka endpoint keeps one :class:`PartitionPositions`
per partition a session reads (whichever thread or task owns the session's reading) and asks it
every question about offsets; the Hypothesis model in ``tests/test_kafka_positions.py`` checks
the rules below against a log, a reader and a client that acks and nacks in any order.

::

    positions = PartitionPositions(start=40, epoch=1)
    epoch = positions.fetched(40)          # a record handed to the session (or read ahead)
    positions.fetched(41)
    positions.settled(40, epoch)           # acked: the commit point moves to 41
    positions.to_commit()                  # 41 (then None until it moves again)
    seek = positions.rewind(41, epoch)     # nacked: read again from 41 (a new epoch)
    positions.settled(41, epoch)           # the nack settles it too

The rules:

- **Epochs.** Every record handed out carries the epoch it was fetched in. A rewind (a nack)
  starts a new epoch at the refused offset: records of older epochs that are still in the
  session's hands stay unsettled until the session settles them, but the reader fetches again
  from the refused offset, so they will come again in the new epoch.
- **Commit point** (:meth:`commit_point`): the lowest offset fetched and still unsettled (in any
  epoch), else the next offset to fetch. A commit therefore never passes a record that was read
  ahead, handed out or refused and not yet settled, whatever the order of the settles.
- **Rewind** (:meth:`rewind`): a nack of offset ``o`` fetched in epoch ``e`` needs a seek to ``o``
  unless an earlier rewind already covers it (``e`` older than the current epoch and ``o`` at or
  after where that rewind started), or its epoch predates the assignment (the record is not ours
  any more). After a seek, whatever was read ahead of the partition and not handed out is
  dropped (:meth:`dropped`): it is fetched again.
- **Commits** (:meth:`to_commit`, :meth:`commit_failed`): a point is committed at most once and
  only when it moves forward; a commit that failed is forgotten so that the next one carries it.
- **A resume position the broker no longer holds** (:func:`resume_gone`): resuming at offset
  ``s`` of a partition whose watermarks are ``low`` (the oldest offset kept) and ``high`` (the
  next offset to be written) is possible for ``low <= s <= high``. Below ``low`` retention (or
  ``DeleteRecords``) removed what the client had not seen yet; above ``high`` the partition never
  held the event the client names (the topic was deleted and created again). Either way the
  session starts at ``low`` and the client is told (``Subscription.position_gone``).
"""

from __future__ import annotations

__all__ = ["PartitionPositions", "resume_gone"]


def resume_gone(topic: str, partition: int, start: int, low: int, high: int) -> str | None:
    """Why resuming ``partition`` at ``start`` is impossible given its watermarks, or ``None``.

    ``low``: the oldest offset the broker holds; ``high``: the next offset it will write (the
    module docstring's rule). The reason is what the client is told in its reset."""
    if start < low:
        return (
            f"position {topic}:{partition}:{start - 1} is gone: the partition's oldest "
            f"offset is {low} (retention)"
        )
    if start > high:
        return (
            f"position {topic}:{partition}:{start - 1} is gone: the partition's next offset is "
            f"{high} (the topic was deleted and created again?)"
        )
    return None


class PartitionPositions:
    """One session's bookkeeping for one partition (see the module docstring).

    ``start``: the first offset to fetch. ``epoch``: the first epoch (a partition assigned again
    continues the epochs of its previous assignment, so that old records stay old).
    """

    __slots__ = ("_committed", "_unsettled", "assign_epoch", "epoch", "position", "rewound_to")

    def __init__(self, start: int, *, epoch: int = 1, committed: int | None = None) -> None:
        self.epoch = epoch
        self.assign_epoch = epoch
        self.position = start  # the next offset to fetch
        self.rewound_to = start  # where the current epoch started
        self._committed = start if committed is None else committed
        # (offset, epoch) -> how many of that record are out (a record may come twice in one
        # epoch only through a broker that re-delivers; counting keeps that honest). A plain
        # dict: collections.Counter's item methods are Python code, on every record's path.
        self._unsettled: dict[tuple[int, int], int] = {}

    # -- reading -----------------------------------------------------------------------------

    def fetched(self, offset: int) -> int:
        """A record at ``offset`` was fetched for the session: it is unsettled; its epoch."""
        key = (offset, self.epoch)
        unsettled = self._unsettled
        unsettled[key] = unsettled.get(key, 0) + 1
        self.position = offset + 1
        return self.epoch

    def skipped(self, offset: int) -> None:
        """A record that cannot be handed out (it cannot be converted): passed over, as acked."""
        self.position = max(self.position, offset + 1)

    def refetch(self) -> int:
        """Start a new epoch at the current position (a batch was cut short); the seek offset."""
        self.epoch += 1
        self.rewound_to = self.position
        return self.position

    # -- settling ----------------------------------------------------------------------------

    def holds(self, offset: int, epoch: int) -> bool:
        """Whether the record is fetched and unsettled (not, e.g., from before a reassignment)."""
        return self._unsettled.get((offset, epoch), 0) > 0

    def settled(self, offset: int, epoch: int) -> bool:
        """Acked, nacked or dropped: the record is no longer unsettled. False if it was not held."""
        key = (offset, epoch)
        count = self._unsettled.get(key, 0)
        if count <= 0:
            return False
        if count == 1:
            del self._unsettled[key]
        else:
            self._unsettled[key] = count - 1
        return True

    dropped = settled  # a read-ahead record thrown away after a seek: fetched again later

    def rewind(self, offset: int, epoch: int) -> int | None:
        """A nack of the record ``(offset, epoch)``: the offset to seek to, or None if no seek is
        needed (see the module docstring). Call it before settling the record."""
        if epoch < self.assign_epoch:
            return None
        if epoch < self.epoch and offset >= self.rewound_to:
            return None  # an earlier rewind already fetches it again
        self.epoch += 1
        self.rewound_to = offset
        self.position = offset
        return offset

    @property
    def unsettled(self) -> int:
        """How many records are fetched and not settled."""
        return sum(self._unsettled.values())

    # -- committing --------------------------------------------------------------------------

    def commit_point(self) -> int:
        """The offset the group may resume at: nothing unsettled before it."""
        unsettled = self._unsettled
        # min() of the (offset, epoch) keys runs in C: cheap even at credit 1024.
        return min(self.position, min(unsettled)[0]) if unsettled else self.position

    @property
    def committed(self) -> int:
        """The last point handed out by :meth:`to_commit` (or the start), as far as we know."""
        return self._committed

    def to_commit(self) -> int | None:
        """The point to commit now if it moved past the last one, else None (recorded as sent)."""
        point = self.commit_point()
        if point > self._committed:
            self._committed = point
            return point
        return None

    def commit_failed(self, point: int) -> None:
        """A commit of ``point`` failed: the next :meth:`to_commit` carries the point again."""
        if self._committed == point:
            self._committed = -1
