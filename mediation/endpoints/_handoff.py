"""The one way a broker library's thread hands work to Trio: :class:`ToTrio`.

::

    to_trio = ToTrio("kafka")          # in Trio: captures the run's TrioToken
    ...
    to_trio.call_soon(waiter.set)      # from any thread: never blocks, never raises
    to_trio.call_soon(consumer.push, tag, event)

Threads
    ``call_soon`` may be called from any thread (library threads, worker threads, the Trio thread
    itself). It takes a lock held only to append to a deque, so it never waits for Trio, for a
    session, or for a slow client: a library thread stays free to serve every other session.
    The callables run on the Trio thread, in the order they were handed over (one ``ToTrio``
    keeps one order; two ``ToTrio`` objects keep none between them).

Batched
    The first ``call_soon`` after a batch ran schedules one ``TrioToken.run_sync_soon``; the
    others join its deque until it runs. A burst of deliveries from a library thread is one wake-up
    of the Trio run loop (and one write to its wake-up socket), not one per delivery.

Contained
    A callable that raises would, run directly by ``run_sync_soon``, end the whole Trio run with
    ``TrioInternalError``: every session of the engine for one bug. Here it is logged once with
    its traceback, counted in :attr:`ToTrio.failed`, and the rest of the batch runs.

After the run
    Once the Trio run has finished (``trio.RunFinishedError``), nobody is left to wait for what a
    callable would do: ``call_soon`` then drops it, counts it in :attr:`ToTrio.dropped`, and
    returns. Whatever ``run_sync_soon`` accepted is run before ``trio.run`` returns (Trio
    guarantees it), so nothing handed over while the run was alive is lost.

Cancellation
    There is nothing to cancel: callables run synchronously on the Trio thread, outside any task,
    and must not block. Ending what they were for (a session, an endpoint) is the owner's business;
    a callable for something already gone should find it gone and return.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger(__name__)


class ToTrio:
    """Thread -> Trio hand-off for one endpoint (see the module docstring).

    Create it in Trio (it captures the current ``TrioToken``); ``name`` labels its log records.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        #: Callables that raised (each logged once).
        self.failed = 0
        #: Callables handed over after the Trio run finished, and not run.
        self.dropped = 0
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._pending: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._scheduled = False
        self._finished = False

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the Trio thread soon, after everything handed over before it.

        From any thread; never blocks on Trio and never raises (see the module docstring for what
        happens after the Trio run ended).
        """
        with self._lock:
            if self._finished:
                self.dropped += 1
                return
            self._pending.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._token.run_sync_soon(self._run_batch)
        except trio.RunFinishedError:
            with self._lock:
                self._finished = True
                self.dropped += len(self._pending)
                self._pending.clear()

    def _run_batch(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, deque()
            self._scheduled = False
        for fn, args in batch:
            try:
                fn(*args)
            except Exception:
                self.failed += 1
                log.exception("a hand-off to Trio failed", extra={"endpoint": self.name})
