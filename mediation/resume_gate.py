"""The envelope's ``{"resume": id}``: a session's consumers with positions, held until it is known.

A ``mediation.v1`` WebSocket client may resume by sending ``{"resume": id}`` as its first
message instead of putting the id in its URL (``?last_event_id=``). The session's consumers are
subscribed before the ``101`` (whatever is published after the client saw it reaches it), so
the resume cannot choose where they start. Instead, for a session that may still be told one
(enveloped, no cursor in its URL, ``resume_grace`` > 0), each consumer of an endpoint whose ids
are positions (``Endpoint.ids_are_positions``: Kafka) is entered as always and then *held*: it
hands the session nothing until the gate is decided, by

- :meth:`ResumeGate.resume` (the first message is a resume): the cursor's signature checked
  (:class:`~mediation.cursors.BadCursor` for a bad one, and nothing changes), every held
  consumer left and entered again with ``resume_after`` the cursor's position, before it handed
  out anything, so nothing before the cursor reaches the client and nothing after it is skipped;
  it returns once each is subscribed again (``Subscription.position_gone`` told where the
  position was gone), and the consumers stay held until :meth:`ResumeGate.release`, so that the
  entrypoint answers (and sends the resets) before the first event; or
- :meth:`ResumeGate.open` (any other first message, or ``resume_grace`` passed without one):
  every held consumer goes on from where it started (the client's place at the broker).

Consumers of endpoints without positions are never held; consumers started after the gate is
decided (a later ``{"subscribe"}``) are not either. Leaving a held consumer to enter it again
costs a Kafka group rejoin with ``fetch = "per_session"`` (seconds on tansu), a position read
with ``fetch = "shared"``.

Synopsis::

    gate = ResumeGate(cursors)
    async with gate.consume(endpoint, subscription) as deliveries:   # in each consumer task
        async for delivery in deliveries: ...                        # waits for the gate
    await gate.resume(cursor)   # in the entrypoint, on {"resume": cursor}; then:
    gate.release()
    gate.open()                 # or this, on anything else or after the grace
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace

import trio

from .cursors import Cursors
from .endpoints.base import Endpoint, Subscription
from .events import Delivery


class ResumeGate:
    """Holds a session's consumers with positions until its first message (module docstring)."""

    def __init__(self, cursors: Cursors) -> None:
        self._cursors = cursors
        self._decided = trio.Event()
        self._released = trio.Event()
        self._position: str | None = None
        self._undecided = 0  # held consumers that have not yet acted on the decision
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def decided(self) -> bool:
        return self._decided.is_set()

    def open(self) -> None:
        """No resume: the held consumers go on from where they started. Idempotent."""
        if not self._decided.is_set():
            self._decided.set()
            self._released.set()

    async def resume(self, cursor: str) -> None:
        """Enter the held consumers again right after ``cursor``; returns once all are
        subscribed again, still held until :meth:`release`.

        :class:`~mediation.cursors.BadCursor` for a bad signature (then nothing is decided).
        A cursor without a signature where cursors are signed resumes nothing (as in a URL):
        the consumers stay where they started. Cancellation: a consumer that fails to enter
        again ends the session, which cancels the caller."""
        assert not self._decided.is_set(), "resume after the gate was decided"
        self._position = self._cursors.resume_position(cursor)
        self._decided.set()
        while self._undecided:
            await self._changed.park()

    def release(self) -> None:
        """Let the held consumers hand out what they have (after :meth:`resume`)."""
        self._released.set()

    @asynccontextmanager
    async def consume(
        self, endpoint: Endpoint, subscription: Subscription
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        """``endpoint.consume(subscription)``, held (module docstring) while undecided."""
        if self._decided.is_set() or not endpoint.ids_are_positions:
            async with endpoint.consume(subscription) as deliveries:
                yield deliveries
            return
        held = _Held(self, endpoint, subscription)
        self._undecided += 1
        try:
            async with AsyncExitStack() as consumer:
                held.entered(
                    consumer, await consumer.enter_async_context(endpoint.consume(subscription))
                )
                yield held
        finally:
            if not held.acted:  # left before it acted on a decision
                held.acted = True
                self._acted()

    def _acted(self) -> None:
        self._undecided -= 1
        self._changed.unpark_all()


class _Held:
    """A held consumer's deliveries: the first ``__anext__`` waits for the gate's decision."""

    def __init__(self, gate: ResumeGate, endpoint: Endpoint, subscription: Subscription) -> None:
        self._gate = gate
        self._endpoint = endpoint
        self._subscription = subscription
        self._consumer: AsyncExitStack | None = None
        self._deliveries: AsyncIterator[Delivery] | None = None
        self.acted = False  # acted on the gate's decision (entered again, or not)
        self._waiting = True  # for the decision and the release

    def entered(self, consumer: AsyncExitStack, deliveries: AsyncIterator[Delivery]) -> None:
        """The consumer as first entered: ``consumer`` holds it, to leave it and enter again."""
        self._consumer = consumer
        self._deliveries = deliveries

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> Delivery:
        assert self._consumer is not None and self._deliveries is not None
        if self._waiting:
            gate = self._gate
            await gate._decided.wait()
            if not self.acted:
                try:
                    if gate._position is not None:
                        # Nothing was handed out: leave the consumer and enter it again at
                        # the cursor (its start stays committed until the new one's is).
                        await self._consumer.aclose()
                        self._deliveries = await self._consumer.enter_async_context(
                            self._endpoint.consume(
                                replace(self._subscription, resume_after=gate._position)
                            )
                        )
                finally:
                    self.acted = True
                    gate._acted()
            await gate._released.wait()
            self._waiting = False
        return await anext(self._deliveries)
